"""The numba block kernels of a layer's build: statistics with the transpose of a flushed
block, on-planes with their run counts, and row planes.

Every kernel works on one block of steps in memory (``nogil``: the Parquet thread runs beside
them) and is called by the layer writer and its fused index (``layer``, ``fused``) while the
rows arrive, or by the index build from ``values.bin`` (``index``). Measured choices are in the
kernels' docstrings and ``build/__init__``.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt

from hiddenscope_core import bits

# numba intrinsics, typed Any because mypy reads their call signature as (typingctx, x)
_popcount: Any = bits.popcount64


@nb.njit(cache=True, nogil=True)
def stats_transpose_f32(v: Any, out: Any, cmin: Any, cmax: Any, csum: Any, cnan: Any) -> int:
    """``out[:, :n] = v.T`` (``v`` row-major float32 ``(n, D)``) and fold per-cell
    min/max/sum/NaN count (branch-free over the cells of a row, so it vectorises). Returns the
    number of infinite values (rejected by the caller). Single-threaded: the Parquet thread
    has the other core."""
    n, d = v.shape
    inf = np.float32(np.inf)
    ninf = np.zeros(d, np.int64)
    lo = cmin.copy()
    hi = cmax.copy()
    sm = np.zeros(d, np.float64)
    for i0 in range(0, n, 64):
        i1 = min(n, i0 + 64)
        for i in range(i0, i1):
            for j in range(d):
                x = v[i, j]
                fin = x - x == 0
                isnan = x != x
                cnan[j] += isnan
                ninf[j] += (not fin) and (not isnan)
                lo[j] = min(lo[j], x if fin else inf)
                hi[j] = max(hi[j], x if fin else -inf)
                sm[j] += np.float64(x) if fin else 0.0
        for j in range(d):
            for i in range(i0, i1):
                out[j, i] = v[i, j]
    for j in range(d):
        cmin[j] = lo[j]
        cmax[j] = hi[j]
        csum[j] += sm[j]
    return int(ninf.sum())


@nb.njit(cache=True, nogil=True)
def stats_transpose_f16(
    v: Any, lut: Any, out: Any, cmin: Any, cmax: Any, csum: Any, cnan: Any
) -> int:
    """As ``stats_transpose_f32`` for float16 values given as uint16 bit patterns (``out`` gets
    the bit patterns; ``lut`` maps them to float32 for the statistics)."""
    n, d = v.shape
    inf = np.float32(np.inf)
    ninf = np.zeros(d, np.int64)
    lo = cmin.copy()
    hi = cmax.copy()
    sm = np.zeros(d, np.float64)
    for i0 in range(0, n, 64):
        i1 = min(n, i0 + 64)
        for i in range(i0, i1):
            for j in range(d):
                x = lut[v[i, j]]
                fin = x - x == 0
                isnan = x != x
                cnan[j] += isnan
                ninf[j] += (not fin) and (not isnan)
                lo[j] = min(lo[j], x if fin else inf)
                hi[j] = max(hi[j], x if fin else -inf)
                sm[j] += np.float64(x) if fin else 0.0
        for j in range(d):
            for i in range(i0, i1):
                out[j, i] = v[i, j]
    for j in range(d):
        cmin[j] = lo[j]
        cmax[j] = hi[j]
        csum[j] += sm[j]
    return int(ninf.sum())


@nb.njit(cache=True, nogil=True)
def fast_stats_transpose_f32(v: Any, out: Any, kmin: Any, kmax: Any, csum: Any) -> int:
    """The fast path of ``stats_transpose_f32`` for rows without NaN or infinity (the
    caller re-runs a chunk that has any with the exact kernel, so this one needs no
    per-value selects): ``out[:, :n] = v.T``; per-cell min/max of the sortable integer keys of
    the float bits (integer min/max vectorises, float min/max with NaN semantics does not)
    and the sum. Returns the number of non-finite values (0: the results are valid).
    ``out``'s row stride must not be a large power of two (the writer pads it), or the 64
    scattered stores of a row fall into one cache set."""
    n, d = v.shape
    vi = v.view(np.int32)
    big = np.int32(0x7FFFFFFF)
    bad = np.zeros(d, np.int32)
    for i in range(n):
        row = vi[i]
        xrow = v[i]
        for j in range(d):
            u = row[j]
            k = u ^ ((u >> 31) & big)
            kmin[j] = min(kmin[j], k)
            kmax[j] = max(kmax[j], k)
            bad[j] += np.int32((u & big) >= 0x7F800000)
        for j in range(d):
            csum[j] += np.float64(xrow[j])
        for j in range(d):
            out[j, i] = xrow[j]
    return int(bad.sum())


@nb.njit(cache=True, nogil=True)
def fast_stats_transpose_f16(v: Any, out: Any, kmin: Any, kmax: Any, csum: Any) -> int:
    """As ``fast_stats_transpose_f32`` for float16 bit patterns (uint16): integer keys for
    min/max, and for the sum the value as float32 by moving the bits into place and
    multiplying by 2^112 (exact for every finite float16, subnormals included)."""
    n, d = v.shape
    bad = np.zeros(d, np.int32)
    f32 = np.zeros(d, np.uint32)
    fl = f32.view(np.float32)
    mul = np.float32(2.0**112)
    for i in range(n):
        row = v[i]
        for j in range(d):
            u = np.int32(row[j])
            k = u ^ (0x8000 | ((-(u >> 15)) & 0x7FFF))
            kmin[j] = min(kmin[j], k)
            kmax[j] = max(kmax[j], k)
            bad[j] += np.int32((u & 0x7FFF) >= 0x7C00)
            f32[j] = np.uint32(((u & 0x8000) << 16) | ((u & 0x7FFF) << 13))
        for j in range(d):
            csum[j] += np.float64(fl[j] * mul)
        for j in range(d):
            out[j, i] = row[j]
    return int(bad.sum())


def keys_to_f32(kmin: npt.NDArray[np.int32], kmax: npt.NDArray[np.int32], f16: bool) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32]
]:  # fmt: skip
    """The float32 values of the sortable keys of ``_fast_stats_transpose_*``."""
    out = []
    for k in (kmin, kmax):
        if f16:
            half = np.where(k & 0x8000, k ^ 0x8000, k ^ 0xFFFF).astype(np.uint16)
            out.append(half.view(np.float16).astype(np.float32))
        else:
            bits32 = k ^ ((k >> 31) & np.int32(0x7FFFFFFF))
            out.append(bits32.astype(np.int32).view(np.float32))
    return out[0], out[1]


@nb.njit(cache=True, nogil=True, inline="always")
def _fold_run(
    word: Any, w: int, cr: Any, cn: Any, on: Any, bm: Any
) -> tuple[np.uint64, np.uint64, np.uint64]:
    """Count a word's run starts (``on & ~prev | on & boundary``) and on bits; ``cr`` is the
    last bit of the previous word. Returns the new ``(cr, cn, on)``."""
    one = np.uint64(1)
    sh = (word << one) | cr
    cn += _popcount(word & (~sh | bm[w]))
    on += _popcount(word)
    return word >> np.uint64(63), cn, on


@nb.njit(cache=True, nogil=True)
def planes_f32(
    vals: Any,
    v0: int,
    n: int,
    th32: Any,
    bm: Any,
    carry: Any,
    pl: Any,
    w0: int,
    counts: Any,
    ons: Any,
) -> None:
    """On-planes of the values ``v0 .. v0 + n`` of every row of ``vals`` (float32,
    C-contiguous; ``v0`` and the block's first step are multiples of 64) into words ``w0 ...``
    of ``pl`` ``(G, D, nw)``; run starts are added to ``counts`` ``(G, D)`` and on steps to ``ons``;
    ``carry[g, c]`` is the bit of the step before the block (updated). ``th32[g]`` is the
    smallest float32 ``>= θ_g``, so ``v >= θ`` is ``v >= th32`` (NaN is off). A full word is
    one 64-lane vector compare (``bits.ge64_f32``), 4-5x faster than the shifted compares of
    the previous kernel, and the run counts stay in registers per (threshold, cell)."""
    d = vals.shape[0]
    g_n = th32.shape[0]
    nw_full = n >> 6
    rem = n & 63
    for c in range(d):
        col = vals[c]
        for g in range(g_n):
            t = np.float32(th32[g])
            cr, cn, on = carry[g, c], np.uint64(0), np.uint64(0)
            for w in range(nw_full):
                word = bits.ge64_f32(col, v0 + (w << 6), t)
                pl[g, c, w0 + w] = word
                cr, cn, on = _fold_run(word, w, cr, cn, on, bm)
            if rem:
                base = v0 + (nw_full << 6)
                word = np.uint64(0)
                for j in range(rem):
                    word |= np.uint64(col[base + j] >= t) << np.uint64(j)
                pl[g, c, w0 + nw_full] = word
                cr, cn, on = _fold_run(word, nw_full, cr, cn, on, bm)
            carry[g, c] = cr
            counts[g, c] += cn
            ons[g, c] += on


@nb.njit(cache=True, nogil=True)
def planes_f16(
    vals: Any,
    v0: int,
    n: int,
    keys: Any,
    bm: Any,
    carry: Any,
    pl: Any,
    w0: int,
    counts: Any,
    ons: Any,
    kv: Any,
) -> None:
    """As ``planes_f32`` for float16 values given as uint16 bit patterns: each value's sortable
    key (0 for NaN, below every threshold key) goes into the scratch ``kv`` (at least
    ``n`` rounded up to 64), which is compared with ``keys[g]`` from
    ``bits.f16_key_threshold``."""
    d = vals.shape[0]
    g_n = keys.shape[0]
    nw = (n + 63) >> 6
    for c in range(d):
        col = vals[c]
        for j in range(n):
            u = np.int32(col[v0 + j])
            k = ((~u) & 0xFFFF) if u & 0x8000 else (u | 0x8000)
            kv[j] = np.uint16(0) if (u & 0x7FFF) > 0x7C00 else np.uint16(k)
        for j in range(n, nw << 6):
            kv[j] = 0
        for g in range(g_n):
            kg = np.uint16(keys[g])
            cr, cn, on = carry[g, c], np.uint64(0), np.uint64(0)
            for w in range(nw):
                word = bits.ge64_u16(kv, w << 6, kg)
                pl[g, c, w0 + w] = word
                cr, cn, on = _fold_run(word, w, cr, cn, on, bm)
            carry[g, c] = cr
            counts[g, c] += cn
            ons[g, c] += on


@nb.njit(cache=True, nogil=True, inline="always")
def _transpose64(a: Any) -> None:
    """In-place 64x64 bit-matrix transpose: afterwards bit ``j`` of ``a[i]`` is what bit ``i``
    of ``a[j]`` was (bit 0 = least significant)."""
    j = 32
    m = np.uint64(0x00000000FFFFFFFF)
    while j != 0:
        sj = np.uint64(j)
        for base in range(0, 64, 2 * j):
            for k in range(base, base + j):
                t = ((a[k] >> sj) ^ a[k + j]) & m
                a[k + j] ^= t
                a[k] ^= t << sj
        j >>= 1
        m ^= m << np.uint64(j)


@nb.njit(cache=True, nogil=True)
def rows_block(pl: Any, rows: Any, n: int) -> None:
    """``rows[g, i, c >> 6]`` bit ``c & 63`` := ``pl[g, c, i >> 6]`` bit ``i & 63`` for the
    ``n`` steps of a block (``pl`` ``(G, D, nw)``, ``rows`` ``(G, n, Dw)``); bits of cells
    ``>= D`` are 0. 64x64 bit-matrix transposes of blocks in cache (about 0.1 operation per
    bit instead of a second comparison of every value with every threshold)."""
    g_n, d, nw = pl.shape
    dw = rows.shape[2]
    n_par = min(nw, 64)
    for p in range(n_par):
        pa_ = nw * p // n_par
        pb = nw * (p + 1) // n_par
        a = np.empty(64, np.uint64)
        for g in range(g_n):
            for k in range(dw):
                c0 = k << 6
                nc = min(64, d - c0)
                for w in range(pa_, pb):
                    for j in range(nc):
                        a[j] = pl[g, c0 + j, w]
                    for j in range(nc, 64):
                        a[j] = 0
                    _transpose64(a)
                    t0 = w << 6
                    for i in range(min(64, n - t0)):
                        rows[g, t0 + i, k] = a[i]


@nb.njit(cache=True, nogil=True)
def rows_f32(v: Any, n: int, th32: Any, rows: Any) -> None:
    """``rows[g, i, k]`` bit ``j`` := ``v[i, 64 k + j] >= th32[g]`` for the first ``n`` rows of
    ``v`` (float32, row-major ``(>= n, D)``, C-contiguous); bits of cells ``>= D`` are 0. The
    row planes straight from the row-major values, one 64-lane compare per word while the row
    is in L1: 1.5 against 2.6 ms per 16 MB block at D = 64 in isolation for the 64x64
    bit-matrix transposes of the planes (``rows_block``, still used where only transposed
    values exist, and for float16)."""
    d = v.shape[1]
    g_n = th32.shape[0]
    dwf = d >> 6
    rem = d & 63
    flat = v.reshape(-1)
    tail = np.full(64, np.nan, np.float32)  # a partial last word's cells, NaN (off) beyond D
    for i in range(n):
        base = i * d
        for k in range(dwf):
            for g in range(g_n):
                rows[g, i, k] = bits.ge64_f32(flat, base + (k << 6), th32[g])
        if rem:
            for j in range(rem):
                tail[j] = flat[base + (dwf << 6) + j]
            for g in range(g_n):
                rows[g, i, dwf] = bits.ge64_f32(tail, 0, th32[g])


def f16_lut() -> npt.NDArray[np.float32]:
    """float16 bit pattern (uint16) -> its float32 value, for all 65536 patterns."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
