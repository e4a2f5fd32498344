"""The job store: Redis holds the truth about every async job (Celery's own state is never read).

A job moves only forward::

    queued ──▶ running ──▶ succeeded | failed | cancelled
       └──────────────────▶ failed | cancelled

Every transition is a compare-and-set in a Lua script, so two workers (a redelivered message)
or a worker and a cancelling client can never move a job backwards or both finish it.

A worker *claims* a job before working on it (:meth:`JobStore.claim`): the claim bumps the
``attempts`` counter and takes a lease (``owner`` + ``lease_until``) that the worker renews with
every progress report (:meth:`JobStore.report_progress`). A redelivered message whose job is
held by a live lease is told ``busy`` (retry later); one whose lease ran out (the worker died)
takes the job over. After ``max_attempts`` claims the job is failed (poison-message cap).

Idempotency: :meth:`JobStore.create` takes an optional ``Idempotency-Key`` and a hash of the
request body. The same key with the same body returns the original job; the same key with a
different body raises :class:`IdempotencyConflict` (answer 422).

Jobs cut into parts (match shards, ingest layer shards), leases with a heartbeat, locks and side
values are the job workflow's (:mod:`hiddenscope_service.workflow`), built on this store.

Job ids are ``{kind}-{128 random bits}`` (:func:`new_job_id`): unguessable, and the kind prefix
tells the gateway which service serves ``/v1/jobs/{id}`` without a lookup (:func:`job_kind`).

Keys (``prefix`` defaults to ``hiddenscope``): ``{prefix}:job:{id}`` (a hash) and
``{prefix}:idem:{key}`` (``"{job_id} {body_hash}"``). Finished jobs and idempotency keys expire
after ``ttl_seconds`` (≥ 24 h).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from hiddenscope_core.errors import HiddenScopeError
from pydantic import BaseModel, Field

from hiddenscope_service.settings import ServiceSettings

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobNotFound(HiddenScopeError):
    status = 404
    title = "Job not found"


class IdempotencyConflict(HiddenScopeError):
    """The Idempotency-Key was used before with a different request body."""

    status = 422
    title = "Idempotency key reused"


class JobStateConflict(HiddenScopeError):
    """The job is not in a state that allows the request (e.g. cancelling a finished job)."""

    status = 409
    title = "Job state conflict"


class Progress(BaseModel):
    done: int = Field(default=0, ge=0, description="units done (e.g. shards or steps)")
    total: int = Field(default=0, ge=0, description="units in all; 0 while unknown")


class Job(BaseModel):
    """A job as the store holds it. ``payload`` is internal; services choose what to expose."""

    id: str
    kind: str
    status: JobStatus
    progress: Progress
    attempts: int = Field(description="how many times a worker claimed the job")
    cancel_requested: bool = False
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = Field(default=None, description="an RFC 9457 problem")
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`JobStore.claim`.

    ``outcome`` is ``claimed`` (work on it; ``attempts`` is this attempt's number), ``busy``
    (another live worker holds it; retry after ``retry_after`` seconds), ``terminal`` (nothing
    to do; ``status`` says how it ended) or ``exhausted`` (the store failed it: too many attempts).
    """

    outcome: Literal["claimed", "busy", "terminal", "exhausted"]
    status: str
    attempts: int = 0
    retry_after: float = 0.0


@dataclass(frozen=True)
class UnfinishedJob:
    """What a reconciler needs of a ``queued`` or ``running`` job (times: Redis clock, s)."""

    id: str
    kind: str
    status: str
    lease_until: float
    updated_at: float
    attempts: int
    payload: dict[str, Any]
    notes: dict[str, str]


def body_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (sorted keys): what "the same body" means."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


_KIND = re.compile(r"^[a-z]{1,32}$")


def new_job_id(kind: str) -> str:
    """A new job id ``{kind}-{token}``: ``token`` is :func:`secrets.token_urlsafe` of 16 bytes
    (128 bits, ``[A-Za-z0-9_-]``). ``kind`` (lowercase letters) is the service that owns the
    job (``ingest``, ``match``); the gateway routes ``/v1/jobs/{kind}-*`` by it."""
    if not _KIND.match(kind):
        raise ValueError(f"a job kind is 1-32 lowercase letters, not {kind!r}")
    return f"{kind}-{secrets.token_urlsafe(16)}"


def job_kind(job_id: str) -> str | None:
    """The kind named by a job id made by :func:`new_job_id` (``None`` if it names none)."""
    kind, sep, token = job_id.partition("-")
    return kind if sep and token and _KIND.match(kind) else None


