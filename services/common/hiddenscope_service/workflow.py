"""The job workflow: how a worker holds a job, splits it into parts, and keeps side state.

Everything a worker does with the Redis job store beyond reading and creating jobs goes through
the classes here (the job store, :mod:`hiddenscope_service.jobs`, keeps the records):

* :class:`JobLease` — one worker holds a whole job (an ingest conversion, a track version):
  :meth:`JobLease.claim` takes it for one attempt (attempt cap, takeover of an expired lease),
  :meth:`JobLease.heartbeat` renews the lease from a thread while the attempt runs,
  :meth:`JobLease.progress` reports progress (and learns of a cancellation), and
  :meth:`JobLease.finish` ends the job with a compare-and-set.
* :class:`Parts` — a job's work cut into numbered parts, each claimed with a lease of its own:
  either one task per part (:meth:`Parts.claim` of a given index: match shards) or a board that
  any idle worker works off (:meth:`Parts.claim_next`: ingest layer shards). A part's result is
  stored with it (:meth:`PartClaim.done`), a part's failure carries a problem
  (:meth:`PartClaim.fail`), each part has an attempt cap, and whoever records the last part
  learns it (:attr:`PartsProgress.complete`) and merges. Parts that *drive* the job (match
  shards) also move it: the first claim starts it, progress counts parts, a cancellation or a
  failed part ends it.
* :class:`Heartbeat` — a lease renewed while a block runs, used by both kinds of lease; one
  renewal thread per process beats them all.
* :class:`Lock` — a short-lived exclusive hold on a named resource that expires by itself (the
  reconciler's pass, a dataset's search-index build).
* :class:`Values` — small side values under a name, scoped to a job or a dataset, with a TTL:
  strings (:meth:`Values.put`), counters (:meth:`Values.add`) and maxima kept atomically
  (:meth:`Values.raise_to`, the match shard floor).

Keys (``prefix`` is the store's): a part set ``name`` of job ``id`` is
``{prefix}:job:{id}:{name}`` (a hash: ``n``, ``ndone`` and per part ``run|<owner>|<lease
expiry>``, ``done`` or ``error|<problem json>``) with ``…:{name}:attempts`` and
``…:{name}:results`` beside it; a lock is ``{prefix}:{name}`` or ``{prefix}:{name}:{scope}``
(the value is the holder's token); a value is ``{prefix}:{name}:{scope}`` (a string, or a
sorted set for a maximum). All expire: part sets with the store's TTL, locks and values with
theirs. All times are the Redis server's clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hiddenscope_service.jobs import LUA_NOW, Claim, JobStore

log = logging.getLogger(__name__)

FinalStatus = Literal["succeeded", "failed", "cancelled"]


class LeaseLost(Exception):
    """The job (or part) is no longer held by this worker: another one took it over."""


class Cancelled(Exception):
    """A client asked to cancel the job: stop and finish it ``cancelled``."""


def worker_owner(task_id: str | None = None) -> str:
    """An owner name for leases: ``host:pid[:task id]`` (unique per delivery with a task id)."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{task_id}" if task_id else base


# --------------------------------------------------------------------------------- heartbeat


class Heartbeat:
    """Calls ``beat()`` every ``interval`` seconds while the ``with`` block runs, so a lease
    stays live through long steps and expires only when the process dies.

    ``beat()`` returns ``False`` when the lease is lost: the beats stop and :attr:`lost`
    becomes true (the work itself learns it at its next report). An exception (Redis briefly
    unreachable) is logged and the next beat tries again. No beat runs after the block ends.

    Every heartbeat of a process is beaten by one renewal thread (:class:`_Renewals`), started
    once: a match shard of a few milliseconds would otherwise pay a thread's start and join."""

    def __init__(self, beat: Callable[[], bool], interval: float, name: str = "heartbeat") -> None:
        self.beat = beat
        self.interval = interval
        self.name = name
        self.lost = False
        self.due = 0.0  # the monotonic time of the next beat (kept by the renewal thread)

    def __enter__(self) -> Heartbeat:
        _RENEWALS.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _RENEWALS.remove(self)


