"""The ingest service's logic between HTTP and Celery: validate an upload, persist it, create the
job, enqueue it; and, in the worker, run one conversion attempt (``run_conversion``).

Order of durability (``STYLE.md``): the upload is on disk and fsynced, then the job exists in
Redis, then the task is enqueued with only the job id. A conversion attempt is idempotent: it
starts from an empty work directory, removes the staging directory an earlier attempt left, and
recognises a dataset that an earlier attempt already published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hiddenscope_core.build import remove_build_dir
from hiddenscope_core.errors import Conflict, HiddenScopeError
from hiddenscope_core.models import DatasetManifest
from hiddenscope_service.jobs import Job, JobStore, body_hash
from hiddenscope_service.problems import ProblemError, problem_from_exception

from hiddenscope_ingest.catalog import DatasetCatalog
from hiddenscope_ingest.convert import Cancelled, convert
from hiddenscope_ingest.errors import InvalidData, InvalidManifest, PathForbidden
from hiddenscope_ingest.loaders import detect_format, resolve_file
from hiddenscope_ingest.loaders.archives import extract_archive
from hiddenscope_ingest.loaders.base import Limits
from hiddenscope_ingest.manifest import IngestManifest
from hiddenscope_ingest.plan import build_plan
from hiddenscope_ingest.sandbox import check_in_sandbox, deep_check, scratch_dir
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.shards import ShardFailed, board_runner
from hiddenscope_ingest.upload import ReceivedFile

log = logging.getLogger(__name__)

TEXT_FORMATS = frozenset({"text", "dict", "fasta", "bed"})
JOB_KIND = "ingest"
TASK_NAME = "ingest.convert"
RECONCILE_TASK_NAME = "hiddenscope_ingest.reconcile"


class JobBusy(Exception):
    """Another live worker holds the job; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"busy, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class _Lost(Exception):
    """The job is no longer held by this attempt (its lease was taken over)."""


def limits_of(settings: IngestSettings) -> Limits:
    return Limits(
        max_array_bytes=settings.max_array_bytes,
        max_archive_bytes=settings.max_archive_bytes,
        max_archive_members=settings.max_archive_members,
        max_compression_ratio=settings.max_compression_ratio,
        max_vocab_size=settings.max_vocab_size,
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_files(
    referenced: Iterable[str],
    checksums: Mapping[str, str],
    source_dir: Path,
    received: dict[str, ReceivedFile] | None,
) -> None:
    """Every file a manifest names is there (in the upload, or under the server directory) and
    matches its optional sha256. Raises 4xx errors."""
    for rel in referenced:
        if received is not None and rel not in received:
            raise InvalidManifest(f"the manifest names {rel!r}, which is not in the upload")
        resolve_file(source_dir, rel)
    for rel, expected in checksums.items():
        if received is not None:
            if rel not in received:
                raise InvalidManifest(f"a checksum is given for {rel!r}, which was not sent")
            actual = received[rel].sha256
        else:
            actual = _sha256_file(resolve_file(source_dir, rel))
        if actual != expected:
            raise InvalidData(
                f"{rel}: sha256 mismatch (expected {expected}, received {actual}); "
                "the file was damaged in transit or the checksum is wrong"
            )


def dataset_summary(m: DatasetManifest) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "n_steps": m.n_steps,
        "n_sequences": m.n_sequences,
        "layers": [x.name for x in m.layers],
        "tracks": [x.name for x in m.tracks],
        "location": f"/v1/datasets/{m.id}",
    }


