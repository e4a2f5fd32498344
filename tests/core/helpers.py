"""What the core tests share: random states, a one-layer dataset written through the writer, and
the on-interval table's Arrow schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from hiddenscope_core.build import BuildSizes, DatasetWriter


def make_states(T: int, D: int, seed: int, nan_frac: float = 0.03) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, D)) * 0.8).astype(np.float32)
    x[rng.random((T, D)) < nan_frac] = np.nan
    return x


def write_dataset(
    root: Path,
    name: str,
    x: np.ndarray,
    *,
    dtype: str = "float32",
    transform: str = "tanh",
    starts: list[int] | None = None,
    chunk: int = 777,
    thresholds: list[float] | None = None,
    sizes: BuildSizes | None = None,
    index_sources: dict[str, str] | None = None,
) -> str:
    """Write ``x`` as layer ``l1`` of a new dataset; returns its id. ``index_sources`` gets the
    writer's ``index_sources`` (where each layer's planes came from)."""
    T, D = x.shape
    w = DatasetWriter.create(root, name, n_steps=T, sizes=sizes)
    if starts is not None:
        w.set_sequences(starts, names=[f"s{i}" for i in range(len(starts))])
    lw = w.add_layer("l1", n_cells=D, dtype=dtype, transform=transform, thresholds=thresholds)  # type: ignore[arg-type]
    for s in range(0, T, chunk):
        lw.write(x[s : s + chunk].astype(dtype))
    dataset_id = w.publish().id
    if index_sources is not None:
        index_sources.update(w.index_sources)
    return dataset_id


def interval_schema(wide: bool) -> pa.Schema:
    pos = pa.int64() if wide else pa.uint32()
    return pa.schema(
        [
            pa.field("threshold_index", pa.int16(), False),
            pa.field("cell", pa.int32(), False),
            pa.field("start", pos, False),
            pa.field("end", pos, False),
        ]
    )
