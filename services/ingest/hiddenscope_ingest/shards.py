"""Layer shards of a conversion shared by every ingest worker that is free.

The job's own worker (the one holding its lease) runs the conversion; for each phase of the
sharded layer build (``convert.PHASES``) it posts the phase's tasks on a **board** in Redis
(a hash: task index -> ``run|<owner>|<lease expiry>``, ``done`` or ``error|<problem json>``),
enqueues helper tasks (``ingest.convert_shards``) and then claims tasks itself like any
helper. A helper claims tasks until none is left and exits; so a conversion uses as many
workers as are idle, and a single worker simply does everything itself.

Failure: a claim holds a lease that a heartbeat renews while the task runs; a worker killed
mid-task (SIGKILL) stops renewing, the lease expires and the next claim takes the task over
(the core's shard writes are idempotent). A helper whose task finds bad data posts the
problem; the job's worker fails the job with it. The board belongs to one build (the staging
id): a new attempt of the job starts a new build and a new board, and old helpers find their
build gone and stop. Boards expire with the job's TTL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiddenscope_core.errors import HiddenScopeError, NotFound
from hiddenscope_core.writer import DatasetWriter
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import problem_from_exception

from hiddenscope_ingest.attempt import ShardFailed
from hiddenscope_ingest.convert import LayerTask, Work, shard_work
from hiddenscope_ingest.manifest import IngestManifest
from hiddenscope_ingest.plan import Plan, build_plan
from hiddenscope_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

_CLAIM = """
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if not n then return -2 end
local now = tonumber(ARGV[2])
for i = 0, n - 1 do
  local v = redis.call('HGET', KEYS[1], tostring(i))
  local free = not v
  if v and string.sub(v, 1, 4) == 'run|' then
    free = tonumber(string.match(v, '|([%d%.]+)$')) < now
  end
  if free then
    redis.call('HSET', KEYS[1], tostring(i), 'run|' .. ARGV[1] .. '|' .. (now + tonumber(ARGV[3])))
    return i
  end
end
return -1
"""

_RENEW = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, 5 + string.len(ARGV[2])) == 'run|' .. ARGV[2] .. '|' then
  redis.call('HSET', KEYS[1], ARGV[1], 'run|' .. ARGV[2] .. '|' .. ARGV[3])
  return 1
end
return 0
"""

_SET_IF_PRESENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class ShardBoard:
    """The tasks of one phase of one build, in Redis (see the module docstring)."""

    def __init__(self, store: JobStore, job_id: str, build_id: str, phase: str) -> None:
        self.store = store
        self.key = f"{store.prefix}:job:{job_id}:build:{build_id}:{phase}"
        self._claim = store.client.register_script(_CLAIM)
        self._renew = store.client.register_script(_RENEW)
        self._set = store.client.register_script(_SET_IF_PRESENT)

    def post(self, n_tasks: int) -> None:
        pipe = self.store.client.pipeline()
        pipe.delete(self.key)
        pipe.hset(self.key, "n", n_tasks)
        pipe.expire(self.key, self.store.ttl_seconds)
        pipe.execute()

    def claim(self, owner: str, lease: float) -> int | None:
        """A task nobody holds (or whose holder's lease expired), now held by ``owner``; None
        when there is none left to claim (or the board is gone)."""
        i = int(self._claim(keys=[self.key], args=[owner, self.store.now(), lease]))
        return i if i >= 0 else None

    def renew(self, task: int, owner: str, lease: float) -> bool:
        expiry = self.store.now() + lease
        return bool(self._renew(keys=[self.key], args=[str(task), owner, expiry]))

    def done(self, task: int) -> None:
        self._set(keys=[self.key], args=[str(task), "done"])

    def fail(self, task: int, problem: dict[str, Any]) -> None:
        self._set(keys=[self.key], args=[str(task), "error|" + json.dumps(problem)])

    def state(self) -> tuple[int, int, list[dict[str, Any]]]:
        """``(tasks, done, problems)``; ``(0, 0, [])`` when the board is gone."""
        raw: dict[str, str] = self.store.client.hgetall(self.key)  # type: ignore[assignment]
        n = int(raw.pop("n", 0))
        done = sum(1 for v in raw.values() if v == "done")
        problems = [json.loads(v[6:]) for v in raw.values() if v.startswith("error|")]
        return n, done, problems

    def drop(self) -> None:
        self.store.client.delete(self.key)