@dataclass
class IngestService:
    settings: IngestSettings
    store: JobStore
    enqueue: Callable[[str], None]

    @property
    def catalog(self) -> DatasetCatalog:
        return DatasetCatalog(self.settings.data_root)

    @property
    def limits(self) -> Limits:
        return limits_of(self.settings)

    # -- submission ----------------------------------------------------------------------------

    def upload_dir(self, job_id: str) -> Path:
        return self.settings.uploads_path / job_id

    def resolve_server_path(self, path: str) -> Path:
        """A server-side directory under one of ``allowed_roots`` (symlinks resolved), else 403."""
        try:
            real = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            real = None
        roots = [r.resolve() for r in self.settings.allowed_roots]
        if real is None or not any(real.is_relative_to(r) for r in roots):
            # the same answer whether or not the path exists: no probing outside the roots
            raise PathForbidden(
                f"{path!r} is not inside an allowed server directory"
                + ("" if roots else " (none are configured: HIDDENSCOPE_INGEST_ALLOWED_ROOTS)")
            )
        if not real.is_dir():
            raise InvalidManifest(f"{path!r} is not a directory")
        return real

    def replay(self, idempotency_key: str | None, request_hash: str) -> Job | None:
        """The job of an earlier identical request (re-enqueued if still queued), or None."""
        if not idempotency_key:
            return None
        job = self.store.lookup_idempotent(idempotency_key, request_hash)
        if job is not None and job.status == "queued":
            self.enqueue(job.id)  # harmless if it was enqueued already: attempts are idempotent
        return job

    def validate(
        self,
        manifest: IngestManifest,
        source_dir: Path,
        received: dict[str, ReceivedFile] | None,
    ) -> None:
        """Cheap checks before answering 202: name free, files present, checksums, headers and
        shapes (archives and text files are checked by the worker). Raises 4xx errors."""
        if self.catalog.name_taken(manifest.name):
            raise Conflict(f"a dataset named {manifest.name!r} already exists; choose another name")
        check_files(manifest.referenced_files(), manifest.checksums, source_dir, received)
        if manifest.archive is not None and detect_format(manifest.archive) != "archive":
            raise InvalidManifest(f"{manifest.archive!r} is not a .zip, .tar or .tar.gz")
        self.deep_check(manifest, source_dir)

    def deep_check(self, manifest: IngestManifest, source_dir: Path) -> None:
        """Headers, shapes and (when small) text files and archives, checked before the 202
        in a resource-limited child process (:mod:`hiddenscope_ingest.sandbox`)."""
        s = self.settings
        text_bytes = 0
        for rel in manifest.referenced_files():
            if detect_format(rel) in TEXT_FORMATS:
                text_bytes += resolve_file(source_dir, rel).stat().st_size
        deep_text = text_bytes <= s.validate_text_max_bytes
        small_archive = (
            manifest.archive is not None
            and resolve_file(source_dir, manifest.archive).stat().st_size
            <= s.validate_archive_max_bytes
        )
        scratch = (
            scratch_dir(s.uploads_path) if (deep_text and text_bytes > 0) or small_archive else None
        )
        job = {
            "manifest": manifest.model_dump(mode="json"),
            "root": str(source_dir),
            "limits": dataclasses.asdict(self.limits),
            "scratch": str(scratch) if scratch is not None else None,
            "deep_text": scratch is not None and (deep_text or small_archive),
            "archive_check_bytes": 8 * s.validate_archive_max_bytes,
            "memory_bytes": s.sandbox_memory_bytes,
            "cpu_seconds": s.sandbox_cpu_seconds,
        }
        if s.sandbox:
            check_in_sandbox(job, timeout=s.sandbox_timeout_seconds)
        else:
            deep_check(job)

    def submit(
        self,
        manifest: IngestManifest,
        source_dir: Path,
        *,
        owned: bool,
        job_id: str,
        idempotency_key: str | None,
        request_hash: str,
    ) -> tuple[Job, bool]:
        """Create the job and enqueue it; ``(job, created)``. ``owned``: ``source_dir`` is an
        upload the service removes when the job ends."""
        payload = {
            "manifest": manifest.model_dump(mode="json"),
            "source_dir": str(source_dir),
            "owned": owned,
        }
        job, created = self.store.create(
            JOB_KIND,
            payload,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            job_id=job_id,
        )
        if not created:
            if owned:
                shutil.rmtree(source_dir, ignore_errors=True)
            return job, False
        try:
            self.enqueue(job.id)
        except Exception as exc:
            log.exception("enqueueing job %s failed", job.id)
            problem = ProblemError(503, "the job queue is unavailable; retry later")
            self.store.fail(job.id, problem.to_problem().model_dump(exclude_none=True))
            if owned:
                shutil.rmtree(source_dir, ignore_errors=True)
            raise problem from exc
        return job, True

    @staticmethod
    def request_hash(
        manifest: IngestManifest, files: dict[str, str] | None, path: str | None
    ) -> str:
        return body_hash(manifest.model_dump(mode="json"), sorted((files or {}).items()), path)

    # -- jobs and catalog ----------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return self.store.get_of_kind(job_id, JOB_KIND)

    def cancel(self, job_id: str) -> Job:
        self.job(job_id)
        job = self.store.request_cancel(job_id)
        if job.status == "cancelled" and job.payload.get("owned"):
            # cancelled while queued: no worker holds it, so its upload can go now (the worker
            # that later receives the message finds it terminal and removes nothing else)
            shutil.rmtree(Path(job.payload["source_dir"]), ignore_errors=True)
            shutil.rmtree(work_dir_of(self.settings, job_id), ignore_errors=True)
        return job

    def list_datasets(self) -> list[DatasetManifest]:
        return self.catalog.list()

    def get_dataset(self, name_or_id: str) -> DatasetManifest:
        return self.catalog.get(name_or_id)

    def delete_dataset(self, name_or_id: str) -> None:
        self.catalog.delete(name_or_id)


