"""Per-bin summaries of long ranges (the zoomed-out views, SPEC §6): meta tracks and the on-count
of a set of cells, over equal-width bins of ``[start, end)``.

Everything streams: a track is read in record batches of its Parquet row groups
(``reader.Dataset.track_summary``), the on-count in chunks of the bit planes or the values, so
memory is bounded by the chunk size and the bins, never by the range. Each chunk is reduced with
numpy (``bincount``, ``reduceat``) — no Python loop per step — and folded into per-bin
accumulators; a bin that runs across chunks is merged exactly.

Bins (:func:`bin_edges`): ``min(bins, end - start)`` of them, edges
``round(linspace(start, end, bins + 1))``, the same as the layer summary of the match service, so
that every summary of one range and bin count lines up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hiddenscope_core.bits import f32_threshold, n_words
from hiddenscope_core.errors import InvalidQuery
from hiddenscope_core.kernels import count_planes
from hiddenscope_core.models import DatasetManifest, TrackInfo

SUMMARY_CHUNK_STEPS = 1 << 20
"""Steps read and reduced at once (a multiple of 64)."""
SUMMARY_CHUNK_VALUES = 1 << 22
"""Values (cells x steps) read at once when an on-count is counted from the values."""
DENSE_TOPK_CELLS = 1 << 22
"""Largest ``segments x id span`` of one chunk counted with a dense ``bincount`` (top-K tracks);
beyond, the chunk's (bin, id) pairs are counted by sorting."""


def bin_edges(start: int, end: int, bins: int) -> npt.NDArray[np.int64]:
    """``nb + 1`` strictly increasing edges from ``start`` to ``end``, ``nb = min(bins, end -
    start)``: bin ``i`` is ``[edges[i], edges[i + 1])``. Raises ``InvalidQuery``."""
    if not 0 <= start < end:
        raise InvalidQuery(f"range [{start}, {end}) is empty")
    if bins < 1:
        raise InvalidQuery("bins must be >= 1")
    nb = min(bins, end - start)
    return np.unique(np.linspace(start, end, nb + 1).round().astype(np.int64))


