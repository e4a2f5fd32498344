"""Adding meta tracks to a published dataset, and removing them: each change publishes a new
version of the dataset (the core's :class:`~hiddenscope_core.versions.VersionWriter`: a new id,
the big files shared by hard links, the name switched atomically; ``docs/ingest.md``).

``POST /v1/datasets/{name_or_id}/tracks`` (multipart ``manifest`` + files, or JSON
``{manifest, path}``) and ``DELETE /v1/datasets/{name_or_id}/tracks/{track}`` answer ``202`` with
an ingest job. Before the 202 the API checks what is cheap (the dataset exists and is current,
track names free or present, files present, checksums) and, in the same resource-limited child
as an upload (:mod:`hiddenscope_ingest.sandbox`), every array header against the dataset's
``T`` and small text files completely. The worker (task ``ingest.tracks``, queue ``ingest``)
plans the tracks with the ingest's own track specs and loaders
(:func:`hiddenscope_ingest.plan.plan_tracks`), streams them chunk by chunk into the new
version's track files (ids checked against the label lists and the vocabulary, NaN/inf by
``nan_policy``) and publishes. The job is an ordinary ingest job (id ``ingest-…``, the same
claim/lease/heartbeat/reconcile machinery: :func:`hiddenscope_ingest.service.run_conversion`
runs it; payload ``op: tracks``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hiddenscope_core.errors import Conflict, NotFound
from hiddenscope_core.layout import Layout
from hiddenscope_core.models import DatasetManifest, TrackInfo
from hiddenscope_core.reader import Dataset, open_dataset
from hiddenscope_core.versions import VersionWriter, current_id, resolve_current
from hiddenscope_service.jobs import Job, JobStore, body_hash
from hiddenscope_service.problems import ProblemError

from hiddenscope_ingest.convert import Cancelled, write_track
from hiddenscope_ingest.errors import InvalidData
from hiddenscope_ingest.loaders import detect_format, resolve_file
from hiddenscope_ingest.loaders.base import ArraySource, Limits, iter_chunks
from hiddenscope_ingest.loaders.text_files import Labels, read_conll
from hiddenscope_ingest.manifest import TracksManifest
from hiddenscope_ingest.plan import TrackPlan, plan_tracks
from hiddenscope_ingest.sandbox import check_in_sandbox, deep_check, scratch_dir
from hiddenscope_ingest.service import (
    JOB_KIND,
    TEXT_FORMATS,
    IngestService,
    _Lost,
    _Outcome,
    check_files,
    dataset_summary,
    failed_outcome,
    limits_of,
    progress_reporter,
)
from hiddenscope_ingest.settings import IngestSettings
from hiddenscope_ingest.upload import ReceivedFile

log = logging.getLogger(__name__)

TRACKS_TASK_NAME = "ingest.tracks"
OP = "tracks"
"""``payload["op"]`` of a track job (a conversion has none)."""


# -- the dataset as the frame the tracks align to ------------------------------------------------


class DatasetTokens:
    """The token ids of a published dataset as an :class:`ArraySource` (for ``index_by_tokens``
    tracks and the CoNLL word check)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.name = f"the tokens of dataset {ds.name!r}"
        self.shape: tuple[int, ...] = (ds.n_steps,)
        self.dtype: np.dtype[np.generic] = np.dtype(np.int32)

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        if stop <= start:
            return np.empty(0, np.int32)
        return self.ds.tokens(start, stop)

    def close(self) -> None:
        pass


@dataclass
class TracksPlan:
    """Checked, opened tracks to add to ``dataset``."""

    dataset: Dataset
    tracks: list[TrackPlan]
    tokens: ArraySource | None
    vocab: Labels | None
    complete: bool = True
    _open: list[ArraySource] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return self.dataset.n_steps

    def close(self) -> None:
        for src in self._open:
            with contextlib.suppress(Exception):
                src.close()
        self._open.clear()


def check_names(ds: Dataset, manifest: TracksManifest) -> None:
    """409 for an added name the dataset already has (unless it is also removed), 404 for a
    removed name it does not have."""
    present = {t.name for t in ds.manifest.tracks}
    for name in manifest.remove:
        if name not in present:
            known = ", ".join(sorted(present)) or "none"
            raise NotFound(f"dataset {ds.name!r} has no track {name!r}; it has: {known}")
    for name in manifest.added():
        if name in present and name not in manifest.remove:
            raise Conflict(
                f"dataset {ds.name!r} already has a track named {name!r}; choose another name "
                "(or list it under 'remove' as well to replace it)"
            )


