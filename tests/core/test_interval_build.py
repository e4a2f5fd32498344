"""``build.intervals.write_layer_intervals``: the on-interval files against a brute-force
reference on random planes (runs touching the first and last step, sequence starts anywhere,
all-0/all-1 words, several chunks, any layout, narrow and wide positions, both extraction
kernels) and against the files of a real dataset build (byte for byte), read back with pyarrow
and DuckDB."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from hiddenscope_core.build import DatasetWriter, intervals
from hiddenscope_core.build.intervals import count_starts, write_layer_intervals
from hiddenscope_core.build.sizes import BuildSizes
from hiddenscope_core.layout import Layout
from hiddenscope_core.parquet.delta import PAGE_ROWS
from hiddenscope_core.parquet.intervals import COLUMNS
from hiddenscope_core.reader import open_dataset
from hiddenscope_core.synth import generate_chunks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.helpers import interval_schema

SETTINGS = settings(
    deadline=None,
    max_examples=int(os.environ.get("HIDDENSCOPE_EXACT_EXAMPLES", "30")) * 4,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)


# ----------------------------------------------------------------------------- references


def pack(on: np.ndarray) -> np.ndarray:
    """``(G, D, T)`` bools -> ``(G, D, W)`` uint64 planes (bit ``t & 63`` of word ``t >> 6``)."""
    G, D, T = on.shape
    W = (T + 63) >> 6
    pad = np.zeros((G, D, W * 64), bool)
    pad[..., :T] = on
    return np.packbits(pad, axis=-1, bitorder="little").view(np.uint64).reshape(G, D, W).copy()


def reference(on: np.ndarray, seq_starts: list[int]) -> np.ndarray:
    """The maximal runs of every ``(g, c)``, cut at the sequence starts, as ``(n, 4)`` int64
    rows (g, c, start, end) sorted by (g, c, start): plain numpy."""
    G, D, T = on.shape
    cut = np.zeros(T + 1, bool)
    for s in seq_starts:
        if 0 < s < T:
            cut[s] = True
    rows = []
    for g in range(G):
        for c in range(D):
            x = np.concatenate([[False], on[g, c], [False]]).astype(np.int8)
            prev, cur = x[:-1], x[1:]  # step t: prev = on[t-1], cur = on[t] (t in 0..T)
            starts = np.flatnonzero(cur.astype(bool) & (~prev.astype(bool) | cut))
            ends = np.flatnonzero(prev.astype(bool) & (~cur.astype(bool) | cut))
            assert starts.size == ends.size
            rows.append(
                np.stack([np.full(starts.size, g), np.full(starts.size, c), starts, ends], 1)
            )
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)


def read_rows(files: list[Path], wide: bool) -> np.ndarray:
    """The files' rows, in file order, as ``(n, 4)`` int64 (checking the schema)."""
    schema = interval_schema(wide)
    parts = []
    for f in files:
        t = pq.read_table(f)
        assert t.schema.equals(schema), t.schema
        parts.append(np.stack([t[c].to_numpy().astype(np.int64) for c in COLUMNS], 1))
    return np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)


def duckdb_rows(directory: Path) -> np.ndarray:
    con = duckdb.connect()
    res = con.execute(
        'SELECT threshold_index, cell, start, "end" FROM read_parquet(?) '
        "ORDER BY threshold_index, cell, start",
        [str(directory / "part-*.parquet")],
    ).fetchnumpy()
    return np.stack([np.asarray(res[c]).astype(np.int64) for c in COLUMNS], 1)


