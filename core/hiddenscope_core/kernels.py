"""Numba kernels of match (SPEC §2) over bit-packed on-planes.

Vocabulary (all steps are global positions):

* ``s1w``: ``(n1, nw)`` uint64, the on-bits of the S1 cells over words ``[w0, w0 + nw)``.
* ``n[t]``: how many S1 cells are on at ``t``, kept as ``nb`` bit-sliced planes of words.
* ``M_m``: the words of ``n >= m``. A maximal run of ``M_m`` cut at sequence starts is a
  candidate; it is a *new* (distinct) candidate at level ``m`` iff it holds a step with
  ``n == m`` (otherwise it is the same ``(s, e)`` as a run of ``M_{m+1}``).

Pruning: a candidate of level ``m`` has ``|S1 ∩ S2| <= m`` (every shared cell is on over the
whole run). Levels are visited from ``|S1|`` down; once the k-th best has an intersection
larger than ``m``, no lower level can enter the top k.

S2 of a candidate is a bit mask over cells (``s2_mask``): from the row-major planes at a grid
threshold, or from the transformed values at any other threshold (``score_from_values``). Steps
outside the run's sequence count as off, so the off-extents are clipped to the sequence.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hiddenscope_core.bits import ctz64, f16_is_nan, f16_sort_key, popcount64

ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
MODE_PLANES = 0
MODE_F32 = 1
MODE_F16 = 2


# ---------------------------------------------------------------------------- bit ranges


@nb.njit(inline="always", cache=True)
def _mask_from(o: int) -> np.uint64:
    """Bits ``o..63`` set (``o`` in 0..63)."""
    return ALL << np.uint64(o)


@nb.njit(inline="always", cache=True)
def _mask_below(o: int) -> np.uint64:
    """Bits ``0..o-1`` set (``o`` in 1..64)."""
    if o >= 64:
        return ALL
    return (np.uint64(1) << np.uint64(o)) - np.uint64(1)


@nb.njit(cache=True, nogil=True)
def _bits_all(words: np.ndarray, s: int, e: int, want_ones: bool) -> bool:
    """True iff every bit of ``words`` in ``[s, e)`` is 1 (``want_ones``) or 0."""
    if e <= s:
        return True
    ws = s >> 6
    we = (e - 1) >> 6
    for w in range(ws, we + 1):
        m = ALL
        if w == ws:
            m &= _mask_from(s & 63)
        if w == we:
            m &= _mask_below(((e - 1) & 63) + 1)
        x = words[w]
        if want_ones:
            if (x & m) != m:
                return False
        elif (x & m) != np.uint64(0):
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _s1_inter_from_bits(
    s1_exact: np.ndarray, e0: int, s: int, e: int, l0: int, r1: int, need: int
) -> tuple[int, bool]:
    """``(|S1 ∩ S2|, complete)`` from the exact on-bits of the S1 cells (rows of ``s1_exact``,
    words from ``e0``); stops once ``need`` is out of reach."""
    n1 = s1_exact.shape[0]
    base = e0 << 6
    inter = 0
    for i in range(n1):
        if inter + (n1 - i) < need:
            return inter, False
        row = s1_exact[i]
        if (
            _bits_all(row, s - base, e - base, True)
            and _bits_all(row, l0 - base, s - base, False)
            and _bits_all(row, e - base, r1 - base, False)
        ):
            inter += 1
    return inter, inter >= need


@nb.njit(inline="always", cache=True)
def _on_at(
    mode: int, vals32: np.ndarray, vals16: np.ndarray, theta: float, key16: int, c: int, t: int
) -> bool:
    """``v[t, c] >= θ`` from the values: float32, or float16 as bit patterns (NaN is off)."""
    if mode == MODE_F32:
        return bool(vals32[c, t] >= theta)
    b = vals16[c, t]
    return (not f16_is_nan(b)) and bool(f16_sort_key(b) >= key16)


@nb.njit(cache=True, nogil=True)
def _cell_in_s2_values(
    mode: int,
    vals32: np.ndarray,
    vals16: np.ndarray,
    theta: float,
    key16: int,
    c: int,
    s: int,
    e: int,
    l0: int,
    r1: int,
) -> bool:
    """Cell ``c`` on over ``[s, e)`` and off over ``[l0, s)`` and ``[e, r1)``, from values."""
    for t in range(s, e):
        if not _on_at(mode, vals32, vals16, theta, key16, c, t):
            return False
    for t in range(l0, s):
        if _on_at(mode, vals32, vals16, theta, key16, c, t):
            return False
    for t in range(e, r1):
        if _on_at(mode, vals32, vals16, theta, key16, c, t):
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _on_throughout(rows: np.ndarray, s: int, e: int, acc: np.ndarray) -> None:
    """``acc`` := the cells on at every step of ``[s, e)`` (row-major planes ``(T, Dw)``)."""
    dw = acc.shape[0]
    for j in range(dw):
        acc[j] = ALL
    for t in range(s, e):
        nz = np.uint64(0)
        for j in range(dw):
            acc[j] &= rows[t, j]
            nz |= acc[j]
        if nz == np.uint64(0):
            return


@nb.njit(cache=True, nogil=True)
def _clear_on(rows: np.ndarray, s: int, e: int, acc: np.ndarray) -> None:
    """``acc`` &= cells off at every step of ``[s, e)``."""
    dw = acc.shape[0]
    for t in range(s, e):
        for j in range(dw):
            acc[j] &= ~rows[t, j]


@nb.njit(cache=True, nogil=True)
def s2_mask(
    rows: np.ndarray,
    s: int,
    e: int,
    l0: int,
    r1: int,
    s1mask: np.ndarray,
    need: int,
    acc: np.ndarray,
) -> bool:
    """``acc`` := S2 of the run ``[s, e)`` with off-extents ``[l0, s)`` and ``[e, r1)`` as a
    bit mask over cells, from the row-major planes ``(T, Dw)`` of the threshold. Returns False
    (``acc`` incomplete) as soon as fewer than ``need`` S1 cells can remain in S2.

    The off-extents go first: they are short, and the step just before a run (where fewer S1
    cells are on, or it would be part of the run) rules out most S1 cells at once."""
    dw = acc.shape[0]
    for j in range(dw):
        acc[j] = ALL
    _clear_on(rows, l0, s, acc)
    _clear_on(rows, e, r1, acc)
    for t in (s, e - 1):
        left = 0
        for j in range(dw):
            acc[j] &= rows[t, j]
            left += int(popcount64(acc[j] & s1mask[j]))
        if left < need:
            return False
    for t in range(s + 1, e - 1):
        left = 0
        for j in range(dw):
            acc[j] &= rows[t, j]
            left += int(popcount64(acc[j] & s1mask[j]))
        if left < need:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _any_on(rows: np.ndarray, s: int, e: int, out: np.ndarray) -> None:
    """``out`` := the cells on at some step of ``[s, e)``."""
    for j in range(out.shape[0]):
        out[j] = np.uint64(0)
    for t in range(s, e):
        for j in range(out.shape[0]):
            out[j] |= rows[t, j]


@nb.njit(cache=True, nogil=True)
def _value_check(
    mode: int,
    vals32: np.ndarray,
    vals16: np.ndarray,
    theta: float,
    key16: int,
    c: int,
    s: int,
    e: int,
    l0: int,
    r1: int,
    run_known: bool,
    ext_known: bool,
) -> bool:
    """Cell ``c`` in S2, reading only the parts that the grid planes left undecided."""
    if not run_known and not _cell_in_s2_values(mode, vals32, vals16, theta, key16, c, s, e, s, e):
        return False
    if ext_known:
        return True
    # off over [l0, s) and over [e, r1), each as an empty run with one off-extent
    if not _cell_in_s2_values(mode, vals32, vals16, theta, key16, c, s, s, l0, s):
        return False
    return _cell_in_s2_values(mode, vals32, vals16, theta, key16, c, e, e, e, r1)


@nb.njit(cache=True, nogil=True)
def extras_from_values(
    mode: int,
    rows_lo: np.ndarray,
    have_lo: bool,
    rows_hi: np.ndarray,
    have_hi: bool,
    vals32: np.ndarray,
    vals16: np.ndarray,
    theta: float,
    key16: int,
    n_cells: int,
    s1mask: np.ndarray,
    s: int,
    e: int,
    l0: int,
    r1: int,
    extra_cap: int,
    scratch: np.ndarray,
) -> tuple[int, bool]:
    """``(|S2 \\ S1|, complete)`` of a run at a threshold θ off the grid.

    ``rows_lo``/``rows_hi`` (when present) are the row-major planes of the grid thresholds just
    below and above θ. A cell on at θ is on at the lower one, a cell on at the upper one is on
    at θ, so the planes decide most cells: on throughout above ⇒ on throughout at θ; off
    throughout below ⇒ off at θ. The values are read only for what stays undecided. Counting
    stops (``complete`` False) once the extra cells exceed ``extra_cap``.
    """
    dw = s1mask.shape[0]
    lo_run = scratch[0]
    lo_ext = scratch[1]
    hi_run = scratch[2]
    hi_ext = scratch[3]
    if have_lo:
        _on_throughout(rows_lo, s, e, lo_run)
        _any_on(rows_lo, l0, s, lo_ext)
        for t in range(e, r1):
            for j in range(dw):
                lo_ext[j] |= rows_lo[t, j]
    else:
        for j in range(dw):
            lo_run[j] = ALL
            lo_ext[j] = ALL
        rem = n_cells & 63
        if rem:
            lo_run[dw - 1] = _mask_below(rem)
    if have_hi:
        _on_throughout(rows_hi, s, e, hi_run)
        _any_on(rows_hi, l0, s, hi_ext)
        for t in range(e, r1):
            for j in range(dw):
                hi_ext[j] |= rows_hi[t, j]
    else:
        for j in range(dw):
            hi_run[j] = np.uint64(0)
            hi_ext[j] = np.uint64(0)
    extra = 0
    for j in range(dw):
        extra += int(popcount64(hi_run[j] & ~lo_ext[j] & ~s1mask[j]))
    if extra > extra_cap:
        return extra, False
    for j in range(dw):
        sure = hi_run[j] & ~lo_ext[j]
        x = lo_run[j] & ~hi_ext[j] & ~sure & ~s1mask[j]
        while x != np.uint64(0):
            b = int(ctz64(x))
            bit = np.uint64(1) << np.uint64(b)
            x &= x - np.uint64(1)
            if _value_check(
                mode,
                vals32,
                vals16,
                theta,
                key16,
                (j << 6) + b,
                s,
                e,
                l0,
                r1,
                (hi_run[j] & bit) != np.uint64(0),
                (lo_ext[j] & bit) == np.uint64(0),
            ):
                extra += 1
                if extra > extra_cap:
                    return extra, False
    return extra, True


# ---------------------------------------------------------------------------- bit-sliced count


@nb.njit(cache=True, nogil=True)
def count_planes(
    src: np.ndarray, rows: np.ndarray, src_w0: int, nw: int, nb_bits: int, local_hi: int
) -> np.ndarray:
    """Bit-sliced sum of the S1 on-bits: ``src[rows[r], src_w0 + w]`` for ``w < nw``, bits from
    ``local_hi`` (relative to word ``src_w0``) on counted as 0. Returns ``(nb_bits, nw)``
    planes, plane ``i`` holding bit ``i`` of ``n[t]``. Reads the planes in place (no copy)."""
    n1 = rows.shape[0]
    P = np.zeros((nb_bits, nw), dtype=np.uint64)
    for w in range(nw):
        lo_bit = w << 6
        if lo_bit >= local_hi:
            break
        keep = ALL if lo_bit + 64 <= local_hi else _mask_below(local_hi - lo_bit)
        for r in range(n1):
            carry = src[rows[r], src_w0 + w] & keep
            i = 0
            while carry != np.uint64(0) and i < nb_bits:
                p = P[i, w]
                P[i, w] = p ^ carry
                carry = p & carry
                i += 1
    return P


@nb.njit(cache=True, nogil=True)
def level_mask(P: np.ndarray, m: int, out: np.ndarray) -> None:
    """``out`` := words of ``n >= m`` from the bit-sliced planes ``P``."""
    nb_bits, nw = P.shape
    for w in range(nw):
        ge = np.uint64(0)
        eq = ALL
        for i in range(nb_bits - 1, -1, -1):
            p = P[i, w]
            if (m >> i) & 1:
                eq &= p
            else:
                ge |= eq & p
                eq &= ~p
        out[w] = ge | eq


# ---------------------------------------------------------------------------- top-k heap


@nb.njit(inline="always", cache=True)
def _better(i1: int, u1: int, len1: int, s1: int, i2: int, u2: int, len2: int, s2: int) -> bool:
    """SPEC §2 key (-I, U, -len, s) of candidate 1 strictly smaller than candidate 2."""
    if i1 != i2:
        return i1 > i2
    if u1 != u2:
        return u1 < u2
    if len1 != len2:
        return len1 > len2
    return s1 < s2


@nb.njit(inline="always", cache=True)
def _heap_better(H: np.ndarray, a: int, b: int) -> bool:
    # H columns: 0 start, 1 end, 2 I, 3 U, 4 level
    return _better(
        H[a, 2], H[a, 3], H[a, 1] - H[a, 0], H[a, 0], H[b, 2], H[b, 3], H[b, 1] - H[b, 0], H[b, 0]
    )


@nb.njit(cache=True, nogil=True)
def _heap_sift_down(H: np.ndarray, size: int, i: int) -> None:
    """Max-heap on "worseness": the root is the worst kept candidate."""
    while True:
        left = 2 * i + 1
        right = left + 1
        worst = i
        if left < size and _heap_better(H, worst, left):
            worst = left
        if right < size and _heap_better(H, worst, right):
            worst = right
        if worst == i:
            return
        for j in range(5):
            tmp = H[i, j]
            H[i, j] = H[worst, j]
            H[worst, j] = tmp
        i = worst


@nb.njit(cache=True, nogil=True)
def _heap_sift_up(H: np.ndarray, i: int) -> None:
    while i > 0:
        parent = (i - 1) // 2
        if _heap_better(H, parent, i):
            for j in range(5):
                tmp = H[i, j]
                H[i, j] = H[parent, j]
                H[parent, j] = tmp
            i = parent
        else:
            return


# ---------------------------------------------------------------------------- the match kernel


@nb.njit(cache=True, nogil=True)
def _popcount_and(a: np.ndarray, b: np.ndarray, invert_b: bool) -> int:
    n = 0
    for j in range(a.shape[0]):
        y = ~b[j] if invert_b else b[j]
        n += int(popcount64(a[j] & y))
    return n


@nb.njit(cache=True, nogil=True)
def match_kernel(
    src: np.ndarray,
    src_rows: np.ndarray,
    src_w0: int,
    nw: int,
    w0: int,
    s1_exact: np.ndarray,
    e0: int,
    scan_hi: int,
    own_lo: int,
    own_hi: int,
    filt_end: int,
    seq_starts: np.ndarray,
    n_steps: int,
    s1mask: np.ndarray,
    n_cells: int,
    mode: int,
    rows: np.ndarray,
    have_rows: bool,
    rows_hi: np.ndarray,
    have_hi: bool,
    vals32: np.ndarray,
    vals16: np.ndarray,
    theta: float,
    key16: int,
    zl: int,
    zr: int,
    min_len: int,
    max_len: int,
    top_k: int,
    want_stats: bool,
    hist: np.ndarray,
    strict_hist: np.ndarray,
    long_len: np.ndarray,
    shared: np.ndarray,
) -> tuple[np.ndarray, int, int, int]:
    """Rank the candidates that start in ``[own_lo, own_hi)`` and end at or before ``filt_end``.

    The S1 on-bits over words ``[w0, w0 + nw)`` are ``src[src_rows[r], src_w0 + w]`` (the grid
    planes in place, or bits packed from the values); they must cover every step up to
    ``scan_hi``, a step
    where every owned run has ended (n = 0, a sequence start or past ``filt_end``). ``s1mask``
    is S1 as a bit mask over cells. Returns ``(H, size, n_candidates, n_long)``: ``H[:size]``
    rows ``(start, end, I, U, level)`` in heap order. With ``want_stats``, ``hist`` and
    ``strict_hist`` count candidates by length (all; with S1 ⊆ S2) and lengths past the last
    bin go to ``long_len`` rows ``(length, strict)``.

    ``shared[0]`` is an intersection that the k-th best of *some* shard reaches (shards own
    disjoint candidates, so a candidate below it cannot be in the global top k). Shards running
    at the same time read and raise it; a stale value only prunes less.
    """
    n1 = src_rows.shape[0]
    nb_bits = 1
    while (1 << nb_bits) <= n1:
        nb_bits += 1
    # steps at or past scan_hi count as n = 0: nothing beyond is needed or owned
    P = count_planes(src, src_rows, src_w0, nw, nb_bits, scan_hi - (w0 << 6))
    cur = np.zeros(nw, dtype=np.uint64)
    above = np.zeros(nw, dtype=np.uint64)  # M_{m+1}
    acc = np.zeros(s1mask.shape[0], dtype=np.uint64)
    scratch = np.zeros((4, s1mask.shape[0]), dtype=np.uint64)
    H = np.zeros((top_k, 5), dtype=np.int64)
    size = 0
    n_cand = 0
    n_long = 0
    hist_cap = hist.shape[0] - 1
    n_seq = seq_starts.shape[0]

    for m in range(n1, 0, -1):
        if not want_stats and max(H[0, 2] if size == top_k else 0, shared[0]) > m:
            break  # a level-m candidate has I <= m: none can beat the k-th best
        level_mask(P, m, cur)
        qi: int = max(int(np.searchsorted(seq_starts, w0 << 6, side="right")) - 1, 0)
        in_run = False
        run_s = 0
        for w in range(nw + 1):
            # the virtual word nw is all zeros: it closes a run open at the end
            x = cur[w] if w < nw else np.uint64(0)
            base = (w0 + w) << 6
            bit = 0
            while bit < 64:
                if not in_run:
                    ones = x & _mask_from(bit)
                    if ones == np.uint64(0):
                        break
                    bit = int(ctz64(ones))
                    run_s = base + bit
                    in_run = True
                    continue
                zeros = (~x) & _mask_from(bit)
                if zeros == np.uint64(0):
                    break
                bit = int(ctz64(zeros))
                run_e = base + bit
                in_run = False
                if run_e <= own_lo or run_s >= own_hi:
                    continue
                # a maximal run [run_s, run_e) of n >= m, cut at sequence starts
                # runs come in step order within a level: advance the sequence pointer
                while qi + 1 < n_seq and seq_starts[qi + 1] <= run_s:
                    qi += 1
                ps = run_s
                qj = qi
                while ps < run_e:
                    q_start = seq_starts[qj]
                    q_end = seq_starts[qj + 1] if qj + 1 < n_seq else n_steps
                    pe = min(run_e, q_end)
                    L = pe - ps
                    ok = ps >= own_lo and ps < own_hi and pe <= filt_end
                    ok = ok and min_len <= L and max_len >= L
                    if ok and m < n1:
                        # distinct at this level iff some step has n == m exactly
                        fresh = False
                        for ww in range((ps >> 6) - w0, ((pe - 1) >> 6) - w0 + 1):
                            mm = cur[ww] & ~above[ww]
                            wb = (w0 + ww) << 6
                            if wb < ps:
                                mm &= _mask_from(ps - wb)
                            if wb + 64 > pe:
                                mm &= _mask_below(pe - wb)
                            if mm != np.uint64(0):
                                fresh = True
                                break
                        ok = fresh
                    if ok:
                        n_cand += 1
                        if want_stats:
                            if hist_cap >= L:
                                hist[L] += 1
                            elif n_long < long_len.shape[0]:
                                long_len[n_long, 0] = L
                                n_long += 1
                        full = size == top_k
                        need = max(H[0, 2] if full else 0, shared[0])
                        # level m bounds the intersection: skip what cannot enter, unless the
                        # strict histogram needs to know whether S1 ⊆ S2
                        if need <= m or (want_stats and m == n1):
                            l0 = max(ps - zl, q_start)
                            r1 = min(pe + zr, q_end)
                            if mode == MODE_PLANES:
                                complete = s2_mask(rows, ps, pe, l0, r1, s1mask, need, acc)
                                inter = _popcount_and(acc, s1mask, False)
                                extra = _popcount_and(acc, s1mask, True)
                                complete = complete and inter >= need
                            else:
                                inter, complete = _s1_inter_from_bits(
                                    s1_exact, e0, ps, pe, l0, r1, need
                                )
                                extra = 0
                                if complete:
                                    cap = n_cells
                                    if full and inter == H[0, 2]:
                                        # more extra cells than the worst kept lose the tie
                                        cap = H[0, 3] - n1
                                    extra, complete = extras_from_values(
                                        mode,
                                        rows,
                                        have_rows,
                                        rows_hi,
                                        have_hi,
                                        vals32,
                                        vals16,
                                        theta,
                                        key16,
                                        n_cells,
                                        s1mask,
                                        ps,
                                        pe,
                                        l0,
                                        r1,
                                        cap,
                                        scratch,
                                    )
                            if want_stats and inter == n1:
                                if hist_cap >= L:
                                    strict_hist[L] += 1
                                else:
                                    long_len[n_long - 1, 1] = 1
                            union = n1 + extra
                            if complete and not full:
                                H[size, 0] = ps
                                H[size, 1] = pe
                                H[size, 2] = inter
                                H[size, 3] = union
                                H[size, 4] = m
                                _heap_sift_up(H, size)
                                size += 1
                                if size == top_k and H[0, 2] > shared[0]:
                                    shared[0] = H[0, 2]
                            elif complete and _better(
                                inter, union, L, ps, H[0, 2], H[0, 3], H[0, 1] - H[0, 0], H[0, 0]
                            ):
                                H[0, 0] = ps
                                H[0, 1] = pe
                                H[0, 2] = inter
                                H[0, 3] = union
                                H[0, 4] = m
                                _heap_sift_down(H, size, 0)
                                if H[0, 2] > shared[0]:
                                    shared[0] = H[0, 2]
                    ps = pe
                    qj += 1
        for w in range(nw):
            above[w] = cur[w]
    return H, size, n_cand, n_long