def build_tracks_plan(
    manifest: TracksManifest, ds: Dataset, root: Path, limits: Limits, work_dir: Path | None
) -> TracksPlan:
    """Open and check the tracks ``manifest`` names under ``root`` against dataset ``ds``: one
    row per step (``T``), ragged ``(N, L)`` sources by the dataset's sequences, BED chromosomes by
    its sequence names, CoNLL words against its tokens. Without ``work_dir`` text files are not
    parsed (``complete`` is False). Raises 4xx errors only; the caller must ``close()``."""
    check_names(ds, manifest)
    m = ds.manifest
    tokens = DatasetTokens(ds) if m.has_tokens else None
    vocab = None
    if m.vocab_size:
        texts = ds.vocab()
        vocab = Labels(texts, np.ones(len(texts), dtype=bool))
    starts = np.asarray(ds.sequence_starts(), dtype=np.int64)
    ends = np.asarray(ds.sequence_ends(), dtype=np.int64)
    plan = TracksPlan(ds, [], tokens, vocab)
    try:
        tracks, complete = plan_tracks(
            manifest.tracks, manifest.bed, root, limits, work_dir,
            n_steps=ds.n_steps, tokens=tokens, sequence_starts=starts,
            sequence_names=ds.sequence_names(), lengths=ends - starts, opened=plan._open,
        )  # fmt: skip
        plan.tracks.extend(tracks)
        plan.complete = complete
        if manifest.conll is not None:
            path = resolve_file(root, manifest.conll.file)
            if work_dir is None:
                plan.complete = False
            else:
                plan.tracks.extend(_conll_tracks(manifest, ds, path, work_dir, limits, plan))
    except BaseException:
        plan.close()
        raise
    return plan


def _conll_tracks(
    manifest: TracksManifest,
    ds: Dataset,
    path: Path,
    work_dir: Path,
    limits: Limits,
    plan: TracksPlan,
) -> list[TrackPlan]:
    spec = manifest.conll
    assert spec is not None
    what = f"conll ({spec.file})"
    text = read_conll(path, what, spec.word_column, spec.columns, None, work_dir, limits)
    n = text.ids.shape[0]
    if n != ds.n_steps:
        raise InvalidData(
            f"{what}: {n} tokens but dataset {ds.name!r} has T={ds.n_steps} steps; the file must "
            "have one token line per step"
        )
    if spec.check_words and plan.tokens is not None and plan.vocab is not None:
        _check_words(text.ids, text.vocab.texts, plan.tokens, plan.vocab.texts, what)
    out = []
    for tname, (ids, labels) in text.tracks.items():
        info = TrackInfo(name=tname, kind="discrete", labels=labels,
                         description=f"CoNLL column {spec.columns[tname]}")  # fmt: skip
        out.append(TrackPlan(info, ids))
    return out


def _check_words(
    words: ArraySource,
    word_texts: list[str],
    tokens: ArraySource,
    token_texts: list[str],
    what: str,
) -> None:
    """The CoNLL words must be the dataset's tokens, step by step (compared as texts)."""
    first: dict[str, int] = {}
    for i, t in enumerate(token_texts):
        first.setdefault(t, i)
    canon = np.asarray([first[t] for t in token_texts], dtype=np.int64)
    wmap = np.asarray([first.get(t, -1) for t in word_texts], dtype=np.int64)
    rows = 1 << 20
    for start, chunk in iter_chunks(words, rows):
        got = wmap[np.asarray(chunk, dtype=np.int64)]
        want = canon[np.asarray(tokens.read(start, start + len(chunk)), dtype=np.int64)]
        bad = np.flatnonzero(got != want)
        if bad.size:
            i = int(bad[0])
            w = word_texts[int(np.asarray(chunk)[i])]
            t = token_texts[int(np.asarray(tokens.read(start + i, start + i + 1))[0])]
            raise InvalidData(
                f"{what}: the word at step {start + i} is {w[:40]!r} but the dataset's token "
                f"is {t[:40]!r}; the file does not belong to this dataset (send "
                "conll.check_words: false to add it anyway)"
            )


# -- writing ---------------------------------------------------------------------------------


def write_tracks(
    writer: VersionWriter,
    plan: TracksPlan,
    nan_policy: str,
    chunk_bytes: int,
    tick: Callable[[int], None],
) -> None:
    """Stream every planned track into ``writer`` with the checks of ingest (memory bounded by
    ``chunk_bytes``)."""
    for track in plan.tracks:
        write_track(
            writer.add_track, track, n_steps=plan.n_steps, tokens=plan.tokens, vocab=plan.vocab,
            nan_policy=nan_policy, chunk_bytes=chunk_bytes, tick=tick,
        )  # fmt: skip


def version_summary(m: DatasetManifest) -> dict[str, Any]:
    """A job's ``result.dataset``: the ingest summary plus the version fields."""
    return {
        **dataset_summary(m),
        "version": m.version,
        "parent_id": m.parent_id,
        "tracks_added": list(m.provenance.get("tracks_added", [])),
        "tracks_removed": list(m.provenance.get("tracks_removed", [])),
    }


# -- the API side ----------------------------------------------------------------------------