# All times come from the Redis server (TIME) so that every process agrees on one clock.
LUA_NOW = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] job key, KEYS[2] idempotency key ('' for none)
# ARGV[1] idempotency value, ARGV[2] ttl, ARGV[3..] field/value pairs
_CREATE = (
    LUA_NOW
    + """
if KEYS[2] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return existing end
end
local t = tostring(now())
redis.call('HSET', KEYS[1], 'created_at', t, 'updated_at', t, unpack(ARGV, 3))
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
end
return ''
"""
)

# KEYS[1] job; ARGV: owner, lease seconds, max attempts, ttl
_CLAIM = (
    LUA_NOW
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', '', '0', '0'} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then
  return {'terminal', st, redis.call('HGET', KEYS[1], 'attempts') or '0', '0'}
end
local t = now()
if st == 'running' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  if lease > t and owner ~= ARGV[1] then
    return {'busy', st, redis.call('HGET', KEYS[1], 'attempts') or '0', tostring(lease - t)}
  end
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', tostring(t),
             'updated_at', tostring(t), 'error', ARGV[5], 'owner', '', 'lease_until', '0')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  return {'exhausted', 'failed', tostring(attempts), '0'}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1],
           'lease_until', tostring(t + tonumber(ARGV[2])), 'updated_at', tostring(t))
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', tostring(t))
end
return {'claimed', 'running', tostring(attempts), '0'}
"""
)

# KEYS[1] job; ARGV: owner, lease seconds, done, total
# returns: 'lost' (not ours any more), 'cancel' (cancel requested), 'ok'
_PROGRESS = (
    LUA_NOW
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'lost' end
local t = now()
redis.call('HSET', KEYS[1], 'lease_until', tostring(t + tonumber(ARGV[2])),
           'updated_at', tostring(t))
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'progress_done', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'progress_total', ARGV[4]) end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
"""
)

# KEYS[1] job; ARGV: to status, owner ('' = any), ttl, n_from, from..., then field/value pairs
_TRANSITION = (
    LUA_NOW
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
local rank = {queued = 0, running = 1, succeeded = 2, failed = 2, cancelled = 2}
if rank[ARGV[1]] == nil or rank[ARGV[1]] <= rank[st] then return st end
local n_from = tonumber(ARGV[4])
local allowed = false
for i = 5, 4 + n_from do
  if ARGV[i] == st then allowed = true end
end
if not allowed then return st end
if ARGV[2] ~= '' and st == 'running' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 'lost'
end
local t = tostring(now())
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', t)
local rest = {}
for i = 5 + n_from, #ARGV do rest[#rest + 1] = ARGV[i] end
if #rest > 0 then redis.call('HSET', KEYS[1], unpack(rest)) end
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('HSET', KEYS[1], 'finished_at', t, 'owner', '', 'lease_until', '0')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 'ok'
"""
)

# KEYS[1] job; ARGV: ttl, error json for the cancelled-while-queued case
_CANCEL = (
    LUA_NOW
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
local t = tostring(now())
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', t, 'finished_at', t,
             'cancel_requested', '1')
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
  return 'now-cancelled'
end
if st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', t)
  return 'now-cancelling'
end
return st
"""
)


def _ts(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), tz=UTC)


