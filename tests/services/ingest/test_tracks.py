"""Meta tracks added to (and removed from) a published dataset over HTTP, with the real API,
Celery worker and Redis: each change publishes a new version atomically (hard-linked files, the
name switched), the match service serves the new tracks, a reader of the old version keeps
reading, bad input is a problem+json 4xx that changes nothing, concurrent additions all land,
and the reconciler collects superseded versions after their grace period."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.versions import add_tracks as core_add_tracks
from hiddenscope_ingest.reconcile import reconcile
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import start_uvicorn

from tests.services.helpers import wait_job
from tests.services.ingest.helpers import (
    IngestStack,
    ingest_ok,
    npy_bytes,
    open_published,
    states,
)

T, D = 1500, 8
VOCAB = ["the", "cat", "sat", "on", "mat", ".", "a", "dog"]
STARTS, SEQ_NAMES = [0, 500, 1000], ["c1", "c2", "c3"]


@pytest.fixture(scope="module")
def match_api(
    ingest_stack: IngestStack,
    tmp_path_factory: pytest.TempPathFactory,
    service_env: Callable[..., dict[str, str]],
) -> Iterator[ManagedProcess]:
    """The match API over the ingest stack's data root (reads what the ingest publishes)."""
    base = tmp_path_factory.mktemp("match-over-ingest")
    env = service_env(
        "HIDDENSCOPE_MATCH_",
        ingest_stack.redis.url,
        ingest_stack.data_root,
        cache_dir=base / "cache",
        search_index_eager="false",
        task_time_limit=60,
        visibility_timeout=120,
    )
    api = start_uvicorn("hiddenscope_match.app:create_app", log_path=base / "api.log", env=env)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def match(match_api: ManagedProcess) -> Iterator[httpx.Client]:
    assert match_api.url is not None
    with httpx.Client(base_url=match_api.url, timeout=60) as c:
        yield c


def _tokens(seed: int) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, len(VOCAB), T)


def publish_base(client: httpx.Client, name: str, seed: int = 1) -> dict[str, Any]:
    """A dataset with a layer, tokens, a vocabulary, three named sequences and a track."""
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 2, T)
    manifest = {
        "name": name,
        "layers": [{"name": "l", "source": {"file": "x.npy"}, "transform": "tanh"}],
        "tokens": {"source": {"file": "tok.npy"}},
        "vocab": {"texts": VOCAB},
        "sequences": {"starts": STARTS, "names": SEQ_NAMES},
        "tracks": [
            {"name": "pos", "kind": "discrete", "source": {"file": "pos.npy"}, "labels": ["N", "V"]}
        ],
    }
    files = {
        "x.npy": npy_bytes(states(T, D, seed=seed)),
        "tok.npy": npy_bytes(_tokens(seed)),
        "pos.npy": npy_bytes(pos),
    }
    job = ingest_ok(client, manifest, files)
    return {"id": job["result"]["dataset"]["id"], "pos": pos, "tokens": _tokens(seed)}


