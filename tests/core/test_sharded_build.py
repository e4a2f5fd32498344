"""A sharded build (layers written and indexed shard by shard, by any process, then published)
gives exactly the dataset that the one-process ``DatasetWriter`` gives for the same input."""

from __future__ import annotations

import multiprocessing as mp
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from hiddenscope_core.build import BuildSizes, DatasetWriter
from hiddenscope_core.errors import InvalidData, NotFound
from hiddenscope_core.match import match
from hiddenscope_core.models import MatchQuery
from hiddenscope_core.reader import Catalog

from tests.core.helpers import make_states

T, D = 9000, 5
STARTS = [0, 1500, 2048, 4095, 6143, 6144, 8999]  # some exactly at or next to shard edges
SHARD = 2048


Units = dict[str, Any]
"""Keyword arguments of ``DatasetWriter.create``: the part and block sizes of a build."""


@pytest.fixture
def small_units() -> Units:
    """Parts of 1024 steps, index blocks of 256 steps and interval chunks of 4096 steps, so
    that a few thousand steps cross every kind of boundary."""
    sizes = BuildSizes(buffer_bytes=1024 * 4, block_values=256 * D, interval_chunk_log2=12)
    return {"part_steps": 1024, "sizes": sizes}


def _states(dtype: str, seed: int) -> np.ndarray:
    x = make_states(T, D, seed=seed)
    x[4095:4097, 1] = 0.95  # a run across a shard edge
    x[SHARD - 1 : SHARD + 1, 2] = np.nan  # NaN on both sides of another
    return x.astype(dtype)


def _layers(dtype: str) -> list[dict[str, object]]:
    return [
        {"name": "grid", "dtype": dtype, "thresholds": [-0.2, 0.0, 0.3, 0.45]},
        {"name": "auto", "dtype": dtype, "transform": "tanh"},  # default grid from the data
    ]


def _one_process(root: Path, x: np.ndarray, dtype: str, units: Units) -> str:
    w = DatasetWriter.create(root, "whole", n_steps=T, **units)
    w.set_sequences(STARTS)
    for spec in _layers(dtype):
        lw = w.add_layer(n_cells=D, **spec)  # type: ignore[arg-type]
        for s in range(0, T, 777):
            lw.write(x[s : s + 777])
    return w.publish().id


def _run_shard(root: Path, dataset_id: str, phase: str, layer: str, shard: int,
               x: np.ndarray) -> None:  # fmt: skip
    w = DatasetWriter.resume(root, dataset_id)
    if phase == "write":
        a, b = w.shard_ranges()[shard]
        w.write_layer_shard(layer, shard, (x[s : min(b, s + 500)] for s in range(a, b, 500)))
    else:
        w.index_layer_shard(layer, shard)


def _sharded(root: Path, x: np.ndarray, dtype: str, units: Units, *, pool: bool = False,
             index: bool = True) -> str:  # fmt: skip
    w = DatasetWriter.create(root, "sharded", n_steps=T, **units)
    w.set_sequences(STARTS)
    for spec in _layers(dtype):
        w.declare_layer(n_cells=D, **spec)  # type: ignore[arg-type]
    ranges = w.save_build(SHARD)
    assert ranges == [(0, 2048), (2048, 4096), (4096, 6144), (6144, 8192), (8192, 9000)]
    names = [str(spec["name"]) for spec in _layers(dtype)]
    phases = ["write", "index"] if index else ["write"]
    for phase in phases:
        jobs = [(phase, n, i) for n in names for i in range(len(ranges))]
        random.Random(7).shuffle(jobs)
        if pool:
            with mp.get_context("spawn").Pool(2) as p:
                p.starmap(_run_shard, [(root, w.id, ph, n, i, x) for ph, n, i in jobs])
        else:
            for ph, n, i in jobs:
                _run_shard(root, w.id, ph, n, i, x)
    # the publishing process is yet another writer, resumed from the staging directory
    return DatasetWriter.resume(root, w.id).publish().id