class _Renewals:
    """The process's one renewal thread and the heartbeats it beats, soonest due first. Beats
    run outside the lock, one at a time; :meth:`remove` waits for a beat in flight, so nothing
    is renewed after its ``with`` block. A forked child starts afresh (no thread survives a
    fork, and a lock held at the fork would never be released in the child)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held: dict[int, Heartbeat] = {}
        self._beating: Heartbeat | None = None
        self._thread: threading.Thread | None = None

    def add(self, hb: Heartbeat) -> None:
        with self._cond:
            hb.due = time.monotonic() + hb.interval
            self._held[id(hb)] = hb
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, hb: Heartbeat) -> None:
        with self._cond:
            self._held.pop(id(hb), None)
            while self._beating is hb:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._held:
                    self._cond.wait()
                    continue
                hb = min(self._held.values(), key=lambda h: h.due)
                delay = hb.due - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                hb.due = time.monotonic() + hb.interval
                self._beating = hb
            try:
                alive = hb.beat()
            except Exception:
                log.warning("%s: lease renewal failed", hb.name, exc_info=True)
                alive = True
            with self._cond:
                self._beating = None
                if not alive:
                    hb.lost = True
                    self._held.pop(id(hb), None)
                self._cond.notify_all()


_RENEWALS = _Renewals()


# --------------------------------------------------------------------------------- job lease


@dataclass
class JobLease:
    """A worker's hold on a whole job for one attempt (see :meth:`claim`).

    ``answer`` is the store's answer to the claim; its ``outcome`` is ``claimed`` (the lease is
    held: work, then :meth:`finish`), ``busy`` (another live worker holds it: retry after
    ``retry_after`` seconds), ``terminal`` (nothing to do) or ``exhausted`` (the store failed
    the job after ``max_attempts`` claims)."""

    store: JobStore
    job_id: str
    owner: str
    seconds: float
    answer: Claim

    @classmethod
    def claim(cls, store: JobStore, job_id: str, owner: str, seconds: float) -> JobLease:
        """Take job ``job_id`` for one attempt: bumps its ``attempts``, takes a lease of
        ``seconds`` (or takes over an expired one). Raises :class:`~hiddenscope_service.jobs.
        JobNotFound`."""
        return cls(store, job_id, owner, seconds, store.claim(job_id, owner, seconds))

    @property
    def outcome(self) -> Literal["claimed", "busy", "terminal", "exhausted"]:
        return self.answer.outcome

    @property
    def held(self) -> bool:
        return self.answer.outcome == "claimed"

    @property
    def attempts(self) -> int:
        return self.answer.attempts

    @property
    def retry_after(self) -> float:
        return self.answer.retry_after

    @property
    def status(self) -> str:
        """The job's status when it was claimed (``running`` when held)."""
        return self.answer.status

    def report(self, done: int | None = None, total: int | None = None) -> str:
        """Renew the lease and record progress: ``ok``, ``cancel`` (stop and finish
        ``cancelled``) or ``lost`` (the job is not ours any more: stop)."""
        return self.store.report_progress(self.job_id, self.owner, self.seconds, done, total)

    def heartbeat(self) -> Heartbeat:
        """A :class:`Heartbeat` renewing this lease every third of its length."""
        return Heartbeat(
            lambda: self.report() != "lost", self.seconds / 3, name=f"lease-{self.job_id}"
        )

    def progress(self, min_interval: float = 0.2) -> Callable[[int, int], None]:
        """``progress(done, total)`` for the attempt: reports at most every ``min_interval``
        seconds (and always at the end, ``done >= total``); raises :class:`Cancelled` when a
        client cancelled the job and :class:`LeaseLost` when another worker took it over."""
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < min_interval and done < total:
                return
            last = now
            answer = self.report(done, total)
            if answer == "cancel":
                raise Cancelled()
            if answer == "lost":
                raise LeaseLost()

        return progress

    def finish(
        self,
        status: FinalStatus,
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """End the job (``running`` → ``status``) if this lease still holds it."""
        return self.store.finish(self.job_id, self.owner, status, result=result, error=error)

    def set_note(self, key: str, value: str) -> None:
        """Record a fact of this attempt on the job (e.g. its staging directory)."""
        self.store.set_note(self.job_id, key, value)

    def get_note(self, key: str) -> str | None:
        return self.store.get_note(self.job_id, key)


# --------------------------------------------------------------------------------- parts

# KEYS[1] job, KEYS[2] part state, KEYS[3] part attempts
# ARGV: 1 index ('' = the first free part), 2 owner, 3 lease seconds, 4 max attempts (0: none),
#       5 drives the job ('1'/'0'), 6 ttl, 7 problem json of an exhausted part ('{part}' = index)
# returns {outcome, index, attempts, retry_after, extra}: extra is the job status (terminal),
# the problem (failed, exhausted) or '1'/'0' all parts done (done)
_CLAIM_PART = (
    LUA_NOW
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'gone', '-1', '0', '0', ''} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then
  return {'terminal', '-1', '0', '0', st}
end
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '')
if not n then return {'gone', '-1', '0', '0', ''} end
local t = now()
local drives = ARGV[5] == '1'
local ttl = tonumber(ARGV[6])
local function end_job(status, err)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', tostring(t),
             'updated_at', tostring(t), 'owner', '', 'lease_until', '0')
  if err then redis.call('HSET', KEYS[1], 'error', err) end
  redis.call('EXPIRE', KEYS[1], ttl)
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  if drives then end_job('cancelled', nil) end
  return {'cancelled', '-1', '0', '0', ''}
