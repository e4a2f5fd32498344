"""What the job workflow costs a match worker: the shards of one match job run in-process
through ``hiddenscope_match.worker.run_shard`` (claim under a lease, heartbeat, shared floor,
result, merge; a real ``redis-server``) against the same shards through the core alone
(``match_shard`` + ``merge_partials``), in the same process, answers compared.

Run: ``uv run --frozen --all-extras python -m bench.shard_workflow_bench`` (T = 1e7 × 64, shards
of 2^20 steps: 10 shards of ~10 ms, where a per-shard overhead shows most).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hiddenscope_core.match import match_shard, merge_partials, plan_shards
from hiddenscope_core.models import MatchQuery, MatchResult
from hiddenscope_match.datasets import Datasets
from hiddenscope_match.matches import shard_parts
from hiddenscope_match.worker import run_shard
from hiddenscope_service.jobs import JobStore, new_job_id
from hiddenscope_service.testing import RedisServer

from bench.match_service_bench import ensure_dataset

CELLS = [1, 2, 3, 4, 5, 6, 24, 49, 50, 52]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10_000_000)
    p.add_argument("--shard-steps", type=int, default=1 << 20)
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--jobs", type=int, default=40, help="jobs per side (medians are printed)")
    p.add_argument("--data-root", type=Path, default=Path("bench/out/match_service/data"))
    args = p.parse_args()

    ds = ensure_dataset(args.data_root, f"ms-{args.steps}-float32", args.steps, 64, tokens=True,
                        seed=3)  # fmt: skip
    datasets = Datasets(args.data_root)
    query = MatchQuery(layer="cell", cells=CELLS, threshold=args.threshold, top_k=50)
    shards = plan_shards(ds, query, args.shard_steps)
    payload = {"dataset_id": ds.id, "query": query.model_dump(mode="json")}

    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            store = JobStore(redis.client(), prefix="bench:match", max_attempts=3)
            core_ms: list[float] = []
            workflow_ms: list[float] = []
            for _ in range(args.jobs):  # alternate, so that drift hits both sides alike
                t0 = time.perf_counter()
                partials = [match_shard(ds, query, lo, hi) for lo, hi in shards]
                expected = merge_partials(query, partials)
                core_ms.append((time.perf_counter() - t0) * 1000)

                job, _ = store.create("match", payload, job_id=new_job_id("match"),
                                      progress_total=len(shards))  # fmt: skip
                shard_parts(store, job.id).post(len(shards))
                t0 = time.perf_counter()
                for i, (lo, hi) in enumerate(shards):
                    run_shard(job.id, i, lo, hi, store, datasets, "bench:1", 30.0)
                workflow_ms.append((time.perf_counter() - t0) * 1000)
                done = store.get(job.id)
                if (
                    done.status != "succeeded"
                    or MatchResult.model_validate(done.result) != expected
                ):
                    raise SystemExit(f"job {job.id} differs from the core's answer: {done.status}")
        finally:
            redis.stop()

    core, flow = statistics.median(core_ms), statistics.median(workflow_ms)
    print(f"match job, T = {args.steps:,}, {len(shards)} shards of {args.shard_steps:,} steps, "
          f"theta = {args.threshold}, {args.jobs} jobs per side, answers identical")  # fmt: skip
    print(f"  core alone (match_shard + merge_partials)  {core:8.1f} ms per job")
    print(f"  through the job workflow (run_shard)       {flow:8.1f} ms per job")
    print(f"  ratio {flow / core:.3f}; workflow per shard {(flow - core) / len(shards):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
