"""Match service benchmark (issue #4): HTTP end to end against real processes.

A real ``redis-server``, real Celery worker processes and a real uvicorn server (the kit's test
helpers, :mod:`hiddenscope_service.testing`) serve datasets built with
``hiddenscope_core.synth.generate_chunks`` + ``DatasetWriter`` under ``--data-root`` (reused by
later runs). Every latency is the median of ``--repeats`` runs and is printed beside the
in-process core call it wraps, as a ratio (the service's overhead):

All HTTP goes through :class:`hiddenscope_client.HiddenScopeClient` (what users and the UI call).

* match: ``POST /v1/datasets/{ds}/matches?wait=60`` → 200 with the result, with 1 and 2 worker
  processes (shards of ``--shard-steps``), against ``hiddenscope_core.match.match()`` in-process
  (its default threads, and one thread); the answers are compared and must be identical;
* window: ``GET .../layers/cell/states`` 500 steps x 1024 cells, JSON and Arrow IPC, each read
  into a float32 array, against ``Dataset.window``;
* search: ``GET .../search?q=`` (2- and 3-token phrases) over ``--search-steps`` tokens, against a
  vectorised numpy full scan; the first call (which builds the cached index) is reported apart.

Run: ``uv run --frozen --all-extras python -m bench.match_service_bench`` (T = 1e7; add
``--search-steps 100000000`` for search on 1e8 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from hiddenscope_client import HiddenScopeClient, MatchJob, MatchRequest, SearchResult
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.errors import NotFound
from hiddenscope_core.match import match
from hiddenscope_core.models import MatchQuery, SelectQuery
from hiddenscope_core.reader import Catalog, Dataset
from hiddenscope_core.select import select_cells
from hiddenscope_core.synth import generate_chunks
from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import RedisServer, start_celery_worker, start_uvicorn

GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
VOCAB_SIZE = 5000
HIT_FIELDS = ("start", "end", "sequence", "intersection", "union", "level")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _zipf_tokens(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.zipf(1.2, n) - 1
    return np.minimum(ids, VOCAB_SIZE - 1).astype(np.int32)


def ensure_dataset(
    root: Path,
    name: str,
    steps: int,
    cells: int,
    *,
    tokens: bool,
    seed: int,
    dtype: str = "float32",
) -> Dataset:
    """Open ``name`` under ``root``, building it first if it is missing."""
    cat = Catalog(root)
    try:
        return cat.get(name)
    except NotFound:
        pass
    _log(f"building {name}: T={steps:,} D={cells} tokens={tokens} ...")
    t0 = time.perf_counter()
    with DatasetWriter.create(root, name, n_steps=steps) as w:
        n_seq = 10
        w.set_sequences([i * (steps // n_seq) for i in range(n_seq)])
        if tokens:
            w.set_vocab([f"w{i}" for i in range(VOCAB_SIZE)])
        lw = w.add_layer("cell", n_cells=cells, dtype=dtype, transform="none", thresholds=GRID)
        done = 0
        chunks = generate_chunks(steps, cells, chunk_steps=1 << 20, seed=seed, dtype=dtype)
        for i, chunk in enumerate(chunks):
            lw.write(chunk)
            if tokens:
                w.write_tokens(_zipf_tokens(chunk.shape[0], seed * 1000 + i))
            done += chunk.shape[0]
        w.publish()
    _log(f"built {name} in {time.perf_counter() - t0:.1f}s")
    return cat.get(name)


def find_selection(ds: Dataset, size: int, seed: int) -> list[int]:
    """S1 of about ``size`` cells selected from a short range (as a user would)."""
    rng = np.random.default_rng(seed)
    best: list[int] = []
    for _ in range(4000):
        a = int(rng.integers(1, ds.n_steps - 40))
        b = a + int(rng.integers(3, 12))
        if ds.sequence_of(a) != ds.sequence_of(b - 1):
            continue
        sel = select_cells(ds, SelectQuery(layer="cell", start=a, end=b, threshold=0.3))
        if len(sel.cells) >= size:
            return sel.cells[:size]
        if len(sel.cells) > len(best):
            best = sel.cells
    return best or [0, 1, 2]


def drop_page_cache(path: Path) -> None:
    """Evict a dataset's files from the page cache (``posix_fadvise(DONTNEED)``), so that the
    next query reads them from the disk (the host may still cache them: cold figures are
    optimistic)."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