end
local function holder(v)
  if v and string.sub(v, 1, 4) == 'run|' then
    local owner, expiry = string.match(v, '^run|(.*)|([%d%.e%+%-]+)$')
    return owner, tonumber(expiry)
  end
  return nil, nil
end
local i = ARGV[1]
if i == '' then
  for k = 0, n - 1 do
    local v = redis.call('HGET', KEYS[2], tostring(k))
    local _, expiry = holder(v)
    if not v or (expiry and expiry < t) then i = tostring(k) break end
  end
  if i == '' then return {'none', '-1', '0', '0', ''} end
else
  local v = redis.call('HGET', KEYS[2], i)
  local att = redis.call('HGET', KEYS[3], i) or '0'
  if v == 'done' then
    local all = tonumber(redis.call('HGET', KEYS[2], 'ndone') or '0') >= n
    return {'done', i, att, '0', all and '1' or '0'}
  end
  if v and string.sub(v, 1, 6) == 'error|' then return {'failed', i, att, '0', string.sub(v, 7)} end
  local owner, expiry = holder(v)
  if owner and expiry >= t and owner ~= ARGV[2] then
    return {'busy', i, att, tostring(expiry - t), ''}
  end
end
local att = redis.call('HINCRBY', KEYS[3], i, 1)
redis.call('EXPIRE', KEYS[3], ttl)
local cap = tonumber(ARGV[4])
if cap > 0 and att > cap then
  local problem = string.gsub(ARGV[7], '{part}', i)
  redis.call('HSET', KEYS[2], i, 'error|' .. problem)
  if drives then end_job('failed', problem) end
  return {'exhausted', i, tostring(att), '0', problem}
end
redis.call('HSET', KEYS[2], i, 'run|' .. ARGV[2] .. '|' .. tostring(t + tonumber(ARGV[3])))
if drives then
  if st == 'queued' then
    redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', tostring(t),
               'updated_at', tostring(t))
  end
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
return {'run', i, tostring(att), '0', ''}
"""
)

# KEYS[1] part state; ARGV: index, owner, lease seconds -> 1 renewed, 0 not ours any more
_RENEW_PART = (
    LUA_NOW
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
local mine = 'run|' .. ARGV[2] .. '|'
if v and string.sub(v, 1, string.len(mine)) == mine then
  redis.call('HSET', KEYS[1], ARGV[1], mine .. tostring(now() + tonumber(ARGV[3])))
  return 1
end
return 0
"""
)

