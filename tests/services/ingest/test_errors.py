"""Bad inputs: each gives the right 4xx and an RFC 9457 problem body (never a 500), nothing is
published, and no staging or upload directory is left behind."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest

from tests.services.helpers import wait_job
from tests.services.ingest.helpers import (
    MAX_UPLOAD_BYTES,
    IngestStack,
    ingest_fails,
    ingest_ok,
    lstmvis_project,
    npy_bytes,
    post_upload,
    states,
    tar_gz_bytes,
)


def one_layer(name: str, file: str = "x.npy", **extra: Any) -> dict[str, Any]:
    return {"name": name, "layers": [{"name": "l", "source": {"file": file}}], **extra}


@pytest.fixture(autouse=True)
def _nothing_left_behind(ingest_stack: IngestStack) -> Iterator[None]:
    before = set(_names(ingest_stack))
    yield
    staging = ingest_stack.data_root / "staging"
    assert not staging.exists() or os.listdir(staging) == [], os.listdir(staging)
    uploads = ingest_stack.data_root / "uploads"
    assert not uploads.exists() or os.listdir(uploads) == [], os.listdir(uploads)
    assert set(_names(ingest_stack)) - before <= {"taken"}


def _names(stack: IngestStack) -> list[str]:
    names = stack.data_root / "names"
    return os.listdir(names) if names.exists() else []


def check_problem(problem: dict[str, Any], status: int, *words: str) -> None:
    assert problem["status"] == status, problem
    assert problem["title"]
    assert problem["type"] == "about:blank"
    for word in words:
        assert word.lower() in problem["detail"].lower(), problem


def test_unknown_format_is_415(client: httpx.Client) -> None:
    r = post_upload(client, one_layer("bad-pt", "x.pt"), {"x.pt": b"\x80\x02}q"})
    assert r.status_code == 415
    assert r.headers["content-type"] == "application/problem+json"
    check_problem(r.json(), 415, "x.pt")
    r = client.post("/v1/datasets", content=b"x", headers={"content-type": "text/plain"})
    check_problem(r.json(), 415, "multipart")


def test_too_large_is_413(client: httpx.Client) -> None:
    big = np.zeros((MAX_UPLOAD_BYTES // 16 + 10, 4), np.float32)
    r = post_upload(client, one_layer("too-big"), {"x.npy": npy_bytes(big)})
    assert r.status_code == 413
    check_problem(r.json(), 413, "exceeds")


def test_invalid_names_and_manifests_are_422(client: httpx.Client) -> None:
    x = {"x.npy": npy_bytes(states(10, 2))}
    check_problem(ingest_fails(client, one_layer("Bad Name"), x), 422, "name")
    check_problem(
        ingest_fails(
            client, {"name": "ok", "layers": [{"name": "UP", "source": {"file": "x.npy"}}]}, x
        ),
        422,
        "layers",
    )
    check_problem(ingest_fails(client, "{not: [valid", x), 422, "manifest")
    check_problem(ingest_fails(client, one_layer("missing-file", "y.npy"), x), 422, "y.npy")
    check_problem(ingest_fails(client, one_layer("escape", "../x.npy"), x), 422, "..")
    r = client.post("/v1/datasets", files=[("files", ("x.npy", x["x.npy"]))])
    check_problem(r.json(), 422, "manifest")


def test_shape_and_length_mismatches_are_422(client: httpx.Client) -> None:
    manifest = {
        "name": "mismatch",
        "layers": [
            {"name": "a", "source": {"file": "a.npy"}},
            {"name": "b", "source": {"file": "b.npy"}},
        ],
    }
    files = {"a.npy": npy_bytes(states(10, 2)), "b.npy": npy_bytes(states(11, 2))}
    check_problem(ingest_fails(client, manifest, files), 422, "steps")
    manifest = one_layer("tok-len", tokens={"source": {"file": "t.npy"}}, vocab={"texts": ["a"]})
    files = {"x.npy": npy_bytes(states(10, 2)), "t.npy": npy_bytes(np.zeros(9, np.int64))}
    check_problem(ingest_fails(client, manifest, files), 422, "9 tokens")
    manifest = one_layer("one-d")
    check_problem(ingest_fails(client, manifest, {"x.npy": npy_bytes(np.zeros(5))}), 422, "2-d")
    manifest = one_layer("bad-seq", sequences={"starts": [0, 5, 3]})
    check_problem(
        ingest_fails(client, manifest, {"x.npy": npy_bytes(states(10, 2))}), 422, "sequence"
    )
    truncated = npy_bytes(states(10, 2))[:-8]
    check_problem(ingest_fails(client, one_layer("trunc"), {"x.npy": truncated}), 422, "bytes")


def test_nan_policy(client: httpx.Client, ingest_stack: IngestStack) -> None:
    x = states(300, 3)
    x[123, 1] = np.nan
    problem = ingest_fails(client, one_layer("has-nan"), {"x.npy": npy_bytes(x)})
    check_problem(problem, 422, "step 123", "nan_policy")
    ingest_ok(client, one_layer("nan-ok", nan_policy="allow"), {"x.npy": npy_bytes(x)})
    client.delete("/v1/datasets/nan-ok")


def test_token_ids_missing_from_vocab(client: httpx.Client) -> None:
    manifest = one_layer("oov", tokens={"source": {"file": "t.npy"}}, vocab={"texts": ["a", "b"]})
    tok = np.zeros(10, np.int64)
    tok[7] = 2
    files = {"x.npy": npy_bytes(states(10, 2)), "t.npy": npy_bytes(tok)}
    check_problem(ingest_fails(client, manifest, files), 422, "step 7")
    # an LSTMVis project whose word ids use an id the .dict does not define (ids start at 1)
    proj, _ = lstmvis_project(T=50)
    import io as _io

    with h5py.File(_io.BytesIO(proj["train.hdf5"]), "r") as f:
        ids = f["word_ids"][:]
    ids[10] = 0
    buf = _io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("word_ids", data=ids)
    proj["train.hdf5"] = buf.getvalue()
    check_problem(ingest_fails(client, {"name": "lv-oov", "lstmvis": {}}, proj), 422, "step 10")
    # a text token that is not in a given vocabulary
    manifest = one_layer(
        "oov-text", tokens={"source": {"file": "t.txt"}}, vocab={"texts": ["a", "b"]}
    )
    files = {"x.npy": npy_bytes(states(3, 2)), "t.txt": b"a\nzzz\nb\n"}
    check_problem(ingest_fails(client, manifest, files), 422, "zzz")


def test_pickled_content_is_422(client: httpx.Client) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    check_problem(
        ingest_fails(client, one_layer("pickle"), {"x.npy": buf.getvalue()}), 422, "pickle"
    )
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("x.npy", buf.getvalue())
    manifest = one_layer("pickle-npz", "x.npz")
    check_problem(ingest_fails(client, manifest, {"x.npz": zbuf.getvalue()}), 422, "pickle")


def test_name_taken_is_409(client: httpx.Client) -> None:
    files = {"x.npy": npy_bytes(states(10, 2))}
    ingest_ok(client, one_layer("taken"), files)
    r = post_upload(client, one_layer("taken"), files)
    assert r.status_code == 409
    check_problem(r.json(), 409, "taken")


def test_path_outside_roots_is_403(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(npy_bytes(states(5, 2)))
    for path in (str(tmp_path), "/etc", "/nonexistent/dir"):
        r = client.post("/v1/datasets", json={"manifest": one_layer("p"), "path": path})
        assert r.status_code == 403, r.text
        check_problem(r.json(), 403, "allowed")


def test_symlink_out_of_allowed_root_is_refused(
    client: httpx.Client, ingest_stack: IngestStack, tmp_path: Path
) -> None:
    (tmp_path / "x.npy").write_bytes(npy_bytes(states(5, 2)))
    d = ingest_stack.allowed_root / "sneaky"
    d.mkdir()
    (d / "x.npy").symlink_to(tmp_path / "x.npy")
    r = client.post("/v1/datasets", json={"manifest": one_layer("sneaky"), "path": str(d)})
    check_problem(r.json(), 422, "outside")


def test_checksum_mismatch_is_422(client: httpx.Client) -> None:
    data = npy_bytes(states(10, 2))
    manifest = one_layer("sum", checksums={"x.npy": "0" * 64})
    check_problem(ingest_fails(client, manifest, {"x.npy": data}), 422, "sha256")


def test_hdf5_links_external_storage_and_virtual_datasets(
    client: httpx.Client, tmp_path: Path
) -> None:
    x = states(20, 3)
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("s", data=x)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(x.tobytes())
    path = tmp_path / "evil.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("real/s", data=x)
        f["ext"] = h5py.ExternalLink(str(target), "/s")
        f["soft"] = h5py.SoftLink("/real")
        f.create_dataset(
            "extstore", shape=x.shape, dtype=x.dtype, external=[(str(raw), 0, x.nbytes)]
        )
        layout = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
        layout[:] = h5py.VirtualSource(str(target), "s", shape=x.shape)
        f.create_virtual_dataset("vds", layout)
    data = path.read_bytes()
    for key, word in (
        ("ext", "external link"),
        ("soft/s", "soft link"),  # a soft link on an inner path component
        ("extstore", "external raw storage"),
        ("vds", "virtual"),
    ):
        manifest = {
            "name": "evil",
            "layers": [{"name": "l", "source": {"file": "e.h5", "key": key}}],
        }
        check_problem(ingest_fails(client, manifest, {"e.h5": data}), 422, word)


def test_decompression_bombs(client: httpx.Client) -> None:
    bomb = io.BytesIO()
    np.savez_compressed(bomb, x=np.zeros((4096, 1024), np.float32))  # 16 MiB → a few KiB
    check_problem(ingest_fails(client, one_layer("bomb", "b.npz"), {"b.npz": bomb.getvalue()}),
                  413, "bomb")  # fmt: skip
    zbomb = io.BytesIO()
    with zipfile.ZipFile(zbomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", b"\0" * (16 << 20))
    manifest = one_layer("zbomb", archive="a.zip")
    check_problem(ingest_fails(client, manifest, {"a.zip": zbomb.getvalue()}), 413, "bomb")


def test_archive_member_escapes(client: httpx.Client) -> None:
    x = npy_bytes(states(5, 2))
    for name in ("../x.npy", "/abs/x.npy"):
        archive = tar_gz_bytes({name: x})
        problem = ingest_fails(
            client, one_layer("escape", archive="a.tar.gz"), {"a.tar.gz": archive}
        )
        check_problem(problem, 422, "escapes")
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("x.npy")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    problem = ingest_fails(client, one_layer("link", archive="a.tgz"), {"a.tgz": buf.getvalue()})
    check_problem(problem, 422, "link")


def test_idempotency_key_with_another_body_is_422(client: httpx.Client) -> None:
    key = {"Idempotency-Key": "k-" + os.urandom(8).hex()}
    r1 = post_upload(client, one_layer("idem-a"), {"x.npy": npy_bytes(states(5, 2))}, key)
    assert r1.status_code == 202
    assert wait_job(client, r1.headers["location"])["status"] == "succeeded"
    r2 = post_upload(client, one_layer("idem-a"), {"x.npy": npy_bytes(states(6, 2))}, key)
    assert r2.status_code == 422
    check_problem(r2.json(), 422, "idempotency")
    client.delete("/v1/datasets/idem-a")


def test_unknown_jobs_and_datasets_are_404(client: httpx.Client) -> None:
    for url in ("/v1/jobs/nope", "/v1/datasets/nope", "/v1/datasets/.."):
        r = client.get(url)
        assert r.status_code == 404, url
        assert r.headers["content-type"] == "application/problem+json"
    r = client.post("/v1/jobs/nope/cancel")
    assert r.status_code == 404
    r = client.get("/v1/jobs/x", params={"wait": -1})
    check_problem(r.json(), 422, "wait")
    r = client.get("/v1/jobs/match-AAAAAAAAAAAAAAAAAAAAAA")
    check_problem(r.json(), 404, "match service")
    json.dumps(r.json())
