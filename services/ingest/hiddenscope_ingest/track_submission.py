"""The API side of a track change: ``POST /v1/datasets/{name_or_id}/tracks`` (multipart
``manifest`` + files, or JSON ``{manifest, path}``) and ``DELETE
/v1/datasets/{name_or_id}/tracks/{track}`` answer ``202`` with an ingest job (id ``ingest-…``,
payload ``op: tracks``; the worker side is :mod:`hiddenscope_ingest.track_attempt`).

Before the 202 the API checks what is cheap (the dataset exists and is current, track names free
or present, files present, checksums) and, in the same resource-limited child as an upload
(:mod:`hiddenscope_ingest.sandbox`), every array header against the dataset's ``T`` and small
text files completely.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hiddenscope_core.reader import Dataset, open_dataset
from hiddenscope_core.versions import resolve_current
from hiddenscope_service.jobs import Job, JobStore, body_hash, new_job_id

from hiddenscope_ingest.intake import (
    Enqueue,
    check_files,
    create_job,
    replay,
    resolve_server_path,
    run_deep_check,
    text_bytes,
)
from hiddenscope_ingest.manifest import TracksManifest, parse_tracks_manifest
from hiddenscope_ingest.sandbox import scratch_dir
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.tasknames import JOB_KIND, TRACKS_OP
from hiddenscope_ingest.track_plan import check_names
from hiddenscope_ingest.upload import Received, ReceivedFile


@dataclass
class VersionsService:
    """Submission of track changes (the API process); ``enqueue`` sends ``ingest.tracks``."""

    settings: IngestSettings
    store: JobStore
    enqueue: Enqueue

    def target(self, name_or_id: str) -> Dataset:
        """The current version of ``name_or_id``: 404 unknown, 409 a superseded version's id."""
        layout = self.settings.layout
        _name, cur, _by_id = resolve_current(layout.root, name_or_id)
        return open_dataset(layout.dataset(cur))

    def new_upload(self) -> tuple[str, Path]:
        """A new job id and the directory its upload is received into."""
        job_id = new_job_id(JOB_KIND)
        return job_id, self.settings.layout.upload(job_id)

    def submit_upload(
        self, name_or_id: str, job_id: str, received: Received, idempotency_key: str | None
    ) -> Job:
        """The job of a received upload of tracks for ``name_or_id`` (``new_upload``): an
        earlier identical request's, or a new one once the upload is valid. The upload is
        removed unless a new job owns it."""
        dest = self.settings.layout.upload(job_id)
        try:
            manifest = parse_tracks_manifest(received.manifest)
            digest = self.request_hash(
                name_or_id, manifest, {k: f.sha256 for k, f in received.files.items()}, None
            )
            job = replay(self.store, self.enqueue, idempotency_key, digest)
            if job is not None:
                shutil.rmtree(dest, ignore_errors=True)
                return job
            ds = self.target(name_or_id)
            self.validate(ds, manifest, dest, received.files)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return self.submit(
            name_or_id, manifest, dest, owned=True, job_id=job_id,
            idempotency_key=idempotency_key, request_hash=digest,
        )[0]  # fmt: skip

    def submit_path(
        self, name_or_id: str, manifest: TracksManifest, path: str, idempotency_key: str | None
    ) -> Job:
        """The job adding tracks from files already on the server under ``path``."""
        root = resolve_server_path(self.settings, path)
        digest = self.request_hash(name_or_id, manifest, None, str(root))
        job = replay(self.store, self.enqueue, idempotency_key, digest)
        if job is not None:
            return job
        ds = self.target(name_or_id)
        self.validate(ds, manifest, root, None)
        return self.submit(
            name_or_id, manifest, root, owned=False, job_id=new_job_id(JOB_KIND),
            idempotency_key=idempotency_key, request_hash=digest,
        )[0]  # fmt: skip

    def submit_removal(self, name_or_id: str, track: str, idempotency_key: str | None) -> Job:
        """The job removing ``track`` from ``name_or_id``."""
        manifest = TracksManifest(remove=[track])
        digest = self.request_hash(name_or_id, manifest, None, None)
        job = replay(self.store, self.enqueue, idempotency_key, digest)
        if job is not None:
            return job
        ds = self.target(name_or_id)
        self.validate(ds, manifest, None, None)
        return self.submit(
            name_or_id, manifest, None, owned=False, job_id=new_job_id(JOB_KIND),
            idempotency_key=idempotency_key, request_hash=digest,
        )[0]  # fmt: skip

    @staticmethod
    def request_hash(
        name_or_id: str, manifest: TracksManifest, files: dict[str, str] | None, path: str | None
    ) -> str:
        return body_hash(
            TRACKS_OP,
            name_or_id,
            manifest.model_dump(mode="json"),
            sorted((files or {}).items()),
            path,
        )

    def validate(
        self,
        ds: Dataset,
        manifest: TracksManifest,
        source_dir: Path | None,
        received: dict[str, ReceivedFile] | None,
    ) -> None:
        """Cheap checks before the 202 (names, files, checksums), then headers and small text
        files in the sandbox. Raises 4xx errors."""
        check_names(ds, manifest)
        if source_dir is None:
            return
        check_files(manifest.referenced_files(), manifest.checksums, source_dir, received)
        s = self.settings
        n_text = text_bytes(manifest.referenced_files(), source_dir)
        deep_text = 0 < n_text <= s.validate_text_max_bytes
        scratch = scratch_dir(s.layout.uploads_dir) if deep_text else None
        job = {
            "op": TRACKS_OP,
            "manifest": manifest.model_dump(mode="json"),
            "dataset": str(ds.path),
            "root": str(source_dir),
            "scratch": str(scratch) if scratch is not None else None,
            "deep_text": scratch is not None,
        }
        run_deep_check(s, job)

    def submit(
        self,
        target: str,
        manifest: TracksManifest,
        source_dir: Path | None,
        *,
        owned: bool,
        job_id: str,
        idempotency_key: str | None,
        request_hash: str,
    ) -> tuple[Job, bool]:
        """Create the job and enqueue it; ``(job, created)``."""
        payload = {
            "op": TRACKS_OP,
            "target": target,
            "manifest": manifest.model_dump(mode="json"),
            "source_dir": str(source_dir) if source_dir is not None else "",
            "owned": owned,
        }
        return create_job(
            self.store, self.enqueue, payload,
            upload=source_dir if owned else None, job_id=job_id,
            idempotency_key=idempotency_key, request_hash=request_hash,
        )  # fmt: skip
