"""Checks of a build's inputs shared by the dataset and the track writers."""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from hiddenscope_core.errors import InvalidData
from hiddenscope_core.models import NAME_PATTERN


def check_name(name: str, what: str) -> None:
    """Raise ``InvalidData`` unless ``name`` is a valid dataset/layer name (``NAME_PATTERN``);
    ``what`` names the thing in the message."""
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise InvalidData(
            f"{what} name {name!r} is not allowed: use 1-64 characters of a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit"
        )


def as_int_array(data: npt.ArrayLike, what: str) -> npt.NDArray[np.int64]:
    """``data`` as int64; raises ``InvalidData`` (naming ``what``) unless it holds integers."""
    arr = np.asarray(data)
    if arr.dtype.kind not in "iu":
        raise InvalidData(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
