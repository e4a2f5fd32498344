"""The value transform of a layer: the one numeric definition of ``v[t, c]``.

``v`` is always what select, match, windows and statistics see. ``tanh`` is computed in float32
by numpy: ``v = np.tanh(raw.astype(np.float32))``. For float16 input the same function is read
from a 65536-entry table indexed by the float16 bit pattern (``_TANH_F16[b] ==
np.tanh(np.float32(float16 with bits b))``), which is exact and about 3x faster than converting
first. numpy's float32 ``tanh`` is elementwise and its SIMD and scalar paths agree, so the result
does not depend on how an array is chunked, sliced or strided (``tests/core/test_storage.py``
checks this).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt

from hiddenscope_core.models import StorageDType, Transform


def _tanh_f16_table() -> npt.NDArray[np.float32]:
    f16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    table: npt.NDArray[np.float32] = np.tanh(f16.astype(np.float32))
    table.flags.writeable = False
    return table


_TANH_F16 = _tanh_f16_table()
"""float16 bit pattern -> ``np.tanh`` of its float32 value (read-only)."""


@nb.njit(cache=True, nogil=True)
def _gather(keys: Any, table: Any, out: Any) -> None:
    for i in range(keys.shape[0]):
        out[i] = table[keys[i]]


def tanh_f16_table() -> npt.NDArray[np.float32]:
    """The (read-only) float16 ``tanh`` table: bit pattern -> float32."""
    return _TANH_F16


def transform_values(raw: npt.ArrayLike, transform: Transform) -> npt.NDArray[np.floating]:
    """Apply a layer's transform to raw values (any shape).

    ``tanh``: float32, ``np.tanh(raw.astype(np.float32))`` (float16 input through the exact
    lookup table). ``none``: the values unchanged in their float dtype (float16 stays float16,
    anything else becomes float32).
    """
    arr = np.asarray(raw)
    if transform == "tanh":
        if arr.dtype == np.float16:
            keys = np.ascontiguousarray(arr).view(np.uint16).reshape(-1)
            out = np.empty(keys.shape[0], np.float32)
            _gather(keys, _TANH_F16, out)
            return out.reshape(arr.shape)
        res: npt.NDArray[np.float32] = np.tanh(arr.astype(np.float32, copy=False))
        return res
    if transform == "none":
        if arr.dtype == np.float16 or arr.dtype == np.float32:
            return arr
        return arr.astype(np.float32)
    raise ValueError(f"unknown transform {transform!r}; use 'none' or 'tanh'")


def values_dtype(dtype: StorageDType, transform: Transform) -> np.dtype[np.floating]:
    """dtype of the stored transformed values (``values.bin``) of a layer."""
    if dtype == "float16" and transform == "none":
        return np.dtype(np.float16)
    return np.dtype(np.float32)