def _segments(
    edges: npt.NDArray[np.int64], c0: int, c1: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Steps ``[c0, c1)`` (inside ``[edges[0], edges[-1])``) cut at the bin edges: the offsets
    of the pieces relative to ``c0`` (strictly increasing, first 0) and the bin of each."""
    b0 = int(np.searchsorted(edges, c0, side="right")) - 1
    b1 = int(np.searchsorted(edges, c1 - 1, side="right")) - 1
    offsets = np.concatenate([[0], edges[b0 + 1 : b1 + 1] - c0]).astype(np.intp)
    return offsets, np.arange(b0, b1 + 1, dtype=np.intp)


# ------------------------------------------------------------------------------ track summaries


class TrackSummaryAccumulator:
    """Folds consecutive chunks of one track's rows into per-bin summaries.

    ``add(c0, column)`` takes the rows of steps ``[c0, c0 + n)`` in order (the chunks must tile
    ``[edges[0], edges[-1])``): the ``label`` column (discrete), ``value`` (scalar) or the
    top-1 ids (topk, the first of the K predictions). ``result()`` gives:

    * discrete: ``label_counts`` int64 ``(bins, n_labels)`` — steps of each label per bin — and
      ``unlabelled`` int64 ``(bins,)`` (label ``-1``);
    * scalar: ``mins``, ``maxs``, ``means`` float64 ``(bins,)`` over the bin's finite values
      (NaN and ±inf are missing; NaN where a bin has none) and ``counts`` int64 ``(bins,)``
      (finite values);
    * topk: ``mode_ids`` int64 ``(bins,)`` — the top-1 id that is most often top-1 in the bin
      (ties: the smallest id) — and ``mode_counts`` int64 ``(bins,)``, how many steps of the bin
      have it as top-1.
    """

    def __init__(self, info: TrackInfo, edges: npt.NDArray[np.int64]) -> None:
        self.kind = info.kind
        self.edges = np.asarray(edges, dtype=np.int64)
        nb = self.edges.size - 1
        self.n_labels = len(info.labels or [])
        self._next = int(self.edges[0])
        if self.kind == "discrete":
            # column 0: unlabelled (-1), column l + 1: label l
            self._counts = np.zeros((nb, self.n_labels + 1), np.int64)
        elif self.kind == "scalar":
            self._mins = np.full(nb, np.nan)
            self._maxs = np.full(nb, np.nan)
            self._sums = np.zeros(nb)
            self._n = np.zeros(nb, np.int64)
        else:
            self._mode_ids = np.zeros(nb, np.int64)
            self._mode_counts = np.zeros(nb, np.int64)
            self._carry_ids = np.empty(0, np.int64)
            self._carry_counts = np.empty(0, np.int64)

    def add(self, c0: int, column: npt.NDArray[Any]) -> None:
        n = int(column.shape[0])
        if n == 0:
            return
        if c0 != self._next or c0 + n > int(self.edges[-1]):
            raise ValueError(f"chunk [{c0}, {c0 + n}) does not continue at step {self._next}")
        self._next = c0 + n
        offsets, seg_bins = _segments(self.edges, c0, c0 + n)
        if self.kind == "discrete":
            self._add_discrete(column, offsets, seg_bins)
        elif self.kind == "scalar":
            self._add_scalar(column, offsets, seg_bins)
        else:
            self._add_topk(c0 + n, column, offsets, seg_bins)

    def _add_discrete(
        self,
        labels: npt.NDArray[Any],
        offsets: npt.NDArray[np.intp],
        seg_bins: npt.NDArray[np.intp],
    ) -> None:
        width = self.n_labels + 1
        seg = np.repeat(np.arange(seg_bins.size), np.diff(offsets, append=labels.shape[0]))
        key = seg * width + (labels.astype(np.int64) + 1)
        counts = np.bincount(key, minlength=seg_bins.size * width)
        self._counts[seg_bins] += counts.reshape(seg_bins.size, width)

    def _add_scalar(
        self,
        values: npt.NDArray[Any],
        offsets: npt.NDArray[np.intp],
        seg_bins: npt.NDArray[np.intp],
    ) -> None:
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        vn = np.where(finite, v, np.nan)
        # segments of one chunk have distinct bins: fancy assignment merges them
        self._mins[seg_bins] = np.fmin(self._mins[seg_bins], np.fmin.reduceat(vn, offsets))
        self._maxs[seg_bins] = np.fmax(self._maxs[seg_bins], np.fmax.reduceat(vn, offsets))
        self._sums[seg_bins] += np.add.reduceat(np.where(finite, v, 0.0), offsets)
        self._n[seg_bins] += np.add.reduceat(finite.astype(np.int64), offsets)

    def _add_topk(
        self,
        c1: int,
        top1: npt.NDArray[Any],
        offsets: npt.NDArray[np.intp],
        seg_bins: npt.NDArray[np.intp],
    ) -> None:
        ids = top1.astype(np.int64)
        n_seg = seg_bins.size
        carry_ids, carry_counts = self._carry_ids, self._carry_counts
        lo, hi = int(ids.min()), int(ids.max())
        if carry_ids.size:
            lo, hi = min(lo, int(carry_ids.min())), max(hi, int(carry_ids.max()))
        span = hi - lo + 1
        # a dense count costs segments x id span, a sorted one ~ n log n: the cheaper one
        if span <= DENSE_TOPK_CELLS and n_seg * span <= DENSE_TOPK_CELLS + 16 * ids.size:
            modes, counts, last_ids, last_counts = _modes_dense(
                ids, offsets, lo, span, carry_ids, carry_counts
            )
        else:
            modes, counts, last_ids, last_counts = _modes_sorted(
                ids, offsets, lo, span, carry_ids, carry_counts
            )
        # the last segment stays open if its bin goes on past this chunk
        n_done = n_seg
        if int(self.edges[seg_bins[-1] + 1]) > c1:
            self._carry_ids, self._carry_counts = last_ids, last_counts
            n_done -= 1
        else:
            self._carry_ids = np.empty(0, np.int64)
            self._carry_counts = np.empty(0, np.int64)
        self._mode_ids[seg_bins[:n_done]] = modes[:n_done]
        self._mode_counts[seg_bins[:n_done]] = counts[:n_done]

    def result(self) -> dict[str, npt.NDArray[Any]]:
        if self._next != int(self.edges[-1]):
            raise ValueError(f"rows end at step {self._next}, not {int(self.edges[-1])}")
        if self.kind == "discrete":
            return {"label_counts": self._counts[:, 1:], "unlabelled": self._counts[:, 0]}
        if self.kind == "scalar":
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(self._n > 0, self._sums / np.maximum(self._n, 1), np.nan)
            return {"mins": self._mins, "maxs": self._maxs, "means": means, "counts": self._n}
        return {"mode_ids": self._mode_ids, "mode_counts": self._mode_counts}


def _modes_dense(
    ids: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.intp],
    lo: int,
    span: int,
    carry_ids: npt.NDArray[np.int64],
    carry_counts: npt.NDArray[np.int64],
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """Mode of ``ids`` per segment (``offsets``; the first segment also counts the carried
    ``carry_ids`` x ``carry_counts``) by a dense ``bincount`` of ``(segment, id - lo)``, a group
    of segments at a time (at most ``DENSE_TOPK_CELLS`` counters), ``argmax`` per segment (the
    first maximum: the smallest id). Returns the modes, their counts, and the last segment's
    ids and counts."""
    n_seg = offsets.size
    bounds = np.append(offsets, ids.size)
    modes = np.empty(n_seg, np.int64)
    counts = np.empty(n_seg, np.int64)
    group = max(1, DENSE_TOPK_CELLS // span)
    last_ids = last_counts = np.empty(0, np.int64)
    for s0 in range(0, n_seg, group):
        s1 = min(n_seg, s0 + group)
        r0, r1 = int(bounds[s0]), int(bounds[s1])
        seg = np.repeat(np.arange(s1 - s0, dtype=np.int64), np.diff(bounds[s0 : s1 + 1]))
        m = np.bincount(seg * span + (ids[r0:r1] - lo), minlength=(s1 - s0) * span)
        m = m.reshape(s1 - s0, span)
        if s0 == 0 and carry_ids.size:
            m[0, carry_ids - lo] += carry_counts
        best = m.argmax(axis=1)
        modes[s0:s1] = best + lo
        counts[s0:s1] = m[np.arange(s1 - s0), best]
        if s1 == n_seg:
            nz = np.flatnonzero(m[-1])
            last_ids, last_counts = nz + lo, m[-1, nz].astype(np.int64)
    return modes, counts, last_ids, last_counts


def _modes_sorted(
    ids: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.intp],
    lo: int,
    span: int,
    carry_ids: npt.NDArray[np.int64],
    carry_counts: npt.NDArray[np.int64],
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """:func:`_modes_dense` by sorting the ``(segment, id)`` keys (for wide id ranges)."""
    n_seg = offsets.size
    seg = np.repeat(np.arange(n_seg, dtype=np.int64), np.diff(offsets, append=ids.size))
    keys = seg * span + (ids - lo)
    weights = np.ones(ids.size, np.int64)
    if carry_ids.size:  # the carried bin is the first segment
        keys = np.concatenate([keys, carry_ids - lo])
        weights = np.concatenate([weights, carry_counts])
    uniq, inv = np.unique(keys, return_inverse=True)
    cnt = np.zeros(uniq.size, np.int64)
    np.add.at(cnt, inv, weights)
    s_idx, id_off = np.divmod(uniq, span)  # sorted by segment, then id
    firsts = np.flatnonzero(np.concatenate([[True], s_idx[1:] != s_idx[:-1]]))
    seg_max = np.maximum.reduceat(cnt, firsts)
    at_max = np.flatnonzero(cnt == np.repeat(seg_max, np.diff(firsts, append=uniq.size)))
    first_max = at_max[np.concatenate([[True], s_idx[at_max][1:] != s_idx[at_max][:-1]])]
    last = s_idx == n_seg - 1
    return id_off[first_max] + lo, cnt[first_max], id_off[last] + lo, cnt[last]


# ------------------------------------------------------------------------------ on-count


class OnCountSource(Protocol):
    """What the on-count summary needs of a dataset (``reader.Dataset`` provides it)."""

    @property
    def manifest(self) -> DatasetManifest: ...

    @property
    def n_steps(self) -> int: ...

    def values(self, layer: str) -> npt.NDArray[Any]: ...

    def planes(self, layer: str) -> npt.NDArray[np.uint64]: ...


@dataclass(frozen=True)
class OnCountSummary:
    """Per bin of ``edges``: the least, greatest and mean number of ``cells`` on at one step."""

    edges: npt.NDArray[np.int64]
    cells: list[int]
    threshold: float
    on_grid: bool
    """counted from the layer's bit planes (θ on its grid), else from its values"""
    mins: npt.NDArray[np.int64]
    maxs: npt.NDArray[np.int64]
    means: npt.NDArray[np.float64]


def _counts_from_planes(
    planes: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64], w0: int, w1: int, n_valid: int
) -> npt.NDArray[np.int32]:
    """Per step of words ``[w0, w1)``: how many of ``rows`` have their bit set (bit-sliced sum
    of the plane words, then each bit plane of the sum unpacked). ``n_valid`` steps are kept."""
    n_bits = max(1, int(rows.size).bit_length())
    sliced = count_planes(planes, rows, w0, w1 - w0, n_bits, n_valid)
    counts = np.zeros((w1 - w0) * 64, np.int32)
    for i in range(n_bits):
        bits = np.unpackbits(sliced[i].astype("<u8").view(np.uint8), bitorder="little")
        counts += bits.astype(np.int32) << i
    return counts[:n_valid]