class JobStore:
    """Jobs of one service in Redis. Thread-safe (redis-py clients are); cheap to construct.

    ``client`` must be created with ``decode_responses=True``. It stays private to this package:
    besides the store, only the job workflow (:mod:`hiddenscope_service.workflow`) talks to it.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "hiddenscope",
        ttl_seconds: int = 7 * 24 * 3600,
        max_attempts: int = 3,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.max_attempts = max_attempts
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._progress = client.register_script(_PROGRESS)
        self._transition = client.register_script(_TRANSITION)
        self._cancel = client.register_script(_CANCEL)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), **kwargs)

    @classmethod
    def for_service(cls, settings: ServiceSettings, prefix: str) -> JobStore:
        """The store of a service's jobs under ``prefix`` (e.g. ``hiddenscope:match``), with the
        TTL and attempt cap of its settings (nothing connects until the first command)."""
        return cls.from_url(
            settings.redis_url,
            prefix=prefix,
            ttl_seconds=settings.job_ttl_seconds,
            max_attempts=settings.max_attempts,
        )

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _idem_key(self, key: str) -> str:
        return f"{self.prefix}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    # -- create / read -------------------------------------------------------------------------

    def lookup_idempotent(self, idempotency_key: str, request_hash: str) -> Job | None:
        """The job an earlier request with this key created (``None`` if the key is new).

        Raises :class:`IdempotencyConflict` if that request had a different body hash. Call it
        before expensive validation; :meth:`create` repeats the check atomically."""
        raw = self._client.get(self._idem_key(idempotency_key))
        if not raw:
            return None
        old_id, _, old_hash = str(raw).partition(" ")
        if old_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new request"
            )
        return self.get(old_id)

    def set_note(self, job_id: str, key: str, value: str) -> None:
        """Record a worker-side fact on the job (e.g. the staging directory of an attempt)."""
        self._client.hset(self._job_key(job_id), f"note:{key}", value)

    def get_note(self, job_id: str, key: str) -> str | None:
        value = self._client.hget(self._job_key(job_id), f"note:{key}")
        return None if value is None else str(value)

    def create(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        job_id: str | None = None,
        progress_total: int = 0,
    ) -> tuple[Job, bool]:
        """Create a ``queued`` job; returns ``(job, created)``.

        With ``idempotency_key``: if the key was seen, returns the original job and ``False``
        when ``request_hash`` matches, and raises :class:`IdempotencyConflict` otherwise.
        Raises :class:`JobNotFound` if the original job has expired meanwhile.
        """
        job_id = job_id or new_job_id(kind)
        idem_key = self._idem_key(idempotency_key) if idempotency_key else ""
        idem_value = f"{job_id} {request_hash or ''}"
        fields: list[str] = [
            "id", job_id,
            "kind", kind,
            "status", "queued",
            "attempts", "0",
            "progress_done", "0",
            "progress_total", str(progress_total),
            "cancel_requested", "0",
            "payload", json.dumps(dict(payload)),
        ]  # fmt: skip
        existing = self._create(
            keys=[self._job_key(job_id), idem_key],
            args=[idem_value, self.ttl_seconds, *fields],
        )
        if existing:
            old_id, _, old_hash = str(existing).partition(" ")
            if old_hash != (request_hash or ""):
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request body; "
                    "use a new key for a new request"
                )
            return self.get(old_id), False
        return self.get(job_id), True

    def get(self, job_id: str) -> Job:
        """The job; raises :class:`JobNotFound`."""
        raw: dict[str, str] = self._client.hgetall(self._job_key(job_id)) if job_id else {}  # type: ignore[assignment]
        if not raw:
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired after it finished)")
        return Job(
            id=raw["id"],
            kind=raw["kind"],
            status=raw["status"],
            progress=Progress(
                done=int(raw.get("progress_done", 0)), total=int(raw.get("progress_total", 0))
            ),
            attempts=int(raw.get("attempts", 0)),
            cancel_requested=raw.get("cancel_requested") == "1",
            created_at=_ts(raw["created_at"]) or datetime.fromtimestamp(0, tz=UTC),
            updated_at=_ts(raw["updated_at"]) or datetime.fromtimestamp(0, tz=UTC),
            started_at=_ts(raw.get("started_at")),
            finished_at=_ts(raw.get("finished_at")),
            result=json.loads(raw["result"]) if raw.get("result") else None,
            error=json.loads(raw["error"]) if raw.get("error") else None,
            payload=json.loads(raw.get("payload") or "{}"),
        )

    def status(self, job_id: str) -> str | None:
        """The job's status alone (one ``HGET``; ``None`` if unknown): what a wait polls."""
        value = self._client.hget(self._job_key(job_id), "status") if job_id else None
        return None if value is None else str(value)

    def get_of_kind(self, job_id: str, kind: str) -> Job:
        """The job if it is of ``kind``; raises :class:`JobNotFound` (saying which service serves
        the id when it is unknown here and names another kind)."""
        try:
            job = self.get(job_id)
        except JobNotFound:
            other = job_kind(job_id)
            if other is None or other == kind:
                raise
            raise JobNotFound(
                f"job {job_id!r} belongs to the {other} service, not the {kind} service (one "
                "base URL for both: the gateway routes /v1/jobs/{id} by the kind before the '-')"
            ) from None
        if job.kind != kind:
            raise JobNotFound(f"no {kind} job {job_id!r}")
        return job

    def now(self) -> float:
        """The Redis server's clock (seconds), the one every lease is measured with."""
        sec, usec = self._client.time()
        return float(sec) + float(usec) / 1e6

    def unfinished(self, kind: str | None = None) -> list[UnfinishedJob]:
        """Every job not yet terminal (``queued`` or ``running``), found with ``SCAN`` (no
        index to keep consistent; cheap for the thousands of jobs a lab server holds)."""
        out: list[UnfinishedJob] = []
        fields = ["id", "kind", "status", "lease_until", "updated_at", "attempts", "payload"]
        for key in self._client.scan_iter(match=f"{self.prefix}:job:*", count=1000):
            name = str(key)
            if name.count(":") != self.prefix.count(":") + 2:
                continue  # the part sets of a job (hiddenscope_service.workflow.Parts)
            try:
                values = self._client.hmget(name, fields)
            except redis.ResponseError:
                continue  # not a hash
            job_id, kind_of_job, status, lease, updated, attempts, payload = values
            if not job_id or status not in ("queued", "running"):
                continue
            if kind is not None and kind_of_job != kind:
                continue
            out.append(
                UnfinishedJob(
                    id=str(job_id),
                    kind=str(kind_of_job),
                    status=str(status),
                    lease_until=float(lease or 0),
                    updated_at=float(updated or 0),
                    attempts=int(attempts or 0),
                    payload=json.loads(payload or "{}"),
                    notes=self.notes(str(job_id)),
                )
            )
        return out

    def notes(self, job_id: str) -> dict[str, str]:
        """Every ``set_note`` value of the job."""
        raw: dict[str, str] = self._client.hgetall(self._job_key(job_id))  # type: ignore[assignment]
        return {k[5:]: v for k, v in raw.items() if k.startswith("note:")}

    def exists(self, job_id: str) -> bool:
        return int(self._client.exists(self._job_key(job_id))) > 0

    def ping(self) -> None:
        """Check that Redis answers (raises ``redis.RedisError`` if not): the health check."""
        self._client.ping()

    @property
    def location(self) -> str:
        """Where the store's Redis is (``host:port`` or a socket path), for messages."""
        kwargs = self._client.connection_pool.connection_kwargs
        return str(kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}")

    # -- worker side ---------------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, lease_seconds: float) -> Claim:
        """Take the job for one attempt (see the module docstring). Raises :class:`JobNotFound`."""
        exhausted = json.dumps(
            {
                "type": "about:blank",
                "title": "Too many attempts",
                "status": 500,
                "detail": f"the job was started {self.max_attempts} times without finishing "
                "(did the worker crash or run out of memory?)",
            }
        )
        outcome, status, attempts, retry_after = self._claim(
            keys=[self._job_key(job_id)],
            args=[owner, lease_seconds, self.max_attempts, self.ttl_seconds, exhausted],
        )
        if outcome == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        return Claim(outcome, status, int(attempts), float(retry_after))

    def report_progress(
        self,
        job_id: str,
        owner: str,
        lease_seconds: float,
        done: int | None = None,
        total: int | None = None,
    ) -> Literal["ok", "cancel", "lost"]:
        """Renew the lease and record progress. ``cancel``: a client asked to cancel — stop and
        call :meth:`finish` with ``cancelled``. ``lost``: the job is no longer ours — stop."""
        out = self._progress(
            keys=[self._job_key(job_id)],
            args=[
                owner,
                lease_seconds,
                "" if done is None else str(done),
                "" if total is None else str(total),
            ],
        )
        return str(out)  # type: ignore[return-value]

    def transition(
        self,
        job_id: str,
        from_statuses: tuple[str, ...],
        to_status: JobStatus,
        *,
        owner: str | None = None,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Compare-and-set: move the job to ``to_status`` if it is in ``from_statuses`` (and, if
        ``owner`` is given and the job is running, held by ``owner``). Returns whether it moved.
        A job never moves backwards or sideways: a target not ranked above the current status
        (queued < running < terminal) is refused whatever ``from_statuses`` says."""
        fields: list[str] = []
        if result is not None:
            fields += ["result", json.dumps(dict(result), default=str)]
        if error is not None:
            fields += ["error", json.dumps(dict(error), default=str)]
        out = self._transition(
            keys=[self._job_key(job_id)],
            args=[to_status, owner or "", self.ttl_seconds, len(from_statuses), *from_statuses,
                  *fields],
        )  # fmt: skip
        if out == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        return str(out) == "ok"

    def finish(
        self,
        job_id: str,
        owner: str,
        status: Literal["succeeded", "failed", "cancelled"],
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """A worker ends the job it holds (``running`` → terminal)."""
        return self.transition(
            job_id, ("running",), status, owner=owner, result=result, error=error
        )

    def fail(self, job_id: str, error: Mapping[str, Any]) -> bool:
        """Fail a job that is not finished yet, whoever holds it (e.g. enqueueing failed)."""
        return self.transition(job_id, ("queued", "running"), "failed", error=error)

    # -- client side ---------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> Job:
        """Cancel: a queued job is cancelled at once; a running one is flagged and its worker
        stops at its next progress report. Raises :class:`JobStateConflict` for a finished job."""
        out = self._cancel(keys=[self._job_key(job_id)], args=[self.ttl_seconds])
        if out == "missing":
            raise JobNotFound(f"no job {job_id!r} (unknown, or expired after it finished)")
        if out in TERMINAL:
            raise JobStateConflict(f"job {job_id} has already finished ({out})")
        return self.get(job_id)
