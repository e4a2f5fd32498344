"""What the UI tests share: the real API stack they talk to (:func:`start_stack`: a redis-server,
the match API + a match worker, the ingest API + an ingest worker, and the gateway in front of both
(one base URL), all real processes on free loopback ports; the dataset is written with the core
``DatasetWriter``), the app's path, and readers of what a page shows (:func:`page_text`, plotly
figure arrays: :func:`array`).

``python -m tests.ui.helpers DIR`` starts the stack by hand (prints the gateway URL; Ctrl-C stops
it).
"""

from __future__ import annotations

import base64
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.models import TrackInfo
from hiddenscope_service.processes import ManagedProcess
from hiddenscope_service.testing import RedisServer, start_celery_worker, start_uvicorn
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "ui" / "hiddenscope_ui" / "app.py"

VOCAB = [
    "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park", "(", ")", "and", ".",
    "little", "prince", "saw", "tree", "in", "house",
]  # fmt: skip
PHRASE = ["a", "little", "prince"]
PLANTED_CELLS = (3, 7, 11)
PLANT_EVERY = 60
T, D = 6000, 24


def write_demo(root: Path, name: str = "demo") -> dict[str, object]:
    """A text dataset: 4 named sequences, a planted phrase every ``PLANT_EVERY`` steps on which
    cells 3, 7, 11 are on (and off one step before/after), a discrete, a scalar and a top-K
    track. Returns what tests need to know."""
    rng = np.random.default_rng(11)
    ids = rng.integers(0, len(VOCAB), T)
    for word in PHRASE:
        ids[ids == VOCAB.index(word)] = VOCAB.index("the")
    values = rng.normal(0, 0.35, (T, D)).astype(np.float32)
    planted = list(range(20, T - 10, PLANT_EVERY))
    for p in planted:
        ids[p : p + 3] = [VOCAB.index(word) for word in PHRASE]
        for c in PLANTED_CELLS:
            values[p - 1, c] = -1.5
            values[p : p + 3, c] = 1.5
            values[p + 3, c] = -1.5
    starts = [0, 1500, 3000, 4500]
    names = ["doc-a", "doc-b", "doc-c", "doc-d"]
    pos = rng.integers(0, 4, T)
    loss = rng.gamma(2.0, 1.0, T).astype(np.float32)
    top_ids = rng.integers(0, len(VOCAB), (T, 3))
    top_scores = np.sort(rng.random((T, 3)).astype(np.float32), axis=1)[:, ::-1].copy()
    w = DatasetWriter.create(root, name, n_steps=T, description="UI test corpus")
    try:
        w.set_sequences(starts, names=names)
        w.set_vocab(VOCAB)
        w.write_tokens(ids)
        lw = w.add_layer("cell_l1", n_cells=D, dtype="float32", transform="tanh", kind="cell")
        lw.write(values)
        lw2 = w.add_layer("hidden_l1", n_cells=D // 2, dtype="float32", transform="none")
        lw2.write(np.tanh(values[:, : D // 2]) * 0.5)
        w.add_track(
            TrackInfo(name="pos", kind="discrete", labels=["NOUN", "VERB", "DET", "ADJ"]), pos
        )
        w.add_track(TrackInfo(name="loss", kind="scalar"), loss)
        w.add_track(TrackInfo(name="next", kind="topk", k=3), ids=top_ids, scores=top_scores)
        manifest = w.publish()
    except BaseException:
        w.abort()
        raise
    return {"id": manifest.id, "planted": planted}


@dataclass
class UiStack:
    base: Path
    data_root: Path
    url: str = ""
    procs: list[ManagedProcess] = field(default_factory=list)
    redis: RedisServer | None = None
    demo: dict[str, object] = field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.redis is not None:
            self.redis.stop()


def start_stack(base: Path) -> UiStack:
    base.mkdir(parents=True, exist_ok=True)
    stack = UiStack(base=base, data_root=base / "data")
    try:
        stack.demo = write_demo(stack.data_root)
        stack.redis = RedisServer(base / "redis").start()
        common = {"PYTHONUNBUFFERED": "1"}
        menv = {
            **common,
            "HIDDENSCOPE_MATCH_REDIS_URL": stack.redis.url,
            "HIDDENSCOPE_MATCH_DATA_ROOT": str(stack.data_root),
            "HIDDENSCOPE_MATCH_TASK_TIME_LIMIT": "60",
            "HIDDENSCOPE_MATCH_VISIBILITY_TIMEOUT": "120",
        }
        ienv = {
            **common,
            "HIDDENSCOPE_INGEST_REDIS_URL": stack.redis.url,
            "HIDDENSCOPE_INGEST_DATA_ROOT": str(stack.data_root),
            "HIDDENSCOPE_INGEST_TASK_TIME_LIMIT": "60",
            "HIDDENSCOPE_INGEST_VISIBILITY_TIMEOUT": "120",
        }
        stack.procs.append(
            start_celery_worker("hiddenscope_match.tasks:celery_app", queues=["match"],
                                log_path=base / "match-worker.log", env=menv, name="uimatch")
        )  # fmt: skip
        stack.procs.append(
            start_celery_worker("hiddenscope_ingest.tasks:celery_app", queues=["ingest"],
                                log_path=base / "ingest-worker.log", env=ienv, name="uiingest")
        )  # fmt: skip
        match_api = start_uvicorn(
            "hiddenscope_match.app:create_app", log_path=base / "match-api.log", env=menv
        )
        stack.procs.append(match_api)
        ingest_api = start_uvicorn(
            "hiddenscope_ingest.app:create_app", log_path=base / "ingest-api.log", env=ienv
        )
        stack.procs.append(ingest_api)
        gateway = start_uvicorn(
            "hiddenscope_gateway.app:create_app",
            log_path=base / "gateway.log",
            env={
                **common,
                "HIDDENSCOPE_GATEWAY_INGEST_URL": str(ingest_api.url),
                "HIDDENSCOPE_GATEWAY_MATCH_URL": str(match_api.url),
            },
            health_path="/livez",
        )
        stack.procs.append(gateway)
        stack.url = str(gateway.url)
    except BaseException:
        stack.stop()
        raise
    return stack


def page_text(at: AppTest) -> str:
    """Everything a page says in words: markdown, errors, warnings, infos, captions, successes."""
    parts = [m.value for m in at.markdown] + [e.value for e in at.error]
    parts += [w.value for w in at.warning] + [i.value for i in at.info]
    parts += [c.value for c in at.caption] + [s.value for s in at.success]
    return "\n".join(str(p) for p in parts)


def array(value: Any) -> np.ndarray[Any, Any]:
    """A plotly figure's array (AppTest's chart specs, or a browser's ``gd.data``) as floats
    (plotly writes numpy arrays as ``{dtype, bdata, shape}``; ``None`` becomes NaN)."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if value.get("shape"):
            out = out.reshape([int(x) for x in str(value["shape"]).split(",")])
        return out.astype(float)
    if isinstance(value, list) and value and isinstance(value[0], dict | list):
        return np.stack([array(v) for v in value])
    return np.asarray([np.nan if v is None else v for v in value], dtype=float)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # a background job ignores SIGINT: stop (and clean up) on SIGTERM too
    signal.signal(signal.SIGTERM, _interrupt)
    s = start_stack(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hiddenscope-ui-stack"))
    print(s.url, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()