# KEYS[1] job, KEYS[2] part state, KEYS[3] part results
# ARGV: index, has result ('1'/'0'), result, drives ('1'/'0'), ttl
# returns {job status, parts done, parts}; a part of a gone set, a failed part, or (driving)
# a part of a job that is not running records nothing
_DONE_PART = (
    LUA_NOW
    + """
local st = redis.call('HGET', KEYS[1], 'status')
local n = redis.call('HGET', KEYS[2], 'n')
if not st or not n then return {st or 'missing', '0', '0'} end
local drives = ARGV[4] == '1'
local v = redis.call('HGET', KEYS[2], ARGV[1])
local recordable = not (drives and st ~= 'running')
if recordable and not (v and string.sub(v, 1, 6) == 'error|') then
  if v ~= 'done' then
    redis.call('HSET', KEYS[2], ARGV[1], 'done')
    redis.call('HINCRBY', KEYS[2], 'ndone', 1)
  end
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
  end
  if drives then
    redis.call('HSET', KEYS[1], 'progress_done', redis.call('HGET', KEYS[2], 'ndone'),
               'updated_at', tostring(now()))
  end
end
return {st, redis.call('HGET', KEYS[2], 'ndone') or '0', n}
"""
)

# KEYS[1] job, KEYS[2] part state; ARGV: index, problem json, drives, ttl
# returns 1 if the failure was recorded (the set exists and the part was not done)
_FAIL_PART = (
    LUA_NOW
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) == 'done' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 'error|' .. ARGV[2])
local st = redis.call('HGET', KEYS[1], 'status')
if ARGV[3] == '1' and (st == 'queued' or st == 'running') then
  local t = tostring(now())
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', t, 'updated_at', t,
             'error', ARGV[2], 'owner', '', 'lease_until', '0')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
end
return 1
"""
)

PartOutcome = Literal[
    "run", "busy", "done", "failed", "exhausted", "cancelled", "terminal", "gone", "none"
]


@dataclass(frozen=True)
class PartsProgress:
    """What recording a part left: the job's ``status``, parts ``done`` of ``total``."""

    status: str
    done: int
    total: int

    @property
    def complete(self) -> bool:
        """Every part is done (whoever sees it first merges; merges must be idempotent)."""
        return self.total > 0 and self.done >= self.total


@dataclass(frozen=True)
class PartsState:
    """A part set as a whole: ``total`` parts, ``done`` of them, the ``problems`` of failed
    ones (``(0, 0, [])`` once the set is gone)."""

    total: int
    done: int
    problems: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PartClaim:
    """The answer of :meth:`Parts.claim`: ``outcome`` is

    * ``run`` — this worker holds part ``index`` (its ``attempts``-th claim) under a lease:
      work inside :meth:`heartbeat`, then :meth:`done` or :meth:`fail`;
    * ``busy`` — another live worker holds it (retry after ``retry_after`` seconds: if that
      worker dies its lease expires and a retry takes the part over);
    * ``done`` — the part was done before (``complete``: every part is; merge if still needed);
    * ``failed`` — the part failed before with ``problem``;
    * ``exhausted`` — claimed more than the attempt cap: the part failed now with ``problem``
      (a driving set also failed the job);
    * ``cancelled`` — the job is being cancelled (a driving set has cancelled it);
    * ``terminal`` — the job has ended (``status``); ``gone`` — the job or the set is gone.
    """

    parts: Parts
    outcome: PartOutcome
    index: int
    owner: str
    seconds: float
    attempts: int = 0
    retry_after: float = 0.0
    complete: bool = False
    problem: dict[str, Any] | None = None
    status: str = ""

    def renew(self) -> bool:
        """Renew the part's lease; ``False`` if another worker holds it now."""
        return self.parts.renew(self.index, self.owner, self.seconds)

    def heartbeat(self) -> Heartbeat:
        """A :class:`Heartbeat` renewing this part's lease every third of its length."""
        return Heartbeat(self.renew, self.seconds / 3, name=f"part-{self.index}")

    def done(self, result: str | None = None) -> PartsProgress:
        """Record the part done, with its ``result`` (a re-run overwrites it)."""
        return self.parts.done(self.index, result)

    def fail(self, problem: Mapping[str, Any]) -> None:
        """Record the part failed with ``problem`` (a driving set fails the job with it)."""
        self.parts.fail(self.index, problem)


