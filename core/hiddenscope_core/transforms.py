"""The value transform of a layer: the one numeric definition of ``v[t, c]``.

``v`` is always what select, match, windows and statistics see. ``tanh`` is evaluated in float64
and rounded to float32 so that the result does not depend on how an array is chunked.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hiddenscope_core.models import StorageDType, Transform


def transform_values(raw: npt.ArrayLike, transform: Transform) -> npt.NDArray[np.floating]:
    """Apply a layer's transform to raw values (any shape).

    Returns float32 for ``tanh``; for ``none`` the values are returned unchanged in their float
    dtype (float16 stays float16, anything else becomes float32).
    """
    arr = np.asarray(raw)
    if transform == "tanh":
        return np.tanh(arr.astype(np.float64)).astype(np.float32)
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
