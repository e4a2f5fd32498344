"""The threshold grid of a layer's index: which θ get precomputed on-planes and on-intervals.

A query at a grid θ is answered from the index; any other θ is answered exactly by a slower scan
(SPEC §3). The default grid is a handful of "nice" numbers covering the transformed value range,
so that the original tool's default θ = 0.3 on a ``tanh`` layer is on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hiddenscope_core.errors import InvalidData

MAX_GRID = 32
"""At most this many thresholds per layer (planes cost T x D / 8 bytes each)."""


def _nice_step(target: float) -> tuple[float, int]:
    """Smallest ``m x 10^k >= target`` with ``m`` in {1, 2, 5}; returns ``(step, k)``."""
    k = math.floor(math.log10(target))
    for _ in range(3):  # float log10 can be one decade off near powers of ten
        for m in (1, 2, 5):
            step = m * 10.0**k
            # a relative slack so that 0.1 is accepted for a span/10 of 0.1000000000000001
            if step >= target * (1 - 1e-9):
                return step, k
        k += 1
    return 10.0**k, k  # pragma: no cover - unreachable


def default_grid(value_min: float, value_max: float) -> list[float]:
    """Default thresholds for a layer whose finite transformed values span
    ``[value_min, value_max]``.

    ``span = value_max - max(value_min, 0)`` when ``value_max > 0`` (only positive thresholds are
    interesting then, as in the original tool), else ``value_max - value_min``. The step is the
    smallest of {1, 2, 5} x 10^k that is ``>= span / 10``; the grid is every multiple of the step
    strictly inside ``(value_min, value_max)`` (and ``> 0`` when ``value_max > 0``), rounded to the
    step's decimals so that e.g. ``0.3`` is exactly ``0.3``. A ``tanh`` layer spanning
    ``[-1, 1]`` gets ``0.1 .. 0.9``. Returns ``[]`` for an empty, constant or non-finite range
    (every query is then answered off-grid).
    """
    if not (math.isfinite(value_min) and math.isfinite(value_max)) or value_max <= value_min:
        return []
    lower = max(value_min, 0.0) if value_max > 0 else value_min
    span = value_max - lower
    if span <= 0:
        return []
    step, k = _nice_step(span / 10)
    decimals = max(0, -k) + 1
    first = math.floor(lower / step) + 1
    last = math.ceil(value_max / step) - 1
    grid: list[float] = []
    for i in range(first, last + 1):
        theta = round(i * step, decimals)
        if lower < theta < value_max and (theta > 0 or value_max <= 0) and theta > value_min:
            grid.append(theta)
    return grid


def validate_grid(thresholds: Sequence[float], layer: str = "") -> list[float]:
    """Check a configured grid: finite, strictly ascending (sorted and unique), at most
    ``MAX_GRID`` values. An empty grid is allowed.

    Raises:
        InvalidData: saying which value is wrong and how to fix it.
    """
    where = f" of layer {layer!r}" if layer else ""
    out = [float(x) for x in thresholds]
    if len(out) > MAX_GRID:
        raise InvalidData(
            f"the threshold grid{where} has {len(out)} values; at most {MAX_GRID} are allowed "
            "(each costs one on-plane of T x D bits)"
        )
    for i, x in enumerate(out):
        if not math.isfinite(x):
            raise InvalidData(f"threshold {i}{where} is {x}; thresholds must be finite numbers")
        if i and x <= out[i - 1]:
            raise InvalidData(
                f"the threshold grid{where} must be sorted ascending without duplicates; "
                f"value {i} ({x}) is not greater than value {i - 1} ({out[i - 1]})"
            )
    return out
