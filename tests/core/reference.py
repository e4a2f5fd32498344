"""Brute-force reference of SPEC §2 (select and match) and of the long-range summaries (SPEC §6:
meta tracks and on-counts per bin) on a dense matrix.

Written for clarity, not speed, and independently of the implementation in
``hiddenscope_core.{select,match,summary}``: every test of those kernels compares against this file.

The only shared piece is ``transform_values`` (the one numeric definition of ``v``); the
comparison ``on = float64(v) >= θ`` (NaN off) is done here.

Conventions (SPEC §2, docs/architecture.md):

* ``raw`` is the ``(T, D)`` matrix of stored values (float32 or float16, NaNs allowed).
* ``starts`` are the sequence start steps (strictly increasing, first 0); sequence ``i`` is
  ``[starts[i], starts[i+1])`` (the last one ends at ``T``).
* Steps outside the sequence of a range (including steps outside ``[0, T)``) count as *off*.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from hiddenscope_core.models import MatchHit
from hiddenscope_core.transforms import transform_values

Transform = Literal["none", "tanh"]


# --------------------------------------------------------------------------- on and sequences


def on_matrix(raw: npt.ArrayLike, transform: Transform, threshold: float) -> npt.NDArray[np.bool_]:
    """``on[t, c] = float64(v[t, c]) >= θ`` with ``v = transform_values(raw, transform)``.

    NaN compares False, so NaN is off.
    """
    v = transform_values(raw, transform)
    with np.errstate(invalid="ignore"):
        return np.asarray(v).astype(np.float64) >= float(threshold)


def sequence_bounds(starts: list[int], n_steps: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the sequences; the default is one sequence ``[0, T)``."""
    starts = [0] if not starts else [int(s) for s in starts]
    assert starts[0] == 0, "the first sequence starts at step 0"
    assert all(a < b for a, b in itertools.pairwise(starts)), "starts increase"
    assert starts[-1] < n_steps, "every sequence holds at least one step"
    ends = [*starts[1:], n_steps]
    return list(zip(starts, ends, strict=True))


def sequence_of(starts: list[int], n_steps: int, t: int) -> int:
    """Index of the sequence that holds step ``t``."""
    for i, (lo, hi) in enumerate(sequence_bounds(starts, n_steps)):
        if lo <= t < hi:
            return i
    raise ValueError(f"step {t} is outside [0, {n_steps})")


def cells_on_with_off_extents(
    on: npt.NDArray[np.bool_],
    seq: tuple[int, int],
    s: int,
    e: int,
    left_off: int,
    right_off: int,
    cells: list[int] | None = None,
) -> list[int]:
    """The cells (of ``cells``, default all) that are on at every step of ``[s, e)`` and off at
    every step of ``[s - left_off, s)`` and ``[e, e + right_off)``.

    ``[s, e)`` lies inside the sequence ``seq = (lo, hi)``; steps of the off extents that are
    outside ``[lo, hi)`` are off by definition, so only the part inside the sequence is checked.
    """
    lo, hi = seq
    assert lo <= s < e <= hi, (seq, s, e)
    if cells is None:
        cells = list(range(on.shape[1]))
    before = range(max(lo, s - left_off), s)
    after = range(e, min(hi, e + right_off))
    result = []
    for c in cells:
        on_inside = bool(on[s:e, c].all())
        off_before = not on[before.start : before.stop, c].any()
        off_after = not on[after.start : after.stop, c].any()
        if on_inside and off_before and off_after:
            result.append(c)
    return result


# --------------------------------------------------------------------------------------- select


@dataclass
class RefSelect:
    cells: list[int]
    window_start: int
    window_end: int
    counts: list[int]


