"""Layer shards of a conversion shared by every ingest worker that is free.

The job's own worker (the one holding its lease) runs the conversion; for each phase of the
sharded layer build (``convert.PHASES``) it posts the phase's tasks as the **parts** of the job
(:class:`~hiddenscope_service.workflow.Parts`, named ``build:<build id>:<phase>``), enqueues
helper tasks (``ingest.convert_shards``) and then claims parts itself like any helper. A helper
claims parts until none is left and exits; so a conversion uses as many workers as are idle,
and a single worker simply does everything itself.

Failure: a claimed part holds a lease that its heartbeat renews while the task runs; a worker
killed mid-task (SIGKILL) stops renewing, the lease expires and the next claim takes the part
over (the core's shard writes are idempotent; parts have no attempt cap: the job's own attempts
are capped). A helper whose task finds bad data posts the problem on its part; the job's worker
fails the job with it. The parts belong to one build (the staging id): a new attempt of the job
starts a new build and new parts, and old helpers find their build gone and stop. Parts expire
with the job's TTL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.errors import HiddenScopeError, NotFound
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import problem_from_exception
from hiddenscope_service.workflow import JobLease, Parts

from hiddenscope_ingest.attempt import ShardFailed
from hiddenscope_ingest.convert import LayerTask, Work, shard_work
from hiddenscope_ingest.manifest import IngestManifest
from hiddenscope_ingest.plan import Plan, build_plan
from hiddenscope_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

SpawnHelpers = Callable[[str, str, int], None]
"""``spawn_helpers(build_id, phase, n)``: enqueue ``n`` helper tasks for a phase's shards."""


def shard_parts(store: JobStore, job_id: str, build_id: str, phase: str) -> Parts:
    """The parts of ``phase`` of build ``build_id`` of job ``job_id`` (no attempt cap)."""
    return Parts(store, job_id, f"build:{build_id}:{phase}", max_attempts=0)


def _work_off(
    parts: Parts,
    tasks: list[LayerTask],
    phase: str,
    work: Work,
    owner: str,
    lease: float,
    after_each: Callable[[], object],
) -> None:
    """Claim and run tasks until none is left to claim, calling ``after_each()`` after each."""
    while (claim := parts.claim_next(owner, lease)) is not None:
        with claim.heartbeat():
            work(phase, tasks[claim.index])
        claim.done()
        after_each()


def shard_runner(
    job: JobLease,
    settings: IngestSettings,
    spawn_helpers: SpawnHelpers | None,
    poll_seconds: float = 0.2,
) -> Callable[[DatasetWriter, str, list[LayerTask], Work, Callable[[int], None]], None]:
    """The ``run_shards`` of the worker holding ``job``: post the phase, call ``spawn_helpers(
    build_id, phase, n)`` for ``n`` helper tasks, work tasks off, then wait for the helpers'
    tasks (taking over any whose worker died) and raise a helper's problem if one failed.
    After every task and every poll it reports progress (which also checks for a
    cancellation) and notes the phase's shard counts on the job (``shards``)."""
    lease = float(settings.lease_seconds)

    def run(
        writer: DatasetWriter, phase: str, tasks: list[LayerTask], work: Work,
        tick: Callable[[int], None],
    ) -> None:  # fmt: skip
        parts = shard_parts(job.store, job.job_id, writer.id, phase)
        parts.post(len(tasks))
        ranges = writer.shard_ranges()
        seen = -1

        def report() -> bool:
            """Progress so far; True when every task of the phase is done."""
            nonlocal seen
            state = parts.state()
            if state.problems:
                raise ShardFailed(state.problems[0])
            n, done = state.total, state.done
            if done != seen:
                note = {"phase": phase, "done": done, "total": n}
                job.set_note("shards", json.dumps(note))
                # steps of the newly done tasks (shards are equal but for the last one)
                tick(sum(ranges[tasks[i][1]][1] - ranges[tasks[i][1]][0]
                         for i in range(max(seen, 0), done)))  # fmt: skip
                seen = done
            else:
                tick(0)  # still reports: renews the lease and sees a cancellation
            return done == n

        try:
            if spawn_helpers is not None and len(tasks) > 1:
                spawn_helpers(writer.id, phase, min(len(tasks) - 1, settings.max_shard_helpers))
            report()
            while True:
                _work_off(parts, tasks, phase, work, job.owner, lease, report)
                if report():
                    return
                time.sleep(poll_seconds)
        finally:
            parts.drop()

    return run


def run_helper(
    job_id: str, build_id: str, phase: str, owner: str, settings: IngestSettings, store: JobStore
) -> int:
    """One helper task: claim and run tasks of ``phase`` of the build until none is left.
    Returns the number of tasks it ran. A helper that finds nothing to claim ends at once (the
    job's worker enqueues more helpers than there may be idle workers); the build and the
    plan are opened at the first claim. Bad data is posted on its part for the job's worker
    (which fails the job); a build that is gone (finished, aborted or superseded) ends it."""
    if store.status(job_id) != "running":
        return 0
    parts = shard_parts(store, job_id, build_id, phase)
    lease = float(settings.lease_seconds)
    plan: Plan | None = None
    writer: DatasetWriter | None = None
    tasks: list[LayerTask] = []
    ran = 0
    try:
        while (claim := parts.claim_next(owner, lease)) is not None:
            i = claim.index
            try:
                with claim.heartbeat():
                    if plan is None or writer is None:
                        writer = DatasetWriter.resume(settings.data_root, build_id)
                        plan = _helper_plan(job_id, settings, store)
                        n_shards = len(writer.shard_ranges())
                        tasks = [(lp.spec.name, k) for lp in plan.layers for k in range(n_shards)]
                    shard_work(plan, writer, phase, tasks[i], settings.chunk_bytes)
            except Exception as exc:
                if not settings.layout.staging(build_id).exists():
                    return ran  # the build was aborted or superseded meanwhile
                if isinstance(exc, NotFound | FileNotFoundError):
                    raise
                if not isinstance(exc, HiddenScopeError):
                    log.exception("job %s: shard task %s of %s failed", job_id, i, phase)
                claim.fail(problem_from_exception(exc).model_dump(exclude_none=True))
                return ran
            claim.done()
            ran += 1
        if ran:
            store.set_note(job_id, f"helper:{owner}", f"{phase}:{ran}")
        return ran
    finally:
        if plan is not None:
            plan.close()


def _helper_plan(job_id: str, settings: IngestSettings, store: JobStore) -> Plan:
    """The job's plan as a helper needs it: the layer sources, opened from the job's files
    (the archive the job's worker extracted, if the upload was one)."""
    job = store.get(job_id)
    manifest = IngestManifest.model_validate(job.payload["manifest"])
    root = Path(job.payload["source_dir"])
    if manifest.archive is not None:
        root = settings.layout.work(job_id) / "extracted"
    return build_plan(manifest, root, settings.limits)
