"""The API's pre-202 check of an upload, run in a resource-limited child process.

The API process must not die (or balloon) on a crafted file: HDF5 is parsed by a C library
that has crashed on malformed input (h5py #1183), archives and text files cost memory and CPU
in proportion to what they claim. So :func:`check_in_sandbox` runs the check in a child forked
from a ``forkserver`` (started once, with the loaders preloaded, so a check costs a fork, not an
interpreter start) under

* ``RLIMIT_DATA`` = current data size + ``sandbox_memory_bytes``: heap and anonymous memory are
  capped, but read-only memory maps of the input files are not (``RLIMIT_AS`` would count
  them: a 20 GB ``.npy`` header check maps 20 GB of address space, so it is not used);
* ``RLIMIT_CPU`` = ``sandbox_cpu_seconds`` and a wall-clock timeout (the child is killed);
* ``RLIMIT_CORE`` = 0.

A child that crashes, runs out of memory or time is a 422 ("could not be parsed within the
limits"); a check that finds bad input reports the same problem (status, title, detail) the
worker would have stored. What the check covers:

* every array header (shapes, dtypes, declared sizes, HDF5 links/external storage/VDS/filters);
* text inputs (token files, CoNLL, FASTA, BED, vocabularies) when all of them together are at
  most ``validate_text_max_bytes``: parsed completely into a scratch directory;
* an ``archive`` of at most ``validate_archive_max_bytes``: extracted (member checks, bomb caps)
  into a scratch directory and everything inside checked as above. Larger text files and
  archives are checked by the worker (the job fails with the same 4xx).

The Celery worker needs no extra sandbox: each conversion runs in a prefork pool child, a crash
there is a lost worker (the message is re-queued, the attempt counted, the job failed after
``max_attempts``), and the API is not affected. ``RLIMIT_AS`` is not applied there either (the
conversion memory-maps inputs and index files far larger than RAM); ``worker_max_data_bytes``
optionally caps each pool child's heap with ``RLIMIT_DATA``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hiddenscope_core.reader import open_dataset
from hiddenscope_service.problems import ProblemError, problem_from_exception

from hiddenscope_ingest.errors import TooLarge
from hiddenscope_ingest.loaders import resolve_file
from hiddenscope_ingest.loaders.archives import extract_archive
from hiddenscope_ingest.loaders.base import Limits
from hiddenscope_ingest.manifest import IngestManifest, TracksManifest
from hiddenscope_ingest.plan import build_plan
from hiddenscope_ingest.rlimits import limit_data
from hiddenscope_ingest.tasknames import TRACKS_OP
from hiddenscope_ingest.track_plan import build_tracks_plan

_PRELOAD = [
    "numpy",
    "hiddenscope_ingest.plan",
    "hiddenscope_ingest.loaders.archives",
    "hiddenscope_ingest.loaders.hdf5_files",
    "hiddenscope_ingest.loaders.numpy_files",
    "hiddenscope_ingest.loaders.safetensors_files",
    "hiddenscope_ingest.loaders.arrow_files",
    "hiddenscope_ingest.track_plan",
]
_ctx: Any = None


def _context() -> Any:
    global _ctx
    if _ctx is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        _ctx = ctx
    return _ctx


def _child(conn: multiprocessing.connection.Connection, job: dict[str, Any]) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        cpu = int(job["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        limit_data(int(job["memory_bytes"]))
        outcome = ("ok", 0, "", "")
        try:
            deep_check(job)
        except MemoryError:
            outcome = ("error", 422, "Unprocessable content", _LIMIT_MESSAGE)
        except Exception as exc:
            p = problem_from_exception(exc)
            outcome = ("error", p.status, p.title, p.detail or "")
        conn.send(outcome)
    finally:
        conn.close()


_LIMIT_MESSAGE = (
    "the upload could not be parsed within the memory/time limits of the check "
    "(a malformed or hostile file?)"
)


def deep_check(job: dict[str, Any]) -> None:
    """The check itself (also callable in-process, e.g. from tests): raises 4xx errors."""
    if job.get("op") == TRACKS_OP:  # tracks added to a published dataset
        _deep_check_tracks(job)
        return
    manifest = IngestManifest.model_validate(job["manifest"])
    limits = Limits(**job["limits"])
    root = Path(job["root"])
    scratch = Path(job["scratch"]) if job.get("scratch") else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    try:
        if manifest.archive is not None:
            if scratch is None:
                return  # too large to check here; the worker extracts it
            extracted = scratch / "extracted"
            cap = int(job.get("archive_check_bytes") or limits.max_archive_bytes)
            check_limits = dataclasses.replace(
                limits, max_archive_bytes=min(cap, limits.max_archive_bytes)
            )
            try:
                extract_archive(resolve_file(root, manifest.archive), extracted, check_limits)
            except TooLarge:
                if cap < limits.max_archive_bytes:
                    return  # larger than this check extracts; the worker applies the real caps
                raise
            root = extracted
        plan = build_plan(manifest, root, limits, work_dir=scratch if job["deep_text"] else None)
        plan.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _deep_check_tracks(job: dict[str, Any]) -> None:
    """The check of tracks to add to the published dataset at ``job["dataset"]``."""
    manifest = TracksManifest.model_validate(job["manifest"])
    limits = Limits(**job["limits"])
    scratch = Path(job["scratch"]) if job.get("scratch") else None
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    try:
        ds = open_dataset(job["dataset"])
        work = scratch if job.get("deep_text") else None
        build_tracks_plan(manifest, ds, Path(job["root"]), limits, work).close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def check_in_sandbox(job: dict[str, Any], *, timeout: float) -> None:
    """Run :func:`deep_check` in a limited child; raises a :class:`ProblemError` with the
    child's problem (4xx), or 422 when the child died or ran out of time."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, job), daemon=True)
    proc.start()
    child.close()
    try:
        outcome = parent.recv() if parent.poll(timeout) else None
    except EOFError:
        outcome = None  # the child died before answering
    finally:
        parent.close()
        if outcome is None and proc.is_alive():
            proc.kill()
        proc.join(5)
        if job.get("scratch"):
            shutil.rmtree(job["scratch"], ignore_errors=True)
    if outcome is None:
        raise ProblemError(422, _LIMIT_MESSAGE, title="Unprocessable content")
    kind, status, title, detail = outcome
    if kind != "ok":
        raise ProblemError(int(status), str(detail), title=str(title))


def scratch_dir(base: Path) -> Path:
    """A fresh scratch directory name under ``base`` (created by the check, removed after)."""
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".check-", dir=base))
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return path
