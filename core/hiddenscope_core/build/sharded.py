"""The state of a sharded build: the layers that other processes write shard by shard, and
the build's record in ``staging/<id>/build/`` from which any process resumes it.

``DatasetWriter.declare_layer``/``save_build`` make a sharded build, ``DatasetWriter.resume``
opens it in another process, ``write_layer_shard`` (phase 1) and ``index_layer_shard``
(phase 2) write one shard; each shard leaves its statistics and index parts as ``.npz`` files
here, which ``ShardedLayer`` merges at publication.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hiddenscope_core.build.files import write_atomic
from hiddenscope_core.errors import InvalidData
from hiddenscope_core.models import LayerInfo

BUILD_JSON = "build.json"
SEQUENCE_STARTS = "sequence_starts.npy"


def save_build_state(build_dir: Path, doc: dict[str, Any], starts: npt.NDArray[np.int64]) -> None:
    """Record a sharded build: its description ``doc`` (JSON) and sequence starts."""
    build_dir.mkdir(exist_ok=True)
    np.save(build_dir / SEQUENCE_STARTS, starts, allow_pickle=False)
    write_atomic(build_dir / BUILD_JSON, json.dumps(doc).encode())


def load_build_state(build_dir: Path) -> tuple[dict[str, Any], npt.NDArray[np.int64]]:
    """What ``save_build_state`` recorded. Raises ``FileNotFoundError`` if nothing was."""
    doc = json.loads((build_dir / BUILD_JSON).read_text())
    starts = np.load(build_dir / SEQUENCE_STARTS, allow_pickle=False)
    return doc, starts.astype(np.int64)


class ShardedLayer:
    """A layer of a sharded build: its rows come from ``write_layer_shard`` in any process;
    each shard leaves its statistics (phase 1) and index parts (phase 2) in
    ``build/<layer>/<kind>-<shard>.npz``, merged here."""

    def __init__(
        self, staging: Path, build_dir: Path, info: LayerInfo, explicit_grid: bool
    ) -> None:
        self.info = info
        self.explicit_grid = explicit_grid
        self.dir = staging / "layers" / info.name
        self._parts = build_dir / info.name
        d = info.n_cells
        self.cmin = np.full(d, np.inf, np.float32)
        self.cmax = np.full(d, -np.inf, np.float32)
        self.csum = np.zeros(d, np.float64)
        self.cnan = np.zeros(d, np.int64)

    def save_part(self, kind: str, shard: int, **arrays: npt.NDArray[Any]) -> None:
        """Save a shard's ``kind`` (``stats`` | ``index``) arrays (atomically: a re-run of the
        shard replaces them)."""
        self._parts.mkdir(exist_ok=True)  # not parents: an aborted build stays gone
        tmp = self._parts / f".{kind}-{shard}.{secrets.token_hex(4)}.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, self._parts / f"{kind}-{shard}.npz")

    def _load(self, kind: str, n_shards: int) -> list[dict[str, npt.NDArray[Any]]] | None:
        out = []
        for i in range(n_shards):
            try:
                with np.load(self._parts / f"{kind}-{i}.npz", allow_pickle=False) as z:
                    out.append({k: z[k] for k in z.files})
            except FileNotFoundError:
                return None
        return out

    def merge_stats(self, n_shards: int) -> None:
        """Fold the statistics of every shard (all of phase 1 must be done)."""
        parts = self._load("stats", n_shards)
        if parts is None:
            missing = [i for i in range(n_shards) if not (self._parts / f"stats-{i}.npz").exists()]
            raise InvalidData(
                f"layer {self.info.name!r}: shards {missing} have not been written "
                "(write_layer_shard)"
            )
        self.cmin = np.min([p["cmin"] for p in parts], axis=0).astype(np.float32)
        self.cmax = np.max([p["cmax"] for p in parts], axis=0).astype(np.float32)
        self.csum = np.sum([p["csum"] for p in parts], axis=0).astype(np.float64)
        self.cnan = np.sum([p["cnan"] for p in parts], axis=0).astype(np.int64)

    def merged_index(
        self, n_shards: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """The summed index parts of phase 2, or None unless every shard has one (then the
        publishing process builds the planes itself)."""
        parts = self._load("index", n_shards)
        if parts is None:
            return None
        return (
            np.sum([p["hist"] for p in parts], axis=0),
            np.sum([p["counts"] for p in parts], axis=0),
            np.sum([p["ons"] for p in parts], axis=0),
        )
