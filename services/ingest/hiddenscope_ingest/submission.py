"""The API side of a conversion: validate an upload (or a server-side directory), create the job
and enqueue it; and the job and catalog questions the routes ask. The worker side is
:mod:`hiddenscope_ingest.worker`; the steps a track change shares are in
:mod:`hiddenscope_ingest.intake`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hiddenscope_core.errors import Conflict
from hiddenscope_core.models import DatasetManifest
from hiddenscope_service.jobs import Job, JobStore, body_hash, new_job_id

from hiddenscope_ingest.catalog import DatasetCatalog
from hiddenscope_ingest.errors import InvalidManifest
from hiddenscope_ingest.intake import (
    Enqueue,
    check_files,
    create_job,
    replay,
    resolve_server_path,
    run_deep_check,
    text_bytes,
)
from hiddenscope_ingest.loaders import detect_format, resolve_file
from hiddenscope_ingest.manifest import IngestManifest, parse_manifest
from hiddenscope_ingest.sandbox import scratch_dir
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.tasknames import JOB_KIND
from hiddenscope_ingest.upload import Received, ReceivedFile


@dataclass
class IngestService:
    """Conversions submitted through the API (``enqueue`` sends ``ingest.convert``), the jobs
    and the catalog of published datasets."""

    settings: IngestSettings
    store: JobStore
    enqueue: Enqueue

    @property
    def catalog(self) -> DatasetCatalog:
        return DatasetCatalog(self.settings.layout)

    # -- submission ----------------------------------------------------------------------------

    def new_upload(self) -> tuple[str, Path]:
        """A new job id and the directory its upload is received into."""
        job_id = new_job_id(JOB_KIND)
        return job_id, self.settings.layout.upload(job_id)

    def submit_upload(self, job_id: str, received: Received, idempotency_key: str | None) -> Job:
        """The job of a received upload (``new_upload``): an earlier identical request's, or a
        new one once the upload is valid. The upload is removed unless a new job owns it."""
        dest = self.settings.layout.upload(job_id)
        try:
            manifest = parse_manifest(received.manifest)
            digest = self.request_hash(
                manifest, {k: f.sha256 for k, f in received.files.items()}, None
            )
            job = replay(self.store, self.enqueue, idempotency_key, digest)
            if job is not None:
                shutil.rmtree(dest, ignore_errors=True)
                return job
            self.validate(manifest, dest, received.files)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return self.submit(
            manifest, dest, owned=True, job_id=job_id,
            idempotency_key=idempotency_key, request_hash=digest,
        )[0]  # fmt: skip

    def submit_path(self, manifest: IngestManifest, path: str, idempotency_key: str | None) -> Job:
        """The job converting files already on the server under ``path`` (an allowed root)."""
        root = resolve_server_path(self.settings, path)
        digest = self.request_hash(manifest, None, str(root))
        job = replay(self.store, self.enqueue, idempotency_key, digest)
        if job is not None:
            return job
        self.validate(manifest, root, None)
        return self.submit(
            manifest, root, owned=False, job_id=new_job_id(JOB_KIND),
            idempotency_key=idempotency_key, request_hash=digest,
        )[0]  # fmt: skip

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
        n_text = text_bytes(manifest.referenced_files(), source_dir)
        deep_text = n_text <= s.validate_text_max_bytes
        small_archive = (
            manifest.archive is not None
            and resolve_file(source_dir, manifest.archive).stat().st_size
            <= s.validate_archive_max_bytes
        )
        scratch = (
            scratch_dir(s.layout.uploads_dir)
            if (deep_text and n_text > 0) or small_archive
            else None
        )
        job = {
            "manifest": manifest.model_dump(mode="json"),
            "root": str(source_dir),
            "scratch": str(scratch) if scratch is not None else None,
            "deep_text": scratch is not None and (deep_text or small_archive),
            "archive_check_bytes": 8 * s.validate_archive_max_bytes,
        }
        run_deep_check(s, job)

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
        return create_job(
            self.store, self.enqueue, payload,
            upload=source_dir if owned else None, job_id=job_id,
            idempotency_key=idempotency_key, request_hash=request_hash,
        )  # fmt: skip

    @staticmethod
    def request_hash(
        manifest: IngestManifest, files: dict[str, str] | None, path: str | None
    ) -> str:
        return body_hash(manifest.model_dump(mode="json"), sorted((files or {}).items()), path)

    # -- jobs and catalog ----------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return self.store.get_of_kind(job_id, JOB_KIND)

    def status(self, job_id: str) -> str | None:
        """The job's status, cheaply (for waiting on it)."""
        return self.store.status(job_id)

    def shard_progress(self, job_id: str) -> str | None:
        """The layer shards of the job's current phase as JSON (the note the worker keeps)."""
        return self.store.get_note(job_id, "shards")

    def cancel(self, job_id: str) -> Job:
        self.job(job_id)
        job = self.store.request_cancel(job_id)
        if job.status == "cancelled" and job.payload.get("owned"):
            # cancelled while queued: no worker holds it, so its upload can go now (the worker
            # that later receives the message finds it terminal and removes nothing else)
            shutil.rmtree(Path(job.payload["source_dir"]), ignore_errors=True)
            shutil.rmtree(self.settings.layout.work(job_id), ignore_errors=True)
        return job

    def list_datasets(self) -> list[DatasetManifest]:
        return self.catalog.list()

    def get_dataset(self, name_or_id: str) -> DatasetManifest:
        return self.catalog.get(name_or_id)

    def delete_dataset(self, name_or_id: str) -> None:
        self.catalog.delete(name_or_id)