class Stack:
    def __init__(self, work: Path, data_root: Path, shard_steps: int) -> None:
        self.work = work
        self.redis = RedisServer(work / "redis").start()
        self.env = {
            "HIDDENSCOPE_MATCH_REDIS_URL": self.redis.url,
            "HIDDENSCOPE_MATCH_DATA_ROOT": str(data_root),
            "HIDDENSCOPE_MATCH_SHARD_STEPS": str(shard_steps),
            "HIDDENSCOPE_MATCH_MAX_WINDOW_VALUES": str(1 << 22),
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[ManagedProcess] = []
        self.api = start_uvicorn(
            "hiddenscope_match.app:create_app", log_path=work / "api.log", env=self.env
        )

    def add_worker(self) -> None:
        n = len(self.workers)
        self.workers.append(
            start_celery_worker(
                "hiddenscope_match.tasks:celery_app",
                queues=["match"],
                log_path=self.work / f"worker{n}.log",
                env=self.env,
                concurrency=1,
                name=f"bench{n}",
            )
        )

    def stop(self) -> None:
        for p in (self.api, *self.workers):
            p.stop()
        self.redis.stop()


def bench_match(
    stack: Stack, client: HiddenScopeClient, ds: Dataset, repeats: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cells = find_selection(ds, 10, seed=1)
    queries = {"s1_grid_0.3": 0.3, "s1_offgrid_0.35": 0.35}
    for n_workers in (1, 2):
        while len(stack.workers) < n_workers:
            stack.add_worker()
        for label, theta in queries.items():
            request = MatchRequest(layer="cell", cells=tuple(cells), threshold=theta, top_k=50)

            def post(request: MatchRequest = request) -> MatchJob:
                job = client.start_match(ds.name, request, wait=60)
                assert job.status == "succeeded", job
                return job

            # the first query of fresh workers on a dataset out of the page cache
            drop_page_cache(ds.path)
            t0 = time.perf_counter()
            post()  # warms: worker imports, numba cache, dataset opened, page cache
            cold = time.perf_counter() - t0
            t, job = median_time(post, repeats)
            q = MatchQuery(layer="cell", cells=cells, threshold=theta, top_k=50)
            core_t, ref = median_time(lambda q=q: match(ds, q), repeats)
            core1_t, _ = median_time(lambda q=q: match(ds, q, workers=1), repeats)
            assert job.result is not None
            got = [[getattr(h, k) for k in HIT_FIELDS] for h in job.result.hits]
            want = [[getattr(h, k) for k in HIT_FIELDS] for h in ref.hits]
            key = f"{label}_{n_workers}w"
            out[key] = {
                "cells": cells,
                "shards": job.progress.total,
                "http_s": t,
                "cold_first_s": cold,
                "job_running_s": job.timings.running_seconds,
                "core_match_s": core_t,
                "core_match_1thread_s": core1_t,
                "overhead_ratio": t / core_t,
                "overhead_ratio_vs_1thread": t / core1_t,
                "identical": got == want,
            }
            _log(f"match {key}: {json.dumps(out[key])}")
    return out


def bench_window(client: HiddenScopeClient, ds: Dataset, repeats: int) -> dict[str, Any]:
    a = ds.n_steps // 3
    core_t, ref = median_time(lambda: ds.window("cell", a, a + 500), repeats)
    sizes: list[int] = []

    def count_bytes(response: httpx.Response) -> None:
        sizes.append(int(response.headers.get("content-length", 0)))

    client.http.event_hooks["response"].append(count_bytes)
    try:
        client.states(ds.name, "cell", a, a + 500)
        json_t, w_json = median_time(lambda: client.states(ds.name, "cell", a, a + 500), repeats)
        json_bytes = sizes[-1]
        arrow_t, w_arrow = median_time(
            lambda: client.states(ds.name, "cell", a, a + 500, arrow=True), repeats
        )
        arrow_bytes = sizes[-1]
    finally:
        client.http.event_hooks["response"].remove(count_bytes)
    assert np.array_equal(w_json.values, ref)
    assert np.array_equal(w_arrow.values, ref)
    out = {
        "steps": 500,
        "cells": ref.shape[1],
        "json_s": json_t,
        "json_bytes": json_bytes,
        "arrow_s": arrow_t,
        "arrow_bytes": arrow_bytes,
        "core_window_s": core_t,
        "json_ratio": json_t / core_t,
        "arrow_ratio": arrow_t / core_t,
    }
    _log(f"window: {json.dumps(out)}")
    return out


def bench_search(client: HiddenScopeClient, ds: Dataset, repeats: int) -> dict[str, Any]:
    tokens = ds.tokens(0, ds.n_steps)
    vocab = ds.vocab()
    out: dict[str, Any] = {"tokens": ds.n_steps}
    phrases = {"bigram_frequent": [0, 1], "bigram_rare": [40, 41], "trigram": [0, 1, 2]}
    first = True
    for label, ids in phrases.items():
        q = " ".join(vocab[i] for i in ids)

        def get(q: str = q) -> SearchResult:
            return client.search(ds.name, q, limit=100)

        if first:
            # the first search of a dataset builds its index (a Celery task): the API answers
            # 503 + Retry-After until it is there (after waiting a little itself)
            t0 = time.perf_counter()
            client.search(ds.name, q, limit=1, wait_seconds=3600)
            out["first_call_with_index_build_s"] = time.perf_counter() - t0
            first = False
        t, found = median_time(get, repeats)

        def scan(ids: list[int] = ids) -> np.ndarray:
            n = len(ids)
            m = tokens[: len(tokens) - n + 1] == ids[0]
            for j in range(1, n):
                m &= tokens[j : len(tokens) - n + 1 + j] == ids[j]
            return np.flatnonzero(m)

        scan_t, want = median_time(scan, max(1, repeats // 4))
        out[label] = {
            "http_s": t,
            "total": found.total,
            "numpy_scan_s": scan_t,
            "speedup_vs_scan": scan_t / t,
            "identical": found.positions == want[:100].tolist() and found.total == len(want),
        }
        _log(f"search {label}: {json.dumps(out[label])}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10_000_000, help="T of the match dataset")
    p.add_argument("--search-steps", type=int, default=0, help="tokens (default: --steps)")
    p.add_argument(
        "--shard-steps",
        type=int,
        default=1 << 24,
        help="the match service's HIDDENSCOPE_MATCH_SHARD_STEPS (its default)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16"],
        help="storage dtype of the match dataset (1e8 x 64: float16 fits the disk)",
    )
    p.add_argument("--data-root", type=Path, default=Path("bench/out/match_service/data"))
    p.add_argument("--out", type=Path, default=Path("bench/out/match_service_bench.json"))
    args = p.parse_args()
    root = args.data_root
    ds = ensure_dataset(root, f"ms-{args.steps}-{args.dtype}", args.steps, 64, tokens=True,
                        seed=3, dtype=args.dtype)  # fmt: skip
    win = ensure_dataset(root, "ms-window-1024", 200_000, 1024, tokens=False, seed=4)
    search_ds = ds
    if args.search_steps and args.search_steps != args.steps:
        search_ds = ensure_dataset(
            root, f"ms-tokens-{args.search_steps}", args.search_steps, 1, tokens=True, seed=5
        )
    results: dict[str, Any] = {"steps": args.steps, "shard_steps": args.shard_steps}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), root, args.shard_steps)
        try:
            stack.add_worker()
            with HiddenScopeClient(stack.api.url or "", timeout=300) as client:
                results["match"] = bench_match(stack, client, ds, args.repeats)
                results["window"] = bench_window(client, win, max(args.repeats, 20))
                results["search"] = bench_search(client, search_ds, max(args.repeats, 20))
        finally:
            stack.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)
    return 0


def _print_table(r: dict[str, Any]) -> None:
    print(f"\nmatch service, T = {r['steps']:,} x D = 64, shards of {r['shard_steps']:,} steps")
    print(f"{'match query':28} {'shards':>6} {'HTTP s':>8} {'cold s':>8} {'core s':>8} "
          f"{'core1t s':>8} {'ratio':>6} {'ratio1t':>7} identical")  # fmt: skip
    for key, m in r["match"].items():
        print(f"{key:28} {m['shards']:>6} {m['http_s']:8.4f} {m['cold_first_s']:8.3f} "
              f"{m['core_match_s']:8.4f} "
              f"{m['core_match_1thread_s']:8.4f} {m['overhead_ratio']:6.2f} "
              f"{m['overhead_ratio_vs_1thread']:7.2f} {m['identical']}")  # fmt: skip
    w = r["window"]
    print(
        f"\nwindow {w['steps']} steps x {w['cells']} cells: "
        f"core {w['core_window_s'] * 1e3:.1f} ms"
        f" | JSON {w['json_s'] * 1e3:.1f} ms ({w['json_ratio']:.1f}x, {w['json_bytes']:,} B)"
        f" | Arrow {w['arrow_s'] * 1e3:.1f} ms ({w['arrow_ratio']:.1f}x, {w['arrow_bytes']:,} B)"
    )
    s = r["search"]
    print(
        f"\nsearch over {s['tokens']:,} tokens (first call incl. index build: "
        f"{s['first_call_with_index_build_s']:.2f} s)"
    )
    for label in ("bigram_frequent", "bigram_rare", "trigram"):
        x = s[label]
        print(
            f"  {label:16} HTTP {x['http_s'] * 1e3:8.2f} ms"
            f"  numpy scan {x['numpy_scan_s'] * 1e3:8.1f} ms"
            f"  speedup {x['speedup_vs_scan']:7.1f}x  hits {x['total']:,}"
            f"  identical {x['identical']}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
