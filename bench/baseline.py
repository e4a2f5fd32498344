"""A straightforward full-scan numpy implementation of SPEC §2 match: the benchmarks' baseline.

It scans the float32 columns of the S1 cells over the whole range (no index, no pruning),
enumerates every candidate of every level with ``np.diff``, scores the intersection of all of
them with prefix sums, and computes S2 over all cells only for the candidates that can still
reach the top k (the ties on the k-th intersection), one slice of the values per candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from hiddenscope_core.models import MatchQuery


def float32_at_least(theta: float) -> np.float32:
    """The smallest float32 ``>= theta``: ``x >= theta  <=>  x >= float32_at_least(theta)``
    for float32 ``x`` (so the comparison can run in float32 and stay exact)."""
    t = np.float32(theta)
    if float(t) < theta:
        t = np.nextafter(t, np.float32(np.inf))
    return t


def _runs(mask: npt.NDArray[np.bool_], breaks: npt.NDArray[np.int64]) -> tuple[Any, Any]:
    """Maximal runs of ``mask`` cut at the steps in ``breaks`` (sequence starts)."""
    m = mask.astype(np.int8)
    d = np.diff(m, prepend=0, append=0)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    if breaks.size:
        # a sequence start inside a run ends one run and starts the next
        inside = breaks[(breaks > 0) & (breaks < mask.size)]
        inside = inside[mask[inside] & mask[inside - 1]]
        starts = np.sort(np.concatenate([starts, inside]))
        ends = np.sort(np.concatenate([ends, inside]))
    return starts, ends


def baseline_match(
    s1_columns: npt.NDArray[np.float32],
    values: npt.NDArray[Any],
    seq_starts: npt.NDArray[np.int64],
    query: MatchQuery,
) -> list[tuple[int, int, int, int, int]]:
    """Top ``query.top_k`` as ``(start, end, intersection, union, level)``, best first.

    ``s1_columns``: ``(|S1|, T)`` float32 transformed values of the S1 cells (in
    ``query.cells`` order); ``values``: ``(D, T)`` transformed values of all cells.
    """
    theta = float32_at_least(query.threshold)
    n1, T = s1_columns.shape
    on = s1_columns >= theta
    n = on.sum(axis=0, dtype=np.int16)
    seq_end = np.append(seq_starts[1:], T)
    max_len = query.max_length or T
    cand_s: list[npt.NDArray[np.int64]] = []
    cand_e: list[npt.NDArray[np.int64]] = []
    for k in range(1, n1 + 1):
        s, e = _runs(n >= k, seq_starts)
        keep = ((e - s) >= query.min_length) & ((e - s) <= max_len)
        cand_s.append(s[keep])
        cand_e.append(e[keep])
    s = np.concatenate(cand_s).astype(np.int64)
    e = np.concatenate(cand_e).astype(np.int64)
    key = np.unique(s * (T + 1) + e)
    s, e = key // (T + 1), key % (T + 1)
    lo = 0 if query.search_start is None else query.search_start
    hi = T if query.search_end is None else query.search_end
    keep = (s >= lo) & (e <= hi)
    s, e = s[keep], e[keep]
    if s.size == 0:
        return []
    q = np.searchsorted(seq_starts, s, side="right") - 1
    l0 = np.maximum(s - query.left_off, seq_starts[q])
    r1 = np.minimum(e + query.right_off, seq_end[q])
    inter = np.zeros(s.size, dtype=np.int64)
    for i in range(n1):
        pre = np.concatenate([[0], np.cumsum(on[i], dtype=np.int64)])
        through = (pre[e] - pre[s]) == (e - s)
        quiet = ((pre[s] - pre[l0]) == 0) & ((pre[r1] - pre[e]) == 0)
        inter += through & quiet
    order = np.lexsort((s, -(e - s), -inter))
    k_th = inter[order[min(query.top_k, order.size) - 1]]
    tied = order[inter[order] >= k_th]
    rows = []
    s1_set = set(query.cells)
    for j in tied:
        block = values[:, l0[j] : r1[j]].astype(np.float32) >= theta
        a, b = s[j] - l0[j], e[j] - l0[j]
        s2 = block[:, a:b].all(axis=1) & ~block[:, :a].any(axis=1) & ~block[:, b:].any(axis=1)
        cells = set(np.flatnonzero(s2).tolist())
        union = len(cells | s1_set)
        level = int(n[s[j] : e[j]].min())
        rows.append((int(s[j]), int(e[j]), int(inter[j]), union, level))
    rows.sort(key=lambda r: (-r[2], r[3], -(r[1] - r[0]), r[0]))
    return rows[: query.top_k]