def ref_select(
    raw: npt.ArrayLike,
    transform: Transform,
    starts: list[int],
    *,
    start: int,
    end: int,
    threshold: float = 0.3,
    left_off: int = 1,
    right_off: int = 0,
    window_start: int | None = None,
    window_end: int | None = None,
) -> RefSelect:
    """SPEC §2 select.

    ``S1 = {c : on over [start, end), off over [start - zl, start) and [end, end + zr)}``.
    ``counts[i]`` = number of S1 cells on at step ``window_start + i``; the default window is
    ``[start - left_off, end + right_off)`` clipped to ``[0, T)``. Counts are the plain ``on``
    of each step of the window (the window is a display range and may reach into neighbouring
    sequences).
    """
    on = on_matrix(raw, transform, threshold)
    T = on.shape[0]
    assert 0 <= start < end <= T
    seq_index = sequence_of(starts, T, start)
    seq = sequence_bounds(starts, T)[seq_index]
    assert end <= seq[1], "the range lies inside one sequence"
    cells = cells_on_with_off_extents(on, seq, start, end, left_off, right_off)
    ws = max(0, start - left_off) if window_start is None else window_start
    we = min(T, end + right_off) if window_end is None else window_end
    counts = [sum(1 for c in cells if on[t, c]) for t in range(ws, we)]
    return RefSelect(cells=cells, window_start=ws, window_end=we, counts=counts)


# ---------------------------------------------------------------------------------------- match


@dataclass
class RefMatch:
    hits: list[MatchHit]
    n_candidates: int
    length_histogram: list[int] = field(default_factory=list)
    strict_length_histogram: list[int] = field(default_factory=list)
    # every kept candidate, ranked (for debugging and for tests that need more than top_k)
    ranked: list[MatchHit] = field(default_factory=list)


def maximal_runs(values: list[bool], offset: int) -> list[tuple[int, int]]:
    """Maximal runs ``[s, e)`` of True in ``values`` (steps ``offset + i``)."""
    runs = []
    i = 0
    while i < len(values):
        if values[i]:
            j = i
            while j < len(values) and values[j]:
                j += 1
            runs.append((offset + i, offset + j))
            i = j
        else:
            i += 1
    return runs


def histogram(lengths: list[int]) -> list[int]:
    """``h[length]`` = how many of ``lengths``; ``len(h) = max + 1`` (empty for no lengths)."""
    if not lengths:
        return []
    h = [0] * (max(lengths) + 1)
    for n in lengths:
        h[n] += 1
    return h


def ref_match(
    raw: npt.ArrayLike,
    transform: Transform,
    starts: list[int],
    *,
    cells: list[int],
    threshold: float = 0.3,
    left_off: int = 1,
    right_off: int = 0,
    min_length: int = 2,
    max_length: int | None = None,
    top_k: int = 50,
    search_start: int | None = None,
    search_end: int | None = None,
    sequence_names: list[str | None] | None = None,
) -> RefMatch:
    """SPEC §2 match, by enumeration of every level ``k = 1 .. |S1|``.

    The search range filters the global candidate set (``search_start <= s`` and
    ``e <= search_end``); the stats count the candidates that pass every filter (lengths and
    search range).
    """
    on = on_matrix(raw, transform, threshold)
    T, D = on.shape
    S1 = sorted(set(cells))
    assert S1, "S1 is non-empty"
    assert all(0 <= c < D for c in S1)
    bounds = sequence_bounds(starts, T)

    # 1. n[t] = number of S1 cells on at t
    n = [int(x) for x in on[:, S1].sum(axis=1)]

    # 2. candidates: maximal runs of n >= k inside one sequence, for every level k
    candidates: dict[tuple[int, int], int] = {}  # (s, e) -> sequence index
    for seq_index, (lo, hi) in enumerate(bounds):
        for k in range(1, len(S1) + 1):
            for s, e in maximal_runs([n[t] >= k for t in range(lo, hi)], lo):
                length = e - s
                if length < min_length:
                    continue
                if max_length is not None and length > max_length:
                    continue
                candidates[(s, e)] = seq_index

    # search range: a filter on the global candidate set
    kept = {
        (s, e): i
        for (s, e), i in candidates.items()
        if (search_start is None or search_start <= s) and (search_end is None or e <= search_end)
    }

    # 3. S2 of each candidate and its hit
    hits = []
    strict_lengths = []
    for (s, e), seq_index in kept.items():
        S2 = cells_on_with_off_extents(on, bounds[seq_index], s, e, left_off, right_off)
        inter = len(set(S1) & set(S2))
        union = len(set(S1) | set(S2))
        if set(S1) <= set(S2):
            strict_lengths.append(e - s)
        hits.append(
            MatchHit(
                start=s,
                end=e,
                length=e - s,
                sequence=seq_index,
                sequence_name=None if sequence_names is None else sequence_names[seq_index],
                intersection=inter,
                union=union,
                jaccard=inter / union,
                missing=len(S1) - inter,
                extra=len(set(S2) - set(S1)),
                level=min(n[s:e]),
            )
        )

    # 4. rank by (-|S1 & S2|, |S1 | S2|, -(e - s), s) ascending
    hits.sort(key=lambda h: (-h.intersection, h.union, -h.length, h.start))
    return RefMatch(
        hits=hits[:top_k],
        n_candidates=len(hits),
        length_histogram=histogram([h.length for h in hits]),
        strict_length_histogram=histogram(strict_lengths),
        ranked=hits,
    )