# -- the worker side ---------------------------------------------------------------------------


def run_conversion(
    job_id: str,
    owner: str,
    settings: IngestSettings,
    store: JobStore,
    spawn_helpers: Callable[[str, str, int], None] | None = None,
) -> str:
    """One attempt at job ``job_id``; returns the job's status afterwards. The layer shards
    are shared with helper tasks that ``spawn_helpers(build_id, phase, n)`` enqueues
    (:mod:`hiddenscope_ingest.shards`); without it this worker runs them all.

    Raises :class:`JobBusy` when another live worker holds the job (the task retries later).
    Every other outcome is recorded in the job store (bad input → ``failed`` with a 4xx problem).

    Order at the end of an attempt: the outcome is noted on the job (``note:outcome``), the work
    and upload directories are removed, and only then does the job become terminal. So a client
    that sees a terminal job never sees its upload still on disk (the race the error tests hit
    when the removal came after the transition), and an attempt that dies between the removal
    and the transition is finished by the next delivery from the note (its upload is gone).
    """
    claim = store.claim(job_id, owner, settings.lease_seconds)
    if claim.outcome == "busy":
        raise JobBusy(claim.retry_after)
    job = store.get(job_id)
    source_dir = Path(job.payload["source_dir"])
    owned = bool(job.payload.get("owned"))
    work = work_dir_of(settings, job_id)
    if claim.outcome != "claimed":
        _cleanup(work, source_dir if owned else None)
        return claim.status
    noted = store.get_note(job_id, "outcome")
    if noted:
        outcome = _Outcome(**json.loads(noted))
    else:
        try:
            with _Heartbeat(store, job_id, owner, settings.lease_seconds):
                attempt = _attempt_of(job)
                outcome = attempt(job, owner, settings, store, source_dir, work, spawn_helpers)
        except _Lost:
            log.warning("job %s: lease lost; another worker took over", job_id)
            return store.get(job_id).status
        store.set_note(job_id, "outcome", json.dumps(outcome.__dict__))
    _cleanup(work, source_dir if owned else None)
    if not store.finish(job_id, owner, outcome.status, result=outcome.result, error=outcome.error):
        log.warning("job %s: lease lost before it could be finished", job_id)
    return store.get(job_id).status