class Parts:
    """The numbered parts of one job, named ``name`` (a job may hold several sets, e.g. one per
    phase of a build), each claimed under a lease (see the module docstring).

    ``drives_job``: the parts *are* the job (match shards): the first claim moves the job
    ``queued`` → ``running``, each claim counts in the job's ``attempts``, each part done counts
    in its ``progress.done``, a part claimed after a cancel request cancels the job, and a
    failed or exhausted part fails it. Otherwise the parts serve a job a lease holds (ingest
    layer shards) and touch only their own keys.

    ``max_attempts``: claims of one part before it fails as exhausted (default: the store's).
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        name: str,
        *,
        drives_job: bool = False,
        max_attempts: int | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.name = name
        self.drives_job = drives_job
        self.max_attempts = store.max_attempts if max_attempts is None else max_attempts
        self.key = f"{store.prefix}:job:{job_id}:{name}"
        self._attempts_key = f"{self.key}:attempts"
        self._results_key = f"{self.key}:results"
        self._job_key = f"{store.prefix}:job:{job_id}"
        client = store._client
        self._claim = client.register_script(_CLAIM_PART)
        self._renew = client.register_script(_RENEW_PART)
        self._done = client.register_script(_DONE_PART)
        self._fail = client.register_script(_FAIL_PART)

    def post(self, n: int) -> None:
        """(Re)create the set with ``n`` parts, none claimed, none done."""
        pipe = self.store._client.pipeline()
        pipe.delete(self.key, self._attempts_key, self._results_key)
        pipe.hset(self.key, mapping={"n": n, "ndone": 0})
        pipe.expire(self.key, self.store.ttl_seconds)
        pipe.execute()

    def _run_claim(self, index: str, owner: str, seconds: float) -> PartClaim:
        exhausted = json.dumps(
            {
                "type": "about:blank",
                "title": "Too many attempts",
                "status": 500,
                "detail": f"part {{part}} of the job was started {self.max_attempts} times "
                "without finishing (did the worker crash or run out of memory?)",
            }
        )
        outcome, i, attempts, retry_after, extra = self._claim(
            keys=[self._job_key, self.key, self._attempts_key],
            args=[index, owner, seconds, self.max_attempts, "1" if self.drives_job else "0",
                  self.store.ttl_seconds, exhausted],
        )  # fmt: skip
        extra = str(extra)
        return PartClaim(
            parts=self,
            outcome=str(outcome),  # type: ignore[arg-type]
            index=int(i),
            owner=owner,
            seconds=seconds,
            attempts=int(attempts),
            retry_after=float(retry_after),
            complete=outcome == "done" and extra == "1",
            problem=json.loads(extra) if outcome in ("failed", "exhausted") else None,
            status=extra if outcome == "terminal" else "",
        )

    def claim(self, index: int, owner: str, seconds: float) -> PartClaim:
        """Claim part ``index`` for ``owner`` with a lease of ``seconds`` (or take over an
        expired lease, or renew ``owner``'s own)."""
        return self._run_claim(str(index), owner, seconds)

    def claim_next(self, owner: str, seconds: float) -> PartClaim | None:
        """Claim the first part nobody holds (or whose holder's lease expired); ``None`` when
        none is left to claim now, the set or the job is gone or over, or the part found was
        exhausted (it is posted as a problem)."""
        got = self._run_claim("", owner, seconds)
        return got if got.outcome == "run" else None

    def renew(self, index: int, owner: str, seconds: float) -> bool:
        return bool(self._renew(keys=[self.key], args=[str(index), owner, seconds]))

    def done(self, index: int, result: str | None = None) -> PartsProgress:
        """Record part ``index`` done (with ``result``, overwriting an earlier run's)."""
        status, done, total = self._done(
            keys=[self._job_key, self.key, self._results_key],
            args=[str(index), "0" if result is None else "1", result or "",
                  "1" if self.drives_job else "0", self.store.ttl_seconds],
        )  # fmt: skip
        return PartsProgress(str(status), int(done), int(total))

    def fail(self, index: int, problem: Mapping[str, Any]) -> None:
        """Record part ``index`` failed with ``problem`` (a driving set fails the job)."""
        self._fail(
            keys=[self._job_key, self.key],
            args=[str(index), json.dumps(dict(problem), default=str),
                  "1" if self.drives_job else "0", self.store.ttl_seconds],
        )  # fmt: skip

    def state(self) -> PartsState:
        raw: dict[str, str] = self.store._client.hgetall(self.key)  # type: ignore[assignment]
        total = int(raw.pop("n", 0))
        raw.pop("ndone", None)
        done = sum(1 for v in raw.values() if v == "done")
        problems = [json.loads(v[6:]) for v in raw.values() if v.startswith("error|")]
        return PartsState(total, done, problems)

    def results(self) -> dict[int, str]:
        """The recorded results by part index."""
        raw: dict[str, str] = self.store._client.hgetall(self._results_key)  # type: ignore[assignment]
        return {int(k): v for k, v in raw.items()}

    def drop(self) -> None:
        """Forget the set: later claims find it ``gone``."""
        self.store._client.delete(self.key, self._attempts_key, self._results_key)


# --------------------------------------------------------------------------------- locks

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lock:
    """A short-lived exclusive hold on ``{prefix}:{name}[:{scope}]`` that expires after its
    ``ttl`` by itself (so a holder that dies never blocks for long)."""

    def __init__(self, store: JobStore, name: str) -> None:
        self.store = store
        self.name = name
        self._release = store._client.register_script(_RELEASE)

    def key(self, scope: str = "") -> str:
        base = f"{self.store.prefix}:{self.name}"
        return f"{base}:{scope}" if scope else base

    def acquire(self, ttl: float, scope: str = "") -> str | None:
        """The holder's token if the lock was free (now held for ``ttl`` seconds), else ``None``."""
        token = f"{worker_owner()}:{secrets.token_hex(8)}"
        ok = self.store._client.set(self.key(scope), token, nx=True, px=max(1, int(ttl * 1000)))
        return token if ok else None

    def release(self, scope: str = "", token: str | None = None) -> bool:
        """Release the lock: with ``token`` only if that holder still has it; without, whoever
        holds it (a worker ending what another process locked for it)."""
        if token is None:
            return int(self.store._client.delete(self.key(scope))) > 0
        return bool(self._release(keys=[self.key(scope)], args=[token]))

    @contextlib.contextmanager
    def held(self, ttl: float, scope: str = "") -> Iterator[bool]:
        """``with lock.held(ttl) as got:`` — ``got`` says whether this process holds the lock
        for the block (released at its end if so)."""
        token = self.acquire(ttl, scope)
        try:
            yield token is not None
        finally:
            if token is not None:
                self.release(scope, token)


# --------------------------------------------------------------------------------- values


class Values:
    """Small side values named ``name``, each scoped to a job or a dataset id
    (``{prefix}:{name}:{scope}``), expiring after ``ttl`` seconds (default: the store's)."""

    _MAX = "max"

    def __init__(self, store: JobStore, name: str, ttl: float | None = None) -> None:
        self.store = store
        self.name = name
        self.ttl = float(store.ttl_seconds if ttl is None else ttl)

    def key(self, scope: str) -> str:
        return f"{self.store.prefix}:{self.name}:{scope}"

    def get(self, scope: str) -> str | None:
        value = self.store._client.get(self.key(scope))
        return None if value is None else str(value)

    def put(self, scope: str, value: str, ttl: float | None = None) -> None:
        seconds = self.ttl if ttl is None else ttl
        self.store._client.set(self.key(scope), value, px=max(1, int(seconds * 1000)))

    def delete(self, scope: str) -> None:
        self.store._client.delete(self.key(scope))

    def add(self, scope: str, n: int = 1) -> int:
        """Add ``n`` to the scope's counter (from 0) and return the new count."""
        key = self.key(scope)
        pipe = self.store._client.pipeline()
        pipe.incrby(key, n)
        pipe.pexpire(key, max(1, int(self.ttl * 1000)))
        count, _ = pipe.execute()
        return int(count)

    def raise_to(self, scope: str, value: int) -> None:
        """Raise the scope's maximum to ``value`` (kept atomically whatever order the raises
        come in; a sorted set with ``ZADD GT``)."""
        key = self.key(scope)
        pipe = self.store._client.pipeline()
        pipe.zadd(key, {self._MAX: value}, gt=True)
        pipe.pexpire(key, max(1, int(self.ttl * 1000)))
        pipe.execute()

    def maximum(self, scope: str, default: int = 0) -> int:
        """The largest value raised to (``default`` if none)."""
        score = self.store._client.zscore(self.key(scope), self._MAX)
        return default if score is None else int(score)
