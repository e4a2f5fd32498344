"""The numba Parquet writer of the on-interval table (``parquet.intervals``): files read back
exactly (pyarrow and DuckDB) whatever the values, lengths and batch cuts; row groups and their
statistics; DuckDB's row-group pruning; the same table as pyarrow's writer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hiddenscope_core.parquet.delta import PAGE_ROWS
from hiddenscope_core.parquet.intervals import COLUMNS, IntervalParquetWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.helpers import interval_schema

SETTINGS = settings(
    deadline=None,
    max_examples=int(os.environ.get("HIDDENSCOPE_EXACT_EXAMPLES", "30")) * 3,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)

Cols = tuple[np.ndarray, ...]


def dtypes(wide: bool) -> list[np.dtype[Any]]:
    pos = np.dtype(np.int64 if wide else np.uint32)
    return [np.dtype(np.int16), np.dtype(np.int32), pos, pos]


def make_column(rng: np.random.Generator, n: int, dt: np.dtype[Any], mode: str) -> np.ndarray:
    """``n`` values of ``dt``: sorted-ish runs (small steps, resets), constant, uniform over the
    whole range, or mostly extremes; a few extremes are sprinkled into the first two."""
    info = np.iinfo(dt)
    lo, hi = int(info.min), int(info.max)
    if mode == "runs":
        x = np.cumsum(rng.integers(0, rng.choice([2, 50, 70000]), n)) + rng.integers(lo, hi // 2)
        resets = rng.random(n) < rng.choice([0.0, 0.001, 0.05])
        x[resets] = rng.integers(lo, hi, int(resets.sum()))
        out = np.clip(x, lo, hi).astype(dt)
    elif mode == "const":
        out = np.full(n, rng.integers(lo, hi, endpoint=True), dt)
    elif mode == "uniform":
        out = rng.integers(lo, hi, n, endpoint=True, dtype=dt)
    else:  # "extremes"
        out = rng.choice(np.array([lo, hi, lo + 1, hi - 1, 0, -1 if lo else 1], dt), n)
    if mode in ("runs", "const") and n and rng.random() < 0.3:
        k = rng.integers(1, 4)
        out[rng.integers(0, n, k)] = rng.choice(np.array([lo, hi, 0], dt), k)
    return out


def write(path: Path, cols: Cols, wide: bool, rg: int, cuts: list[int], page: int) -> None:
    with IntervalParquetWriter(path, wide, rg, page_rows=page) as w:
        for a, b in zip([0, *cuts], [*cuts, cols[0].shape[0]], strict=True):
            w.write(*(c[a:b] for c in cols))


def check_file(path: Path, cols: Cols, wide: bool, rg: int) -> None:
    """Both readers return exactly ``cols``; row groups, statistics and schema are right."""
    n = cols[0].shape[0]
    assert pq.read_schema(path).equals(interval_schema(wide))
    t = pq.read_table(path)
    assert t.schema.equals(interval_schema(wide))
    for name, c in zip(COLUMNS, cols, strict=True):
        got = t[name].to_numpy()
        assert got.dtype == c.dtype
        np.testing.assert_array_equal(got, c, err_msg=name)
    con = duckdb.connect()
    q = "SELECT * FROM read_parquet(?, file_row_number = true) ORDER BY file_row_number"
    res = con.execute(q, [str(path)]).fetchnumpy()
    for name, c in zip(COLUMNS, cols, strict=True):
        got = np.asarray(res[name])
        assert got.dtype == c.dtype, (name, got.dtype)
        np.testing.assert_array_equal(got, c, err_msg=f"duckdb {name}")
    md = pq.ParquetFile(path).metadata
    assert md.num_rows == n
    assert md.created_by == "hiddenscope"
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert sizes == [min(rg, n - a) for a in range(0, n, rg)]
    for i in range(md.num_row_groups):
        rgm = md.row_group(i)
        sl = slice(i * rg, i * rg + sizes[i])
        for j, c in enumerate(cols):
            col = rgm.column(j)
            assert col.num_values == sizes[i]
            assert col.compression == "UNCOMPRESSED"
            assert "DELTA_BINARY_PACKED" in col.encodings
            st_ = col.statistics
            if j == 3:  # no statistics for end
                assert st_ is None or not st_.has_min_max
                continue
            assert st_ is not None
            assert st_.has_min_max
            assert st_.null_count == 0
            assert (st_.min, st_.max) == (int(c[sl].min()), int(c[sl].max())), (i, j)


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, bool, int, int, list[str], int, list[int]]:
    """(seed, wide, row group rows, page rows, per-column value modes, rows, batch cuts)."""
    seed = draw(st.integers(0, 2**32 - 1))
    wide = draw(st.booleans())
    rg = draw(st.sampled_from([1, 7, 100, 128, 129, 1000, 4096]))
    page = draw(st.sampled_from([PAGE_ROWS, 1, 50, 128, 300]))
    special = [0, 1, 2, 127, 128, 129, 255, 256, 257, rg - 1, rg, rg + 1, 2 * rg - 1, 2 * rg + 1]
    n = draw(st.one_of(st.sampled_from([x for x in special if x >= 0]), st.integers(0, 3000)))
    modes = [draw(st.sampled_from(["runs", "const", "uniform", "extremes"])) for _ in range(4)]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return seed, wide, rg, page, modes, n, cuts


@SETTINGS
@given(case=cases())
def test_round_trip(tmp_path: Path, case: tuple[Any, ...]) -> None:
    seed, wide, rg, page, modes, n, cuts = case
    rng = np.random.default_rng(seed)
    cols = tuple(make_column(rng, n, dt, m) for dt, m in zip(dtypes(wide), modes, strict=True))
    path = tmp_path / "t.parquet"
    write(path, cols, wide, rg, cuts, page)
    check_file(path, cols, wide, rg)


@pytest.mark.parametrize("wide", [False, True])
def test_extreme_deltas(tmp_path: Path, wide: bool) -> None:
    """Deltas that overflow the physical type and every bit width 0..32 (0..64 wide)."""
    rng = np.random.default_rng(1)
    dts = dtypes(wide)
    bits = 64 if wide else 32
    n = 128 * (bits + 1) + 1
    parts = []
    for w in range(bits + 1):  # a block of deltas spanning exactly w bits
        hi = (1 << w) - 1
        parts.append(rng.integers(0, hi, 128, endpoint=True, dtype=np.uint64) if w else [0] * 128)
    deltas = np.concatenate(parts).astype(np.uint64)
    x = np.concatenate([np.zeros(1, np.uint64), np.cumsum(deltas, dtype=np.uint64)])  # mod 2**64
    pos = x.view(np.int64) if wide else (x & 0xFFFFFFFF).astype(np.uint32)
    info = np.iinfo(np.int16), np.iinfo(np.int32)
    g = np.where(np.arange(n) % 2, info[0].min, info[0].max).astype(np.int16)
    cell = np.where(np.arange(n) % 3, info[1].min, info[1].max).astype(np.int32)
    cols = (g, cell, pos.astype(dts[2]), pos[::-1].astype(dts[3]).copy())
    path = tmp_path / "x.parquet"
    write(path, cols, wide, 1000, [5, 700], PAGE_ROWS)
    check_file(path, cols, wide, 1000)


@pytest.mark.parametrize("wide", [False, True])
def test_empty_file(tmp_path: Path, wide: bool) -> None:
    path = tmp_path / "e.parquet"
    with IntervalParquetWriter(path, wide) as w:
        w.write(*(np.empty(0, dt) for dt in dtypes(wide)))
    assert pq.read_schema(path).equals(interval_schema(wide))
    t = pq.read_table(path)
    assert t.num_rows == 0
    assert t.schema.equals(interval_schema(wide))
    assert pq.ParquetFile(path).metadata.num_row_groups == 0
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone() == (0,)
    # no write call at all gives the same
    IntervalParquetWriter(tmp_path / "e2.parquet", wide).close()
    assert pq.read_table(tmp_path / "e2.parquet").equals(t)


def realistic(n: int, seed: int, wide: bool = False) -> Cols:
    """Rows sorted by (threshold, cell, start) as the index build makes them: units of a few
    hundred rows per (threshold, cell), geometric gaps and lengths."""
    rng = np.random.default_rng(seed)
    unit = np.cumsum(rng.random(n) < 1 / 300)
    g = (unit // 16).astype(np.int16)
    cell = (unit % 16).astype(np.int32)
    length = rng.geometric(0.1, n)
    total = np.cumsum(rng.geometric(0.1, n) + length)
    first = np.flatnonzero(np.diff(unit, prepend=-1))
    base = (total - length)[first][np.searchsorted(first, np.arange(n), side="right") - 1]
    pos = np.int64 if wide else np.uint32
    return g, cell, (total - length - base).astype(pos), (total - base).astype(pos)


def test_duckdb_row_group_pruning(tmp_path: Path) -> None:
    """``WHERE threshold_index = ? AND cell = ?`` counts right and DuckDB scans only the row
    groups whose statistics admit the pair."""
    cols = realistic(100_000, seed=3)
    g, cell = cols[0], cols[1]
    rg = 1000
    path = tmp_path / "p.parquet"
    write(path, cols, False, rg, [12_345, 50_000], PAGE_ROWS)
    con = duckdb.connect()
    prof = tmp_path / "profile.json"
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"PRAGMA profiling_output = '{prof}'")
    for tg, tc in [(3, 7), (0, 0), (20, 15), (100, 1)]:
        q = "SELECT count(*) FROM read_parquet(?) WHERE threshold_index = ? AND cell = ?"
        got = con.execute(q, [str(path), tg, tc]).fetchall()  # all: the profile is written
        assert got == [(int(np.sum((g == tg) & (cell == tc))),)]
        admits = [
            g[a : a + rg].min() <= tg <= g[a : a + rg].max()
            and cell[a : a + rg].min() <= tc <= cell[a : a + rg].max()
            for a in range(0, g.shape[0], rg)
        ]
        query = json.loads(prof.read_text()).get("query", {})
        if "total_row_groups_scanned" in query:  # recent DuckDB reports it
            assert query["total_row_groups_scanned"] == sum(admits), (tg, tc)
            # 0 when the file's statistics exclude the pair altogether
            assert query["total_row_groups_to_scan"] in (len(admits), 0)
        assert sum(admits) < len(admits) // 10  # so pruning skips 90% of the row groups


def write_pyarrow(path: Path, cols: Cols, wide: bool, rg: int) -> None:
    """As the index build's former pyarrow writer of the interval files did."""
    with pq.ParquetWriter(
        path,
        interval_schema(wide),
        compression="none",
        use_dictionary=False,
        column_encoding=dict.fromkeys(COLUMNS, "DELTA_BINARY_PACKED"),
        write_statistics=["threshold_index", "cell", "start"],
    ) as w:
        w.write_table(
            pa.table(dict(zip(COLUMNS, cols, strict=True))).cast(interval_schema(wide)), rg
        )