@dataclass
class VersionsService:
    """Submission of track changes (the API process); ``enqueue`` sends ``ingest.tracks``."""

    ingest: IngestService
    enqueue: Callable[[str], None]

    @property
    def settings(self) -> IngestSettings:
        return self.ingest.settings

    @property
    def store(self) -> JobStore:
        return self.ingest.store

    def target(self, name_or_id: str) -> Dataset:
        """The current version of ``name_or_id``: 404 unknown, 409 a superseded version's id."""
        _name, cur, _by_id = resolve_current(self.settings.data_root, name_or_id)
        return open_dataset(self.settings.data_root / "datasets" / cur)

    @staticmethod
    def request_hash(
        name_or_id: str, manifest: TracksManifest, files: dict[str, str] | None, path: str | None
    ) -> str:
        return body_hash(
            OP, name_or_id, manifest.model_dump(mode="json"), sorted((files or {}).items()), path
        )

    def replay(self, idempotency_key: str | None, request_hash: str) -> Job | None:
        """The job of an earlier identical request (re-enqueued if still queued), or None."""
        if not idempotency_key:
            return None
        job = self.store.lookup_idempotent(idempotency_key, request_hash)
        if job is not None and job.status == "queued":
            self.enqueue(job.id)
        return job

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
        text_bytes = sum(
            resolve_file(source_dir, rel).stat().st_size
            for rel in manifest.referenced_files()
            if detect_format(rel) in TEXT_FORMATS
        )
        deep_text = 0 < text_bytes <= s.validate_text_max_bytes
        scratch = scratch_dir(s.uploads_path) if deep_text else None
        job = {
            "op": OP,
            "manifest": manifest.model_dump(mode="json"),
            "dataset": str(ds.path),
            "root": str(source_dir),
            "limits": dataclasses.asdict(limits_of(s)),
            "scratch": str(scratch) if scratch is not None else None,
            "deep_text": scratch is not None,
            "memory_bytes": s.sandbox_memory_bytes,
            "cpu_seconds": s.sandbox_cpu_seconds,
        }
        if s.sandbox:
            check_in_sandbox(job, timeout=s.sandbox_timeout_seconds)
        else:
            deep_check(job)

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
            "op": OP,
            "target": target,
            "manifest": manifest.model_dump(mode="json"),
            "source_dir": str(source_dir) if source_dir is not None else "",
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
            if owned and source_dir is not None:
                shutil.rmtree(source_dir, ignore_errors=True)
            return job, False
        try:
            self.enqueue(job.id)
        except Exception as exc:
            log.exception("enqueueing job %s failed", job.id)
            problem = ProblemError(503, "the job queue is unavailable; retry later")
            self.store.fail(job.id, problem.to_problem().model_dump(exclude_none=True))
            if owned and source_dir is not None:
                shutil.rmtree(source_dir, ignore_errors=True)
            raise problem from exc
        return job, True


def deep_check_tracks(job: dict[str, Any]) -> None:
    """The sandboxed pre-202 check of a track upload (called by ``sandbox.deep_check``)."""
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


# -- the worker side -------------------------------------------------------------------------


def _published(data_root: Path, version_id: str) -> DatasetManifest | None:
    """The manifest of version ``version_id`` if it was published (it is, or was, the current
    version of its name), else None (never started, or renamed in but never named)."""
    path = data_root / "datasets" / version_id
    try:
        m = open_dataset(path).manifest
    except NotFound:
        return None
    if current_id(data_root, m.name) == version_id:
        return m
    if Layout(data_root).superseded_marker(version_id).exists():
        return m
    return None


def attempt_tracks(
    job: Job,
    owner: str,
    settings: IngestSettings,
    store: JobStore,
    source_dir: Path,
    work: Path,
    spawn_helpers: object = None,
) -> _Outcome:
    """One attempt at a track job (called by ``run_conversion`` under the job's lease;
    ``spawn_helpers`` is for conversions and unused here)."""
    job_id = job.id
    manifest = TracksManifest.model_validate(job.payload["manifest"])
    target = str(job.payload["target"])
    data_root = settings.data_root
    # an earlier attempt's leftovers: its staging directory, or a finished publication
    earlier = store.get_note(job_id, "staging_id")
    if earlier:
        finished = _published(data_root, earlier)
        if finished is not None:
            return _Outcome("succeeded", result={"dataset": version_summary(finished)})
        shutil.rmtree(data_root / "staging" / earlier, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    progress = progress_reporter(store, job_id, owner, settings.lease_seconds)

    try:
        progress(0, 0)
        provenance = {**manifest.provenance, "job_id": job_id}
        writer = VersionWriter.create(data_root, target, provenance=provenance)
        try:
            store.set_note(job_id, "staging_id", writer.id)
            ds = open_dataset(data_root / "datasets" / writer.base.id)
            plan = build_tracks_plan(manifest, ds, source_dir, limits_of(settings), work)
            try:
                total = max(1, ds.n_steps * len(plan.tracks))
                done = 0

                def tick(n: int) -> None:
                    nonlocal done
                    done += n
                    progress(done, total)

                for name in manifest.remove:
                    writer.remove_track(name)
                write_tracks(writer, plan, manifest.nan_policy, settings.chunk_bytes, tick)
                progress(total, total)
                published = writer.publish()
            finally:
                plan.close()
        except BaseException:
            writer.abort()
            raise
    except Cancelled:
        return _Outcome("cancelled")
    except _Lost:
        raise
    except Exception as exc:
        return failed_outcome(exc, job_id, "the track job", settings.task_time_limit)
    return _Outcome("succeeded", result={"dataset": version_summary(published)})
