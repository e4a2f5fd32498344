"""States Parquet writer benchmark: pyarrow (``LayerWriter._write_parquet``) vs
``hiddenscope_core.parquet.states.StatesParquetWriter`` (O_DIRECT pages).

Run with ``PYTHONPATH=. uv run --frozen --all-extras python -m bench.states_parquet_bench --gb 2``.
Writes ``--gb`` GB of random float32 rows (``--cells`` values a row) in batches of 65536 rows
from ``aligned_empty`` buffers (as ``LayerWriter`` flushes them), in part files of
``PART_STEPS`` steps, with each writer in turn (``--repeats`` rounds, alternating), into a
scratch directory under ``/tmp/scratch`` that is removed afterwards. Prints per writer the
median wall time, user and system CPU seconds (``getrusage(RUSAGE_SELF)`` deltas; the page
cache's background writeback, done by kernel threads, is not counted, which favours pyarrow),
and the ratios. The first part of each writer is checked to read back equal.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from hiddenscope_core.build.format import (
    PART_STEPS,
    ROW_GROUP_STEPS,
    STATES_META_CELLS,
    STATES_META_DTYPE,
)
from hiddenscope_core.direct_io import aligned_empty
from hiddenscope_core.parquet.states import StatesParquetWriter

BATCH_ROWS = 1 << 16
POOL_BATCHES = 4  # distinct random batches, cycled through

Batches = list[npt.NDArray[np.float32]]


def metadata(d: int) -> dict[bytes, bytes]:
    return {
        STATES_META_DTYPE: b"float32",
        STATES_META_CELLS: str(d).encode(),
        b"hiddenscope.byte_order": b"little",
    }


def write_pyarrow(out: Path, batches: Batches, n_batches: int, part_steps: int) -> int:
    """As ``LayerWriter._write_parquet``: a ``pq.ParquetWriter`` per part, a table per batch."""
    d = batches[0].shape[1]
    binary_type = pa.binary(d * 4)
    schema = pa.schema([pa.field("v", binary_type, False)], metadata=metadata(d))
    part_index, w = -1, None
    for b in range(n_batches):
        raw = batches[b % len(batches)]
        part = b * BATCH_ROWS // part_steps
        if part != part_index:
            if w is not None:
                w.close()
            w = pq.ParquetWriter(
                out / f"part-{part:05d}.parquet",
                schema,
                compression="none",
                use_dictionary=False,
                write_statistics=False,
            )
            part_index = part
        le = raw.astype(raw.dtype.newbyteorder("<"), copy=False)
        col = pa.FixedSizeBinaryArray.from_buffers(
            binary_type, raw.shape[0], [None, pa.py_buffer(np.ascontiguousarray(le))]
        )
        assert w is not None
        w.write_table(pa.table({"v": col}, schema=schema), ROW_GROUP_STEPS)
    if w is not None:
        w.close()
    return sum(p.stat().st_size for p in out.iterdir())


def write_direct(out: Path, batches: Batches, n_batches: int, part_steps: int) -> int:
    """``StatesParquetWriter``, a writer per part."""
    d = batches[0].shape[1]
    part_index, w = -1, None
    total = 0
    for b in range(n_batches):
        part = b * BATCH_ROWS // part_steps
        if part != part_index:
            if w is not None:
                w.close()
                total += w.bytes_written
            w = StatesParquetWriter(
                out / f"part-{part:05d}.parquet", d * 4, ROW_GROUP_STEPS, metadata(d)
            )
            part_index = part
        assert w is not None
        w.write(batches[b % len(batches)])
    if w is not None:
        w.close()
        total += w.bytes_written
    return total


def measure(
    fn: Callable[[Path, Batches, int, int], int],
    out: Path,
    batches: Batches,
    n_batches: int,
    part_steps: int,
) -> tuple[float, float, float, int]:
    """Wall, user and system seconds of one run, and the bytes written."""
    out.mkdir()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    size = fn(out, batches, n_batches, part_steps)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, size


def check_same(a: Path, b: Path) -> None:
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb), "the two writers' files differ"
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    assert fa.schema_arrow.equals(fb.schema_arrow, check_metadata=True)
    assert fa.metadata.num_row_groups == fb.metadata.num_row_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="GB written per run and writer")
    ap.add_argument("--cells", type=int, default=64, help="float32 values a row (D)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--part-steps", type=int, default=PART_STEPS)
    ap.add_argument("--scratch", default="/tmp/scratch")
    args = ap.parse_args()
    d = args.cells
    batch_bytes = BATCH_ROWS * d * 4
    n_batches = max(1, round(args.gb * 1e9 / batch_bytes))
    rng = np.random.default_rng(0)
    batches: Batches = []
    for _ in range(POOL_BATCHES):
        a = aligned_empty((BATCH_ROWS, d), np.float32)
        a[:] = rng.standard_normal((BATCH_ROWS, d), np.float32)
        batches.append(a)
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    root = Path(args.scratch) / f"states_parquet_bench-{os.getpid()}"
    writers = {"pyarrow": write_pyarrow, "direct": write_direct}
    results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in writers}
    gb = n_batches * batch_bytes / 1e9
    print(f"{gb:.2f} GB a run: {n_batches} batches of {BATCH_ROWS} rows x {d} float32")
    try:
        root.mkdir()
        for r in range(args.repeats):
            for name, fn in writers.items():
                out = root / f"{name}-{r}"
                results[name].append(measure(fn, out, batches, n_batches, args.part_steps))
                w, u, s, _ = results[name][-1]
                print(f"  run {r} {name:8s} wall {w:6.2f} s  user {u:5.2f} s  sys {s:5.2f} s")
            if r == 0:
                check_same(
                    root / "pyarrow-0" / "part-00000.parquet", root / "direct-0/part-00000.parquet"
                )
            for name in writers:
                shutil.rmtree(root / f"{name}-{r}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {
        name: [statistics.median(x[i] for x in rs) for i in range(3)]
        for name, rs in results.items()
    }
    print(f"median of {args.repeats}, per GB written ({gb:.2f} GB a run):")
    for name, (w, u, s) in med.items():
        size = results[name][0][3]
        print(
            f"  {name:8s} wall {w / gb:6.3f} s/GB  user {u / gb:6.3f}  sys {s / gb:6.3f}  "
            f"cpu {(u + s) / gb:6.3f}  file bytes {size}"
        )
    pw, pu, ps = med["pyarrow"]
    dw, du, ds = med["direct"]
    print(
        f"  pyarrow / direct: wall {pw / dw:.2f}x  user {pu / max(du, 1e-9):.2f}x  "
        f"sys {ps / max(ds, 1e-9):.2f}x  cpu {(pu + ps) / max(du + ds, 1e-9):.2f}x"
    )


if __name__ == "__main__":
    main()