def post_tracks(
    client: httpx.Client,
    target: str,
    manifest: dict[str, Any] | str,
    files: dict[str, bytes],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return client.post(
        f"/v1/datasets/{target}/tracks",
        data={"manifest": text},
        files=[("files", (n, data)) for n, data in files.items()],
        headers=headers,
    )


def tracks_ok(
    client: httpx.Client, target: str, manifest: dict[str, Any], files: dict[str, bytes]
) -> dict[str, Any]:
    r = post_tracks(client, target, manifest, files)
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith("/v1/jobs/ingest-")
    job = wait_job(client, r.headers["location"])
    assert job["status"] == "succeeded", job
    return job


def problem_of(client: httpx.Client, r: httpx.Response) -> dict[str, Any]:
    """The problem of a request refused at once, or of the job it started (which failed)."""
    if r.status_code != 202:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        assert 400 <= r.status_code < 500, r.text
        return dict(r.json())
    job = wait_job(client, r.headers["location"])
    assert job["status"] == "failed", job
    assert 400 <= job["error"]["status"] < 500, job
    return dict(job["error"])


def scalar_files(name: str, values: npt.ArrayLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    spec = {"tracks": [{"name": name, "kind": "scalar", "source": {"file": f"{name}.npy"}}]}
    return spec, {f"{name}.npy": npy_bytes(np.asarray(values, dtype=np.float32))}


def test_add_discrete_and_topk_tracks_through_the_api(
    client: httpx.Client, match: httpx.Client, ingest_stack: IngestStack
) -> None:
    base = publish_base(client, "tr-add")
    v1 = base["id"]
    # the match service has opened (and cached) the first version
    assert match.get("/v1/datasets/tr-add/info").json()["id"] == v1
    rng = np.random.default_rng(9)
    ner = rng.integers(0, 3, T)
    ids = rng.integers(0, len(VOCAB), (T, 3))
    scores = rng.random((T, 3)).astype(np.float32)
    manifest = {
        "tracks": [
            {"name": "ner", "kind": "discrete", "source": {"file": "ner.npy"},
             "labels": ["O", "PER", "LOC"], "description": "named entities"},
            {"name": "next", "kind": "topk", "source": {"file": "t.npz", "key": "ids"},
             "scores": {"file": "t.npz", "key": "scores"}},
        ],
        "provenance": {"tagger": "v3"},
    }  # fmt: skip
    buf = {"ner.npy": npy_bytes(ner)}
    npz = io.BytesIO()
    np.savez(npz, ids=ids, scores=scores)
    buf["t.npz"] = npz.getvalue()
    job = tracks_ok(client, "tr-add", manifest, buf)
    result = job["result"]["dataset"]
    assert result["version"] == 2
    assert result["parent_id"] == v1
    assert result["tracks_added"] == ["ner", "next"]
    assert job["links"]["dataset"] == f"/v1/datasets/{result['id']}"
    v2 = result["id"]

    # the catalog: the name shows the new version
    got = client.get("/v1/datasets/tr-add").json()
    assert (got["id"], got["version"], got["parent_id"], got["origin_id"]) == (v2, 2, v1, v1)
    assert [t["name"] for t in got["tracks"]] == ["pos", "ner", "next"]
    assert got["provenance"]["parent_id"] == v1
    assert got["provenance"]["tagger"] == "v3"
    assert got["provenance"]["job_id"] == job["id"]
    listed = [d for d in client.get("/v1/datasets").json()["datasets"] if d["name"] == "tr-add"]
    assert [d["id"] for d in listed] == [v2]

    # read back identical through the match API (by name: it picks up the new version)
    r = match.get("/v1/datasets/tr-add/tracks/ner", params={"start": 0, "end": T})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["O", "PER", "LOC"]
    assert r.json()["label"] == ner.tolist()
    r = match.get("/v1/datasets/tr-add/tracks/next", params={"start": 0, "end": T})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["ids"]), ids)
    np.testing.assert_array_equal(np.asarray(r.json()["scores"], dtype=np.float32), scores)
    assert r.json()["texts"][0] == [VOCAB[i] for i in ids[0]]
    info = match.get("/v1/datasets/tr-add/info").json()
    assert (info["id"], info["version"], info["parent_id"]) == (v2, 2, v1)
    r = match.get("/v1/datasets/tr-add/tracks/pos", params={"start": 0, "end": T})
    assert r.json()["label"] == base["pos"].tolist()

    # the old version is still there, by id, without the new tracks
    old = match.get(f"/v1/datasets/{v1}/info")
    assert old.status_code == 200
    assert [t["name"] for t in old.json()["tracks"]] == ["pos"]
    r = match.get(f"/v1/datasets/{v1}/tracks/ner", params={"start": 0, "end": 5})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    same = [
        match.get(f"/v1/datasets/{d}/layers/l/states", params={"start": 0, "end": 50}).json()
        for d in (v1, v2)
    ]
    assert same[0]["values"] == same[1]["values"]
    # no byte copied: the big files are hard links of the old version's
    root = ingest_stack.data_root / "datasets"
    for rel in ("layers/l/values.bin", "layers/l/planes.bin", "index.duckdb", "tokens.parquet"):
        assert (root / v1 / rel).stat().st_ino == (root / v2 / rel).stat().st_ino, rel
    assert not os.listdir(ingest_stack.data_root / "staging")


