"""Ingest throughput through the real service (not a test): uvicorn API + Celery worker(s) + Redis.

Usage: uv run --frozen --all-extras python -m bench.ingest_bench_service --steps 10000000 --cells 64

Runs, each on a fresh stack (redis-server, uvicorn, ``celery worker --concurrency N``):

* ``npy`` and ``hdf5`` (chunked, uncompressed) states named on the server (JSON ``{manifest,
  path}`` request; no upload copy), one job, with 1 worker process and with 2 (the job's
  layer shards are shared by both: ``hiddenscope_ingest.shards``);
* ``npy-upload``: the same ``.npy`` sent as a multipart upload (1 worker), which adds the
  streamed upload (reported separately as upload MB/s up to the 202).

All HTTP goes through :class:`hiddenscope_client.HiddenScopeClient`. Steps/s and MB/s (input
bytes) are measured from the POST to the job's ``succeeded``; peak RSS
of the API process and of the worker processes (main + pool children) is sampled with psutil
every 0.2 s. The states are LSTM-like (as in ``bench.ingest_bench``), written once per format.
Each published dataset is deleted after its run (a dataset of 1e7 x 64 float32 is ~7 GB).

At 1e8 steps × 64 an input file is 25.6 GB and a published float32 dataset ~70 GB (float16
storage, ``--dtype float16``: ~45 GB); ``--formats npy`` runs one input only, so that T = 1e8
fits a disk with ~75 GB free.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
from hiddenscope_client import HiddenScopeClient, UploadFile
from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import RedisServer, start_celery_worker, start_uvicorn

from bench.ingest_bench import lstm_like

BLOCK = 1 << 20


def write_inputs(root: Path, T: int, D: int, hdf5: bool, npy_: bool) -> tuple[Path, Path]:
    """The same LSTM-like states as ``states.npy`` and/or ``states.h5`` (``/states``)."""
    block = lstm_like(BLOCK, D)
    npy = root / "states.npy"
    if npy_:
        arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(T, D))
        for lo in range(0, T, BLOCK):
            hi = min(T, lo + BLOCK)
            arr[lo:hi] = block[: hi - lo]
        arr.flush()
        del arr
    h5 = root / "states.h5"
    if hdf5:
        with h5py.File(h5, "w") as f:
            d = f.create_dataset("states", shape=(T, D), dtype=np.float32, chunks=(16384, D))
            for lo in range(0, T, BLOCK):
                hi = min(T, lo + BLOCK)
                d[lo:hi] = block[: hi - lo]
    return npy, h5


@dataclass
class RssSampler:
    procs: dict[str, ManagedProcess]
    peak: dict[str, int] = field(default_factory=dict)
    peak_single_worker: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            p = psutil.Process(pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            total = 0
            for p in self._tree(proc.pid):
                try:
                    rss = p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                total += rss
                if name == "worker" and p.pid != proc.pid:
                    self.peak_single_worker = max(self.peak_single_worker, rss)
            self.peak[name] = max(self.peak.get(name, 0), total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def manifest(name: str, file: str, key: str | None, dtype: str) -> dict[str, Any]:
    src: dict[str, Any] = {"file": file}
    if key:
        src["key"] = key
    layer = {"name": "cell", "source": src, "transform": "tanh", "dtype": dtype}
    return {"name": name, "layers": [layer]}


def run(
    base: Path,
    inputs: Path,
    label: str,
    file: Path,
    key: str | None,
    workers: int,
    jobs: int,
    upload: bool,
    T: int,
    dtype: str,
    shard_steps: int,
) -> dict[str, Any]:
    work = base / f"run-{label}-{workers}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    redis_server = RedisServer(work / "redis").start()
    env = {
        "HIDDENSCOPE_INGEST_REDIS_URL": redis_server.url,
        "HIDDENSCOPE_INGEST_DATA_ROOT": str(work / "data"),
        "HIDDENSCOPE_INGEST_ALLOWED_ROOTS": json.dumps([str(inputs)]),
        "HIDDENSCOPE_INGEST_MAX_UPLOAD_BYTES": str(64 * 2**30),
        "HIDDENSCOPE_INGEST_SHARD_STEPS": str(shard_steps),
        "PYTHONUNBUFFERED": "1",
    }
    worker = start_celery_worker(
        "hiddenscope_ingest.tasks:celery_app", queues=["ingest"], log_path=work / "worker.log",
        env=env, concurrency=workers, name="bench-ingest",
    )  # fmt: skip
    api = start_uvicorn("hiddenscope_ingest.app:create_app", log_path=work / "api.log", env=env)
    assert api.url is not None
    size = file.stat().st_size
    try:
        with (
            RssSampler({"api": api, "worker": worker}) as rss,
            HiddenScopeClient(api.url, timeout=3600) as client,
        ):
            t0 = time.perf_counter()
            job_ids: list[str] = []
            upload_s = None
            for j in range(jobs):
                m = manifest(f"bench-{label}-{workers}-{j}", file.name, key, dtype)
                if upload:
                    with open(file, "rb") as f:
                        job = client.upload_dataset(
                            json.dumps(m), [UploadFile(file.name, size, f)], timeout=3600
                        )
                    upload_s = time.perf_counter() - t0
                else:
                    job = client.ingest_path(m, str(inputs))
                job_ids.append(job.id)
            done = [client.wait_job(job_id, timeout=24 * 3600) for job_id in job_ids]
            wall = time.perf_counter() - t0
            for job in done:
                assert job.result is not None
                client.delete_dataset(job.result["dataset"]["id"])
    finally:
        api.stop()
        worker.stop()
        redis_server.stop()
        shutil.rmtree(work / "data", ignore_errors=True)
    steps = T * jobs
    out = {
        "input": label,
        "workers": workers,
        "jobs": jobs,
        "wall_s": round(wall, 2),
        "steps_per_s": round(steps / wall),
        "mb_per_s": round(size * jobs / wall / 1e6, 1),
        "peak_rss_api_mb": round(rss.peak.get("api", 0) / 2**20),
        "peak_rss_workers_total_mb": round(rss.peak.get("worker", 0) / 2**20),
        "peak_rss_one_worker_process_mb": round(rss.peak_single_worker / 2**20),
    }
    if upload_s is not None:
        out["upload_s"] = round(upload_s, 2)
        out["upload_mb_per_s"] = round(size / upload_s / 1e6, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000_000)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--no-upload", action="store_true", help="skip the multipart upload run")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                    help="storage dtype of the published dataset")  # fmt: skip
    ap.add_argument("--formats", default="npy,hdf5", help="inputs to run: npy, hdf5")
    ap.add_argument("--shard-steps", type=int, default=1 << 21)
    args = ap.parse_args()
    T, D = args.steps, args.cells
    base = Path(args.dir or tempfile.mkdtemp(prefix="hs-ingest-svc-", dir="/tmp"))
    inputs = base / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    formats = set(args.formats.split(","))
    npy, h5 = write_inputs(inputs, T, D, "hdf5" in formats, "npy" in formats)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e9:.2f} GB" for p in (npy, h5) if p.exists())
    print(f"T={T} D={D}: inputs written in {time.perf_counter() - t0:.1f}s ({sizes})", flush=True)
    results = []
    try:
        plan: list[tuple[str, Path, str | None, int, int, bool]] = []
        for workers in (1, 2):
            if "npy" in formats:
                plan.append(("npy", npy, None, workers, 1, False))
            if "hdf5" in formats:
                plan.append(("hdf5", h5, "/states", workers, 1, False))
        if not args.no_upload and "npy" in formats:
            plan.append(("npy-upload", npy, None, 1, 1, True))
        for label, file, key, workers, jobs, upload in plan:
            res = run(base, inputs, label, file, key, workers, jobs, upload, T, args.dtype,
                      args.shard_steps)  # fmt: skip
            results.append(res)
            print(json.dumps(res), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'input':<11} {'workers':>7} {'jobs':>4} {'wall s':>8} {'steps/s':>11} {'MB/s':>7} "
          f"{'API MB':>7} {'workers MB':>10} {'1 proc MB':>9}")  # fmt: skip
    for r in results:
        print(
            f"{r['input']:<11} {r['workers']:>7} {r['jobs']:>4} {r['wall_s']:>8} "
            f"{r['steps_per_s']:>11,} {r['mb_per_s']:>7} {r['peak_rss_api_mb']:>7} "
            f"{r['peak_rss_workers_total_mb']:>10} {r['peak_rss_one_worker_process_mb']:>9}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"steps": T, "cells": D, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