def _assert_same(root: Path, id_a: str, id_b: str) -> None:
    cat = Catalog(root)
    a, b = cat.get(id_a), cat.get(id_b)
    assert [x.model_dump() for x in a.manifest.layers] == [
        x.model_dump() for x in b.manifest.layers
    ]
    for layer in ("grid", "auto"):
        for f in ("values.bin", "planes.bin", "rows.bin"):
            pa_, pb = a.path / "layers" / layer / f, b.path / "layers" / layer / f
            assert pa_.read_bytes() == pb.read_bytes(), f"{layer}/{f} differs"
        assert np.array_equal(a.window(layer, 0, T), b.window(layer, 0, T), equal_nan=True)
        parts = sorted((b.path / "layers" / layer / "states").iterdir())
        assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(9)]
        ia = pq.read_table(a.path / "layers" / layer / "intervals")
        ib = pq.read_table(b.path / "layers" / layer / "intervals")
        assert ia.num_rows > 100
        assert ia.equals(ib)
        for key, va in a.cell_stats(layer).items():
            assert np.array_equal(va, b.cell_stats(layer)[key], equal_nan=True), key
        assert np.array_equal(a.cell_on_fraction(layer), b.cell_on_fraction(layer))
        theta = a.layer(layer).thresholds[2]
        q = MatchQuery(layer=layer, cells=[0, 1, 3], threshold=theta, top_k=20, stats=True)
        assert match(a, q).model_dump() == match(b, q).model_dump()
    assert not (b.path / "build").exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sharded_build_is_the_one_process_build(
    tmp_path: Path, small_units: Units, dtype: str
) -> None:
    x = _states(dtype, seed=11)
    whole = _one_process(tmp_path, x, dtype, small_units)
    _assert_same(tmp_path, whole, _sharded(tmp_path, x, dtype, small_units))


def test_shards_in_other_processes_and_index_at_publication(
    tmp_path: Path, small_units: Units
) -> None:
    """Phase 1 in a pool of spawned processes; without phase 2 the publishing process builds
    the planes itself. (The pool's processes resume the build with the part and block sizes it
    recorded.)"""
    x = _states("float32", seed=12)
    whole = _one_process(tmp_path, x, "float32", small_units)
    sharded = _sharded(tmp_path, x, "float32", small_units, pool=True, index=False)
    _assert_same(tmp_path, whole, sharded)


def test_rerun_shard_and_missing_shard(tmp_path: Path, small_units: Units) -> None:
    x = _states("float32", seed=13)
    w = DatasetWriter.create(tmp_path, "holes", n_steps=T, **small_units)
    w.declare_layer("grid", n_cells=D, thresholds=[0.3])
    ranges = w.save_build(SHARD)
    for i, (a, b) in enumerate(ranges):
        if i != 3:
            w.write_layer_shard("grid", i, [x[a:b]])
    with pytest.raises(InvalidData, match=r"shards \[3\] have not been written"):
        DatasetWriter.resume(tmp_path, w.id).index_layer_shard("grid", 0)
    with pytest.raises(InvalidData, match="the shard has 2048 steps"):
        w.write_layer_shard("grid", 3, [x[6144:8193]])  # one row too many
    w.write_layer_shard("grid", 3, [x[6144:8192]])
    w.write_layer_shard("grid", 3, [x[6144:7000], x[7000:8192]])  # a re-run: idempotent
    with pytest.raises(NotFound):
        w.write_layer_shard("nope", 0, [x[:2048]])
    with pytest.raises(InvalidData, match="not in"):
        w.write_layer_shard("grid", 5, [x[:2048]])
    m = DatasetWriter.resume(tmp_path, w.id).publish()
    ds = Catalog(tmp_path).get(m.id)
    assert np.array_equal(ds.window("grid", 0, T), x, equal_nan=True)
    assert not (tmp_path / "staging" / w.id).exists()
    with pytest.raises(NotFound):
        DatasetWriter.resume(tmp_path, w.id)


def test_resume_rejects_bad_ids(tmp_path: Path) -> None:
    for bad in ("../x", "", "a/b", "x" * 65):
        with pytest.raises(NotFound):
            DatasetWriter.resume(tmp_path, bad)


def test_abort_while_another_writer_is_still_writing_shards(
    tmp_path: Path, small_units: Units
) -> None:
    """A helper still writing shards of a build that the job's worker aborts (bad data found
    in another shard) neither keeps the build alive nor recreates any of it: the build is gone
    at the abort, the helper's next write fails, and nothing is left behind."""
    import threading

    x = _states("float32", seed=17)
    w = DatasetWriter.create(tmp_path, "aborted", n_steps=T, **small_units)
    w.declare_layer("grid", n_cells=D, thresholds=[0.3])
    ranges = w.save_build(SHARD)
    started, errors = threading.Event(), []

    def helper() -> None:
        h = DatasetWriter.resume(tmp_path, w.id)
        try:
            while True:  # re-runs are idempotent: write the shards again and again
                for i, (a, b) in enumerate(ranges):
                    h.write_layer_shard(
                        "grid", i, (x[s : min(b, s + 300)] for s in range(a, b, 300))
                    )
                    started.set()
        except Exception as exc:  # the build went away under it
            errors.append(exc)

    t = threading.Thread(target=helper)
    t.start()
    assert started.wait(30)
    w.abort()
    assert not (tmp_path / "staging" / w.id).exists()
    t.join(30)
    assert not t.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], OSError | NotFound), errors
    assert not any((tmp_path / "staging").iterdir())
    assert not any((tmp_path / "trash").iterdir())
    with pytest.raises(NotFound):
        DatasetWriter.resume(tmp_path, w.id)