class _Holding:
    """Renews the lease of a held task from a thread while it runs."""

    def __init__(self, board: ShardBoard, task: int, owner: str, lease: float) -> None:
        self.board, self.task, self.owner, self.lease = board, task, owner, lease
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"shard-{task}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.lease / 3):
            try:
                if not self.board.renew(self.task, self.owner, self.lease):
                    return
            except Exception:  # Redis briefly unreachable: try again at the next beat
                log.warning("shard task %s: lease renewal failed", self.task, exc_info=True)

    def __enter__(self) -> _Holding:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _work_off(
    board: ShardBoard,
    tasks: list[LayerTask],
    phase: str,
    work: Work,
    owner: str,
    lease: float,
    after_each: Callable[[], object],
) -> None:
    """Claim and run tasks until none is left to claim, calling ``after_each()`` after each."""
    while (i := board.claim(owner, lease)) is not None:
        with _Holding(board, i, owner, lease):
            work(phase, tasks[i])
        board.done(i)
        after_each()


def board_runner(
    store: JobStore,
    job_id: str,
    owner: str,
    settings: IngestSettings,
    spawn_helpers: Callable[[str, str, int], None] | None,
    poll_seconds: float = 0.2,
) -> Callable[[DatasetWriter, str, list[LayerTask], Work, Callable[[int], None]], None]:
    """The ``run_shards`` of the job's own worker: post the phase, call ``spawn_helpers(
    build_id, phase, n)`` for ``n`` helper tasks, work tasks off, then wait for the helpers'
    tasks (taking over any whose worker died) and raise a helper's problem if one failed.
    After every task and every poll it reports progress (which also checks for a
    cancellation) and notes the phase's shard counts on the job (``shards``)."""
    lease = float(settings.lease_seconds)

    def run(
        writer: DatasetWriter, phase: str, tasks: list[LayerTask], work: Work,
        tick: Callable[[int], None],
    ) -> None:  # fmt: skip
        board = ShardBoard(store, job_id, writer.id, phase)
        board.post(len(tasks))
        ranges = writer.shard_ranges()
        seen = -1

        def report() -> bool:
            """Progress so far; True when every task of the phase is done."""
            nonlocal seen
            n, done, problems = board.state()
            if problems:
                raise ShardFailed(problems[0])
            if done != seen:
                note = {"phase": phase, "done": done, "total": n}
                store.set_note(job_id, "shards", json.dumps(note))
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
                _work_off(board, tasks, phase, work, owner, lease, report)
                if report():
                    return
                time.sleep(poll_seconds)
        finally:
            board.drop()

    return run


def run_helper(
    job_id: str, build_id: str, phase: str, owner: str, settings: IngestSettings, store: JobStore
) -> int:
    """One helper task: claim and run tasks of ``phase`` of the build until none is left.
    Returns the number of tasks it ran. A helper that finds nothing to claim ends at once (the
    job's worker enqueues more helpers than there may be idle workers); the build and the
    plan are opened at the first claim. Bad data is posted on the board for the job's worker
    (which fails the job); a build that is gone (finished, aborted or superseded) ends it."""
    if store.status(job_id) != "running":
        return 0
    board = ShardBoard(store, job_id, build_id, phase)
    lease = float(settings.lease_seconds)
    plan: Plan | None = None
    writer: DatasetWriter | None = None
    tasks: list[LayerTask] = []
    ran = 0
    try:
        while (i := board.claim(owner, lease)) is not None:
            try:
                with _Holding(board, i, owner, lease):
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
                board.fail(i, problem_from_exception(exc).model_dump(exclude_none=True))
                return ran
            board.done(i)
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