def check_layout(files: list[Path], n_rows: int, row_group: int, part_rows: int) -> None:
    """Names part-00000..., every file but the last full, row groups of ``row_group`` rows
    (the last of a file maybe shorter), at least one file; statistics right."""
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(len(files))]
    assert len(files) == max(1, -(-n_rows // part_rows))
    for i, f in enumerate(files):
        md = pq.ParquetFile(f).metadata
        expect = min(part_rows, n_rows - i * part_rows) if n_rows else 0
        assert md.num_rows == expect
        sizes = [md.row_group(j).num_rows for j in range(md.num_row_groups)]
        assert sizes == [min(row_group, expect - a) for a in range(0, expect, row_group)]


# ----------------------------------------------------------------------------- random planes


@st.composite
def planes_case(draw: st.DrawFn) -> dict[str, Any]:
    T = draw(
        st.one_of(
            st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129, 191, 192, 256, 320, 640, 1000]),
            st.integers(1, 1200),
        )
    )
    G = draw(st.integers(1, 3))
    D = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    mode = draw(st.sampled_from(["noise", "runs", "words", "mixed"]))
    n_seq = draw(st.integers(0, 8))
    special = [0, 1, 63, 64, 65, 128, T - 1, T, T + 5]
    seq = draw(st.lists(st.one_of(st.sampled_from(special), st.integers(0, T)), max_size=n_seq))
    rg = draw(st.sampled_from([1, 2, 3, 7, 64, 129, 1000, 1 << 20]))
    page = draw(st.sampled_from([1, 2, 5, 32, 128, 300, PAGE_ROWS]))
    parts = draw(st.sampled_from([1, 2, 3, 10, 1 << 30]))
    chunk_log2 = draw(st.sampled_from([6, 7, 8, 24]))
    return {
        "T": T, "G": G, "D": D, "seed": seed, "mode": mode, "seq": seq, "rg": rg,
        "page": page, "part_rows": rg * parts, "wide": draw(st.booleans()),
        "vbmi2": draw(st.booleans()), "direct": draw(st.booleans()), "chunk_log2": chunk_log2,
    }  # fmt: skip


