"""What the match tests share: the stack's handle (:class:`MatchStack`, built by the
``match_stack`` fixture, and the datasets it serves, :class:`MatchData`), the stack's limits and
vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import RedisServer, start_celery_worker

from tests.core.datagen import DataSpec

SHARD_SIZES = {"tiny": 37, "small": 256, "one": 1 << 24}
"""API processes by name → their ``shard_steps`` setting (the shard plan is made by the API)."""

MAX_WINDOW_STEPS = 5000
MAX_WINDOW_VALUES = 200_000

VOCAB = ["the", "cat", "sat", "on", "mat", "a", "dog", ".", "and", "ran"]


@dataclass
class MatchData:
    root: Path
    specs: dict[str, DataSpec] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchStack:
    apis: dict[str, ManagedProcess]
    workers: list[ManagedProcess]
    data: MatchData
    env: dict[str, str]
    redis: RedisServer
    base: Path

    def url(self, api: str = "small") -> str:
        url = self.apis[api].url
        assert url is not None
        return url

    def logs(self) -> str:
        parts = [f"--- {p.name} ---\n{p.log()}" for p in (*self.workers, *self.apis.values())]
        return "\n".join(parts)

    def add_worker(self) -> None:
        n = len(self.workers)
        self.workers.append(
            start_celery_worker(
                "hiddenscope_match.tasks:celery_app",
                queues=["match"],
                log_path=self.base / f"worker{n}.log",
                env=self.env,
                concurrency=1,
                name=f"match{n}",
            )
        )