# ------------------------------------------------------------------------- long-range summaries


def ref_bin_edges(start: int, end: int, bins: int) -> list[int]:
    """``nb = min(bins, end - start)`` equal-width bins: edge ``i`` is ``start + i·(end −
    start)/nb`` rounded half to even (Python's ``round``), so bin ``i`` is ``[edge_i,
    edge_{i+1})``."""
    assert 0 <= start < end
    assert bins >= 1
    nb = min(bins, end - start)
    width = (end - start) / nb
    edges = [round(start + i * width) for i in range(nb + 1)]
    edges[-1] = end
    assert all(a < b for a, b in itertools.pairwise(edges)), edges
    return edges


@dataclass
class RefTrackSummary:
    # discrete
    label_counts: list[list[int]] = field(default_factory=list)  # [bin][label]
    unlabelled: list[int] = field(default_factory=list)
    # scalar (over the finite values; None where a bin has none)
    mins: list[float | None] = field(default_factory=list)
    maxs: list[float | None] = field(default_factory=list)
    means: list[float | None] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    # topk: the most frequent top-1 id of the bin (ties: the smallest) and its count
    mode_ids: list[int] = field(default_factory=list)
    mode_counts: list[int] = field(default_factory=list)


def ref_track_summary(
    kind: str, rows: npt.ArrayLike, edges: list[int], n_labels: int = 0
) -> RefTrackSummary:
    """A meta track per bin, one bin and one step at a time. ``rows`` holds the track's rows
    for *all* steps: labels (discrete, -1 = none), values (scalar) or ``(T, K)`` ids (topk)."""
    data = np.asarray(rows)
    out = RefTrackSummary()
    for lo, hi in itertools.pairwise(edges):
        part = data[lo:hi]
        if kind == "discrete":
            labels = [int(x) for x in part]
            out.label_counts.append([labels.count(i) for i in range(n_labels)])
            out.unlabelled.append(labels.count(-1))
        elif kind == "scalar":
            finite = [float(x) for x in part if math.isfinite(float(x))]
            out.counts.append(len(finite))
            out.mins.append(min(finite) if finite else None)
            out.maxs.append(max(finite) if finite else None)
            out.means.append(math.fsum(finite) / len(finite) if finite else None)
        else:
            tally: dict[int, int] = {}
            for row in part:
                tally[int(row[0])] = tally.get(int(row[0]), 0) + 1
            best = max(tally.values())
            out.mode_ids.append(min(i for i, c in tally.items() if c == best))
            out.mode_counts.append(best)
    return out


@dataclass
class RefOnCount:
    mins: list[int]
    maxs: list[int]
    means: list[float]


def ref_on_count_summary(
    raw: npt.ArrayLike,
    transform: Transform,
    cells: list[int],
    threshold: float,
    edges: list[int],
) -> RefOnCount:
    """Per bin: the least, greatest and mean (over the bin's steps) number of ``cells`` on."""
    on = on_matrix(raw, transform, threshold)
    sel = sorted(set(cells))
    n = [sum(1 for c in sel if on[t, c]) for t in range(on.shape[0])]
    mins, maxs, means = [], [], []
    for lo, hi in itertools.pairwise(edges):
        part = n[lo:hi]
        mins.append(min(part))
        maxs.append(max(part))
        means.append(sum(part) / len(part))
    return RefOnCount(mins=mins, maxs=maxs, means=means)