def random_on(rng: np.random.Generator, G: int, D: int, T: int, mode: str) -> np.ndarray:
    """Random on-planes: noise of any density, long runs (all-0/all-1 words), whole words of
    0 or 1, or a mix per plane; some planes all off or all on."""
    on = np.zeros((G, D, T), bool)
    for g in range(G):
        for c in range(D):
            m = mode if mode != "mixed" else rng.choice(["noise", "runs", "words", "off", "on"])
            if m == "noise":
                on[g, c] = rng.random(T) < rng.choice([0.05, 0.5, 0.95])
            elif m == "runs":
                flips = rng.random(T) < rng.choice([0.003, 0.02, 0.2])
                on[g, c] = (np.cumsum(flips) + rng.integers(2)) % 2 == 1
            elif m == "words":
                w = rng.integers(0, 3, (T + 63) // 64)
                bitsw = np.where(w[:, None] == 2, rng.random((w.size, 64)) < 0.5, w[:, None] == 1)
                on[g, c] = bitsw.reshape(-1)[:T]
            elif m == "on":
                on[g, c] = True
    return on


@SETTINGS
@given(case=planes_case())
def test_against_reference(tmp_path_factory: pytest.TempPathFactory, case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    T, G, D = case["T"], case["G"], case["D"]
    on = random_on(rng, G, D, T, case["mode"])
    planes = pack(on)
    seq = case["seq"]
    counts = count_starts(planes, seq, T, case["chunk_log2"])
    ref = reference(on, seq)
    np.testing.assert_array_equal(counts.sum(axis=2).reshape(-1), np.bincount(
        ref[:, 0] * D + ref[:, 1], minlength=G * D))  # fmt: skip
    out = tmp_path_factory.mktemp("iv")
    stats = write_layer_intervals(
        planes, counts, seq, T, out, case["wide"],
        row_group_rows=case["rg"], part_rows=case["part_rows"], page_rows=case["page"],
        direct=case["direct"], vbmi2=case["vbmi2"],
    )  # fmt: skip
    files = sorted(out.glob("*.parquet"))
    assert stats.files == files
    assert stats.rows == ref.shape[0]
    assert stats.bytes == sum(f.stat().st_size for f in files)
    np.testing.assert_array_equal(read_rows(files, case["wide"]), ref)
    check_layout(files, ref.shape[0], case["rg"], case["part_rows"])


@pytest.mark.parametrize("vbmi2", [False, True])
@pytest.mark.parametrize("wide", [False, True])
def test_dense_words_and_boundaries(tmp_path: Path, vbmi2: bool, wide: bool) -> None:
    """Words with up to 64 starts (every step a sequence start), 32 (alternating bits) and
    more than 16 (the vector kernel's slow path), runs across page and row-group cuts."""
    T = 64 * 40
    on = np.zeros((2, 2, T), bool)
    on[0, 0] = True  # with every step a sequence start in some words: 64 runs a word
    on[0, 1, ::2] = True  # 32 runs a word
    on[1, 0] = np.random.default_rng(0).random(T) < 0.5
    on[1, 1, 5 : T - 3] = True
    seq = list(range(64 * 3, 64 * 5)) + list(range(64 * 20 + 7, 64 * 21 + 9)) + [T - 1]
    planes = pack(on)
    counts = count_starts(planes, seq, T, 6)
    ref = reference(on, seq)
    stats = write_layer_intervals(
        planes, counts, seq, T, tmp_path, wide, row_group_rows=100, part_rows=300,
        page_rows=33, vbmi2=vbmi2,
    )  # fmt: skip
    np.testing.assert_array_equal(read_rows(stats.files, wide), ref)
    np.testing.assert_array_equal(duckdb_rows(tmp_path), ref)


def test_empty_and_no_planes(tmp_path: Path) -> None:
    """No runs, or no thresholds: one empty file."""
    for i, (G, on_val) in enumerate([(2, False), (0, False)]):
        T = 130
        on = np.full((G, 3, T), on_val)
        planes = pack(on)
        counts = count_starts(planes, [], T)
        d = tmp_path / str(i)
        stats = write_layer_intervals(planes, counts, [], T, d)
        assert [f.name for f in stats.files] == ["part-00000.parquet"]
        assert stats.rows == 0
        t = pq.read_table(stats.files[0])
        assert t.num_rows == 0
        assert t.column_names == list(COLUMNS)
        assert duckdb_rows(d).shape == (0, 4)


def test_counts_disagree(tmp_path: Path) -> None:
    """Counts that do not match the planes raise."""
    rng = np.random.default_rng(3)
    on = rng.random((2, 2, 500)) < 0.3
    planes = pack(on)
    counts = count_starts(planes, [], 500)
    for delta in (1, -1):
        bad = counts.copy()
        bad[1, 0, 0] += delta
        with pytest.raises(RuntimeError, match="disagrees"):
            write_layer_intervals(planes, bad, [], 500, tmp_path / f"d{delta}")
    bad = counts.copy()
    bad[1, 1] = 0  # a plane counted empty is not read (as before): its runs are left out
    stats = write_layer_intervals(planes, bad, [], 500, tmp_path / "d0")
    ref = reference(on, [])
    keep = ~((ref[:, 0] == 1) & (ref[:, 1] == 1))
    np.testing.assert_array_equal(read_rows(stats.files, False), ref[keep])


def test_bad_arguments(tmp_path: Path) -> None:
    planes = pack(np.zeros((1, 2, 100), bool))
    counts = count_starts(planes, [], 100)
    with pytest.raises(ValueError, match="words a plane"):
        write_layer_intervals(np.zeros((1, 2, 1), np.uint64), counts, [], 100, tmp_path)
    with pytest.raises(ValueError, match="counts must be"):
        write_layer_intervals(planes, counts[:, :1], [], 100, tmp_path)
    with pytest.raises(ValueError, match="uint64"):
        write_layer_intervals(planes.astype(np.int64), counts, [], 100, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layout"):
        write_layer_intervals(planes, counts, [], 100, tmp_path, row_group_rows=0)
    with pytest.raises(ValueError, match="wide"):
        write_layer_intervals(planes, counts, [], 2**32, tmp_path, wide=False)


def test_release_and_rewrite(tmp_path: Path) -> None:
    """``release`` is called (every ``release_rows`` rows and at the end); writing again over
    longer files of a former build leaves no stale bytes."""
    rng = np.random.default_rng(5)
    on = rng.random((2, 3, 3000)) < 0.5
    planes = pack(on)
    counts = count_starts(planes, [], 3000)
    calls = []
    big = write_layer_intervals(planes, counts, [], 3000, tmp_path, row_group_rows=10_000)
    small_on = on.copy()
    small_on[:, :, 100:] = False
    sp = pack(small_on)
    stats = write_layer_intervals(
        sp, count_starts(sp, [], 3000), [], 3000, tmp_path, row_group_rows=100,
        release=lambda: calls.append(1), release_rows=250,
    )  # fmt: skip
    assert stats.bytes < big.bytes
    assert len(calls) >= stats.rows // 250
    np.testing.assert_array_equal(read_rows(stats.files, False), reference(small_on, []))


def test_layout_constants() -> None:
    """The row groups and part files are the dataset's (``BuildSizes``' defaults); part files
    hold whole row groups."""
    assert BuildSizes().interval_row_group == intervals.ROW_GROUP_ROWS
    assert BuildSizes().interval_part_rows == intervals.PART_ROWS
    assert intervals.PART_ROWS % intervals.ROW_GROUP_ROWS == 0


# ----------------------------------------------------------------------------- dataset build


def test_same_as_dataset_build(tmp_path: Path) -> None:
    """On the planes of a real build (memory-mapped), the same files as the build wrote."""
    T, D = 5000, 24
    x = np.concatenate(list(generate_chunks(T, D, chunk_steps=1000, seed=7)))
    w = DatasetWriter.create(tmp_path, "ds", n_steps=T)
    starts = [0, 1000, 1024, 2500, 4999]
    w.set_sequences(starts, names=[f"s{i}" for i in range(len(starts))])
    lw = w.add_layer("l", n_cells=D, transform="none")
    lw.write(x)
    m = w.publish()
    ds = open_dataset(Layout(tmp_path).dataset(m.id))
    planes = ds.planes("l")
    seq = ds.sequence_starts()
    counts = count_starts(planes, seq, T)
    stats = write_layer_intervals(planes, counts, seq, T, tmp_path / "new")
    built = sorted((ds.path / "layers" / "l" / "intervals").glob("*.parquet"))
    assert len(built) == len(stats.files) == 1
    assert filecmp.cmp(built[0], stats.files[0], shallow=False)
    on = np.unpackbits(
        np.asarray(planes).view(np.uint8), axis=-1, bitorder="little"
    )[..., :T].astype(bool)  # fmt: skip
    np.testing.assert_array_equal(read_rows(stats.files, False), reference(on, list(seq)))


@pytest.mark.parametrize("vbmi2", [False, True])
def test_beyond_2_32_steps(tmp_path: Path, vbmi2: bool) -> None:
    """T > 2**32 (int64 positions): runs at the start, across step 2**32, cut by a sequence
    start past 2**32 and open at the last step; one plane of a sparse memory-mapped file."""
    T = 2**32 + 70
    W = (T + 63) >> 6
    planes = np.memmap(tmp_path / "planes.bin", np.uint64, "w+", shape=(1, 1, W))
    b = 2**26  # the word of step 2**32
    planes[0, 0, 0] = 0b0110
    planes[0, 0, b - 1] = np.uint64(0xF) << np.uint64(60)  # on from 2**32 - 4 ...
    planes[0, 0, b] = 0xFFFF  # ... to 2**32 + 16, cut at 2**32 + 9
    planes[0, 0, W - 1] = 0b111111  # on from T - 6 to the end
    planes.flush()
    seq = [2**32 + 9, 5]
    counts = count_starts(planes, seq, T)
    stats = write_layer_intervals(planes, counts, seq, T, tmp_path / "out", vbmi2=vbmi2)
    expect = [
        (0, 0, 1, 3),
        (0, 0, 2**32 - 4, 2**32 + 9),
        (0, 0, 2**32 + 9, 2**32 + 16),
        (0, 0, T - 6, T),
    ]
    np.testing.assert_array_equal(read_rows(stats.files, True), np.array(expect, np.int64))
    np.testing.assert_array_equal(duckdb_rows(tmp_path / "out"), np.array(expect, np.int64))
