"""Random datasets for the exactness tests of select and match.

Values have runs (a per-cell on/off Markov chain), ties (values drawn from a few exact levels,
many of them exactly representable in float16), values near the thresholds (continuous noise),
NaNs, ``-0.0``, constant cells (runs touching the first and the last step) and sequences of
length 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.reader import open_dataset

F16_TINY = 5.960464477539063e-08  # the smallest positive float16 (subnormal)
ON_LEVELS = np.array(
    [0.3, 0.5, 0.75, 1.0, 2.0, 0.30000001192092896, 0.2998046875, 65504.0, F16_TINY]
)
OFF_LEVELS = np.array([-1.0, -0.5, -0.0, 0.0, 0.125, 0.25, 0.29, 0.2998046875, -65504.0, -F16_TINY])


@dataclass
class LayerSpec:
    name: str
    raw: np.ndarray  # (T, D) float16 or float32, the values written
    transform: str
    thresholds: list[float] | None = None  # None: the writer's default grid

    @property
    def dtype(self) -> str:
        return str(self.raw.dtype)


@dataclass
class DataSpec:
    n_steps: int
    starts: list[int]
    names: list[str] | None
    layers: list[LayerSpec] = field(default_factory=list)
    chunk_seed: int = 0

    def layer(self, name: str) -> LayerSpec:
        return next(x for x in self.layers if x.name == name)

    def bounds(self) -> list[tuple[int, int]]:
        ends = [*self.starts[1:], self.n_steps]
        return list(zip(self.starts, ends, strict=True))


def random_values(
    rng: np.random.Generator, T: int, D: int, dtype: str, nan_frac: float
) -> np.ndarray:
    """``(T, D)`` values with runs, ties, near-threshold noise and NaNs."""
    p_switch = rng.choice([0.01, 0.05, 0.2, 0.5], size=D)
    flips = rng.random((T, D)) < p_switch
    flips[0] = rng.random(D) < 0.5
    state = (np.cumsum(flips, axis=0) % 2).astype(bool)
    quantized = np.where(state, rng.choice(ON_LEVELS, (T, D)), rng.choice(OFF_LEVELS, (T, D)))
    continuous = np.where(state, rng.uniform(0.15, 1.5, (T, D)), rng.uniform(-1.5, 0.45, (T, D)))
    use_levels = rng.random((T, D)) < rng.choice([0.0, 0.5, 0.9, 1.0])
    values = np.where(use_levels, quantized, continuous)
    # a few constant cells: one run over the whole data (or all NaN)
    for c in range(D):
        r = rng.random()
        if r < 0.05:
            values[:, c] = 1.0
        elif r < 0.08:
            values[:, c] = np.nan
        elif r < 0.12:
            values[:, c] = -0.0
    if dtype == "float32" and rng.random() < 0.2:  # beyond the float16 range
        big = rng.random((T, D)) < 0.02
        values[big] = rng.choice([-3e38, -1e30, 1e30, 3e38], int(big.sum()))
    if nan_frac > 0:
        values[rng.random((T, D)) < nan_frac] = np.nan
    return values.astype(np.float16 if dtype == "float16" else np.float32)


def random_starts(rng: np.random.Generator, T: int) -> list[int]:
    """Sequence starts (first 0, strictly increasing), with length-1 sequences likely."""
    if T == 1 or rng.random() < 0.25:
        return [0]
    n_cuts = int(rng.integers(1, min(T - 1, 12) + 1))
    cuts = set(rng.choice(np.arange(1, T), size=n_cuts, replace=False).tolist())
    if rng.random() < 0.5:  # a length-1 sequence in the middle
        c = int(rng.integers(1, T))
        cuts |= {c, min(c + 1, T - 1)}
    if rng.random() < 0.3:  # a length-1 sequence at the end
        cuts.add(T - 1)
    if rng.random() < 0.3:  # a length-1 sequence at the start
        cuts.add(1)
    return [0, *sorted(cuts)]


def random_dataspec(
    seed: int, T: int, D: int, dtype: str, transform: str, nan_frac: float
) -> DataSpec:
    rng = np.random.default_rng(seed)
    starts = random_starts(rng, T)
    names = None if rng.random() < 0.5 else [f"seq{i}" for i in range(len(starts))]
    spec = DataSpec(n_steps=T, starts=starts, names=names, chunk_seed=seed)
    spec.layers.append(
        LayerSpec("main", random_values(rng, T, D, dtype, nan_frac), transform, thresholds=None)
    )
    # a second layer with the other dtype and transform and an explicit grid
    D2 = int(rng.integers(1, 9))
    other_dtype = "float32" if dtype == "float16" else "float16"
    other_transform = "none" if transform == "tanh" else "tanh"
    grid = sorted({float(x) for x in rng.choice([-0.5, 0.0, 0.25, 0.3, 0.5, 0.75], 3)})
    spec.layers.append(
        LayerSpec(
            "other",
            random_values(rng, T, D2, other_dtype, nan_frac),
            other_transform,
            thresholds=grid,
        )
    )
    return spec


def write_dataset(spec: DataSpec, root: Path, name: str = "ds"):
    """Write ``spec`` with ``DatasetWriter`` (layers in random chunks) and open it."""
    rng = np.random.default_rng(spec.chunk_seed + 1)
    w = DatasetWriter.create(root, name, n_steps=spec.n_steps)
    try:
        if len(spec.starts) > 1 or spec.names is not None:
            w.set_sequences(spec.starts, names=spec.names)
        for layer in spec.layers:
            lw = w.add_layer(
                layer.name,
                n_cells=layer.raw.shape[1],
                dtype=layer.dtype,
                transform=layer.transform,
                thresholds=layer.thresholds,
                kind="cell",
            )
            t = 0
            while t < spec.n_steps:
                n = int(rng.integers(1, max(2, spec.n_steps // 3) + 1))
                lw.write(layer.raw[t : t + n])
                t += n
        manifest = w.publish()
    except BaseException:
        w.abort()
        raise
    return open_dataset(Path(root) / "datasets" / manifest.id)
