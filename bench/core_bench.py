"""Core benchmark (issue #2): index build, sizes, peak RSS, select/match and window latency.

Run with ``make bench`` (T = 1e7 and 1e8) or ``make bench-small`` (T = 1e6). Every latency is
the median of ``--repeats`` runs and is printed beside the straightforward full-scan numpy
baseline (``bench/baseline.py``) run in the same process on the same query, as a ratio; the
two answers are compared and must be identical.

Each phase runs in its own process so that its peak RSS is its own. "Cold" runs drop the
dataset's files from the page cache (``posix_fadvise(DONTNEED)`` after closing every mapping)
before each repeat; the host may still cache them, so cold figures are optimistic.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.match import match
from hiddenscope_core.models import MatchQuery, SelectQuery
from hiddenscope_core.reader import open_dataset
from hiddenscope_core.select import select_cells
from hiddenscope_core.synth import generate_chunks

from bench.baseline import baseline_match

GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
ON_GRID = 0.3
OFF_GRID = 0.35


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.core_bench", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    sys.stderr.write(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- build


def _warm_up(root: Path, cells: int, dtype: str) -> float:
    """Build and delete a small dataset: the one-time cost of a process (imports are done;
    loading the compiled kernels from numba's cache) stays out of the measured build, as in a
    long-lived ingest worker. Returns its wall seconds."""
    t0 = time.perf_counter()
    steps = 1 << 17
    with DatasetWriter.create(root / "warmup", "warmup", n_steps=steps) as w:
        lw = w.add_layer("cell", n_cells=cells, dtype=dtype, transform="none", thresholds=GRID)
        for chunk in generate_chunks(steps, cells, chunk_steps=steps, seed=0, dtype=dtype):
            lw.write(chunk)
        w.publish()
    shutil.rmtree(root / "warmup", ignore_errors=True)
    return time.perf_counter() - t0


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def build(root: Path, name: str, steps: int, cells: int, dtype: str, seed: int) -> dict[str, Any]:
    """Generate LSTM-like states and ingest them; time only the writer's work (CPU of all the
    process's threads, the data generation's subtracted)."""
    warmup_s = _warm_up(root, cells, dtype)
    gen_s = 0.0
    write_s = 0.0
    u0, s0 = _cpu()
    gen_u = gen_s_sys = 0.0
    with DatasetWriter.create(root, name, n_steps=steps) as w:
        lw = w.add_layer("cell", n_cells=cells, dtype=dtype, transform="none", thresholds=GRID)
        chunks = generate_chunks(steps, cells, chunk_steps=1 << 20, seed=seed, dtype=dtype)
        while True:
            t0, (gu, gs) = time.perf_counter(), _cpu()
            chunk = next(chunks, None)
            gen_s += time.perf_counter() - t0
            gu1, gs1 = _cpu()
            gen_u += gu1 - gu
            gen_s_sys += gs1 - gs
            if chunk is None:
                break
            t0 = time.perf_counter()
            lw.write(chunk)
            write_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        manifest = w.publish()
        publish_s = time.perf_counter() - t0
    u1, s1 = _cpu()
    sys_s = s1 - s0 - gen_s_sys  # the kernel's share: writes, page faults
    cpu = u1 - u0 - gen_u + sys_s
    written = sum(
        f.stat().st_size for f in (root / "datasets" / manifest.id).rglob("*") if f.is_file()
    )
    return {
        "steps": steps,
        "cells": cells,
        "dtype": dtype,
        "id": manifest.id,
        "write_s": write_s,
        "publish_s": publish_s,
        "build_s": write_s + publish_s,
        "build_cpu_s": cpu,
        "build_sys_s": sys_s,
        "bytes_written": written,
        "generate_s": gen_s,
        "warmup_s": warmup_s,
        "peak_rss_mb": _rss_mb(),
        "phases_s": {k: round(v, 3) for k, v in {**lw.timings, **w.timings}.items()},
    }


def sizes(path: Path, steps: int, cells: int) -> dict[str, int]:
    """Bytes per component of a published dataset."""
    out: dict[str, int] = {"raw_float32": steps * cells * 4}
    for f in path.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(path).as_posix()
        if "/states/" in rel:
            key = "parquet_states"
        elif "/intervals/" in rel or rel.endswith(".duckdb") or rel.endswith(".wal"):
            key = "duckdb_index"
        elif rel.endswith(("planes.bin", "rows.bin")):
            key = "bit_planes"
        elif rel.endswith("values.bin"):
            key = "column_values"
        else:
            key = "other"
        out[key] = out.get(key, 0) + f.stat().st_size
    return out


# ---------------------------------------------------------------------------- queries


def _drop_cache(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def find_selection(ds: Any, size: int, seed: int) -> tuple[int, int, list[int]]:
    """A select range whose S1 has ``size`` cells (or the nearest larger, truncated)."""
    rng = np.random.default_rng(seed)
    best: tuple[int, int, list[int]] | None = None
    for _ in range(4000):
        a = int(rng.integers(1, ds.n_steps - 40))
        b = a + int(rng.integers(3, 12))
        sel = select_cells(ds, SelectQuery(layer="cell", start=a, end=b, threshold=ON_GRID))
        n = len(sel.cells)
        if n == size:
            return a, b, sel.cells
        if n > size and (best is None or n < len(best[2])):
            best = (a, b, sel.cells[:size])
    if best is None:
        raise RuntimeError(f"no range selects {size} cells")
    return best


def _median_times(fn: Any, repeats: int, before: Any = None) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _cold_match(path: Path, q: MatchQuery) -> Any:
    """Match on a freshly opened dataset (no mapping kept from earlier runs)."""
    return match(open_dataset(path), q, workers=2)


def queries(path: Path, repeats: int, baseline: bool) -> dict[str, Any]:
    ds = open_dataset(path)
    out: dict[str, Any] = {}
    seq = ds.sequence_starts()
    for label, size, theta in (
        ("s1_10_grid", 10, ON_GRID),
        ("s1_10_offgrid", 10, OFF_GRID),
        ("s1_3_grid", 3, ON_GRID),
    ):
        a, b, cells = find_selection(ds, size, seed=size)
        q = MatchQuery(layer="cell", cells=cells, threshold=theta)
        row: dict[str, Any] = {"range": [a, b], "cells": cells}
        match(ds, q)  # warm-up: JIT load and page cache
        for workers in (1, 2):
            t, res = _median_times(functools.partial(match, ds, q, workers=workers), repeats)
            row[f"warm_{workers}w_s"] = t
        hits = [(h.start, h.end, h.intersection, h.union, h.level) for h in res.hits]
        row["top_intersection"] = [hits[0][2], hits[-1][2]] if hits else []

        t, _ = _median_times(
            functools.partial(_cold_match, path, q), repeats, before=lambda: _drop_cache(path)
        )
        row["cold_2w_s"] = t
        if baseline:
            values = ds.values("cell")
            cols = np.ascontiguousarray(values[cells].astype(np.float32))
            t, ref = _median_times(functools.partial(baseline_match, cols, values, seq, q), repeats)
            row["baseline_s"] = t
            row["identical"] = ref == hits
            row["ratio_vs_baseline"] = t / row["warm_2w_s"]
        out[label] = row
    out["peak_rss_mb"] = _rss_mb()
    return out


def windows(path: Path, repeats: int) -> dict[str, Any]:
    """Random 500-step windows, first from disk (the build writes the states around the page
    cache, so they are not cached: as after a restart), then the same windows again from the
    page cache."""
    ds = open_dataset(path)
    rng = np.random.default_rng(0)
    ds.window("cell", 0, 500)
    starts = [int(rng.integers(0, ds.n_steps - 500)) for _ in range(max(repeats, 20))]
    out: dict[str, Any] = {}
    for label in ("cold", "warm"):
        times = []
        for a in starts:
            t0 = time.perf_counter()
            ds.window("cell", a, a + 500)
            times.append(time.perf_counter() - t0)
        out[f"{label}_p50_ms"] = 1000 * statistics.median(times)
        out[f"{label}_max_ms"] = 1000 * max(times)
    out["window_500_p50_ms"], out["max_ms"] = out["warm_p50_ms"], out["warm_max_ms"]
    return out


# ---------------------------------------------------------------------------- driver


def _print_report(steps: int, b: dict[str, Any], sz: dict[str, int], q: dict[str, Any]) -> None:
    cores = b["build_cpu_s"] / b["build_s"] if b["build_s"] else 1.0
    print(f"\n=== T = {steps:.0e} steps x D = {b['cells']} ({b['dtype']} storage) ===")
    runs = b.get("runs", [b])
    print(
        f"index build (median of {len(runs)}): {b['build_s']:.1f} s wall "
        f"({steps / b['build_s'] / 1e6:.2f} M steps/s), "
        f"{b['build_cpu_s']:.1f} CPU-s = {steps / b['build_cpu_s'] / 1e6:.2f} M steps/s per core "
        f"({cores:.2f} cores busy), of which kernel {b['build_sys_s']:.1f} CPU-s "
        f"(user-space only: {steps / (b['build_cpu_s'] - b['build_sys_s']) / 1e6:.2f} M steps/s "
        f"per core); {b['bytes_written'] / 1e9:.2f} GB written = "
        f"{b['bytes_written'] / 1e9 / b['build_s']:.2f} GB/s; write {b['write_s']:.1f} s + "
        f"publish {b['publish_s']:.1f} s; peak RSS {b['peak_rss_mb']:.0f} MB "
        f"(data generation excluded: {b['generate_s']:.1f} s; so is a first small build, "
        f"{b.get('warmup_s', 0.0):.1f} s, that loads the compiled kernels)"
    )
    if len(runs) > 1:
        each = ", ".join(f"{steps / r['build_cpu_s'] / 1e6:.2f}" for r in runs)
        print(f"  M steps/s per core of each run: {each}")
    raw = sz["raw_float32"]
    parts = ", ".join(
        f"{k} {v / 1e9:.2f} GB ({v / raw:.2f}x)"
        for k, v in sorted(sz.items())
        if k != "raw_float32"
    )
    print(f"on disk vs raw float32 {raw / 1e9:.2f} GB: {parts}")
    print(f"match peak RSS {q['peak_rss_mb']:.0f} MB")
    for label, row in q.items():
        if not isinstance(row, dict):
            continue
        line = (
            f"{label:15s} |S1|={len(row['cells'])}: warm 1 worker {row['warm_1w_s'] * 1e3:.1f} ms, "
            f"2 workers {row['warm_2w_s'] * 1e3:.1f} ms, cold {row['cold_2w_s'] * 1e3:.1f} ms"
        )
        if "baseline_s" in row:
            line += (
                f"; numpy full scan {row['baseline_s'] * 1e3:.0f} ms -> "
                f"{row['ratio_vs_baseline']:.1f}x faster, identical={row['identical']}"
            )
        print(line)


def _median_build(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The build run of median CPU time (its figures stay consistent with each other)."""
    ranked = sorted(runs, key=lambda r: r["build_cpu_s"])
    return {**ranked[(len(ranked) - 1) // 2], "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("phase", nargs="?", default="all", choices=["all", "build", "query", "window"])
    p.add_argument("--steps", type=int, nargs="+", default=[10_000_000, 100_000_000])
    p.add_argument("--cells", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--build-repeats", type=int, default=5, help="index builds per T (the median is printed)"
    )
    p.add_argument("--root", type=Path, default=Path("bench/out/data"))
    p.add_argument("--dtype", default=None, help="storage dtype (default: float32 up to 1e7)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the generated datasets")
    p.add_argument("--path", type=Path)
    args = p.parse_args()

    if args.phase == "build":
        dtype = args.dtype or "float32"
        res = build(args.root, f"bench-{args.steps[0]}", args.steps[0], args.cells, dtype, seed=1)
        print(json.dumps(res))
        return
    if args.phase == "query":
        print(json.dumps(queries(args.path, args.repeats, not args.no_baseline)))
        return
    if args.phase == "window":
        print(json.dumps(windows(args.path, args.repeats)))
        return

    args.root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for steps in args.steps:
        shutil.rmtree(args.root / "datasets", ignore_errors=True)
        shutil.rmtree(args.root / "names", ignore_errors=True)
        dtype = args.dtype or ("float32" if steps <= 10_000_000 else "float16")
        common = ["--root", str(args.root), "--cells", str(args.cells), "--dtype", dtype]
        runs = []
        for i in range(args.build_repeats):
            if runs:  # keep only the last build (the one the queries use)
                shutil.rmtree(args.root / "datasets" / runs[-1]["id"], ignore_errors=True)
                shutil.rmtree(args.root / "names", ignore_errors=True)
            runs.append(_run_child("build", "--steps", str(steps), *common))
            print(f"  build {i + 1}/{args.build_repeats}: {runs[-1]['build_s']:.1f} s", flush=True)
        b = _median_build(runs)
        path = args.root / "datasets" / runs[-1]["id"]
        sz = sizes(path, steps, args.cells)
        qargs = ["query", "--path", str(path), "--repeats", str(args.repeats)]
        if args.no_baseline:
            qargs.append("--no-baseline")
        q = _run_child(*qargs)
        _print_report(steps, b, sz, q)
        report[str(steps)] = {"build": b, "sizes": sz, "queries": q}
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    # the original tool's precise mode: T = 1e6 x D = 200 (own root: --keep keeps the above)
    small_root = args.root / "small"
    shutil.rmtree(small_root, ignore_errors=True)
    small = ["--root", str(small_root), "--cells", "200", "--dtype", "float32"]
    b = _run_child("build", "--steps", "1000000", *small)
    path = small_root / "datasets" / b["id"]
    q = _run_child("query", "--path", str(path), "--repeats", str(args.repeats))
    _print_report(1_000_000, b, sizes(path, 1_000_000, 200), q)
    report["1000000x200"] = {"build": b, "queries": q}
    shutil.rmtree(path, ignore_errors=True)
    # window reads: 500 steps x D = 1024
    wide = ["--root", str(small_root), "--cells", "1024", "--dtype", "float32"]
    b = _run_child("build", "--steps", "200000", *wide)
    path = small_root / "datasets" / b["id"]
    w = _run_child("window", "--path", str(path), "--repeats", str(args.repeats))
    print(
        f"\nwindow 500 steps x D = 1024: page cache p50 {w['warm_p50_ms']:.2f} ms, max "
        f"{w['warm_max_ms']:.2f} ms; first read from disk p50 {w['cold_p50_ms']:.2f} ms, max "
        f"{w['cold_max_ms']:.2f} ms"
    )
    report["window_1024"] = w
    shutil.rmtree(path, ignore_errors=True)
    out = Path("bench/out/core_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nfull report: {out}")


if __name__ == "__main__":
    main()