class _Heartbeat:
    """Renews the job's lease every ``lease / 3`` seconds from a thread while the attempt runs,
    so the lease stays live through long steps without progress reports (the index build in
    ``publish()``) and expires only when the process dies; the reconciler relies on that."""

    def __init__(self, store: JobStore, job_id: str, owner: str, lease: float) -> None:
        self.store, self.job_id, self.owner, self.lease = store, job_id, owner, lease
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.lease / 3):
            try:
                if self.store.report_progress(self.job_id, self.owner, self.lease) == "lost":
                    return
            except Exception:  # Redis briefly unreachable: try again at the next beat
                log.warning("job %s: lease renewal failed", self.job_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _attempt_of(job: Job) -> Callable[..., _Outcome]:
    """The attempt function of ``job``: a conversion, or a change of a published dataset's
    tracks (payload ``op: tracks``, :mod:`hiddenscope_ingest.versions`), so that whichever task
    delivers the job (``ingest.tracks``, or ``ingest.convert`` from the reconciler) runs it."""
    if job.payload.get("op") == "tracks":
        from hiddenscope_ingest.versions import attempt_tracks

        return attempt_tracks
    return _attempt


def progress_reporter(
    store: JobStore, job_id: str, owner: str, lease_seconds: float
) -> Callable[[int, int], None]:
    """``progress(done, total)`` for an attempt: reports at most every 0.2 s (and at the end),
    which also renews the lease; raises :class:`Cancelled` when the job was cancelled and
    :class:`_Lost` when another worker took it over."""
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < 0.2 and done < total:
            return
        last = now
        answer = store.report_progress(job_id, owner, lease_seconds, done, total)
        if answer == "cancel":
            raise Cancelled()
        if answer == "lost":
            raise _Lost()

    return progress


def work_dir_of(settings: IngestSettings, job_id: str) -> Path:
    return settings.uploads_path / f"{job_id}.work"


@dataclass
class _Outcome:
    status: Literal["succeeded", "failed", "cancelled"]
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def _cleanup(work: Path, upload: Path | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if upload is not None:
        shutil.rmtree(upload, ignore_errors=True)


def _attempt(
    job: Job,
    owner: str,
    settings: IngestSettings,
    store: JobStore,
    source_dir: Path,
    work: Path,
    spawn_helpers: Callable[[str, str, int], None] | None = None,
) -> _Outcome:
    job_id = job.id
    manifest = IngestManifest.model_validate(job.payload["manifest"])
    data_root = settings.data_root
    catalog = DatasetCatalog(data_root)
    # an earlier attempt's leftovers: its staging directory, and maybe a finished publication
    old_staging = store.get_note(job_id, "staging_id")
    if old_staging:
        remove_build_dir(data_root, data_root / "staging" / old_staging)
    published = catalog.find_by_job(manifest.name, job_id)
    if published is not None:
        return _Outcome("succeeded", result={"dataset": dataset_summary(published)})
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    progress = progress_reporter(store, job_id, owner, settings.lease_seconds)

    try:
        root = source_dir
        if manifest.archive is not None:
            root = work / "extracted"
            extract_archive(resolve_file(source_dir, manifest.archive), root, limits_of(settings))
        progress(0, 0)
        plan = build_plan(manifest, root, limits_of(settings), work_dir=work)
        try:
            result = convert(
                plan,
                data_root,
                on_created=lambda w: store.set_note(job_id, "staging_id", w.id),
                chunk_bytes=settings.chunk_bytes,
                progress=progress,
                provenance={"job_id": job_id},
                shard_steps=settings.shard_steps,
                part_steps=settings.part_steps,
                run_shards=board_runner(store, job_id, owner, settings, spawn_helpers),
            )
        finally:
            plan.close()
    except Cancelled:
        return _Outcome("cancelled")
    except _Lost:
        raise
    except Exception as exc:
        return failed_outcome(exc, job_id, "the conversion", settings.task_time_limit)
    return _Outcome("succeeded", result={"dataset": dataset_summary(result)})


def failed_outcome(exc: Exception, job_id: str, what: str, time_limit: float) -> _Outcome:
    """The ``failed`` outcome of an attempt that raised ``exc``: bad input keeps its 4xx
    problem (a helper's as it posted it), the soft time limit and anything unexpected are
    500s (the latter logged with its traceback)."""
    if isinstance(exc, ShardFailed):
        return _Outcome("failed", error=exc.problem)
    if isinstance(exc, HiddenScopeError):
        return _Outcome("failed", error=problem_from_exception(exc).model_dump(exclude_none=True))
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        problem: dict[str, Any] = {
            "type": "about:blank",
            "title": "Time limit exceeded",
            "status": 500,
            "detail": f"{what} ran longer than {time_limit}s",
        }
    else:
        log.exception("job %s: %s failed unexpectedly", job_id, what)
        problem = problem_from_exception(exc).model_dump(exclude_none=True)
    return _Outcome("failed", error=problem)
