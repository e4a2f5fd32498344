"""The shared service kit: job store (real Redis), problem handlers, Celery settings."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from hiddenscope_core.errors import InvalidQuery
from hiddenscope_service.celery_app import (
    celery_config,
    redis_eviction_advice,
    service_celery,
)
from hiddenscope_service.job_resource import JobResourceBase, job_router, wait_seconds
from hiddenscope_service.jobs import (
    IdempotencyConflict,
    Job,
    JobNotFound,
    JobStateConflict,
    JobStore,
    body_hash,
    job_kind,
    new_job_id,
)
from hiddenscope_service.problems import ProblemError, install_problem_handlers
from hiddenscope_service.settings import ServiceSettings, SettingsError, load_settings
from hiddenscope_service.testing import RedisServer
from hiddenscope_service.workflow import JobLease
from pydantic import BaseModel
from pydantic_settings import SettingsConfigDict


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    import secrets

    return JobStore(redis_server.client(), prefix=f"kit-{secrets.token_hex(4)}", max_attempts=2)


def test_job_ids_are_unguessable_and_jobs_move_forward_only(store: JobStore) -> None:
    job, created = store.create("k", {"x": 1}, progress_total=5)
    assert created
    assert job.status == "queued"
    assert len(job.id) >= 22
    assert job.progress.total == 5
    assert job.payload == {"x": 1}
    assert store.claim(job.id, "w1", 30).outcome == "claimed"
    assert store.report_progress(job.id, "w1", 30, done=3) == "ok"
    assert store.get(job.id).progress.done == 3
    assert store.report_progress(job.id, "w2", 30, done=4) == "lost"
    assert not store.finish(job.id, "w2", "succeeded")  # not the owner
    assert store.finish(job.id, "w1", "succeeded", result={"r": 1})
    done = store.get(job.id)
    assert done.status == "succeeded"
    assert done.result == {"r": 1}
    assert done.finished_at
    assert done.started_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    # never backwards, never finished twice
    assert not store.transition(job.id, ("succeeded",), "running")
    assert not store.finish(job.id, "w1", "failed", error={"status": 500})
    assert store.claim(job.id, "w3", 30).outcome == "terminal"
    with pytest.raises(JobStateConflict):
        store.request_cancel(job.id)
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_only_one_of_racing_finishers_wins(store: JobStore) -> None:
    job, _ = store.create("k", {})
    store.claim(job.id, "w", 30)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def finish(i: int) -> None:
        barrier.wait()
        status = "succeeded" if i % 2 else "failed"
        wins.append(store.transition(job.id, ("running",), status))  # type: ignore[arg-type]

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_idempotency_keys(store: JobStore) -> None:
    h1, h2 = body_hash({"a": 1}), body_hash({"a": 2})
    assert body_hash({"b": 1, "a": 2}) == body_hash({"a": 2, "b": 1})
    job, created = store.create("k", {}, idempotency_key="key", request_hash=h1)
    again, created2 = store.create("k", {}, idempotency_key="key", request_hash=h1)
    assert created
    assert not created2
    assert again.id == job.id
    assert store.lookup_idempotent("key", h1) is not None
    assert store.lookup_idempotent("other", h1) is None
    with pytest.raises(IdempotencyConflict):
        store.create("k", {}, idempotency_key="key", request_hash=h2)
    with pytest.raises(IdempotencyConflict):
        store.lookup_idempotent("key", h2)


def test_cancel_leases_and_attempt_cap(store: JobStore, redis_server: RedisServer) -> None:
    queued, _ = store.create("k", {})
    assert store.request_cancel(queued.id).status == "cancelled"
    assert store.claim(queued.id, "w", 30).outcome == "terminal"

    running, _ = store.create("k", {})
    store.claim(running.id, "w", 30)
    assert store.request_cancel(running.id).cancel_requested
    assert store.report_progress(running.id, "w", 30) == "cancel"
    assert store.finish(running.id, "w", "cancelled")

    job, _ = store.create("k", {})
    assert store.claim(job.id, "a", 30).outcome == "claimed"
    busy = store.claim(job.id, "b", 30)
    assert busy.outcome == "busy"
    assert 0 < busy.retry_after <= 30
    redis = redis_server.client()
    redis.hset(store._job_key(job.id), "lease_until", "0")  # the holder died
    assert store.claim(job.id, "b", 30).outcome == "claimed"
    redis.hset(store._job_key(job.id), "lease_until", "0")
    exhausted = store.claim(job.id, "c", 30)
    assert exhausted.outcome == "exhausted"
    assert exhausted.attempts == 3
    assert store.get(job.id).status == "failed"
    assert redis.ttl(store._job_key(job.id)) > 0  # finished jobs expire


class Item(BaseModel):
    n: int


def _problem_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/http")
    def http() -> None:
        raise HTTPException(404, "no such thing")

    @app.get("/core")
    def core() -> None:
        raise InvalidQuery("threshold must be finite")

    @app.get("/custom")
    def custom() -> None:
        raise ProblemError(429, "slow down", headers={"Retry-After": "3"}, limit=10)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    @app.post("/validate")
    def validate(item: Item) -> Item:
        return item

    return app


def test_problem_handlers() -> None:
    client = TestClient(_problem_app(), raise_server_exceptions=False)
    cases = {
        "/http": (404, "no such thing"),
        "/core": (422, "threshold must be finite"),
        "/custom": (429, "slow down"),
        "/boom": (500, "the server failed unexpectedly; the error has been logged"),
        "/missing": (404, "Not Found"),
    }
    for path, (status, detail) in cases.items():
        r = client.get(path)
        assert r.status_code == status, path
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == status
        assert body["detail"] == detail
        assert body["title"]
        assert body["instance"] == path
    assert "secret" not in client.get("/boom").text
    assert "Traceback" not in client.get("/boom").text
    custom = client.get("/custom")
    assert custom.headers["retry-after"] == "3"
    assert custom.json()["limit"] == 10
    r = client.post("/validate", json={"n": "x"})
    assert r.status_code == 422
    body = r.json()
    assert body["errors"][0]["loc"] == ["body", "n"]
    assert body["detail"].startswith("body.n")


def test_celery_settings(redis_server: RedisServer) -> None:
    conf = celery_config(
        broker_url="redis://x", queue="q", task_time_limit=10, visibility_timeout=20
    )
    assert conf["task_acks_late"]
    assert conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_soft_time_limit"] < conf["task_time_limit"] < 20
    assert conf["broker_transport_options"]["visibility_timeout"] == 20
    with pytest.raises(ValueError, match="visibility_timeout"):
        celery_config(broker_url="redis://x", queue="q", task_time_limit=20, visibility_timeout=20)

    class Demo(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_DEMO_", extra="ignore")
        queue: str = "demo"

    read: list[int] = []

    def settings() -> Demo:
        read.append(1)
        return Demo(redis_url="redis://127.0.0.1:1/3", task_time_limit=10, visibility_timeout=20)

    lazy = service_celery("demo", settings)
    assert read == []  # nothing read at creation (a worker module builds its app at import)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HIDDENSCOPE_DEMO_UNACKED_RESTORE_INTERVAL", "0.5")
        assert lazy.conf.task_default_queue == "demo"
    assert read == [1]
    assert lazy.conf.broker_url == "redis://127.0.0.1:1/3"
    assert lazy.conf.task_acks_late
    assert lazy.conf.broker_transport_options["unacked_restore_interval"] == 0.5
    client = redis_server.client()
    assert redis_eviction_advice(client) is None
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert "noeviction" in (redis_eviction_advice(client) or "")
    finally:
        client.config_set("maxmemory-policy", "noeviction")


def test_job_ids_name_their_kind(store: JobStore) -> None:
    """``{kind}-{128 random bits}``: the gateway routes ``/v1/jobs/{id}`` by the kind."""
    ids = {new_job_id("match") for _ in range(1000)}
    assert len(ids) == 1000
    for job_id in ids:
        assert re.fullmatch(r"match-[A-Za-z0-9_-]{22}", job_id)
        assert job_kind(job_id) == "match"
    assert job_kind("q3AtWS70UuRAIcKaYOAVqg") is None
    assert job_kind("Upper-case") is None
    with pytest.raises(ValueError, match="lowercase"):
        new_job_id("Match")
    job, _ = store.create("match", {})
    assert job_kind(job.id) == "match"
    assert store.status(job.id) == "queued"
    assert store.status("match-nope") is None
    assert store.get_of_kind(job.id, "match").id == job.id
    with pytest.raises(JobNotFound, match="no ingest job"):
        store.get_of_kind(job.id, "ingest")
    with pytest.raises(JobNotFound, match="belongs to the match service"):
        store.get_of_kind("match-unknownAAAAAAAAAAAAAA", "ingest")
    with pytest.raises(JobNotFound, match="unknown, or expired"):
        store.get_of_kind("ingest-unknownAAAAAAAAAAAAA", "ingest")


def test_wait_seconds() -> None:
    assert wait_seconds(None, None, 60) == 0
    assert wait_seconds(5, None, 60) == 5
    assert wait_seconds(None, "respond-async, wait=30", 60) == 30
    assert wait_seconds(10, "wait=3", 60) == 10
    assert wait_seconds(1000, None, 60) == 60  # capped at the service's max_wait_seconds


def test_wrong_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    class Demo(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_DEMO_", extra="ignore")
        shard_steps: int = 1

    assert load_settings(Demo).redis_url.startswith("redis://")
    cases = {
        "HIDDENSCOPE_DEMO_SHARD_STEPS": ("many", "valid integer"),
        "HIDDENSCOPE_DEMO_REDIS_URL": ("127.0.0.1:6379", "Redis URL"),
        "HIDDENSCOPE_DEMO_DATA_ROOT": ("  ", "empty"),
        "HIDDENSCOPE_DEMO_MAX_ATTEMPTS": ("0", "greater than or equal to 1"),
        "HIDDENSCOPE_DEMO_BROKER_URL": ("nowhere", "broker URL"),
    }
    for name, (value, why) in cases.items():
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(SettingsError) as err:
                load_settings(Demo)
            assert f"{name}: " in str(err.value)
            assert why in str(err.value)
            if "URL" in name:
                assert value not in str(err.value)  # values are not echoed (passwords)
    monkeypatch.setenv("HIDDENSCOPE_DEMO_BROKER_URL", "")  # empty: the broker is redis_url
    assert load_settings(Demo).celery_broker_url == load_settings(Demo).redis_url
    monkeypatch.setenv("HIDDENSCOPE_DEMO_TASK_TIME_LIMIT", "100")
    monkeypatch.setenv("HIDDENSCOPE_DEMO_VISIBILITY_TIMEOUT", "100")
    with pytest.raises(SettingsError) as err:
        load_settings(Demo)
    why = "HIDDENSCOPE_DEMO_TASK_TIME_LIMIT (100) must be below HIDDENSCOPE_DEMO_VISIBILITY"
    assert why in str(err.value)


class _Backend:
    """A JobBackend over the kit's store (jobs of kind ``k``)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    @property
    def max_wait_seconds(self) -> float:
        return 2.0

    def job(self, job_id: str) -> Job:
        return self.store.get_of_kind(job_id, "k")

    def job_status(self, job_id: str) -> str | None:
        return self.store.status(job_id)

    def cancel(self, job_id: str) -> Job:
        self.job(job_id)
        return self.store.request_cancel(job_id)

    def render_job(self, job: Job, view: Any) -> JobResourceBase:
        return _KResource(**JobResourceBase.common(job), view=view)


