"""On-interval phase of the index build: ``build.intervals.write_layer_intervals`` (fused
single-threaded extraction + encoding, ``O_DIRECT`` writes) against a plain numpy + pyarrow
baseline, in the same process.

The baseline ("numpy", ``numpy_path``) is what one would write without numba: per (threshold,
cell) plane, ``2**26`` steps at a time (~1 GB of temporaries at the worst), the words unpacked
to 0/1 bytes (``np.unpackbits``), runs from ``np.diff`` of the signal padded with zeros (with
the previous chunk's last bit before a later chunk), cut at the sequence starts inside them;
the rows (``threshold_index`` int16, ``cell`` int32, ``start``/``end`` uint32, int64 when
``T >= 2**32``, sorted by (threshold, cell, start)) are gathered into whole row groups of
``build.intervals.ROW_GROUP_ROWS`` rows and written batch by batch with
``pyarrow.parquet.ParquetWriter`` (DELTA_BINARY_PACKED, no dictionary, uncompressed) into one
file through the page cache.

Run with ``PYTHONPATH=. uv run --frozen --all-extras python -m bench.interval_build_bench``
(``--steps 10000000`` by default; ``--steps 2000000`` for a quick run; ``--check`` to compare the
outputs). The planes are those of ``synth.generate_chunks(steps, 64, chunk_steps=2**20,
seed=1)`` at the thresholds 0.1, ..., 0.9, with sequences of ~2000 steps on average; they are
cached in ``--cache`` (a memory map is what the build reads too). Prints per path the CPU
seconds (user, sys: the whole process, all threads), the wall seconds, the M intervals per
CPU-second and the output size, median of ``--repeats`` runs (the paths alternate), and the
CPU-s ratio numpy/new. ``--check`` compares every path's output with the numpy path's (pyarrow:
the same columns, types and values; the split into files may differ).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from hiddenscope_core.build import BuildSizes, intervals
from hiddenscope_core.parquet.intervals import COLUMNS
from hiddenscope_core.synth import generate_chunks

from bench.intervals_parquet_bench import interval_schema

D = 64
THRESHOLDS = np.round(np.arange(1, 10) / 10, 1)
CHUNK_LOG2 = BuildSizes().interval_chunk_log2  # the plane pass's run-count chunks
NUMPY_CHUNK_STEPS = 1 << 26
"""Steps of a plane the numpy path unpacks at a time: 64 MB of 0/1 bytes, with the signal, its
diff, the masks and the run positions (at most 2 x 8 bytes a step) about 1 GB at the worst."""


def build_planes(
    steps: int, seed: int, cache: Path
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """The ``(9, 64, W)`` planes (memory-mapped from the cache) and the sequence starts."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"planes_{steps}_{seed}.npy"
    rng = np.random.default_rng(seed)
    lengths = rng.geometric(1 / 2000, steps // 500 + 10)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    starts = starts[starts < steps].astype(np.int64)
    if not path.exists():
        W = (steps + 63) >> 6
        planes = np.lib.format.open_memmap(
            str(path) + ".tmp.npy", mode="w+", dtype=np.uint64, shape=(len(THRESHOLDS), D, W)
        )
        t0 = 0
        for chunk in generate_chunks(steps, D, chunk_steps=1 << 20, seed=seed):
            n = chunk.shape[0]
            n64 = -(-n // 64) * 64
            v = np.zeros((D, n64), np.float32)
            v[:, :n] = chunk.T
            for g, th in enumerate(THRESHOLDS):
                on = v >= np.float32(th)
                on[:, n:] = False
                words = np.packbits(on, axis=1, bitorder="little").view(np.uint64)
                planes[g, :, t0 >> 6 : (t0 >> 6) + words.shape[1]] = words
            t0 += n
        planes.flush()
        del planes
        os.replace(str(path) + ".tmp.npy", path)
    return np.load(path, mmap_mode="r"), starts


def numpy_path(
    planes: npt.NDArray[np.uint64],
    seq: npt.ArrayLike,
    T: int,
    directory: Path,
    chunk_steps: int = NUMPY_CHUNK_STEPS,
) -> int:
    """The baseline (module docstring): numpy runs, pyarrow's ``ParquetWriter``. Writes
    ``directory/part-00000.parquet``; returns the number of rows."""
    if chunk_steps <= 0 or chunk_steps % 64:
        raise ValueError("chunk_steps must be a positive multiple of 64")
    wide = T >= 2**32
    pos_dt = np.int64 if wide else np.uint32
    schema = interval_schema(wide)
    rg = intervals.ROW_GROUP_ROWS
    cuts = np.unique(np.asarray(seq, np.int64).reshape(-1))
    cuts = cuts[(cuts > 0) & (cuts < T)]  # a run is cut at a sequence start inside it
    G, D, _ = planes.shape
    directory.mkdir(parents=True, exist_ok=True)
    batch: list[list[npt.NDArray[Any]]] = [[], [], [], []]  # rows not yet written, by column
    n_batch = 0
    rows = 0
    with pq.ParquetWriter(
        directory / "part-00000.parquet",
        schema,
        compression="none",
        use_dictionary=False,
        column_encoding=dict.fromkeys(COLUMNS, "DELTA_BINARY_PACKED"),
    ) as pw:

        def flush(final: bool) -> None:
            """Write the whole row groups of the batch (all of it if ``final``)."""
            nonlocal n_batch
            n = n_batch if final else n_batch - n_batch % rg
            if n == 0:
                return
            cols = [np.concatenate(parts) for parts in batch]
            pw.write_table(
                pa.Table.from_arrays([pa.array(x[:n]) for x in cols], schema=schema),
                row_group_size=rg,
            )
            for parts, x in zip(batch, cols, strict=True):
                parts[:] = [x[n:]]
            n_batch -= n

        for g in range(G):
            for c in range(D):
                plane = planes[g, c]
                prev = 0  # the bit of the step before the chunk
                open_start = -1  # a run still on at the end of the previous chunk
                for a in range(0, T, chunk_steps):
                    b = min(T, a + chunk_steps)
                    n = b - a
                    bits = np.unpackbits(
                        plane[a >> 6 : (b + 63) >> 6].view(np.uint8), bitorder="little"
                    )[:n]
                    # x[i] = on[a + i - 1]: the step before the chunk, the chunk, after the
                    # last step a 0; d[i] = on[a + i] - on[a + i - 1]
                    x = np.zeros(n + 1 + (b == T), np.int8)
                    x[0] = prev
                    x[1 : n + 1] = bits
                    d = np.diff(x)
                    starts = a + np.flatnonzero(d == 1)
                    ends = a + np.flatnonzero(d == -1)
                    q = cuts[np.searchsorted(cuts, a) : np.searchsorted(cuts, b)]
                    q = q[(x[q - a] == 1) & (x[q - a + 1] == 1)]  # on before and at q
                    if q.size:  # a run ends at q and another starts there
                        starts = np.insert(starts, np.searchsorted(starts, q), q)
                        ends = np.insert(ends, np.searchsorted(ends, q), q)
                    if open_start >= 0:
                        starts = np.concatenate([[open_start], starts])
                    k = ends.size
                    if starts.size - k not in (0, 1):
                        raise AssertionError("unpaired run starts and ends")
                    open_start = int(starts[k]) if starts.size > k else -1
                    prev = int(x[n])
                    if k:
                        batch[0].append(np.full(k, g, np.int16))
                        batch[1].append(np.full(k, c, np.int32))
                        batch[2].append(starts[:k].astype(pos_dt))
                        batch[3].append(ends.astype(pos_dt))
                        n_batch += k
                        rows += k
                        if n_batch >= rg:
                            flush(False)
        flush(True)
    return rows


def measure(fn: Callable[[], Any]) -> tuple[float, float, float]:
    """(user, sys, wall) seconds of ``fn()`` (CPU: the whole process, all threads)."""
    t0 = os.times()
    w0 = time.perf_counter()
    fn()
    w1 = time.perf_counter()
    t1 = os.times()
    return t1.user - t0.user, t1.system - t0.system, w1 - w0


def read_column(directory: Path, name: str) -> npt.NDArray[Any]:
    """One column of the part files of ``directory``, in file order."""
    files = sorted(directory.glob("part-*.parquet"))
    return np.concatenate([pq.read_table(f, columns=[name])[name].to_numpy() for f in files])


def compare(a: Path, b: Path) -> None:
    """The part files of ``a`` and of ``b`` hold the same table: the same column names and
    types (nullability too) and the same values, in the same order."""
    sa = pq.read_schema(sorted(a.glob("part-*.parquet"))[0])
    sb = pq.read_schema(sorted(b.glob("part-*.parquet"))[0])
    if [(f.name, f.type, f.nullable) for f in sa] != [(f.name, f.type, f.nullable) for f in sb]:
        raise AssertionError(f"the schemas differ:\n{sa}\n{sb}")
    for col in sa.names:
        x, y = read_column(a, col), read_column(b, col)
        if x.size != y.size:
            raise AssertionError(f"{col}: {x.size} against {y.size} rows")
        if x.dtype != y.dtype or not np.array_equal(x, y):
            raise AssertionError(f"the outputs differ in {col}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hs_ib_bench")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: temp)")
    ap.add_argument(
        "--paths",
        default="numpy,new",
        help="comma-separated: numpy (the numpy + pyarrow baseline), new, new-cache (page "
        "cache, no O_DIRECT), new-scalar (the tzcnt extraction instead of vpcompressb)",
    )
    ap.add_argument(
        "--check", action="store_true", help="compare each path's output with the numpy path's"
    )
    args = ap.parse_args()

    tic = time.perf_counter()
    planes, seq_all = build_planes(args.steps, args.seed, args.cache)
    T = args.steps
    seq = seq_all[1:]
    counts = intervals.count_starts(planes, seq, T, CHUNK_LOG2)
    total = int(counts.sum())
    print(
        f"planes {planes.shape} ({planes.nbytes / 1e6:.0f} MB), {len(seq_all)} sequences, "
        f"{total / 1e6:.1f} M intervals ({total / T:.1f} a step); setup "
        f"{time.perf_counter() - tic:.1f} s"
    )
    out_root = Path(tempfile.mkdtemp(prefix="ib_bench_", dir=args.out))
    paths: dict[str, Callable[[Path], Any]] = {
        "numpy": lambda d: numpy_path(planes, seq, T, d),
        "new": lambda d: intervals.write_layer_intervals(planes, counts, seq, T, d),
        "new-cache": lambda d: intervals.write_layer_intervals(
            planes, counts, seq, T, d, direct=False
        ),
        "new-scalar": lambda d: intervals.write_layer_intervals(
            planes, counts, seq, T, d, vbmi2=False
        ),
    }
    names = [p for p in args.paths.split(",") if p]
    if unknown := [n for n in names if n not in paths]:
        ap.error(f"unknown paths: {unknown}")
    if args.check and ("numpy" not in names or len(names) < 2):
        ap.error("--check needs the numpy path and another")
    # warm-up (compilation, cache loading, imports) on a small slice
    tic = time.perf_counter()
    W = min(planes.shape[2], 1 << 12)
    small = np.ascontiguousarray(planes[:, :, :W])
    small.setflags(write=False)  # the same type as the memory map (no compilation later)
    sc = intervals.count_starts(small, seq, W * 64, CHUNK_LOG2)
    if "numpy" in names:
        numpy_path(small, seq, W * 64, out_root / "warm-numpy")
    for vbmi2 in (False, True):
        intervals.write_layer_intervals(
            small, sc, seq, W * 64, out_root / f"warm-new{vbmi2}", vbmi2=vbmi2
        )
    if args.check:
        compare(out_root / "warm-numpy", out_root / "warm-newTrue")
    print(f"warm-up {time.perf_counter() - tic:.1f} s")
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    sizes: dict[str, int] = {}
    try:
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                d = out_root / name
                shutil.rmtree(d, ignore_errors=True)
                os.sync()
                results[name].append(measure(lambda n=name, d=d: paths[n](d)))  # type: ignore[misc]
                sizes[name] = sum(f.stat().st_size for f in d.glob("part-*.parquet"))
                u, s, w = results[name][-1]
                print(f"  run {r} {name:10s} user {u:6.2f} sys {s:5.2f} wall {w:6.2f}")
        print(f"\n{args.steps} steps, {total / 1e6:.1f} M intervals, median of {args.repeats}:")
        print(
            f"{'path':10s} {'user':>7s} {'sys':>6s} {'CPU-s':>7s} {'wall':>7s} {'M/CPU-s':>8s} "
            f"{'MB':>7s}"
        )
        cpu = {}
        for name in names:
            rs = results[name]
            u = statistics.median(x[0] for x in rs)
            s = statistics.median(x[1] for x in rs)
            c = statistics.median(x[0] + x[1] for x in rs)
            w = statistics.median(x[2] for x in rs)
            cpu[name] = c
            print(
                f"{name:10s} {u:7.2f} {s:6.2f} {c:7.2f} {w:7.2f} {total / c / 1e6:8.0f} "
                f"{sizes[name] / 1e6:7.1f}"
            )
        print("CPU-s of each run:", {n: [round(x[0] + x[1], 2) for x in results[n]] for n in names})
        if "numpy" in cpu and "new" in cpu:
            print(f"CPU-s ratio numpy/new: {cpu['numpy'] / cpu['new']:.2f}")
        if args.check and "numpy" in names and len(names) > 1:
            tic = time.perf_counter()
            for name in names:
                if name != "numpy":
                    compare(out_root / "numpy", out_root / name)
                    print(f"check: {name} holds the same table as numpy")
            print(f"check {time.perf_counter() - tic:.1f} s")
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


if __name__ == "__main__":
    main()
