"""The match stack for integration tests: published datasets written with the core
``DatasetWriter``, one real redis-server, real Celery worker processes (a second one is added
by ``two_workers``) and real uvicorn servers whose only difference is the shard size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.models import TrackInfo
from hiddenscope_service.testing import RedisServer, start_uvicorn

from tests.core.datagen import DataSpec, random_dataspec, write_dataset
from tests.services.match.helpers import (
    MAX_WINDOW_STEPS,
    MAX_WINDOW_VALUES,
    SHARD_SIZES,
    VOCAB,
    MatchData,
    MatchStack,
)


def _random_specs() -> dict[str, DataSpec]:
    """Random datasets with several sequences: float32/tanh, float16/none, with NaNs."""
    out: dict[str, DataSpec] = {}
    combos = [("float32", "tanh", 0.0), ("float16", "none", 0.02), ("float32", "none", 0.01)]
    seed = 100
    for i, (dtype, transform, nan_frac) in enumerate(combos):
        while True:
            seed += 1
            T = int(np.random.default_rng(seed).integers(300, 700))
            spec = random_dataspec(seed, T, 12, dtype, transform, nan_frac)
            if len(spec.starts) >= 3:
                break
        out[f"rand-{i}"] = spec
    return out


def _write_text_dataset(root: Path) -> dict[str, Any]:
    """Tokens, vocabulary, named sequences and every track kind, plus one layer."""
    rng = np.random.default_rng(7)
    T, D = 3000, 16
    tokens = rng.integers(0, len(VOCAB), T)
    tokens[100:104] = [0, 1, 2, 3]  # "the cat sat on" at 100 ...
    tokens[1998:2002] = [0, 1, 2, 3]  # ... and across the boundary at 2000
    starts = [0, 1000, 2000, 2500]
    names = ["doc-a", "doc-b", "doc-c", "doc-d"]
    values = rng.normal(0, 1, (T, D)).astype(np.float32)
    values[5, 3] = np.nan
    labels = rng.integers(-1, 3, T)
    scalar = rng.normal(0, 1, T).astype(np.float32)
    scalar[7] = np.nan
    topk_ids = rng.integers(0, len(VOCAB), (T, 2))
    topk_scores = rng.random((T, 2)).astype(np.float32)
    w = DatasetWriter.create(root, "text", n_steps=T)
    try:
        w.set_sequences(starts, names=names)
        w.set_vocab(VOCAB)
        w.write_tokens(tokens)
        lw = w.add_layer("cell", n_cells=D, dtype="float32", transform="tanh", kind="cell")
        lw.write(values)
        w.add_track(TrackInfo(name="pos", kind="discrete", labels=["N", "V", "D"]), labels)
        w.add_track(TrackInfo(name="score", kind="scalar"), scalar)
        w.add_track(TrackInfo(name="pred", kind="topk", k=2), ids=topk_ids, scores=topk_scores)
        manifest = w.publish()
    except BaseException:
        w.abort()
        raise
    return {
        "id": manifest.id,
        "tokens": tokens,
        "starts": starts,
        "names": names,
        "values": values,
        "labels": labels,
        "scalar": scalar,
        "topk_ids": topk_ids,
        "topk_scores": topk_scores,
    }


@pytest.fixture(scope="session")
def match_data(tmp_path_factory: pytest.TempPathFactory) -> MatchData:
    root = tmp_path_factory.mktemp("match") / "data"
    data = MatchData(root=root, specs=_random_specs())
    for name, spec in data.specs.items():
        write_dataset(spec, root, name=name)
    data.text = _write_text_dataset(root)
    return data


@pytest.fixture(scope="session")
def match_stack(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    service_env: Callable[..., dict[str, str]],
    match_data: MatchData,
) -> Iterator[MatchStack]:
    base = tmp_path_factory.mktemp("match-stack")
    env = service_env(
        "HIDDENSCOPE_MATCH_",
        redis_server.url,
        match_data.root,
        task_time_limit=60,
        visibility_timeout=120,
        unacked_restore_interval=1,
        max_window_steps=MAX_WINDOW_STEPS,
        max_window_values=MAX_WINDOW_VALUES,
        max_context_steps=50,
    )
    stack = MatchStack({}, [], match_data, env, redis_server, base)
    try:
        stack.add_worker()
        for name, shard_steps in SHARD_SIZES.items():
            stack.apis[name] = start_uvicorn(
                "hiddenscope_match.app:create_app",
                log_path=base / f"api-{name}.log",
                env={**env, "HIDDENSCOPE_MATCH_SHARD_STEPS": str(shard_steps)},
            )
        yield stack
    finally:
        for proc in (*stack.apis.values(), *stack.workers):
            proc.stop()


@pytest.fixture
def client(match_stack: MatchStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=match_stack.url("small"), timeout=60) as c:
        yield c
