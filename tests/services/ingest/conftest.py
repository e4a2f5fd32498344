"""The ingest stack for integration tests: one redis-server, one Celery worker subprocess (two
pool processes) and one uvicorn subprocess for the session, plus an httpx client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from hiddenscope_service.testing import RedisServer, start_celery_worker, start_uvicorn

from tests.services.ingest.helpers import MAX_UPLOAD_BYTES, IngestStack


@pytest.fixture(scope="session")
def ingest_stack(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    service_env: Callable[..., dict[str, str]],
) -> Iterator[IngestStack]:
    base = tmp_path_factory.mktemp("ingest")
    data_root = base / "data"
    allowed = base / "server-files"
    allowed.mkdir()
    env = service_env(
        "HIDDENSCOPE_INGEST_",
        redis_server.url,
        data_root,
        allowed_roots=json.dumps([str(allowed)]),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_file_bytes=MAX_UPLOAD_BYTES,
        task_time_limit=120,
        visibility_timeout=180,
        lease_seconds=10,
        chunk_bytes=2**16,  # many chunks even for small test arrays
        # small parts and shards: most test datasets are built in several shards, shared by
        # the worker's two pool processes (hiddenscope_ingest.shards)
        part_steps=1024,
        shard_steps=4096,
        unacked_restore_interval=1,
    )
    worker = start_celery_worker(
        "hiddenscope_ingest.tasks:celery_app",
        queues=["ingest"],
        log_path=base / "worker.log",
        env=env,
        concurrency=2,
        name="ingest",
    )
    try:
        api = start_uvicorn("hiddenscope_ingest.app:create_app", log_path=base / "api.log", env=env)
    except BaseException:
        worker.stop()
        raise
    stack = IngestStack(api, worker, data_root, allowed, env, redis_server)
    try:
        yield stack
    finally:
        api.stop()
        worker.stop()


@pytest.fixture
def client(ingest_stack: IngestStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest_stack.url, timeout=60) as c:
        yield c