@pytest.mark.parametrize("wide", [False, True])
def test_same_as_pyarrow(tmp_path: Path, wide: bool) -> None:
    """Our file and pyarrow's read back to the same table and the same row groups and
    statistics, at about the same size."""
    cols = realistic(300_000, seed=5, wide=wide)
    rg = 1 << 16
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "pyarrow.parquet"
    write(ours, cols, wide, rg, [1, 99_999, 200_000], PAGE_ROWS)
    write_pyarrow(theirs, cols, wide, rg)
    assert pq.read_table(ours).equals(pq.read_table(theirs))
    con = duckdb.connect()
    q = "SELECT * FROM read_parquet(?) ORDER BY threshold_index, cell, start"
    assert con.execute(q, [str(ours)]).fetchall() == con.execute(q, [str(theirs)]).fetchall()
    mo, mt = pq.ParquetFile(ours).metadata, pq.ParquetFile(theirs).metadata
    assert mo.num_row_groups == mt.num_row_groups
    for i in range(mo.num_row_groups):
        for j in range(4):
            so, st_ = mo.row_group(i).column(j).statistics, mt.row_group(i).column(j).statistics
            assert (so is not None and so.has_min_max) == (st_ is not None and st_.has_min_max)
            if so is not None and so.has_min_max:
                assert (so.min, so.max, so.null_count) == (st_.min, st_.max, st_.null_count)
    assert ours.stat().st_size <= 1.05 * theirs.stat().st_size
    check_file(ours, cols, wide, rg)


