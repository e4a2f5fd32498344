"""New versions of a published dataset (tracks added or removed): hard-linked, atomic, never
losing a concurrent change, old versions readable until collected."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.errors import Conflict, InvalidData, NotFound
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.reader import Catalog, open_dataset
from hiddenscope_core.versions import (
    VersionWriter,
    add_tracks,
    collect_superseded,
    current_id,
)

T, D = 700, 6
VOCAB = ["a", "b", "c", "d"]


def _publish(root: Path, name: str = "ds", seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    w = DatasetWriter.create(root, name, n_steps=T, provenance={"model": "lstm", "job_id": "j0"})
    w.set_sequences([0, 300, 650], names=["x", "y", "z"])
    w.set_vocab(VOCAB)
    w.write_tokens(rng.integers(0, len(VOCAB), T))
    w.add_layer("l1", n_cells=D, transform="tanh").write(rng.normal(size=(T, D)).astype(np.float32))
    w.add_track(TrackInfo(name="pos", kind="discrete", labels=["N", "V"]), rng.integers(0, 2, T))
    return w.publish().id


def _files(path: Path) -> dict[str, os.stat_result]:
    return {
        p.relative_to(path).as_posix(): p.stat()
        for p in path.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }


def test_add_tracks_publishes_a_linked_new_version(tmp_path: Path) -> None:
    old_id = _publish(tmp_path)
    rng = np.random.default_rng(5)
    labels = rng.integers(-1, 3, T)
    ids = rng.integers(0, len(VOCAB), (T, 3))
    scores = rng.random((T, 3)).astype(np.float32)
    m = add_tracks(
        tmp_path,
        "ds",
        [
            (
                TrackInfo(name="ner", kind="discrete", labels=["O", "PER", "LOC"]),
                {"values": labels},
            ),
            (TrackInfo(name="next", kind="topk", k=3), {"ids": ids, "scores": scores}),
        ],
        provenance={"job_id": "j1"},
    )
    assert m.id != old_id
    assert (m.version, m.parent_id, m.origin_id) == (2, old_id, old_id)
    assert [t.name for t in m.tracks] == ["pos", "ner", "next"]
    assert m.provenance == {
        "model": "lstm",
        "job_id": "j1",
        "parent_id": old_id,
        "tracks_added": ["ner", "next"],
        "tracks_removed": [],
    }
    assert current_id(tmp_path, "ds") == m.id
    ds = Catalog(tmp_path).get("ds")
    assert ds.id == m.id
    np.testing.assert_array_equal(ds.track("ner", 0, T)["label"], labels)
    got = ds.track("next", 0, T)
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["scores"], scores)
    # every file of the old version is shared (same inode), nothing was copied
    old_dir, new_dir = tmp_path / "datasets" / old_id, tmp_path / "datasets" / m.id
    old_files, new_files = _files(old_dir), _files(new_dir)
    assert set(new_files) == set(old_files) | {"tracks/ner.parquet", "tracks/next.parquet"}
    for rel, st in old_files.items():
        assert new_files[rel].st_ino == st.st_ino, rel
    assert {"index.duckdb", "layers/l1/values.bin", "tokens.parquet"} <= set(old_files)
    # the new version reads like the old one (the DuckDB view's relative paths resolve)
    old = open_dataset(old_dir)
    np.testing.assert_array_equal(ds.window("l1", 0, T), old.window("l1", 0, T))
    np.testing.assert_array_equal(ds.cell_stats("l1")["mean"], old.cell_stats("l1")["mean"])
    assert ds.on_intervals("l1", 0.3, 2)[0].tolist() == old.on_intervals("l1", 0.3, 2)[0].tolist()
    assert ds.sequence_names() == ["x", "y", "z"]
    assert not (tmp_path / "staging" / m.id).exists()
    assert m.sizes["tracks/ner.parquet"] == (new_dir / "tracks" / "ner.parquet").stat().st_size


def test_remove_and_replace_tracks(tmp_path: Path) -> None:
    v1 = _publish(tmp_path)
    v2 = add_tracks(tmp_path, "ds", [], remove=["pos"])
    assert (v2.version, v2.parent_id, v2.tracks) == (2, v1, [])
    assert "tracks/pos.parquet" not in v2.sizes
    assert not (tmp_path / "datasets" / v2.id / "tracks" / "pos.parquet").exists()
    with pytest.raises(NotFound, match="unknown track 'pos'"):
        Catalog(tmp_path).get("ds").track("pos", 0, 10)
    # the old version still has it
    assert open_dataset(tmp_path / "datasets" / v1).track("pos", 0, 10)["label"].shape == (10,)
    # replace = remove + add in one version
    add_tracks(tmp_path, "ds", [(TrackInfo(name="s", kind="scalar"), {"values": np.zeros(T)})])
    v4 = add_tracks(
        tmp_path, "ds", [(TrackInfo(name="s", kind="scalar"), {"values": np.ones(T)})], remove=["s"]
    )
    assert v4.version == 4
    np.testing.assert_array_equal(Catalog(tmp_path).get("ds").track("s", 0, T)["value"], 1.0)


def test_bad_changes_leave_the_dataset_unchanged(tmp_path: Path) -> None:
    v1 = _publish(tmp_path)
    with pytest.raises(Conflict, match="already has a track named 'pos'"):
        add_tracks(tmp_path, "ds", [(TrackInfo(name="pos", kind="scalar"), {"values": [0] * T})])
    with pytest.raises(InvalidData, match="rows but n_steps"):
        add_tracks(tmp_path, "ds", [(TrackInfo(name="s", kind="scalar"), {"values": [0] * 5})])
    with pytest.raises(InvalidData, match="label indices"):
        add_tracks(
            tmp_path,
            "ds",
            [(TrackInfo(name="d", kind="discrete", labels=["x"]), {"values": [3] * T})],
        )
    with pytest.raises(NotFound, match="no track 'nope'"):
        add_tracks(tmp_path, "ds", [], remove=["nope"])
    with pytest.raises(NotFound, match="no dataset"):
        add_tracks(tmp_path, "missing", [(TrackInfo(name="s", kind="scalar"), {"values": [0]})])
    with pytest.raises(InvalidData, match="nothing to change"):
        add_tracks(tmp_path, "ds", [])
    assert current_id(tmp_path, "ds") == v1
    assert os.listdir(tmp_path / "datasets") == [v1]
    assert not os.listdir(tmp_path / "staging")


def test_a_superseded_id_is_a_conflict_and_an_id_pins_the_version(tmp_path: Path) -> None:
    v1 = _publish(tmp_path)
    w = VersionWriter.create(tmp_path, v1)  # addressed by id: must still be current at publish
    w.add_track(TrackInfo(name="a", kind="scalar"), np.zeros(T))
    v2 = add_tracks(tmp_path, "ds", [(TrackInfo(name="b", kind="scalar"), {"values": np.ones(T)})])
    with pytest.raises(Conflict, match="superseded"):
        w.publish()
    assert not w.staging.exists()
    with pytest.raises(Conflict, match=f"superseded by '{v2.id}'"):
        VersionWriter.create(tmp_path, v1)
    # by its id the current version is fine
    v3 = add_tracks(tmp_path, v2.id, [(TrackInfo(name="c", kind="scalar"), {"values": [1] * T})])
    assert v3.parent_id == v2.id


def test_concurrent_changes_never_lose_one_another(tmp_path: Path) -> None:
    _publish(tmp_path)
    n = 6
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def add(i: int) -> None:
        try:
            w = VersionWriter.create(tmp_path, "ds")  # all from the same version
            w.add_track(TrackInfo(name=f"t{i}", kind="scalar"), np.full(T, i, np.float32))
            barrier.wait()
            w.publish()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ds = Catalog(tmp_path).get("ds")
    assert ds.manifest.version == n + 1
    assert sorted(t.name for t in ds.manifest.tracks) == sorted(
        ["pos"] + [f"t{i}" for i in range(n)]
    )
    for i in range(n):
        np.testing.assert_array_equal(ds.track(f"t{i}", 0, T)["value"], float(i))
    # the chain of parents runs through every version
    seen, m = 0, ds.manifest
    while m.parent_id is not None:
        m = open_dataset(tmp_path / "datasets" / m.parent_id).manifest
        seen += 1
    assert seen == n
    assert m.origin_id is None
    assert ds.manifest.origin_id == m.id  # every version names version 1 as its origin


def test_the_same_track_added_concurrently_is_a_conflict(tmp_path: Path) -> None:
    _publish(tmp_path)
    a = VersionWriter.create(tmp_path, "ds")
    b = VersionWriter.create(tmp_path, "ds")
    a.add_track(TrackInfo(name="x", kind="scalar"), np.zeros(T))
    b.add_track(TrackInfo(name="x", kind="scalar"), np.ones(T))
    ma = a.publish()
    with pytest.raises(Conflict, match="added to 'ds' meanwhile"):
        b.publish()
    assert current_id(tmp_path, "ds") == ma.id
    np.testing.assert_array_equal(Catalog(tmp_path).get("ds").track("x", 0, T)["value"], 0.0)
    assert not os.listdir(tmp_path / "staging")


def test_a_name_published_again_is_another_dataset(tmp_path: Path) -> None:
    _publish(tmp_path)
    w = VersionWriter.create(tmp_path, "ds")
    w.add_track(TrackInfo(name="x", kind="scalar"), np.zeros(T))
    Catalog(tmp_path).delete("ds")
    with pytest.raises(NotFound, match="deleted meanwhile"):
        w.publish()
    _publish(tmp_path, seed=3)
    w = VersionWriter.create(tmp_path, "ds")
    w.add_track(TrackInfo(name="x", kind="scalar"), np.zeros(T))
    Catalog(tmp_path).delete("ds")
    again = _publish(tmp_path, seed=4)
    with pytest.raises(Conflict, match="names another dataset"):
        w.publish()
    assert current_id(tmp_path, "ds") == again


def test_a_reader_of_the_old_version_keeps_reading_through_the_switch(tmp_path: Path) -> None:
    v1 = _publish(tmp_path)
    old = Catalog(tmp_path).get("ds")
    want_window = old.window("l1", 0, T)
    want_tokens = old.tokens(0, T)
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def read() -> None:
        while not stop.is_set():
            try:
                assert old.id == v1
                np.testing.assert_array_equal(old.window("l1", 0, T), want_window)
                np.testing.assert_array_equal(old.tokens(0, T), want_tokens)
                assert old.cell_stats("l1")["cell"].shape == (D,)
                # a reader resolving the name sees one complete version or the other
                cur = Catalog(tmp_path).get("ds")
                assert cur.manifest.version >= 1
                assert cur.track("pos", 0, 5)["label"].shape == (5,)
                reads[0] += 1
            except BaseException as e:
                failures.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(5):
            add_tracks(
                tmp_path, "ds", [(TrackInfo(name=f"s{i}", kind="scalar"), {"values": [i] * T})]
            )
    finally:
        time.sleep(0.05)
        stop.set()
        reader.join()
    assert not failures, failures
    assert reads[0] > 0
    assert "s0" not in {t.name for t in old.manifest.tracks}
    assert Catalog(tmp_path).get("ds").manifest.version == 6


def test_superseded_versions_are_collected_after_the_grace_period(tmp_path: Path) -> None:
    v1 = _publish(tmp_path)
    v2 = add_tracks(tmp_path, "ds", [(TrackInfo(name="a", kind="scalar"), {"values": [0] * T})])
    v3 = add_tracks(tmp_path, "ds", [], remove=["a"])
    other = _publish(tmp_path, name="other")
    marker = tmp_path / "versions" / "superseded"
    assert {p.name for p in marker.iterdir()} == {v1, v2.id}
    now = time.time()
    assert collect_superseded(tmp_path, 3600, now=now) == []
    assert collect_superseded(tmp_path, 3600, now=now + 4000, dry_run=True) == sorted([v1, v2.id])
    assert (tmp_path / "datasets" / v1).exists()
    # a reader holding v1 has its files open; the collection removes only the directory entries
    held = open_dataset(tmp_path / "datasets" / v1)
    values = held.values("l1")
    removed = collect_superseded(tmp_path, 3600, now=now + 4000)
    assert removed == sorted([v1, v2.id])
    assert sorted(os.listdir(tmp_path / "datasets")) == sorted([v3.id, other])
    assert not list(marker.iterdir())
    assert values.shape == (D, T)
    assert np.isfinite(np.asarray(values)).all()
    # the current version is intact: its links kept the shared data alive (files a reader
    # had not opened yet are gone with the collected version: hence the grace period)
    ds = Catalog(tmp_path).get("ds")
    np.testing.assert_array_equal(np.asarray(ds.values("l1")), np.asarray(values))
    assert ds.window("l1", 0, 5).shape == (5, D)


def test_an_orphan_is_collected_by_its_age(tmp_path: Path) -> None:
    _publish(tmp_path)
    orphan = tmp_path / "datasets" / "orphanid0000000x"
    orphan.mkdir()
    (orphan / "manifest.json").write_text("{}")
    assert collect_superseded(tmp_path, 60) == []
    assert collect_superseded(tmp_path, 60, now=time.time() + 120) == ["orphanid0000000x"]
    assert not orphan.exists()
