"""Reading plotly figures back in tests (AppTest's chart specs, or a browser's ``gd.data``)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def array(value: Any) -> np.ndarray[Any, Any]:
    """A figure's array as floats (plotly writes numpy arrays as ``{dtype, bdata, shape}``;
    ``None`` becomes NaN)."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if value.get("shape"):
            out = out.reshape([int(x) for x in str(value["shape"]).split(",")])
        return out.astype(float)
    if isinstance(value, list) and value and isinstance(value[0], dict | list):
        return np.stack([array(v) for v in value])
    return np.asarray([np.nan if v is None else v for v in value], dtype=float)
