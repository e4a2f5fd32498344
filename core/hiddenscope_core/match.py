"""Match (SPEC §2): where else in the corpus are the selected cells on together?

``match`` answers a query over the whole dataset (or its search range). It is the merge of
``match_shard`` over any partition of the steps (``plan_shards``): a shard owns the candidates
that *start* inside it and reads beyond its bounds as far as a run or an off-extent reaches, so
the merged answer is exactly the global one for every shard size. The services run one shard per
Celery task and merge with ``merge_partials``.

At a threshold of the layer's grid the S1 on-bits come from the precomputed planes; at any other
threshold they are packed from the transformed values of the S1 cells, and S2 is decided from
the values: exact either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hiddenscope_core.bits import f16_key_threshold, n_words, pack_ge
from hiddenscope_core.errors import InvalidQuery
from hiddenscope_core.kernels import MODE_F16, MODE_F32, MODE_PLANES, match_kernel
from hiddenscope_core.models import (
    DatasetManifest,
    MatchHit,
    MatchPartial,
    MatchQuery,
    MatchResult,
    MatchStats,
)

DEFAULT_SHARD_STEPS = 1 << 24
"""Steps per shard when the caller does not choose (a Celery task's unit of work)."""

_HIST_BINS = 1 << 16
"""Length-histogram bins kept densely per shard; longer candidates are listed one by one."""

_EXTEND_CHUNK = 1 << 16


class MatchSource(Protocol):
    """What match needs of a dataset (``reader.Dataset`` provides it)."""

    @property
    def manifest(self) -> DatasetManifest: ...

    @property
    def n_steps(self) -> int: ...

    def sequence_starts(self) -> npt.NDArray[np.int64]: ...

    def sequence_names(self) -> Sequence[str]: ...

    def thresholds(self, layer: str) -> Sequence[float]: ...

    def values(self, layer: str) -> npt.NDArray[Any]: ...

    def planes(self, layer: str) -> npt.NDArray[np.uint64]: ...

    def rows(self, layer: str) -> npt.NDArray[np.uint64]: ...


@dataclass(frozen=True)
class _Context:
    """A validated query bound to the arrays of one layer."""

    query: MatchQuery
    n_steps: int
    n_cells: int
    s1: npt.NDArray[np.int64]
    s1mask: npt.NDArray[np.uint64]  # S1 as a bit mask over cells, (Dw,)
    seq_starts: npt.NDArray[np.int64]
    mode: int
    planes: npt.NDArray[np.uint64]  # (D, W) column-major planes of the grid threshold, or a dummy
    rows: npt.NDArray[np.uint64]  # (T, Dw) row-major planes: of θ, or of the grid below θ
    have_rows: bool
    rows_hi: npt.NDArray[np.uint64]  # (T, Dw) row-major planes of the grid above θ (off-grid)
    have_hi: bool
    vals32: npt.NDArray[np.float32]  # (D, T) or a dummy
    vals16: npt.NDArray[np.uint16]  # (D, T) float16 bit patterns, or a dummy
    values: npt.NDArray[Any]  # (D, T) transformed values
    key16: int
    search_start: int
    search_end: int

    @property
    def on_grid(self) -> bool:
        return self.mode == MODE_PLANES


def _plain(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A memmap as a plain ndarray view (what numba takes)."""
    return a.view(np.ndarray)


def prepare(ds: MatchSource, query: MatchQuery) -> _Context:
    """Validate ``query`` against ``ds`` and bind the arrays it needs.

    Raises ``NotFound`` for an unknown layer and ``InvalidQuery`` for cells or a search range
    outside the data.
    """
    layer = ds.manifest.layer(query.layer)
    T = ds.n_steps
    D = layer.n_cells
    s1 = np.asarray(sorted(set(query.cells)), dtype=np.int64)
    if s1.size == 0:
        raise InvalidQuery("cells must name at least one cell")
    if s1[0] < 0 or s1[-1] >= D:
        bad = [int(c) for c in s1 if c < 0 or c >= D]
        raise InvalidQuery(f"cells {bad} are outside layer {layer.name!r} (cells 0..{D - 1})")
    start = 0 if query.search_start is None else query.search_start
    end = T if query.search_end is None else query.search_end
    if start >= T or end > T or end <= start:
        raise InvalidQuery(
            f"search range [{start}, {end}) is outside the data: steps are 0..{T - 1}"
        )
    s1mask = np.zeros((D + 63) >> 6, dtype=np.uint64)
    np.bitwise_or.at(s1mask, s1 >> 6, np.left_shift(np.uint64(1), (s1 & 63).astype(np.uint64)))
    theta = float(query.threshold)
    grid = np.asarray(ds.thresholds(layer.name), dtype=np.float64)
    hit = np.flatnonzero(grid == theta)
    below = np.flatnonzero(grid < theta)
    above = np.flatnonzero(grid > theta)
    values = ds.values(layer.name)
    dummy_u64 = np.zeros((1, 1), dtype=np.uint64)
    dummy_f32 = np.zeros((1, 1), dtype=np.float32)
    dummy_u16 = np.zeros((1, 1), dtype=np.uint16)
    key16 = 0
    rows, have_rows = dummy_u64, False
    rows_hi, have_hi = dummy_u64, False
    if hit.size:
        rows, have_rows = _plain(ds.rows(layer.name)[int(hit[0])]), True
    else:
        # the grid thresholds around θ decide most of S2 before the values are read
        if below.size:
            rows, have_rows = _plain(ds.rows(layer.name)[int(below[-1])]), True
        if above.size:
            rows_hi, have_hi = _plain(ds.rows(layer.name)[int(above[0])]), True
    if hit.size:
        mode = MODE_PLANES
        planes = _plain(ds.planes(layer.name)[int(hit[0])])
        vals32, vals16 = dummy_f32, dummy_u16
    elif values.dtype == np.float16:
        mode = MODE_F16
        planes, vals32 = dummy_u64, dummy_f32
        vals16 = _plain(values).view(np.uint16)
        key16 = f16_key_threshold(theta)
    else:
        mode = MODE_F32
        planes, vals16 = dummy_u64, dummy_u16
        vals32 = _plain(values)
    return _Context(
        query=query,
        n_steps=T,
        n_cells=D,
        s1=s1,
        s1mask=s1mask,
        seq_starts=np.ascontiguousarray(ds.sequence_starts(), dtype=np.int64),
        mode=mode,
        planes=planes,
        rows=rows,
        have_rows=have_rows,
        rows_hi=rows_hi,
        have_hi=have_hi,
        vals32=vals32,
        vals16=vals16,
        values=values,
        key16=key16,
        search_start=start,
        search_end=end,
    )


def _s1_words(ctx: _Context, w_lo: int, w_hi: int) -> npt.NDArray[np.uint64]:
    """On-bits of the S1 cells over words ``[w_lo, w_hi)`` (zero past the data)."""
    out = np.zeros((ctx.s1.size, w_hi - w_lo), dtype=np.uint64)
    if ctx.on_grid:
        stop = min(w_hi, ctx.planes.shape[1])
        if stop > w_lo:
            out[:, : stop - w_lo] = ctx.planes[ctx.s1, w_lo:stop]
        return out
    t_lo = w_lo << 6
    t_hi = min(w_hi << 6, ctx.n_steps)
    if t_hi > t_lo:
        for i, c in enumerate(ctx.s1):
            col = np.ascontiguousarray(ctx.values[c, t_lo:t_hi])
            pack_ge(col, ctx.query.threshold, out[i, : n_words(t_hi - t_lo)])
    return out


def _first_idle_step(ctx: _Context, t: int, cap: int) -> int:
    """The first step in ``[t, cap)`` where no S1 cell is on, else ``cap``: every run that is
    open at ``t`` has ended there."""
    while t < cap:
        chunk_end = min(cap, ((t >> 6) << 6) + _EXTEND_CHUNK)
        w_lo, w_hi = t >> 6, n_words(chunk_end)
        any_on = np.bitwise_or.reduce(_s1_words(ctx, w_lo, w_hi), axis=0)
        idle = np.unpackbits((~any_on).astype("<u8").view(np.uint8), bitorder="little")
        base = w_lo << 6
        hits = np.flatnonzero(idle[t - base : chunk_end - base])
        if hits.size:
            return t + int(hits[0])
        t = chunk_end
    return cap


def _empty_stats() -> MatchStats:
    return MatchStats(n_candidates=0, length_histogram=[], strict_length_histogram=[])


def _match_range(
    ctx: _Context,
    lo: int,
    hi: int,
    names: Sequence[str],
    shared: npt.NDArray[np.int64] | None = None,
) -> MatchPartial:
    q = ctx.query
    T = ctx.n_steps
    own_lo = max(lo, ctx.search_start)
    own_hi = min(hi, ctx.search_end)
    if own_lo >= own_hi:
        return MatchPartial(
            shard_start=lo,
            shard_end=hi,
            hits=[],
            stats=_empty_stats() if q.stats else None,
            threshold_on_grid=ctx.on_grid,
        )
    # runs starting in [own_lo, own_hi) end at the next sequence start at the latest; those
    # still open one step past search_end are filtered out anyway
    nxt = int(np.searchsorted(ctx.seq_starts, own_hi, side="left"))
    cap = min(int(ctx.seq_starts[nxt]) if nxt < ctx.seq_starts.size else T, ctx.search_end + 1, T)
    scan_hi = _first_idle_step(ctx, own_hi, cap) if own_hi < cap else cap
    w0 = max(own_lo - 1, 0) >> 6
    w1 = max(n_words(scan_hi), w0 + 1)
    # off the grid the exact S1 bits also decide the intersection: they must then reach as far
    # as a candidate's off-extents do
    if ctx.on_grid:
        # the kernel counts straight from the planes; S2 comes from the row-major planes
        e0 = w0
        s1_exact = np.zeros((ctx.s1.size, 1), dtype=np.uint64)
        src, src_rows, src_w0 = ctx.planes, ctx.s1, w0
    else:
        e0 = max(own_lo - 1 - q.left_off, 0) >> 6
        e1 = max(n_words(min(scan_hi + q.right_off, T)), w1)
        s1_exact = _s1_words(ctx, e0, e1)
        src, src_rows, src_w0 = s1_exact, np.arange(ctx.s1.size, dtype=np.int64), w0 - e0
    scan_len = (w1 - w0) << 6
    bins = min(scan_len, _HIST_BINS) + 1
    hist = np.zeros(bins if q.stats else 1, dtype=np.int64)
    strict = np.zeros_like(hist)
    n_long_cap = ctx.s1.size * (scan_len // max(bins - 1, 1) + 1) if q.stats else 0
    long_len = np.zeros((n_long_cap, 2), dtype=np.int64)
    max_len = q.max_length if q.max_length is not None else np.iinfo(np.int64).max
    H, size, n_cand, n_long = match_kernel(
        src,
        src_rows,
        src_w0,
        w1 - w0,
        w0,
        s1_exact,
        e0,
        scan_hi,
        own_lo,
        own_hi,
        ctx.search_end,
        ctx.seq_starts,
        T,
        ctx.s1mask,
        ctx.n_cells,
        ctx.mode,
        ctx.rows,
        ctx.have_rows,
        ctx.rows_hi,
        ctx.have_hi,
        ctx.vals32,
        ctx.vals16,
        float(q.threshold),
        ctx.key16,
        q.left_off,
        q.right_off,
        q.min_length,
        int(max_len),
        q.top_k,
        q.stats,
        hist,
        strict,
        long_len,
        np.zeros(1, dtype=np.int64) if shared is None else shared,
    )
    n1 = int(ctx.s1.size)
    hits = []
    for row in H[:size]:
        s, e, inter, union, level = (int(x) for x in row)
        seq = int(np.searchsorted(ctx.seq_starts, s, side="right")) - 1
        hits.append(
            MatchHit(
                start=s,
                end=e,
                length=e - s,
                sequence=seq,
                sequence_name=names[seq] if seq < len(names) else None,
                intersection=inter,
                union=union,
                jaccard=inter / union,
                missing=n1 - inter,
                extra=union - n1,
                level=level,
            )
        )
    hits.sort(key=MatchHit.sort_key)
    stats = None
    if q.stats:
        all_h = hist.tolist()
        strict_h = strict.tolist()
        for length, is_strict in long_len[:n_long]:
            _bump(all_h, int(length))
            if is_strict:
                _bump(strict_h, int(length))
        stats = MatchStats(
            n_candidates=int(n_cand),
            length_histogram=_trim(all_h),
            strict_length_histogram=_trim(strict_h),
        )
    return MatchPartial(
        shard_start=lo, shard_end=hi, hits=hits, stats=stats, threshold_on_grid=ctx.on_grid
    )


def _bump(hist: list[int], length: int) -> None:
    if length >= len(hist):
        hist.extend([0] * (length + 1 - len(hist)))
    hist[length] += 1


def _trim(hist: list[int]) -> list[int]:
    end = len(hist)
    while end and hist[end - 1] == 0:
        end -= 1
    return hist[:end]


def plan_shards(ds: MatchSource, query: MatchQuery, shard_steps: int) -> list[tuple[int, int]]:
    """Partition the query's search range into step ranges of ``shard_steps``."""
    if shard_steps < 1:
        raise InvalidQuery("shard_steps must be >= 1")
    start = 0 if query.search_start is None else query.search_start
    end = ds.n_steps if query.search_end is None else min(query.search_end, ds.n_steps)
    return [(lo, min(lo + shard_steps, end)) for lo in range(start, end, shard_steps)]


def match_shard(
    ds: MatchSource, query: MatchQuery, lo: int, hi: int, *, floor: int = 0
) -> MatchPartial:
    """The top ``query.top_k`` candidates that start in ``[lo, hi)`` (and, with ``stats``,
    their count and length histograms).

    ``floor``: an intersection ``|S1 ∩ S2|`` that the k-th best of another, disjoint shard
    already reaches (0 if none is known). Candidates below it cannot be in the global top k, so
    they are left out (the shard may then return fewer than ``top_k`` hits); the merge stays
    exact. ``MatchPartial.kth_intersection`` gives this shard's own bound to the others.
    """
    if lo < 0 or hi > ds.n_steps or hi <= lo:
        raise InvalidQuery(f"shard [{lo}, {hi}) is outside the data (0..{ds.n_steps})")
    shared = np.array([max(0, floor)], dtype=np.int64)
    return _match_range(prepare(ds, query), lo, hi, ds.sequence_names(), shared)


def merge_partials(query: MatchQuery, partials: Sequence[MatchPartial]) -> MatchResult:
    """Merge shard answers into the global answer (exact when the shards partition the
    search range)."""
    hits = sorted((h for p in partials for h in p.hits), key=MatchHit.sort_key)[: query.top_k]
    stats = None
    if query.stats:
        stats = MatchStats()
        for p in partials:
            if p.stats is None:
                raise InvalidQuery("a shard answered without the requested stats")
            stats.n_candidates += p.stats.n_candidates
            for length, count in enumerate(p.stats.length_histogram):
                _add(stats.length_histogram, length, count)
            for length, count in enumerate(p.stats.strict_length_histogram):
                _add(stats.strict_length_histogram, length, count)
    on_grid = all(p.threshold_on_grid for p in partials) if partials else True
    return MatchResult(query=query, hits=hits, stats=stats, threshold_on_grid=on_grid)


def _add(hist: list[int], length: int, count: int) -> None:
    if count:
        if length >= len(hist):
            hist.extend([0] * (length + 1 - len(hist)))
        hist[length] += count


def match(
    ds: MatchSource,
    query: MatchQuery,
    *,
    shard_steps: int | None = None,
    workers: int | None = None,
) -> MatchResult:
    """Answer ``query`` over the dataset, running shards on ``workers`` threads (default: the
    CPU count; the kernels release the GIL)."""
    ctx = prepare(ds, query)
    workers = workers or os.cpu_count() or 1
    if shard_steps is None:
        span = ctx.search_end - ctx.search_start
        # below a few million steps a second thread costs more than it saves
        shard_steps = min(DEFAULT_SHARD_STEPS, max(1 << 22, -(-span // workers)))
    shards = plan_shards(ds, query, shard_steps)
    names = ds.sequence_names()
    # the shards share the best intersection that some shard's k-th best reaches (pruning)
    shared = np.zeros(1, dtype=np.int64)
    if workers == 1 or len(shards) == 1:
        partials = [_match_range(ctx, lo, hi, names, shared) for lo, hi in shards]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            partials = list(
                pool.map(lambda r: _match_range(ctx, r[0], r[1], names, shared), shards)
            )
    return merge_partials(query, partials)