class _KResource(JobResourceBase):
    view: Any = None


def test_job_router_serves_get_wait_cancel_and_delete(store: JobStore) -> None:
    backend = _Backend(store)

    def page(page: int = 1) -> int:
        return page

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        job_router(
            lambda: backend,
            _KResource,
            noun="k_job",
            id_description="a k job id",
            get_summary="A k job",
            get_description="the k job resource",
            cancel_summary="Cancel a k job",
            view=page,
        )
    )
    client = TestClient(app)
    job, _ = store.create("k", {})
    r = client.get(f"/v1/jobs/{job.id}", params={"page": 3})
    assert r.status_code == 200
    assert r.headers["retry-after"] == "1"
    assert r.json()["view"] == 3
    assert r.json()["links"]["cancel"] == f"/v1/jobs/{job.id}/cancel"
    lease = JobLease.claim(store, job.id, "w", 30)

    def finish_soon() -> None:
        time.sleep(0.3)
        lease.finish("succeeded")

    threading.Thread(target=finish_soon).start()
    t0 = time.monotonic()
    r = client.get(f"/v1/jobs/{job.id}", params={"wait": 5})  # capped at 2 s, ends at 0.3 s
    assert r.json()["status"] == "succeeded"
    assert time.monotonic() - t0 < 2
    assert "retry-after" not in r.headers
    assert client.post(f"/v1/jobs/{job.id}/cancel").status_code == 409
    other, _ = store.create("k", {})
    r = client.delete(f"/v1/jobs/{other.id}")
    assert r.status_code == 202
    assert r.headers["location"] == f"/v1/jobs/{other.id}"
    assert r.json()["status"] == "cancelled"
    assert r.json()["view"] is None  # a cancel's answer has no view
    assert client.get("/v1/jobs/k-unknownAAAAAAAAAAAAAAAAAA").status_code == 404
    ops = {op["operationId"] for path in app.openapi()["paths"].values() for op in path.values()}
    assert ops == {
        "get_k_job_v1_jobs__job_id__get",
        "cancel_k_job_v1_jobs__job_id__cancel_post",
        "delete_k_job_v1_jobs__job_id__delete",
    }