def test_server_path_bed_and_conll_tracks(
    client: httpx.Client, match: httpx.Client, ingest_stack: IngestStack
) -> None:
    base = publish_base(client, "tr-text", seed=2)
    words = [VOCAB[i] for i in base["tokens"]]
    chunks = ["B-NP" if i % 3 == 0 else "I-NP" for i in range(T)]
    conll_lines = []
    for t, (w, c) in enumerate(zip(words, chunks, strict=True)):
        if t in STARTS[1:]:
            conll_lines.append("")
        conll_lines.append(f"{w}\tX\t{c}")
    bed = "c1\t10\t20\tgeneA\nc3\t0\t5\n"
    src = ingest_stack.allowed_root / "tr-text"
    src.mkdir()
    (src / "ann.conll").write_text("\n".join(conll_lines) + "\n")
    (src / "genes.bed").write_text(bed)
    body = {
        "manifest": {
            "conll": {"file": "ann.conll", "columns": {"chunk": 2}},
            "bed": [{"name": "genes", "file": "genes.bed", "background": "-"}],
        },
        "path": str(src),
    }
    r = client.post("/v1/datasets/tr-text/tracks", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.headers["location"])
    assert job["status"] == "succeeded", job
    got = match.get("/v1/datasets/tr-text/tracks/chunk", params={"start": 0, "end": T}).json()
    assert [got["labels"][i] for i in got["label"]] == chunks
    genes = match.get("/v1/datasets/tr-text/tracks/genes", params={"start": 0, "end": T}).json()
    labels = [genes["labels"][i] for i in genes["label"]]
    want = ["-"] * T
    want[10:20] = ["geneA"] * 10
    want[1000:1005] = ["genes"] * 5
    assert labels == want

    # a CoNLL file whose words are not the dataset's tokens is refused (422, nothing changes)
    wrong = list(conll_lines)
    wrong[7] = "zebra\tX\tB-NP"
    (src / "wrong.conll").write_text("\n".join(wrong) + "\n")
    body = {"manifest": {"conll": {"file": "wrong.conll", "columns": {"c2": 2}}}, "path": str(src)}
    p = problem_of(client, client.post("/v1/datasets/tr-text/tracks", json=body))
    assert p["status"] == 422
    assert "'zebra'" in p["detail"]
    assert "step 7" in p["detail"]
    assert client.get("/v1/datasets/tr-text").json()["version"] == 2


