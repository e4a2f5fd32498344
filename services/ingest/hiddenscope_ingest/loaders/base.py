"""What every loader returns: an :class:`ArraySource` — a lazily readable array with a declared
shape and dtype, read in row ranges (``read(start, stop)``), never all at once."""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hiddenscope_ingest.errors import InvalidData, TooLarge, UnsafeContent


@dataclass(frozen=True)
class Limits:
    """Safety caps applied by the loaders (see ``IngestSettings``)."""

    max_array_bytes: int = 2**40
    max_header_bytes: int = 10_000
    max_safetensors_header_bytes: int = 16 * 2**20
    max_archive_bytes: int = 64 * 2**30
    max_archive_members: int = 10_000
    max_compression_ratio: float = 200.0
    max_vocab_size: int = 50_000_000


class ArraySource(Protocol):
    """A lazily readable array. ``shape[0]`` is the row (step) axis."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        """Rows ``[start, stop)`` as an in-memory array of ``dtype``."""
        ...

    def close(self) -> None: ...


def check_numeric(name: str, dtype: np.dtype[np.generic]) -> None:
    """Refuse object (pickled), structured, string and other non-numeric dtypes."""
    if dtype.hasobject:
        raise UnsafeContent(f"{name}: object arrays (pickled content) are never loaded")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidData(f"{name}: dtype {dtype} is not a numeric (int/float/bool) array")


def declared_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    return math.prod(shape) * itemsize


def check_declared_size(name: str, shape: tuple[int, ...], itemsize: int, limits: Limits) -> None:
    if any(n < 0 for n in shape):
        raise InvalidData(f"{name}: negative dimension in shape {shape}")
    size = declared_bytes(shape, itemsize)
    if size > limits.max_array_bytes:
        raise TooLarge(
            f"{name}: declared size {size} bytes exceeds the limit of {limits.max_array_bytes}"
        )


class NumpySource:
    """An in-memory or memory-mapped numpy array."""

    def __init__(self, name: str, array: npt.NDArray[np.generic]) -> None:
        self.name = name
        self.array = array
        self.shape: tuple[int, ...] = tuple(int(x) for x in array.shape)
        self.dtype: np.dtype[np.generic] = array.dtype

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        out = np.array(self.array[start:stop])
        release_rows(self.array, start, stop)
        return out

    def close(self) -> None:
        pass


def release_rows(array: npt.NDArray[Any], start: int, stop: int) -> None:
    """Drop the pages of rows ``[start, stop)`` of a memory-mapped array from this process's
    resident set once they were copied out (``MADV_DONTNEED``; the kernel's page cache keeps
    them). Streaming a file of any size through a memory map then keeps the worker's RSS
    bounded by its buffers instead of growing to the size of the file. A no-op otherwise."""
    mm = getattr(array, "_mmap", None)
    if mm is None or stop <= start or not hasattr(mm, "madvise"):
        return
    row = int(array.strides[0]) if array.ndim else 0
    if row <= 0 or not array.flags.c_contiguous:
        return
    base = int(getattr(array, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
    lo = base + start * row
    hi = min(len(mm), base + stop * row)
    lo -= lo % mmap.PAGESIZE
    if hi > lo:
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


class RaggedSource:
    """Rows of a padded ``(N, L, ...)`` array flattened to ``(sum(lengths), ...)``: sequence
    ``i`` contributes rows ``inner[i, :lengths[i]]``."""

    def __init__(self, inner: ArraySource, lengths: npt.NDArray[np.int64]) -> None:
        if len(inner.shape) < 2:
            raise InvalidData(f"{inner.name}: a ragged array needs (N, L, ...), got {inner.shape}")
        n, width = inner.shape[0], inner.shape[1]
        if len(lengths) != n:
            raise InvalidData(
                f"{inner.name}: {n} sequences in the array but {len(lengths)} lengths"
            )
        if np.any(lengths < 1) or np.any(lengths > width):
            raise InvalidData(f"{inner.name}: lengths must be within [1, {width}]")
        self.name = inner.name
        self.inner = inner
        self.lengths = lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *inner.shape[2:])
        self.dtype = inner.dtype

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        off = self.offsets
        i0 = max(0, int(np.searchsorted(off, start, side="right")) - 1)
        i1 = min(len(self.lengths), int(np.searchsorted(off, stop, side="left")))
        if stop <= start or i1 <= i0:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        block = self.inner.read(i0, i1)
        parts = []
        for k, i in enumerate(range(i0, i1)):
            lo = max(start, int(off[i])) - int(off[i])
            hi = min(stop, int(off[i + 1])) - int(off[i])
            if hi > lo:
                parts.append(block[k, lo:hi])
        if not parts:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return np.concatenate(parts, axis=0)

    def close(self) -> None:
        self.inner.close()


def iter_chunks(
    source: ArraySource, rows_per_chunk: int, begin: int = 0, end: int | None = None
) -> Iterator[tuple[int, npt.NDArray[np.generic]]]:
    """``(start, rows)`` chunks of rows ``[begin, end)`` (default: all) in order; checks each
    chunk has the declared row count."""
    total = source.shape[0] if end is None else min(end, source.shape[0])
    for start in range(begin, total, max(1, rows_per_chunk)):
        stop = min(total, start + rows_per_chunk)
        chunk = source.read(start, stop)
        if chunk.shape[0] != stop - start:
            raise InvalidData(
                f"{source.name}: the file holds fewer rows than its header declares "
                f"(got {chunk.shape[0]} rows at step {start}, expected {stop - start})"
            )
        yield start, chunk


def rows_per_chunk(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> int:
    row = max(1, math.prod(shape[1:]) * max(itemsize, 4))
    return max(1, chunk_bytes // row)
