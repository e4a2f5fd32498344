"""Bit-level building blocks: packing ``v >= θ`` into uint64 words and bit intrinsics.

Layout used everywhere: step ``t`` of a plane is bit ``t & 63`` of word ``t >> 6``. A packed
chunk must start at a step that is a multiple of 64; bits past the end of the data are 0.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

U64 = np.uint64


@intrinsic
def _popcount64(typingctx: Any, x: Any) -> Any:
    """Number of set bits of a uint64 (LLVM ``ctpop``)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def _ctz64(typingctx: Any, x: Any) -> Any:
    """Count of trailing zero bits of a uint64 (64 for 0)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


def _ge64_codegen(elem: Any, unsigned_int: bool) -> Any:
    """Code of ``ge64_*``: load 64 lanes from ``&arr[i]``, compare each with the scalar, and
    bitcast the ``<64 x i1>`` result to an i64 (one ``vcmpps`` into a mask register per 16
    lanes with AVX-512, compare + ``vmovmskps`` with AVX2)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        arr, i, x = args
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, arr)
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [i])  # type: ignore[no-untyped-call]
        vty = ir.VectorType(elem, 64)
        align = 2 if isinstance(elem, ir.IntType) else 4
        v = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=align)
        i32 = ir.IntType(32)
        xv = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(i32, 0))
        xv = builder.shuffle_vector(
            xv, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(i32, 64), [0] * 64)
        )
        if unsigned_int:
            m = builder.icmp_unsigned(">=", v, xv)
        else:
            m = builder.fcmp_ordered(">=", v, xv)  # false for NaN
        return builder.bitcast(m, ir.IntType(64))

    return codegen


def _check_ge64(arr: Any, dtype: Any) -> None:
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"):
        raise TypingError("ge64 needs a 1-D C-contiguous array")
    if arr.dtype != dtype:
        raise TypingError(f"ge64 needs {dtype} values, got {arr.dtype}")


@intrinsic
def _ge64_f32(typingctx: Any, arr: Any, i: Any, x: Any) -> Any:
    """Bit ``j`` := ``arr[i + j] >= x`` for ``j < 64`` (float32; NaN is off). The caller
    guarantees ``i + 64 <= len(arr)``."""
    _check_ge64(arr, types.float32)
    return types.uint64(arr, types.intp, types.float32), _ge64_codegen(ir.FloatType(), False)


@intrinsic
def _ge64_u16(typingctx: Any, arr: Any, i: Any, x: Any) -> Any:
    """Bit ``j`` := ``arr[i + j] >= x`` for ``j < 64``, unsigned 16-bit. The caller
    guarantees ``i + 64 <= len(arr)``."""
    _check_ge64(arr, types.uint16)
    return types.uint64(arr, types.intp, types.uint16), _ge64_codegen(ir.IntType(16), True)


# typed as Any: mypy reads an intrinsic's signature as (typingctx, x), numba calls it as f(x)
popcount64: Any = _popcount64
ctz64: Any = _ctz64
ge64_f32: Any = _ge64_f32
ge64_u16: Any = _ge64_u16


def n_words(n_steps: int) -> int:
    """Words needed for ``n_steps`` bits."""
    return (n_steps + 63) >> 6


# ---------------------------------------------------------------------------- float16 ordering


def f16_key_threshold(theta: float) -> int:
    """Sortable 16-bit key ``k`` such that, for every non-NaN float16 ``x``,
    ``x >= theta  <=>  f16_sort_key(bits(x)) >= k``.

    The smallest float16 that is ``>= theta`` is found exactly (rounding up); ``±0`` map to
    the key of ``-0`` because both zeros are ``>= 0``.
    """
    if math.isnan(theta):
        raise ValueError("threshold is NaN")
    f16_max = float(np.finfo(np.float16).max)
    if theta > f16_max:
        f = np.float16(np.inf)  # only +inf is >= theta
    elif theta < -f16_max:
        f = np.float16(-np.inf)  # every number is >= theta
    else:
        f = np.float16(theta)  # nearest; may be below theta
    if float(f) < theta:
        f = np.nextafter(f, np.float16(np.inf))
    if float(f) == 0.0:
        f = np.float16(-0.0)
    bits = int(np.array([f], dtype=np.float16).view(np.uint16)[0])
    return _f16_sort_key_py(bits)


def f32_threshold(theta: float) -> float:
    """The smallest float32 ``f`` with ``f >= theta``: for every float32 ``x``,
    ``x >= theta  <=>  x >= f`` (so comparisons can stay in float32)."""
    if math.isnan(theta):
        raise ValueError("threshold is NaN")
    with np.errstate(over="ignore"):
        f = np.float32(theta)  # nearest (may be below theta, or ±inf past the float32 range)
    if float(f) < theta:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _f16_sort_key_py(b: int) -> int:
    return (~b) & 0xFFFF if b & 0x8000 else b | 0x8000


@nb.njit(inline="always", cache=True)
def f16_sort_key(b: np.uint16) -> np.int64:
    """Monotone map of float16 bit patterns to unsigned order (NaN handled by the caller)."""
    x = np.int64(b)
    if x & 0x8000:
        return (~x) & 0xFFFF
    return x | 0x8000


@nb.njit(inline="always", cache=True)
def f16_is_nan(b: np.uint16) -> bool:
    return bool((np.int64(b) & 0x7FFF) > 0x7C00)


# ---------------------------------------------------------------------------- packing


@nb.njit(cache=True, nogil=True)
def pack_ge_f32(col: npt.NDArray[np.float32], theta: float, out: npt.NDArray[np.uint64]) -> None:
    """``out`` bits := ``col >= theta`` (float32 column; NaN is off). ``out`` has
    ``ceil(len(col) / 64)`` words."""
    n = col.shape[0]
    nw = (n + 63) >> 6
    for w in range(nw):
        base = w << 6
        stop = min(64, n - base)
        word = np.uint64(0)
        for j in range(stop):
            if col[base + j] >= theta:
                word |= np.uint64(1) << np.uint64(j)
        out[w] = word


@nb.njit(cache=True, nogil=True)
def pack_ge_f16bits(col: npt.NDArray[np.uint16], key: int, out: npt.NDArray[np.uint64]) -> None:
    """``out`` bits := float16 values (given as their uint16 bit patterns) ``>= θ``, where
    ``key = f16_key_threshold(θ)``. NaN is off."""
    n = col.shape[0]
    nw = (n + 63) >> 6
    for w in range(nw):
        base = w << 6
        stop = min(64, n - base)
        word = np.uint64(0)
        for j in range(stop):
            b = col[base + j]
            if not f16_is_nan(b) and f16_sort_key(b) >= key:
                word |= np.uint64(1) << np.uint64(j)
        out[w] = word


def pack_ge(col: npt.NDArray[Any], theta: float, out: npt.NDArray[np.uint64] | None = None) -> Any:
    """Pack ``col >= theta`` for a float32 or float16 column; returns the uint64 words."""
    if out is None:
        out = np.empty(n_words(col.shape[0]), dtype=np.uint64)
    if col.dtype == np.float16:
        pack_ge_f16bits(col.view(np.uint16), f16_key_threshold(theta), out)
    elif col.dtype == np.float32:
        pack_ge_f32(col, float(theta), out)
    else:
        pack_ge_f32(np.ascontiguousarray(col, dtype=np.float32), float(theta), out)
    return out


def unpack(words: npt.NDArray[np.uint64], n_steps: int) -> npt.NDArray[np.bool_]:
    """Inverse of packing (for tests and small windows)."""
    as_bytes = words.astype("<u8").view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little")[:n_steps].astype(bool)
