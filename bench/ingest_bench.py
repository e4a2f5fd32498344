"""Index-build throughput of DatasetWriter (not a test): steps/s at T steps x D cells.

Usage: uv run --frozen --all-extras python -m bench.ingest_bench --steps 10000000 --cells 64
The states are LSTM-like (per-cell Markov on/off runs, mean length ~20 steps, plus noise near the
threshold), so the interval count is realistic rather than best case. One 2^20-step block is
generated once and written repeatedly, so generation time is not measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np
from hiddenscope_core.build import DatasetWriter


def lstm_like(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flips = rng.random((n, d)) < 1 / 20
    state = (np.cumsum(flips, axis=0) + rng.integers(0, 2, d)) % 2
    amp = np.where(state == 1, 0.7, -0.2).astype(np.float32)
    noise = rng.standard_normal((n, d)).astype(np.float32) * 0.06
    return np.arctanh(np.clip(amp + noise, -0.999, 0.999)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000_000)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--transform", default="tanh")
    args = ap.parse_args()
    T, D = args.steps, args.cells
    block = lstm_like(1 << 20, D).astype(args.dtype)
    root = tempfile.mkdtemp(prefix="hs-bench-", dir="/tmp")
    c0 = time.process_time()
    t0 = time.perf_counter()
    w = DatasetWriter.create(root, "bench", n_steps=T)
    lw = w.add_layer("l", n_cells=D, dtype=args.dtype, transform=args.transform)
    written = 0
    while written < T:
        for s in range(0, block.shape[0], 65536):
            n = min(65536, T - written)
            if n <= 0:
                break
            lw.write(block[s : s + n])
            written += n
    t1 = time.perf_counter()
    m = w.publish()
    t2 = time.perf_counter()
    w.timings["total"] = t2 - t1
    cpu = time.process_time() - c0
    wall = t2 - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"T={T} D={D} {args.dtype} {args.transform}: wall {wall:.2f} s "
        f"(write phase {t1 - t0:.2f} s, publish/index {t2 - t1:.2f} s), cpu {cpu:.2f} s"
    )
    print(
        f"  {T / wall / 1e6:.2f} M steps/s wall, {T / cpu / 1e6:.2f} M steps/s per core-second, "
        f"max RSS {rss:.0f} MiB, cores {os.cpu_count()}"
    )
    import glob

    import pyarrow.parquet as pq

    n_iv = sum(
        pq.ParquetFile(f).metadata.num_rows
        for f in glob.glob(f"{root}/datasets/{m.id}/layers/l/intervals/*.parquet")
    )
    print(f"  on-intervals: {n_iv:,} ({len(m.layers[0].thresholds)} thresholds)")
    lt = {k: round(v, 2) for k, v in lw.timings.items()}
    print(
        f"  write phase (main thread): {lt}, waited for the Parquet thread {lw.parquet_wait:.2f} s"
    )
    print("  publish phases:", {k: round(v, 2) for k, v in w.timings.items()})
    print("  sizes:", {k: f"{v / 1e6:.0f} MB" for k, v in m.sizes.items()})


if __name__ == "__main__":
    main()