def test_a_reader_of_the_old_version_keeps_reading_during_the_switch(
    client: httpx.Client, match: httpx.Client, ingest_stack: IngestStack
) -> None:
    base = publish_base(client, "tr-read", seed=3)
    old = open_published(ingest_stack.data_root, "tr-read")  # holds the first version
    want = old.window("l", 0, T)
    stop = threading.Event()
    failures: list[str] = []
    seen_versions: set[int] = set()

    def read_old() -> None:
        while not stop.is_set():
            try:
                np.testing.assert_array_equal(old.window("l", 0, T), want)
                np.testing.assert_array_equal(old.track("pos", 0, T)["label"], base["pos"])
                assert old.cell_stats("l")["cell"].shape == (D,)
            except Exception as e:
                failures.append(f"old reader: {e!r}")
                return

    def read_by_name() -> None:
        with httpx.Client(base_url=str(match.base_url), timeout=30) as c:
            while not stop.is_set():
                r = c.get("/v1/datasets/tr-read/info", params={"cell_stats": "false"})
                if r.status_code != 200:
                    failures.append(f"info by name: {r.status_code} {r.text}")
                    return
                tracks = [t["name"] for t in r.json()["tracks"]]
                if tracks not in (["pos"], ["pos", "extra"]):
                    failures.append(f"a half version: {tracks}")
                    return
                r = c.get("/v1/datasets/tr-read/tracks/pos", params={"start": 0, "end": 10})
                if r.status_code != 200:
                    failures.append(f"track by name: {r.status_code} {r.text}")
                    return
                seen_versions.add(len(tracks))

    threads = [threading.Thread(target=read_old), threading.Thread(target=read_by_name)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        spec, files = scalar_files("extra", np.arange(T))
        tracks_ok(client, "tr-read", spec, files)
        deadline = time.monotonic() + 20
        while 2 not in seen_versions and not failures and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures
    assert seen_versions == {1, 2}
    assert old.manifest.version == 1
    np.testing.assert_array_equal(old.window("l", 0, T), want)
    new = open_published(ingest_stack.data_root, "tr-read")
    assert (new.manifest.version, new.manifest.parent_id) == (2, base["id"])
    np.testing.assert_array_equal(new.track("extra", 0, T)["value"], np.arange(T))


@pytest.mark.parametrize(
    ("case", "status", "detail"),
    [
        ("wrong length", 422, "1499 steps but the layers have T=1500"),
        ("duplicate name", 409, "already has a track named 'pos'"),
        ("unknown dataset", 404, "no dataset with name or id 'tr-nope'"),
        ("label out of range", 422, "is not in the dictionary"),
        ("topk id outside the vocabulary", 422, "predictions: id"),
        ("NaN scalar", 422, "non-finite value"),
        ("duplicate in the manifest", 422, "track names must be unique"),
        ("superseded version id", 409, "superseded"),
        ("remove an unknown track", 404, "has no track 'nope'"),
        ("file not sent", 422, "not in the upload"),
    ],
)
def test_bad_track_input_is_a_problem_and_changes_nothing(
    client: httpx.Client, ingest_stack: IngestStack, case: str, status: int, detail: str
) -> None:
    name = "tr-bad"
    if client.get(f"/v1/datasets/{name}").status_code == 404:
        publish_base(client, name, seed=4)
        spec, files = scalar_files("s1", np.zeros(T))
        tracks_ok(client, name, spec, files)  # version 2: version 1 is superseded
    before = client.get(f"/v1/datasets/{name}").json()
    datasets_before = sorted(os.listdir(ingest_stack.data_root / "datasets"))
    target = name
    files: dict[str, bytes] = {}
    spec: dict[str, Any]
    if case == "wrong length":
        spec, files = scalar_files("s", np.zeros(T - 1))
    elif case == "duplicate name":
        spec, files = scalar_files("pos", np.zeros(T))
    elif case == "unknown dataset":
        spec, files = scalar_files("s", np.zeros(T))
        target = "tr-nope"
    elif case == "label out of range":
        spec = {"tracks": [{"name": "d", "kind": "discrete", "source": {"file": "d.npy"},
                            "labels": ["a", "b"]}]}  # fmt: skip
        labels = np.zeros(T, np.int64)
        labels[77] = 2
        files = {"d.npy": npy_bytes(labels)}
    elif case == "topk id outside the vocabulary":
        ids = np.zeros((T, 2), np.int64)
        ids[5, 1] = len(VOCAB)
        spec = {"tracks": [{"name": "k", "kind": "topk", "source": {"file": "i.npy"},
                            "scores": {"file": "s.npy"}}]}  # fmt: skip
        files = {"i.npy": npy_bytes(ids), "s.npy": npy_bytes(np.zeros((T, 2), np.float32))}
    elif case == "NaN scalar":
        v = np.zeros(T, np.float32)
        v[3] = np.nan
        spec, files = scalar_files("s", v)
    elif case == "duplicate in the manifest":
        spec, files = scalar_files("s", np.zeros(T))
        spec["tracks"] = spec["tracks"] * 2
    elif case == "superseded version id":
        spec, files = scalar_files("s", np.zeros(T))
        target = str(before["parent_id"])
    elif case == "remove an unknown track":
        r = client.delete(f"/v1/datasets/{name}/tracks/nope")
        p = problem_of(client, r)
        assert (p["status"], detail in p["detail"]) == (status, True), p
        spec = {}
    else:  # file not sent (another one is)
        spec, _files = scalar_files("s", np.zeros(T))
        files = {"other.npy": npy_bytes(np.zeros(T))}
    if spec:
        p = problem_of(client, post_tracks(client, target, spec, files))
        assert p["status"] == status, p
        assert detail in p["detail"], p
    after = client.get(f"/v1/datasets/{name}").json()
    assert after == before
    assert sorted(os.listdir(ingest_stack.data_root / "datasets")) == datasets_before
    assert not os.listdir(ingest_stack.data_root / "staging")


def test_remove_a_track_and_idempotent_retries(
    client: httpx.Client, match: httpx.Client, ingest_stack: IngestStack
) -> None:
    publish_base(client, "tr-idem", seed=5)
    key = {"Idempotency-Key": "tr-" + os.urandom(6).hex()}
    spec, files = scalar_files("s", np.ones(T))
    r1 = post_tracks(client, "tr-idem", spec, files, key)
    r2 = post_tracks(client, "tr-idem", spec, files, key)  # e.g. the response was lost
    assert r1.status_code == r2.status_code == 202, r2.text
    assert r1.headers["location"] == r2.headers["location"]
    job = wait_job(client, r1.headers["location"])
    assert job["status"] == "succeeded"
    r3 = post_tracks(client, "tr-idem", spec, files, key)  # after it finished: the same job
    assert r3.json()["id"] == job["id"]
    other, other_files = scalar_files("s2", np.ones(T))
    r4 = post_tracks(client, "tr-idem", other, other_files, key)  # another body, same key
    assert r4.status_code == 422
    assert "Idempotency-Key" in r4.json()["detail"]
    assert client.get("/v1/datasets/tr-idem").json()["version"] == 2

    dkey = {"Idempotency-Key": "tr-del-" + os.urandom(6).hex()}
    d1 = client.delete("/v1/datasets/tr-idem/tracks/pos", headers=dkey)
    d2 = client.delete("/v1/datasets/tr-idem/tracks/pos", headers=dkey)
    assert d1.status_code == d2.status_code == 202
    assert d1.headers["location"] == d2.headers["location"]
    job = wait_job(client, d1.headers["location"])
    assert job["status"] == "succeeded", job
    assert job["result"]["dataset"]["tracks_removed"] == ["pos"]
    got = client.get("/v1/datasets/tr-idem").json()
    assert (got["version"], [t["name"] for t in got["tracks"]]) == (3, ["s"])
    r = match.get("/v1/datasets/tr-idem/tracks/pos", params={"start": 0, "end": 5})
    assert r.status_code == 404
    uploads = ingest_stack.data_root / "uploads"
    assert not uploads.exists() or not [p for p in os.listdir(uploads) if not p.startswith(".")]


def test_concurrent_additions_do_not_lose_one_another(
    client: httpx.Client, ingest_stack: IngestStack
) -> None:
    base = publish_base(client, "tr-conc", seed=6)
    n = 4
    locations: list[str] = []

    def post(i: int) -> None:
        spec, files = scalar_files(f"c{i}", np.full(T, i))
        with httpx.Client(base_url=ingest_stack.url, timeout=60) as c:
            r = post_tracks(c, "tr-conc", spec, files)
            assert r.status_code == 202, r.text
            locations.append(r.headers["location"])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(locations) == n
    jobs = [wait_job(client, loc) for loc in locations]
    assert [j["status"] for j in jobs] == ["succeeded"] * n, jobs
    got = client.get("/v1/datasets/tr-conc").json()
    assert got["version"] == n + 1
    assert sorted(t["name"] for t in got["tracks"]) == sorted(["pos"] + [f"c{i}" for i in range(n)])
    assert sorted(j["result"]["dataset"]["version"] for j in jobs) == list(range(2, n + 2))
    ds = open_published(ingest_stack.data_root, "tr-conc")
    for i in range(n):
        np.testing.assert_array_equal(ds.track(f"c{i}", 0, T)["value"], float(i))
    # the versions form one chain back to the first
    chain = [got["id"]]
    while (parent := client.get(f"/v1/datasets/{chain[-1]}").json()["parent_id"]) is not None:
        chain.append(parent)
    assert chain[-1] == base["id"]
    assert len(chain) == n + 1


def test_the_reconciler_collects_superseded_versions_after_the_grace_period(
    ingest_stack: IngestStack, tmp_path: Path
) -> None:
    settings = IngestSettings(
        data_root=tmp_path / "data",
        redis_url=ingest_stack.redis.url,
        upload_dir=tmp_path / "uploads",
        superseded_grace_seconds=3600,
    )
    store = JobStore.from_url(settings.redis_url, prefix="hiddenscope:ingest-gc-test")
    from hiddenscope_core.build import DatasetWriter

    w = DatasetWriter.create(settings.data_root, "gc", n_steps=50)
    w.add_layer("l", n_cells=2).write(states(50, 2))
    v1 = w.publish().id
    v2 = core_add_tracks(
        settings.data_root, "gc", [(TrackInfo(name="s", kind="scalar"), {"values": [0] * 50})]
    )
    reader = open_published(settings.data_root, "gc")
    assert reader.id == v2.id
    report = reconcile(settings, store, lambda _j: None, lock=False)
    assert report.removed_versions == []  # superseded a moment ago: kept for its readers
    assert (settings.data_root / "datasets" / v1).is_dir()
    marker = settings.data_root / "versions" / "superseded" / v1
    old = time.time() - 7200
    os.utime(marker, (old, old))
    assert reconcile(
        settings, store, lambda _j: None, lock=False, dry_run=True
    ).removed_versions == [v1]
    report = reconcile(settings, store, lambda _j: None, lock=False)
    assert report.removed_versions == [v1]
    assert report.as_dict()["removed_versions"] == [v1]
    assert sorted(os.listdir(settings.data_root / "datasets")) == [v2.id]
    np.testing.assert_array_equal(reader.window("l", 0, 50), states(50, 2))
    # the current version is never collected, however old
    assert reconcile(settings, store, lambda _j: None, lock=False).removed_versions == []


def test_a_redelivered_track_job_publishes_once(ingest_stack: IngestStack, tmp_path: Path) -> None:
    """At-least-once delivery: an attempt that published but died before finishing the job is
    recognised by the next delivery (which may come as ``ingest.convert`` from the reconciler:
    ``run_conversion`` dispatches on the payload)."""
    settings = IngestSettings(
        data_root=tmp_path / "data",
        redis_url=ingest_stack.redis.url,
        upload_dir=tmp_path / "uploads",
        lease_seconds=5,
    )
    store = JobStore.from_url(settings.redis_url, prefix="hiddenscope:ingest-redeliver-test")
    from hiddenscope_core.build import DatasetWriter
    from hiddenscope_ingest.manifest import TracksManifest
    from hiddenscope_ingest.tasknames import JOB_KIND
    from hiddenscope_ingest.track_attempt import attempt_tracks
    from hiddenscope_ingest.worker import run_conversion
    from hiddenscope_service.workflow import JobLease

    w = DatasetWriter.create(settings.data_root, "rd", n_steps=60)
    w.add_layer("l", n_cells=2).write(states(60, 2))
    v1 = w.publish().id
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.npy").write_bytes(npy_bytes(np.arange(60, dtype=np.float32)))
    manifest = TracksManifest.model_validate(
        {"tracks": [{"name": "s", "kind": "scalar", "source": {"file": "s.npy"}}]}
    )
    payload = {"op": "tracks", "target": "rd", "manifest": manifest.model_dump(mode="json"),
               "source_dir": str(src), "owned": False}  # fmt: skip
    job, _ = store.create(JOB_KIND, payload)
    lease = JobLease.claim(store, job.id, "dead-worker", 5)
    assert lease.held
    work = settings.layout.work(job.id)
    first = attempt_tracks(store.get(job.id), lease, settings, src, work)
    assert first.status == "succeeded"
    v2 = first.result["dataset"]["id"] if first.result else None
    # the worker died here, before finishing the job; the lease runs out, the job is delivered
    time.sleep(5.5)
    assert run_conversion(job.id, "worker-2", settings, store) == "succeeded"
    done = store.get(job.id)
    assert done.result is not None
    assert done.result["dataset"]["id"] == v2
    m = open_published(settings.data_root, "rd").manifest
    assert (m.id, m.version, m.parent_id) == (v2, 2, v1)
    assert len(os.listdir(settings.data_root / "datasets")) == 2
    assert not os.listdir(settings.data_root / "staging")
