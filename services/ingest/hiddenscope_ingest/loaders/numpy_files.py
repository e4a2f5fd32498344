"""``.npy`` (memory-mapped, never ``allow_pickle``) and ``.npz`` (one member at a time, sizes
checked from the zip directory and the member's npy header before anything is inflated)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from hiddenscope_ingest.errors import InvalidData, TooLarge, UnsafeContent
from hiddenscope_ingest.loaders.base import (
    Limits,
    NumpySource,
    check_declared_size,
    check_numeric,
    declared_bytes,
)


def _read_npy_header(
    f: IO[bytes], name: str, limits: Limits
) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                f, max_header_size=limits.max_header_bytes
            )
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                f, max_header_size=limits.max_header_bytes
            )
        else:
            raise InvalidData(f"{name}: unsupported .npy format version {version}")
    except (ValueError, EOFError) as exc:
        msg = str(exc)
        if "pickle" in msg.lower() or "object" in msg.lower():
            raise UnsafeContent(f"{name}: pickled content is never loaded") from None
        raise InvalidData(f"{name}: not a valid .npy array ({msg})") from None
    shape = tuple(int(x) for x in shape)
    check_numeric(name, dtype)
    return shape, bool(fortran), dtype


def open_npy(path: Path, name: str, limits: Limits) -> NumpySource:
    """Memory-map a ``.npy`` file after checking its header against the file size.

    Raises :class:`UnsafeContent` for object arrays, :class:`InvalidData` for truncated or
    malformed files, :class:`TooLarge` beyond ``limits.max_array_bytes``."""
    with open(path, "rb") as f:
        shape, _fortran, dtype = _read_npy_header(f, name, limits)
        offset = f.tell()
    check_declared_size(name, shape, dtype.itemsize, limits)
    expected = offset + declared_bytes(shape, dtype.itemsize)
    actual = os.path.getsize(path)
    if actual != expected:
        raise InvalidData(
            f"{name}: the header declares {shape} {dtype} ({expected} bytes with the header) "
            f"but the file has {actual} bytes"
        )
    if 0 in shape:
        raise InvalidData(f"{name}: the array is empty (shape {shape})")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise UnsafeContent(f"{name}: refused ({exc})") from None
    return NumpySource(name, array)


class NpzMemberSource:
    """One ``.npz`` member read row range by row range from the (possibly deflated) stream."""

    def __init__(self, path: Path, member: str, name: str, limits: Limits) -> None:
        self.name = name
        self.zf = zipfile.ZipFile(path)
        try:
            infos = self.zf.infolist()
            if len(infos) > limits.max_archive_members:
                raise TooLarge(f"{name}: {len(infos)} members in the .npz archive")
            wanted = member if member.endswith(".npy") else member + ".npy"
            info = next((i for i in infos if i.filename == wanted), None)
            if info is None:
                known = ", ".join(i.filename.removesuffix(".npy") for i in infos[:20])
                raise InvalidData(f"{name}: no member {member!r} in the .npz (has: {known})")
            if info.flag_bits & 0x1:
                raise InvalidData(f"{name}: encrypted members are not supported")
            if info.file_size > limits.max_array_bytes:
                raise TooLarge(f"{name}: member of {info.file_size} bytes exceeds the limit")
            if (
                info.compress_type != zipfile.ZIP_STORED
                and info.file_size > 2**20
                and info.file_size > limits.max_compression_ratio * max(1, info.compress_size)
            ):
                raise TooLarge(
                    f"{name}: member compressed {info.compress_size} → {info.file_size} bytes; "
                    f"ratio above {limits.max_compression_ratio} (decompression bomb?)"
                )
            self.info = info
            self.stream = self.zf.open(info)
            shape, fortran, dtype = _read_npy_header(self.stream, name, limits)
            self.offset = self.stream.tell()
            check_declared_size(name, shape, dtype.itemsize, limits)
            if self.offset + declared_bytes(shape, dtype.itemsize) != info.file_size:
                raise InvalidData(
                    f"{name}: the member header declares {shape} {dtype} but the member has "
                    f"{info.file_size} bytes"
                )
            if fortran and len(shape) > 1:
                raise InvalidData(
                    f"{name}: Fortran-ordered arrays in .npz cannot be streamed; save them in "
                    "C order (np.ascontiguousarray) or as .npy"
                )
            if 0 in shape:
                raise InvalidData(f"{name}: the array is empty (shape {shape})")
        except BaseException:
            self.zf.close()
            raise
        self.shape: tuple[int, ...] = shape
        self.dtype: np.dtype[np.generic] = dtype
        self.row_bytes = declared_bytes(shape[1:], dtype.itemsize)

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        stop = min(stop, self.shape[0])
        self.stream.seek(self.offset + start * self.row_bytes)
        n = max(0, stop - start) * self.row_bytes
        buf = self.stream.read(n)
        if len(buf) != n:
            raise InvalidData(f"{self.name}: the member is shorter than its header declares")
        return np.frombuffer(buf, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def close(self) -> None:
        self.stream.close()
        self.zf.close()


def open_npz(path: Path, member: str | None, name: str, limits: Limits) -> NpzMemberSource:
    if member is None:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist()]
        if len(names) != 1:
            raise InvalidData(f"{name}: the .npz has {len(names)} members; name one as 'key'")
        member = names[0]
    try:
        return NpzMemberSource(path, member, name, limits)
    except zipfile.BadZipFile as exc:
        raise InvalidData(f"{name}: not a valid .npz (zip) file: {exc}") from None