def on_count_summary(
    ds: OnCountSource,
    layer: str,
    cells: list[int],
    threshold: float,
    start: int,
    end: int,
    bins: int,
    *,
    chunk_steps: int = SUMMARY_CHUNK_STEPS,
) -> OnCountSummary:
    """Per equal-width bin of ``[start, end)``: min / max / mean over the bin's steps of how many
    of ``cells`` are on (``v >= threshold``, ``v`` the layer's transformed values; NaN is off).

    At a threshold of the layer's grid the counts come from the bit planes (the S1 cells' plane
    words, summed bit-sliced by the match kernels' ``count_planes``), otherwise from the values;
    either way exact, in chunks (memory bounded by ``chunk_steps``).

    Raises ``NotFound`` (layer) and ``InvalidQuery`` (cells, range, bins, a non-finite θ).
    """
    info = ds.manifest.layer(layer)
    if not np.isfinite(threshold):
        raise InvalidQuery(f"threshold must be a finite number, got {threshold}")
    sel = sorted({int(c) for c in cells})
    if not sel:
        raise InvalidQuery("cells must name at least one cell")
    bad = [c for c in sel if not 0 <= c < info.n_cells]
    if bad:
        raise InvalidQuery(
            f"cells {bad[:10]} are outside layer {layer!r} (cells 0..{info.n_cells - 1})"
        )
    T = ds.n_steps
    if not 0 <= start < end <= T:
        raise InvalidQuery(f"range [{start}, {end}) is not inside [0, {T}) or is empty")
    edges = bin_edges(start, end, bins)
    nb = edges.size - 1
    mins = np.full(nb, np.iinfo(np.int64).max, np.int64)
    maxs = np.zeros(nb, np.int64)
    sums = np.zeros(nb, np.int64)

    def fold(c0: int, counts: npt.NDArray[np.int32]) -> None:
        offsets, seg_bins = _segments(edges, c0, c0 + counts.size)
        mins[seg_bins] = np.minimum(mins[seg_bins], np.minimum.reduceat(counts, offsets))
        maxs[seg_bins] = np.maximum(maxs[seg_bins], np.maximum.reduceat(counts, offsets))
        sums[seg_bins] += np.add.reduceat(counts, offsets, dtype=np.int64)

    grid = list(info.thresholds)
    on_grid = float(threshold) in grid
    rows = np.asarray(sel, dtype=np.int64)
    if on_grid:
        plane = ds.planes(layer)[grid.index(float(threshold))].view(np.ndarray)
        chunk_words = max(1, chunk_steps >> 6)
        w_lo, w_hi = start >> 6, n_words(end)
        for w0 in range(w_lo, w_hi, chunk_words):
            w1 = min(w_hi, w0 + chunk_words)
            t0, t1 = w0 << 6, min(w1 << 6, end)
            counts = _counts_from_planes(plane, rows, w0, w1, t1 - t0)
            a = max(start, t0)
            fold(a, counts[a - t0 :])
    else:
        values = ds.values(layer)
        theta32 = np.float32(f32_threshold(float(threshold)))  # v >= θ  <=>  v >= theta32
        lo, hi = sel[0], sel[-1] + 1
        contiguous = hi - lo == len(sel)
        step = max(64, min(chunk_steps, SUMMARY_CHUNK_VALUES // len(sel)))
        for c0 in range(start, end, step):
            c1 = min(end, c0 + step)
            raw = values[lo:hi, c0:c1] if contiguous else values[rows, c0:c1]
            with np.errstate(invalid="ignore"):
                on = np.asarray(raw, dtype=np.float32) >= theta32
            fold(c0, on.sum(axis=0, dtype=np.int32))
    widths = np.diff(edges)
    return OnCountSummary(
        edges=edges,
        cells=sel,
        threshold=float(threshold),
        on_grid=on_grid,
        mins=mins,
        maxs=maxs,
        means=sums / widths,
    )
