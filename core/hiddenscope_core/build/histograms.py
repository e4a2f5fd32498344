"""Per-cell value histograms of a layer, and the quantiles read from them.

The bins are a function of the layer's value range alone (``hist_frame``), so a histogram grown
block by block as the rows arrive (``Hist``), one built from ``values.bin`` and the summed
histograms of a sharded build's shards all end with the same bins and counts.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt

from hiddenscope_core.build.format import HIST_BINS, QUANTILES


@nb.njit(cache=True, nogil=True, inline="always")
def _hist_add(colf: Any, scale: float, j0: float, h: Any, idx: Any) -> None:
    """Add the values of ``colf`` (float32) to the histogram ``h`` of bins ``floor(x x scale) -
    j0`` (``scale`` a power of two, see ``hist_frame``: exact, so any build path puts a value
    in the same bin); NaN is not counted. The bin indices are computed in one vectorised pass
    into ``idx``, then counted (one pass that does both is about 1.2x slower: the increments
    stall the conversions)."""
    top = np.float64(h.shape[0] - 1)
    m = colf.shape[0]
    for i in range(m):
        x = colf[i]
        f = min(max(np.floor(np.float64(x) * scale) - j0, 0.0), top)
        idx[i] = np.int32(f) if x == x else -1
    for i in range(m):
        k = idx[i]
        if k >= 0:
            h[k] += 1


@nb.njit(cache=True, nogil=True)
def hist_block(vals: Any, n: int, scale: float, j0: float, hist: Any, idx: Any) -> None:
    """Add the first ``n`` values of every row of ``vals`` (float32) to ``hist[c]``."""
    for c in range(vals.shape[0]):
        _hist_add(vals[c, :n], scale, j0, hist[c], idx)


@nb.njit(cache=True, nogil=True)
def hist_block_f16(
    vals: Any, n: int, lut: Any, scale: float, j0: float, hist: Any, tmp: Any, idx: Any
) -> None:
    """As ``hist_block`` for float16 bit patterns (converted through ``lut``)."""
    for c in range(vals.shape[0]):
        col = vals[c]
        for j in range(n):
            tmp[j] = lut[col[j]]
        _hist_add(tmp[:n], scale, j0, hist[c], idx)


def hist_frame(vmin: float, vmax: float) -> tuple[int, int]:
    """The bins of the per-cell histograms of a layer whose finite values span ``[vmin,
    vmax]``: bin ``i`` holds ``floor(x / 2^k) = j0 + i``, for the smallest ``k`` that fits the
    range in ``HIST_BINS`` bins (bins at most 2x as wide as ``(vmax - vmin) / HIST_BINS``) and
    keeps ``|x| / 2^k < 2^50`` (so the bin index is exact in float64). Returns ``(k, j0)``.
    A function of the range alone, and monotone in it, so that a histogram grown block by
    block (``Hist``), one built from the whole range and the shards of a sharded build all
    end with the same bins and counts."""
    m = max(abs(vmin), abs(vmax))
    k = math.frexp(m)[1] - 50 if m > 0 else -210  # float32 magnitudes are >= 2^-149
    if vmax > vmin:
        k = max(k, math.frexp(vmax - vmin)[1] - 14)  # below this the range cannot fit
        while math.floor(math.ldexp(vmax, -k)) - math.floor(math.ldexp(vmin, -k)) >= HIST_BINS:
            k += 1
    return k, math.floor(math.ldexp(vmin, -k))


class Hist:
    """Per-cell histograms in the bins of ``hist_frame`` of the values seen so far; new values
    beyond the bins re-bin the counts (exactly: bins of ``2^k`` merge into bins of ``2^k'``)."""

    def __init__(self, d: int) -> None:
        self.h = np.zeros((d, HIST_BINS), np.int64)
        self.frame: tuple[int, int] | None = None

    def cover(self, vmin: float, vmax: float) -> None:
        if not vmin <= vmax:
            return  # no finite value yet
        frame = hist_frame(vmin, vmax)
        if self.frame is not None and frame != self.frame:
            k0, j0 = self.frame
            k1, j1 = frame
            if k1 < k0:  # never: hist_frame is monotone in the range
                raise AssertionError("histogram bins cannot get narrower")
            idx = ((j0 + np.arange(HIST_BINS, dtype=np.int64)) >> (k1 - k0)) - j1
            inside = (idx >= 0) & (idx < HIST_BINS)  # the bins outside are past the values
            if self.h[:, ~inside].any():  # never: the new bins cover every value seen
                raise AssertionError("histogram re-binning lost values")
            new = np.zeros_like(self.h)
            np.add.at(new, (slice(None), idx[inside]), self.h[:, inside])  # type: ignore[arg-type]
            self.h = new
        self.frame = frame

    @property
    def scale(self) -> float:
        return math.ldexp(1.0, -self.frame[0]) if self.frame is not None else 1.0

    @property
    def j0(self) -> float:
        return float(self.frame[1]) if self.frame is not None else 0.0


def hist_quantiles(
    hist: npt.NDArray[np.int64],
    lo: float,
    scale: float,
    cell_min: npt.NDArray[np.float64],
    cell_max: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Approximate quantiles ``(D, len(QUANTILES))`` from per-cell histograms of ``HIST_BINS``
    equal bins from ``lo`` (``hist_frame``: bins at most twice as wide as ``(max - min) /
    HIST_BINS`` of the layer): the rank ``q x (n - 1)`` is located in its bin and interpolated
    linearly inside it, then clamped to the cell's [min, max]. The error is at most one bin
    width. NaN for an all-NaN cell."""
    D = hist.shape[0]
    out = np.full((D, len(QUANTILES)), np.nan)
    cum = np.cumsum(hist, axis=1)
    width = 1.0 / scale if scale > 0 else 0.0
    for c in range(D):
        n = int(cum[c, -1])
        if n == 0:
            continue
        for qi, q in enumerate(QUANTILES):
            r = q * (n - 1)
            b = int(np.searchsorted(cum[c], r, side="right"))
            b = min(b, HIST_BINS - 1)
            before = cum[c, b - 1] if b else 0
            frac = (r - before + 0.5) / hist[c, b] if hist[c, b] else 0.0
            val = lo + (b + min(max(frac, 0.0), 1.0)) * width
            out[c, qi] = min(max(val, cell_min[c]), cell_max[c])
    return out