@pytest.mark.parametrize("seed", range(8))
def test_int32_streams_are_arrows(tmp_path: Path, seed: int) -> None:
    """With one page per column chunk, each column's DELTA_BINARY_PACKED stream is byte for
    byte the one arrow writes (same deltas, minima, widths, zero padding, unused miniblocks
    of width 0). Not for int64 columns, for which arrow uses blocks of 256 values."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5000))
    modes = ["runs", "const", "uniform", "extremes"]
    cols = tuple(
        make_column(rng, n, dt, modes[(seed + k) % 4]) for k, dt in enumerate(dtypes(False))
    )
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "pyarrow.parquet"
    write(ours, cols, False, 1 << 20, [n // 3], PAGE_ROWS)
    write_pyarrow(theirs, cols, False, 1 << 20)
    for j in range(4):
        chunks = []
        for path in (ours, theirs):
            c = pq.ParquetFile(path).metadata.row_group(0).column(j)
            with path.open("rb") as f:
                f.seek(c.data_page_offset)
                chunks.append(f.read(c.total_compressed_size))
        # our page header ends with two stops (0x00 0x00); the stream starts with the block
        # size 128 (0x80 0x01) and 4 miniblocks; no earlier 0x00 0x00 is possible in it
        k = chunks[0].index(b"\x00\x00\x80\x01\x04") + 2
        assert chunks[0][k:] in chunks[1], COLUMNS[j]


def test_batches_do_not_matter(tmp_path: Path) -> None:
    """The bytes of the file do not depend on how the rows are cut into batches."""
    cols = realistic(20_000, seed=9)
    rng = np.random.default_rng(0)
    files = []
    for k, cuts in enumerate([[], list(range(1, 20_000, 1)), sorted(rng.integers(0, 20_000, 50))]):
        path = tmp_path / f"b{k}.parquet"
        write(path, cols, False, 3000, [int(c) for c in cuts], 1000)
        files.append(path.read_bytes())
    assert files[0] == files[1] == files[2]


def test_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    w = IntervalParquetWriter(path, False)
    with pytest.raises(TypeError):
        w.write(np.zeros(3, np.int32), np.zeros(3, np.int32), np.zeros(3, np.uint32), np.zeros(3))
    with pytest.raises(ValueError, match="lengths"):
        w.write(*(np.zeros(k, dt) for k, dt in zip([3, 3, 2, 3], dtypes(False), strict=True)))
    w.write(
        np.zeros(2, np.int8),
        np.zeros(2, np.int16),
        np.zeros(2, np.uint8),
        np.array([4, 5], np.uint16),
    )  # casts
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(*(np.zeros(1, dt) for dt in dtypes(False)))
    t = pq.read_table(path)
    assert t["end"].to_pylist() == [4, 5]
    with pytest.raises(RuntimeError), IntervalParquetWriter(tmp_path / "abort.parquet", False):
        raise RuntimeError  # the file is left incomplete, and closed
