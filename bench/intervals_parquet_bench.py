"""Interval Parquet writer benchmark: pyarrow (the index build's former settings) vs
``hiddenscope_core.parquet.intervals.IntervalParquetWriter``.

Run with ``uv run --frozen --all-extras python -m bench.intervals_parquet_bench --rows 100000000``.
Generates realistic on-interval rows (units of a few hundred thousand rows per (threshold,
cell), sorted by start, geometric gaps and lengths), writes them in batches of ``--batch`` rows
with each writer, and prints the median rows/s of ``--repeats`` runs, the ratio and the file
sizes. The two files must read back (pyarrow) to equal tables.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hiddenscope_core.parquet.intervals import COLUMNS, IntervalParquetWriter

ROW_GROUP = 1 << 20


def realistic_intervals(
    n: int, seed: int = 0, wide: bool = False, unit_rows: int = 300_000, mean_gap: float = 12.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` on-interval rows sorted by (threshold, cell, start): units (one (threshold, cell)
    each, 9 thresholds x 64 cells, wrapping) of ``unit_rows`` +-50% rows; within a unit the
    off-gaps and on-lengths are geometric with mean ``mean_gap`` steps, so ``start`` rises
    by ~2 * mean_gap per row and ``end = start + length``."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(unit_rows // 2, unit_rows * 3 // 2 + 1, n // max(unit_rows // 2, 1) + 2)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    bounds = bounds[bounds < n]
    unit = np.zeros(n, np.int64)
    unit[bounds[1:]] = 1
    unit = np.cumsum(unit)
    g = (unit // 64 % 9).astype(np.int16)
    cell = (unit % 64).astype(np.int32)
    gap = rng.geometric(1 / mean_gap, n)
    length = rng.geometric(1 / mean_gap, n)
    total = np.cumsum(gap + length)
    base = np.concatenate([[0], total[bounds[1:] - 1]])[unit]  # the unit's first step
    pos = np.int64 if wide else np.uint32
    start = (total - length - base).astype(pos)
    end = (total - base).astype(pos)
    return g, cell, start, end


def interval_schema(wide: bool) -> pa.Schema:
    """The Arrow schema of the interval files (positions int64 when ``wide``)."""
    pos = pa.int64() if wide else pa.uint32()
    return pa.schema(
        [
            pa.field("threshold_index", pa.int16(), False),
            pa.field("cell", pa.int32(), False),
            pa.field("start", pos, False),
            pa.field("end", pos, False),
        ]
    )


def write_pyarrow(path: Path, cols: tuple[np.ndarray, ...], batch: int, wide: bool) -> None:
    """As the index build's former pyarrow writer did: one table per batch, row groups of 2^20."""
    schema = interval_schema(wide)
    with pq.ParquetWriter(
        path,
        schema,
        compression="none",
        use_dictionary=False,
        column_encoding=dict.fromkeys(COLUMNS, "DELTA_BINARY_PACKED"),
        write_statistics=["threshold_index", "cell", "start"],
    ) as w:
        for a in range(0, cols[0].shape[0], batch):
            t = pa.table(dict(zip(COLUMNS, (c[a : a + batch] for c in cols), strict=True)))
            w.write_table(t.cast(schema), ROW_GROUP)


def write_ours(path: Path, cols: tuple[np.ndarray, ...], batch: int, wide: bool) -> None:
    with IntervalParquetWriter(path, wide, ROW_GROUP) as w:
        for a in range(0, cols[0].shape[0], batch):
            w.write(*(c[a : a + batch] for c in cols))


def _time(fn: Callable[[], None], path: Path, repeats: int) -> float:
    """Median wall time of ``fn``, which writes ``path`` (removed before each run: a new file,
    as in an index build, not the truncation of an old one)."""
    times = []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=1 << 23, help="rows per write call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wide", action="store_true", help="int64 start/end (T >= 2^32)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a tmpdir)")
    args = ap.parse_args(argv)

    cols = realistic_intervals(args.rows, wide=args.wide)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        pa_path, our_path = Path(tmp) / "pyarrow.parquet", Path(tmp) / "ours.parquet"
        # warm-up: numba compiles or loads its cache outside the timing
        write_ours(our_path, tuple(c[:1000] for c in cols), args.batch, args.wide)
        t_pa = _time(
            lambda: write_pyarrow(pa_path, cols, args.batch, args.wide), pa_path, args.repeats
        )
        t_our = _time(
            lambda: write_ours(our_path, cols, args.batch, args.wide), our_path, args.repeats
        )
        size_pa, size_our = pa_path.stat().st_size, our_path.stat().st_size
        same = pq.read_table(pa_path).equals(pq.read_table(our_path))
    res = {
        "rows": args.rows,
        "pyarrow_rows_per_s": args.rows / t_pa,
        "ours_rows_per_s": args.rows / t_our,
        "speedup": t_pa / t_our,
        "pyarrow_bytes": size_pa,
        "ours_bytes": size_our,
        "pyarrow_bytes_per_row": size_pa / max(args.rows, 1),
        "ours_bytes_per_row": size_our / max(args.rows, 1),
        "equal": same,
    }
    print(
        f"rows {args.rows:,}{' (wide)' if args.wide else ''}, batches of {args.batch:,}, "
        f"median of {args.repeats}\n"
        f"  pyarrow  {res['pyarrow_rows_per_s'] / 1e6:8.1f} M rows/s  "
        f"{size_pa:,} bytes ({res['pyarrow_bytes_per_row']:.3f} B/row)\n"
        f"  ours     {res['ours_rows_per_s'] / 1e6:8.1f} M rows/s  "
        f"{size_our:,} bytes ({res['ours_bytes_per_row']:.3f} B/row)\n"
        f"  speedup  {res['speedup']:.2f}x; tables equal: {same}"
    )
    if not same:
        raise SystemExit("the two files differ")
    return res


if __name__ == "__main__":
    main()
