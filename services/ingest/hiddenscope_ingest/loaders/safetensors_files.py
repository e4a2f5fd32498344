"""safetensors: the header (8-byte little-endian length + JSON) is parsed and checked here
(length cap, offsets inside the file, ``prod(shape) * itemsize`` = byte span) before
``safe_open(framework="numpy")`` slices the tensor lazily. bfloat16 is widened to float32."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import safe_open

from hiddenscope_ingest.errors import InvalidData
from hiddenscope_ingest.loaders.base import (
    Limits,
    check_declared_size,
    declared_bytes,
    release_rows,
)

_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def read_header(path: Path, name: str, limits: Limits) -> tuple[int, dict[str, Any]]:
    """``(data_start, header)``; raises :class:`InvalidData` for any inconsistency."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InvalidData(f"{name}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > limits.max_safetensors_header_bytes or 8 + n > size:
            raise InvalidData(
                f"{name}: safetensors header of {n} bytes is larger than the file or the "
                f"limit ({limits.max_safetensors_header_bytes})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidData(f"{name}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidData(f"{name}: the safetensors header is not a JSON object")
    data_start = 8 + n
    end_max = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise InvalidData(f"{name}: bad header entry for {key!r}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES:
            raise InvalidData(f"{name}: tensor {key!r} has unsupported dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or not all(isinstance(x, int) and x >= 0 for x in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(x, int) for x in offsets)
        ):
            raise InvalidData(f"{name}: tensor {key!r} has a malformed shape or data_offsets")
        b, e = offsets
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        if not 0 <= b <= e or e - b != declared_bytes(tuple(shape), itemsize):
            raise InvalidData(
                f"{name}: tensor {key!r} declares {shape} {dtype} but spans {e - b} bytes"
            )
        end_max = max(end_max, e)
    if data_start + end_max != size:
        raise InvalidData(
            f"{name}: the header describes {data_start + end_max} bytes but the file has {size}"
        )
    return data_start, header


class SafetensorsSource:
    def __init__(self, path: Path, key: str | None, name: str, limits: Limits) -> None:
        self.name = name
        data_start, header = read_header(path, name, limits)
        tensors = [k for k in header if k != "__metadata__"]
        if key is None:
            if len(tensors) != 1:
                raise InvalidData(
                    f"{name}: the file holds {len(tensors)} tensors; name one as 'key'"
                )
            key = tensors[0]
        if key not in header or key == "__metadata__":
            known = ", ".join(tensors[:20])
            raise InvalidData(f"{name}: no tensor {key!r} (has: {known})")
        entry = header[key]
        self.shape: tuple[int, ...] = tuple(int(x) for x in entry["shape"])
        if not self.shape or 0 in self.shape:
            raise InvalidData(f"{name}: tensor {key!r} is empty or a scalar ({self.shape})")
        self.key = key
        self.bf16 = entry["dtype"] == "BF16"
        self.dtype: np.dtype[np.generic] = (
            np.dtype(np.float32) if self.bf16 else np.dtype(_DTYPES[entry["dtype"]])
        )
        check_declared_size(name, self.shape, self.dtype.itemsize, limits)
        if self.bf16:
            # numpy has no bfloat16: map the raw 16-bit words (offsets were checked above)
            start = data_start + int(entry["data_offsets"][0])
            self.raw = np.memmap(path, dtype="<u2", mode="r", offset=start, shape=self.shape)
            self.handle = None
        else:
            self.handle = safe_open(str(path), framework="numpy")
            self.slice = self.handle.get_slice(key)  # type: ignore[no-untyped-call]  # untyped stub

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        if self.bf16:
            words = np.asarray(self.raw[start:stop]).astype(np.uint32) << 16
            release_rows(self.raw, start, stop)
            return words.view(np.float32)
        return np.asarray(self.slice[start:stop])

    def close(self) -> None:
        self.handle = None
        self.slice = None


def open_safetensors(path: Path, key: str | None, name: str, limits: Limits) -> SafetensorsSource:
    return SafetensorsSource(path, key, name, limits)
