"""Select (SPEC §2): the cells on over a range and off just before and after it."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hiddenscope_core.errors import InvalidQuery
from hiddenscope_core.models import DatasetManifest, SelectQuery, SelectResult

MAX_SELECT_STEPS = 1_000_000
"""Longest range + off extents a select reads (the column reads grow with it)."""

MAX_WINDOW_STEPS = 100_000
"""Longest window of per-step counts."""


class SelectSource(Protocol):
    @property
    def manifest(self) -> DatasetManifest: ...

    @property
    def n_steps(self) -> int: ...

    def sequence_starts(self) -> npt.NDArray[np.int64]: ...

    def values(self, layer: str) -> npt.NDArray[Any]: ...


def on_matrix(values: npt.NDArray[Any], threshold: float) -> npt.NDArray[np.bool_]:
    """``values >= threshold`` compared exactly (float64); NaN is off."""
    with np.errstate(invalid="ignore"):
        return np.asarray(values, dtype=np.float64) >= threshold


def sequence_bounds(starts: npt.NDArray[np.int64], n_steps: int, step: int) -> tuple[int, int]:
    """``[start, end)`` of the sequence holding ``step``."""
    i = int(np.searchsorted(starts, step, side="right")) - 1
    end = int(starts[i + 1]) if i + 1 < starts.size else n_steps
    return int(starts[i]), end


def select_cells(ds: SelectSource, query: SelectQuery) -> SelectResult:
    """S1 of ``query`` and, per step of its window, how many S1 cells are on.

    Raises ``NotFound`` (unknown layer) and ``InvalidQuery`` (a range outside the data, across
    a sequence boundary, or too long).
    """
    layer = ds.manifest.layer(query.layer)
    T = ds.n_steps
    a, b = query.start, query.end
    if b > T:
        raise InvalidQuery(f"range [{a}, {b}) is outside the data: steps are 0..{T - 1}")
    starts = ds.sequence_starts()
    q_lo, q_hi = sequence_bounds(starts, T, a)
    if b > q_hi:
        raise InvalidQuery(
            f"range [{a}, {b}) crosses the sequence boundary at step {q_hi}; "
            "a range must lie inside one sequence"
        )
    lo = max(a - query.left_off, q_lo)
    hi = min(b + query.right_off, q_hi)
    if hi - lo > MAX_SELECT_STEPS:
        raise InvalidQuery(
            f"range plus off extents spans {hi - lo} steps; at most {MAX_SELECT_STEPS}"
        )
    values = ds.values(layer.name)
    on = on_matrix(values[:, lo:hi], query.threshold)  # (D, hi - lo)
    inside = on[:, a - lo : b - lo].all(axis=1)
    outside = on[:, : a - lo].any(axis=1) | on[:, b - lo :].any(axis=1)
    cells = np.flatnonzero(inside & ~outside)

    w_lo = max(a - query.left_off, 0) if query.window_start is None else query.window_start
    w_hi = min(b + query.right_off, T) if query.window_end is None else query.window_end
    if w_hi > T or w_hi <= w_lo:
        raise InvalidQuery(f"window [{w_lo}, {w_hi}) is outside the data: steps are 0..{T - 1}")
    if w_hi - w_lo > MAX_WINDOW_STEPS:
        raise InvalidQuery(f"window spans {w_hi - w_lo} steps; at most {MAX_WINDOW_STEPS}")
    if cells.size:
        counts = on_matrix(values[cells, w_lo:w_hi], query.threshold).sum(axis=0)
    else:
        counts = np.zeros(w_hi - w_lo, dtype=np.int64)
    return SelectResult(
        cells=[int(c) for c in cells],
        window_start=w_lo,
        window_end=w_hi,
        counts=[int(x) for x in counts],
    )
