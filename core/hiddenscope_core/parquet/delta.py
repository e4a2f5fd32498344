"""DELTA_BINARY_PACKED data pages, encoded in numba: the encoding of the on-interval columns.

A page is its v1 page header (thrift compact, written by ``_page_headers`` in numba) and one
DELTA_BINARY_PACKED stream (Parquet spec: ``parquet-format/Encodings.md``): blocks of
``BLOCK = 128`` values, 4 miniblocks of 32. Deltas wrap around in the physical type (INT32 for
int16/int32/uint32, INT64 for int64); a miniblock stores ``delta - min delta of the block`` at
the bit width of its largest one; the last miniblock is padded with zeros, the unused
miniblocks of the last block have width 0. For INT32 columns the stream is byte for byte
arrow's (tested); for INT64 arrow uses blocks of 256, we keep 128. Required columns have no
levels, so nothing else is in a page.

Pages hold ``PAGE_ROWS = 2**15`` values (fewer at the end of a row group): at most ~130 KB
(32-bit) or ~260 KB (64-bit) at the worst bit width, well under the conventional ~1 MB, and
1-30 KB on interval data. A page is encoded in two passes (deltas, block minima and bit
widths, hence its size for the page header; then the packing) over data still in L2; the
deltas of a full block are never stored, both passes compute them in registers from the
values (``_pack_delta16``; 5-12% faster than storing, subtracting the minimum and reloading
them). Against 2**17: as fast on ``start``/``end``, 15% faster on ``cell`` (a page where the
cell changes takes the general path; smaller pages are more often constant); 2**13 is no
faster. Cost: ~20 header bytes a page, 0.16% of the file.

Speed: the per-value work (deltas, block minima, bit widths, packing, column min/max) is in
``@nb.njit(nogil=True)`` kernels, so a background thread runs it beside other numba code. Hot
loops index with unsigned integers (no wrap-around checks), so the delta, min/max and miniblock
reductions vectorise; the packing of bit widths up to 16 is explicit LLVM vector IR
(``_pack_le16``). Cheap paths: a page whose values are all equal (most ``threshold_index`` and
``cell`` pages) is 5 zero bytes per block (``const_page``), written without computing deltas; a
block whose deltas are all equal has width 0 and no packed data. Measured (``python -m
bench.intervals_parquet_bench``): ~550 M rows/s for the four interval columns; ns a value:
threshold_index 0.14, cell 0.30, start 0.69, end 0.71 (of which packing ~0.2, DRAM reads of the
input ~0.25).

The public kernels: ``encode_page`` (one page of any values), ``encode_pages`` (a run of
pages), ``const_page`` (a page of one repeated value, without reading values) and
``worst_case_bytes`` (the buffer a run of pages needs).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from hiddenscope_core.parquet.thrift import DATA_PAGE, DELTA_BINARY_PACKED, RLE

PAGE_ROWS = 1 << 15
"""Values per data page (the last page of a row group may be shorter)."""
BLOCK = 128
"""Values per DELTA_BINARY_PACKED block (a page's delta scratch needs ``2 * BLOCK`` spare)."""
_MINI = 32  # values per miniblock (4 per block)


# ------------------------------------------------------------------------------ intrinsics


@intrinsic
def _clz64_intr(typingctx: Any, x: Any) -> Any:
    """Count of leading zero bits of a uint64 (64 for 0; LLVM ``ctlz``)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


def _store_intrinsic(bits: int) -> Any:
    """An intrinsic ``f(buf, i, x)`` storing the low ``bits`` of ``x`` little-endian at byte
    ``i`` of a uint8 array (one unaligned store; no bounds check)."""
    uint = types.uint32 if bits == 32 else types.uint64

    @intrinsic
    def _store(typingctx: Any, buf: Any, i: Any, x: Any) -> Any:
        sig = types.void(buf, types.intp, uint)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            ptr = builder.bitcast(ptr, ir.IntType(bits).as_pointer())
            builder.store(args[2], ptr, align=1)
            return context.get_dummy_value()

        return sig, codegen

    return _store


# typed as Any: mypy reads an intrinsic's signature as (typingctx, ...), numba calls it as f(...)
_clz64: Any = _clz64_intr
_st32: Any = _store_intrinsic(32)
_st64: Any = _store_intrinsic(64)


def _pack16_codegen(delta: bool) -> Any:
    """Code of ``_pack_le16`` (``delta=False``: the values are ``du[a:a+32]``) and of
    ``_pack_delta16`` (``delta=True``: the values are ``v[k+1] - v[k] - mn`` for ``k`` in
    ``a:a+32``, wrapping in the physical type, computed in registers)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        src_t = signature.args[0]
        out_t = signature.args[-2]
        src = context.make_array(src_t)(context, builder, args[0]).data
        dst = context.make_array(out_t)(context, builder, args[-2]).data
        a, w, p = args[1], args[-3], args[-1]
        i32, i64 = ir.IntType(32), ir.IntType(64)
        bits = src_t.dtype.bitwidth
        phys = ir.IntType(64 if bits == 64 else 32)  # the physical type (INT32 or INT64)
        v8 = ir.VectorType(ir.IntType(bits), 8)
        v8p = ir.VectorType(phys, 8)
        v8x64 = ir.VectorType(i64, 8)
        v4x64 = ir.VectorType(i64, 4)

        def mask(*idx: int) -> Any:
            return ir.Constant(ir.VectorType(i32, len(idx)), [ir.Constant(i32, k) for k in idx])

        def splat(x: Any) -> Any:
            v = builder.insert_element(ir.Constant(v4x64, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, ir.Constant(v4x64, ir.Undefined), mask(0, 0, 0, 0))

        def c64(k: int) -> Any:
            return ir.Constant(i64, k)

        def load8(k: Any) -> Any:
            """Eight values from ``src[k]`` in the physical type."""
            x = builder.load(
                builder.bitcast(builder.gep(src, [k]), v8.as_pointer()), align=bits // 8
            )
            if bits < phys.width:  # int16: sign-extended, as its INT32
                x = builder.sext(x, v8p)
            return x

        if delta:
            mn = builder.trunc(args[2], phys) if phys.width < 64 else args[2]
            mnv = builder.insert_element(ir.Constant(v8p, ir.Undefined), mn, ir.Constant(i32, 0))
            mnv = builder.shuffle_vector(mnv, ir.Constant(v8p, ir.Undefined), mask(*[0] * 8))
        shifts = ir.Constant(v4x64, ir.Undefined)  # <0, w, 2w, 3w>
        for k in range(4):
            shifts = builder.insert_element(shifts, builder.mul(w, c64(k)), ir.Constant(i32, k))
        lo4, hi4 = [], []  # per group: its first and last four values, shifted
        undef8 = ir.Constant(v8x64, ir.Undefined)
        for q in range(4):
            k = builder.add(a, c64(8 * q))
            if delta:
                g = load8(builder.add(k, c64(1)))
                g = builder.sub(builder.sub(g, load8(k)), mnv)
            else:
                g = load8(k)
            if phys.width == 32:
                g = builder.zext(g, v8x64)
            lo4.append(builder.shl(builder.shuffle_vector(g, undef8, mask(0, 1, 2, 3)), shifts))
            hi4.append(builder.shl(builder.shuffle_vector(g, undef8, mask(4, 5, 6, 7)), shifts))

        def or_across(v: list[Any]) -> Any:
            """<OR(v[0]), OR(v[1]), OR(v[2]), OR(v[3])> of four 4-vectors."""
            lo, hi = mask(0, 4, 2, 6), mask(1, 5, 3, 7)
            o01 = builder.or_(
                builder.shuffle_vector(v[0], v[1], lo), builder.shuffle_vector(v[0], v[1], hi)
            )
            o23 = builder.or_(
                builder.shuffle_vector(v[2], v[3], lo), builder.shuffle_vector(v[2], v[3], hi)
            )
            return builder.or_(
                builder.shuffle_vector(o01, o23, mask(0, 1, 4, 5)),
                builder.shuffle_vector(o01, o23, mask(2, 3, 6, 7)),
            )

        lo, hi = or_across(lo4), or_across(hi4)
        s = builder.mul(w, c64(4))
        # (hi << 1) << (4w - 1) is 0 when 4w = 64, where hi << 4w would be undefined
        hi_shifted = builder.shl(builder.shl(hi, splat(c64(1))), splat(builder.sub(s, c64(1))))
        words = (builder.or_(lo, hi_shifted), builder.lshr(hi, splat(builder.sub(c64(64), s))))
        pos = p
        for q in range(4):
            for k, word in enumerate(words):
                x = builder.extract_element(word, ir.Constant(i32, q))
                ptr = builder.gep(dst, [builder.add(pos, c64(8 * k))])
                builder.store(x, builder.bitcast(ptr, i64.as_pointer()), align=1)
            pos = builder.add(pos, w)
        return pos

    return codegen


@intrinsic
def _pack_le16_intr(typingctx: Any, du: Any, a: Any, w: Any, out: Any, p: Any) -> Any:
    """``_pack_le16(du, a, w, out, p) -> p + 4 * w``: bit-pack the miniblock ``du[a:a+32]``
    (uint32 or uint64 values, each ``< 2**w``, ``1 <= w <= 16``) LSB first into ``4 * w``
    bytes at ``out[p]`` (uint8), in LLVM vector IR (AVX2: ~1.4 instructions a value, 1.5x the
    best scalar loop numba makes of it).

    Eight values take exactly ``w`` bytes, so the miniblock is four independent groups of
    eight: group ``q`` is ``lo_q | hi_q << 4w`` where ``lo_q = x0 | x1 << w | x2 << 2w | x3 <<
    3w`` of its first four values and ``hi_q`` the same of its last four (``4w <= 64`` bits).
    Each group is loaded as one vector of eight, widened to 64 bits and shifted by
    ``<0, w, 2w, 3w>``; the four groups' horizontal ORs are done together by a 4x4 transpose
    (unpack, permute) and ORs; the two words of each group (``lo | hi << 4w`` and
    ``hi >> (64 - 4w)``) are stored unaligned at ``p + q * w`` and 8 bytes further, in order,
    so that each group overwrites the previous one's excess. Writes up to 16 bytes past the
    end. No bounds checks."""
    if not (isinstance(du, types.Array) and du.dtype in (types.uint32, types.uint64)):
        return None
    sig = types.intp(du, types.intp, types.intp, out, types.intp)
    return sig, _pack16_codegen(False)


@intrinsic
def _pack_delta16_intr(typingctx: Any, v: Any, a: Any, mn: Any, w: Any, out: Any, p: Any) -> Any:
    """``_pack_delta16(v, a, mn, w, out, p) -> p + 4 * w``: as ``_pack_le16`` of the
    miniblock of deltas ``v[k+1] - v[k] - mn`` (``k`` in ``a:a+32``, in the physical type: an
    int16 is sign-extended to INT32, uint32 wraps as INT32), computed from ``v`` in registers,
    so that full blocks need no delta array. Reads ``v[a:a+33]``."""
    ok = (types.int16, types.int32, types.uint32, types.int64)
    if not (isinstance(v, types.Array) and v.dtype in ok):
        return None
    sig = types.intp(v, types.intp, types.int64, types.intp, out, types.intp)
    return sig, _pack16_codegen(True)


_pack_le16: Any = _pack_le16_intr
_pack_delta16: Any = _pack_delta16_intr


# ---------------------------------------------------------------------------- numba kernels


@nb.njit(cache=True, nogil=True, inline="always")
def _bit_width(x: Any) -> int:
    """Bits needed for the unsigned value ``x`` (0 for 0)."""
    return 64 - int(_clz64(np.uint64(x)))


@nb.njit(cache=True, nogil=True, inline="always")
def _zigzag(x: Any) -> np.uint64:
    """ZigZag of a signed 64-bit value: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    x = np.int64(x)
    return np.uint64(x << 1) ^ np.uint64(x >> 63)


@nb.njit(cache=True, nogil=True, inline="always")
def _varint_len(u: Any) -> int:
    """Bytes of the ULEB128 encoding of an unsigned value."""
    return max(1, (_bit_width(u) + 6) // 7)


@nb.njit(cache=True, nogil=True, inline="always")
def _put_varint(out: Any, p: int, u: Any) -> int:
    """ULEB128 of an unsigned value at ``out[p]``; returns the position after it."""
    u = np.uint64(u)
    while u >= 0x80:
        out[p] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        p += 1
    out[p] = np.uint8(u)
    return p + 1


# Hot loops index with uint64 (``_U``): numba adds a wrap-around check (``i < 0``) to every
# access with a signed index that LLVM cannot prove non-negative, which costs 2x in the packers
# and keeps the miniblock reductions from vectorising.
_U = np.uint64


@nb.njit(cache=True, nogil=True, inline="always")
def _pack_le32(du: Any, a: int, w: int, out: Any, p: int) -> int:
    """As ``_pack_le16`` for ``w <= 32``: a 64-bit accumulator flushed 32 bits at a time (a
    value of at most 32 bits shifted by at most 31 fits). The 4-byte store is unconditional and
    the position only advances when a word is complete, so the loop has no branch."""
    acc = _U(0)
    nbits = _U(0)
    uw = _U(w)
    five = _U(5)
    for k in range(_MINI):
        acc |= _U(du[_U(a + k)]) << nbits
        nbits += uw
        _st32(out, p, np.uint32(acc & _U(0xFFFFFFFF)))
        full = nbits >> five  # 1 when a 32-bit word is complete (nbits < 64)
        p += 4 * int(full)
        acc >>= full << five
        nbits -= full << five
    return p


@nb.njit(cache=True, nogil=True, inline="always")
def _pack_le64(du: Any, a: int, w: int, out: Any, p: int) -> int:
    """As ``_pack_le16`` for any ``w <= 64`` (INT64 columns above 32 bits only)."""
    acc = _U(0)
    nbits = 0
    for k in range(_MINI):
        x = _U(du[_U(a + k)])
        acc |= x << _U(nbits)
        nbits += w
        if nbits >= 64:
            _st64(out, p, acc)
            p += 8
            nbits -= 64
            acc = (x >> _U(w - nbits)) if nbits > 0 else _U(0)
    if nbits > 0:  # 32 * w bits: 32 bits remain when w is odd
        _st32(out, p, np.uint32(acc & _U(0xFFFFFFFF)))
        p += 4
    return p


@nb.njit(cache=True, nogil=True, inline="always")
def _page_headers(out: Any, p: int, size: int, n: int, first: Any) -> int:
    """The page header of a data page of ``n`` values whose DELTA_BINARY_PACKED stream takes
    ``size`` bytes, then the stream's header (block size 128, 4 miniblocks, ``n``, the zigzag
    ``first`` value), at ``out[p]``; returns the position after them (the first block)."""
    # page header: PageHeader{1: type, 2: uncompressed size, 3: compressed size,
    # 5: DataPageHeader{1: num_values, 2: encoding, 3, 4: level encodings (RLE)}}; field
    # headers are (id delta << 4 | type) with i32 = 5 and struct = 12, i32 values zigzag
    zsize = _U(size) << _U(1)
    out[p] = 0x15
    out[p + 1] = 2 * DATA_PAGE
    p += 2
    for _ in range(2):
        out[p] = 0x15
        p = _put_varint(out, p + 1, zsize)
    out[p] = 0x2C  # field 5 (delta 2), struct
    out[p + 1] = 0x15
    p = _put_varint(out, p + 2, _U(n) << _U(1))
    out[p] = 0x15
    out[p + 1] = 2 * DELTA_BINARY_PACKED
    out[p + 2] = 0x15
    out[p + 3] = 2 * RLE
    out[p + 4] = 0x15
    out[p + 5] = 2 * RLE
    out[p + 6] = 0  # end of DataPageHeader
    out[p + 7] = 0  # end of PageHeader
    p += 8
    out[p] = 0x80
    out[p + 1] = 0x01
    out[p + 2] = 4
    p = _put_varint(out, p + 3, n)
    return _put_varint(out, p, first)


@nb.njit(cache=True, nogil=True)
def const_page(value: int, n: int, wide: bool, out: Any, p: int) -> int:
    """Write a data page of ``n >= 1`` values all equal to ``value`` at ``out[p]`` (physical
    INT64 if ``wide``, else INT32), byte for byte what ``encode_page`` writes for it, without
    reading any values. Returns the position after the page."""
    v = np.int64(value) if wide else np.int64(np.int32(value))
    first = _zigzag(v)
    nblocks = (n - 1 + BLOCK - 1) // BLOCK
    size = 3 + _varint_len(n) + _varint_len(first) + 5 * nblocks
    p = _page_headers(out, p, size, n, first)
    out[p : p + 5 * nblocks] = 0
    return p + 5 * nblocks


@nb.njit(cache=True, nogil=True)
def encode_page(
    v: Any, out: Any, p: int, d: Any, du: Any, bmin: Any, bw: Any
) -> tuple[int, int, int]:
    """Write one data page (page header + DELTA_BINARY_PACKED stream) of all of ``v``
    (``len(v) >= 1``) at ``out[p]``. Scratch: ``d`` of the physical type (int32 or int64; it
    selects INT32 or INT64) of at least ``len(v) + 128`` values and ``du``, its unsigned view;
    ``bmin`` (int64) and ``bw`` (uint32: a block's four bit widths, one per byte) of at least
    ``len(v) / 128 + 1``. Returns the position after the page and its min and max value."""
    n = v.shape[0]
    nd = n - 1  # deltas
    nblocks = (nd + BLOCK - 1) // BLOCK
    # full blocks take their deltas from v (never stored) if v is as wide as the physical
    # type or an int16 (sign-extended to INT32)
    fast = v.itemsize == d.itemsize or (v.itemsize == 2 and d.itemsize == 4)
    # the first value as its physical INT32 (a uint32 has its bits) or INT64, sign-extended
    first = _zigzag(np.int64(np.int32(v[0])) if d.itemsize == 4 else np.int64(v[0]))
    lo = v[0]
    hi = lo
    const = False
    if v[nd] == v[0]:  # maybe constant (the usual threshold_index and cell page): check
        for i in range(n):  # vectorises
            x = v[_U(i)]
            lo = min(lo, x)
            hi = max(hi, x)
        const = lo == hi
    # pass 1: the stream's size. Header: block size 128 (0x80 0x01), 4 miniblocks, count,
    # first value; per block the zigzag min delta, 4 bit widths and 4 * width bytes per
    # miniblock that holds values (unused miniblocks of the last block have width 0, no bytes)
    size = 3 + _varint_len(n) + _varint_len(first)
    if const:  # every delta is 0: a block is min delta 0 (one byte) and four zero widths
        size += 5 * nblocks
    else:
        for b in range(nblocks):
            j = b * BLOCK
            uj = _U(j)
            full = fast and j + BLOCK <= nd
            if full:  # the four miniblocks side by side, deltas in registers only: four max
                # reductions, a min, and the page's min and max (vectorises); wrapping in the
                # physical type (the cast truncates)
                m0 = d.dtype.type(_U(v[uj + _U(1)]) - _U(v[uj]))
                m1 = d.dtype.type(_U(v[uj + _U(33)]) - _U(v[uj + _U(32)]))
                m2 = d.dtype.type(_U(v[uj + _U(65)]) - _U(v[uj + _U(64)]))
                m3 = d.dtype.type(_U(v[uj + _U(97)]) - _U(v[uj + _U(96)]))
                mn = m0
                for i in range(_MINI):
                    k = uj + _U(i)
                    a0 = d.dtype.type(_U(v[k + _U(1)]) - _U(v[k]))
                    a1 = d.dtype.type(_U(v[k + _U(33)]) - _U(v[k + _U(32)]))
                    a2 = d.dtype.type(_U(v[k + _U(65)]) - _U(v[k + _U(64)]))
                    a3 = d.dtype.type(_U(v[k + _U(97)]) - _U(v[k + _U(96)]))
                    m0 = max(m0, a0)
                    m1 = max(m1, a1)
                    m2 = max(m2, a2)
                    m3 = max(m3, a3)
                    mn = min(mn, min(min(a0, a1), min(a2, a3)))
                    y0 = v[k + _U(1)]
                    y1 = v[k + _U(33)]
                    y2 = v[k + _U(65)]
                    y3 = v[k + _U(97)]
                    lo = min(lo, min(min(y0, y1), min(y2, y3)))
                    hi = max(hi, max(max(y0, y1), max(y2, y3)))
            else:  # the last block: deltas into d, padded with its last delta, which changes
                for i in range(j, nd):  # no minimum or maximum of a used miniblock
                    x = v[i + 1]
                    d[i] = _U(x) - _U(v[i])
                    lo = min(lo, x)
                    hi = max(hi, x)
                for i in range(nd, j + BLOCK):
                    d[i] = d[nd - 1]
                m0 = d[uj]
                m1 = d[uj + _U(32)]
                m2 = d[uj + _U(64)]
                m3 = d[uj + _U(96)]
                mn = m0
                for i in range(_MINI):
                    k = uj + _U(i)
                    a0 = d[k]
                    a1 = d[k + _U(32)]
                    a2 = d[k + _U(64)]
                    a3 = d[k + _U(96)]
                    m0 = max(m0, a0)
                    m1 = max(m1, a1)
                    m2 = max(m2, a2)
                    m3 = max(m3, a3)
                    mn = min(mn, min(min(a0, a1), min(a2, a3)))
            bmin[b] = mn
            size += _varint_len(_zigzag(np.int64(mn))) + 4
            # bit width of max - min in the physical type (exact: sign-extended, max >= min);
            # miniblocks past the last delta get width 0
            used = min(4, (nd - b * BLOCK + _MINI - 1) // _MINI)
            umn = _U(np.int64(mn))
            w0 = _bit_width(_U(np.int64(m0)) - umn)
            w1 = _bit_width(_U(np.int64(m1)) - umn) if used > 1 else 0
            w2 = _bit_width(_U(np.int64(m2)) - umn) if used > 2 else 0
            w3 = _bit_width(_U(np.int64(m3)) - umn) if used > 3 else 0
            bw[b] = np.uint32(w0 | (w1 << 8) | (w2 << 16) | (w3 << 24))  # as stored
            size += 4 * (w0 + w1 + w2 + w3)
            if not full and (w0 | w1 | w2 | w3):  # delta - min, wrapping; the padding packs
                for i in range(nd, j + BLOCK):  # as zeros
                    d[i] = mn
                for i in range(BLOCK):
                    k = uj + _U(i)
                    d[k] = d[k] - mn
    p = _page_headers(out, p, size, n, first)
    # pass 2: the stream
    start = p - (3 + _varint_len(n) + _varint_len(first))
    if const:
        out[p : p + 5 * nblocks] = 0
        p += 5 * nblocks
    else:
        for b in range(nblocks):
            mnb = bmin[b]
            p = _put_varint(out, p, _zigzag(mnb))
            ws = bw[b]
            _st32(out, p, ws)
            p += 4
            if ws == 0:  # all deltas of the block are equal
                continue
            full = fast and b * BLOCK + BLOCK <= nd
            for m in range(4):
                w = int((ws >> np.uint32(8 * m)) & np.uint32(0xFF))
                if w == 0:  # all deltas equal the minimum, or an unused miniblock
                    continue
                a = b * BLOCK + m * _MINI
                if full:  # the deltas of a full block are computed again from v
                    if w <= 16:
                        p = _pack_delta16(v, a, mnb, w, out, p)
                    else:  # wide deltas (rare): into du first
                        ua = _U(a)
                        umnb = _U(mnb)
                        for i in range(_MINI):
                            k = ua + _U(i)
                            du[k] = _U(v[k + _U(1)]) - _U(v[k]) - umnb
                        if w <= 32:
                            p = _pack_le32(du, a, w, out, p)
                        else:
                            p = _pack_le64(du, a, w, out, p)
                elif w <= 16:
                    p = _pack_le16(du, a, w, out, p)
                elif w <= 32:
                    p = _pack_le32(du, a, w, out, p)
                else:
                    p = _pack_le64(du, a, w, out, p)
    if p - start != size:  # pragma: no cover - a bug
        raise AssertionError("page size mismatch")
    return p, int(lo), int(hi)


@nb.njit(cache=True, nogil=True)
def encode_pages(
    v: Any, page_rows: int, out: Any, p: int, d: Any, du: Any
) -> tuple[int, int, int, int]:
    """Encode ``v`` as pages of ``page_rows`` values (the last may be shorter) at ``out[p]``
    (``d``, ``du``: scratch as for ``encode_page``, of at least ``page_rows + 128``). Returns
    the position after them, the number of pages and the min and max value."""
    n = v.shape[0]
    nb_max = min(n, page_rows) // BLOCK + 1
    bmin = np.empty(nb_max, np.int64)
    bw = np.empty(nb_max, np.uint32)
    lo = 0
    hi = 0
    pages = 0
    for a in range(0, n, page_rows):
        p, plo, phi = encode_page(v[a : a + page_rows], out, p, d, du, bmin, bw)
        lo = plo if pages == 0 else min(lo, plo)
        hi = phi if pages == 0 else max(hi, phi)
        pages += 1
    return p, pages, lo, hi


def worst_case_bytes(rows: int, page_rows: int, itemsize: int) -> int:
    """An upper bound of the encoded size of ``rows`` values in pages of ``page_rows``: page
    header (<= 30 bytes) and stream header (<= 18), per block a min delta (<= 10) and 4
    widths, and at most ``itemsize`` bytes per value (a miniblock is padded to 32 values), plus
    slack for the packers' unconditional stores."""
    pages = -(-rows // page_rows) + 1
    blocks = -(-rows // BLOCK) + pages
    return pages * 64 + blocks * (14 + BLOCK * itemsize) + 64
