"""Writing large files around the page cache (``O_DIRECT``).

A dataset build writes several times the size of its raw states. Through the page cache each
written GB costs this machine class 0.3-1.7 CPU-seconds of kernel time (copying into the cache,
and first-touching guest memory the host backs lazily), against about 0.03-0.1 with ``O_DIRECT``
(measured: ``docs/benchmarks.md``, "Core index build"). Files the build does not read back are
therefore written with ``O_DIRECT``: the aligned middle of each write goes straight to the disk,
the unaligned head and tail (less than the alignment each) through the page cache, which is
safe because the two never share a page. Where ``O_DIRECT`` is not supported (tmpfs, some
network file systems) every write goes through the page cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

ALIGN = 4096
"""Alignment of the buffers that ``aligned_empty`` allocates, and of offsets, lengths and memory
for ``O_DIRECT`` where the file system does not say (a page: safe for any logical block size up
to 4096)."""

_STATX_DIOALIGN = 0x2000
_AT_FDCWD = -100


def dio_alignment(path: str) -> int | None:
    """The alignment ``O_DIRECT`` needs on ``path``'s file system (of offsets, lengths and
    memory: the larger of the two ``statx`` reports), ``ALIGN`` when the kernel does not say
    (before Linux 6.1), ``None`` when the file system does not support ``O_DIRECT``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        statx = libc.statx
    except (OSError, AttributeError, TypeError):
        return ALIGN
    buf = ctypes.create_string_buffer(256)
    if statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_DIOALIGN, buf) != 0:
        return ALIGN
    raw = buf.raw
    mask = int.from_bytes(raw[0:4], "little")
    if not mask & _STATX_DIOALIGN:
        return ALIGN
    mem = int.from_bytes(raw[152:156], "little")
    off = int.from_bytes(raw[156:160], "little")
    if mem == 0 or off == 0:
        return None
    return max(mem, off)


_BOUNCE_BYTES = 4 << 20


def aligned_empty(shape: int | tuple[int, ...], dtype: Any, align: int = ALIGN) -> npt.NDArray[Any]:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    out: npt.NDArray[Any] = raw[off : off + n].view(dt).reshape(shape)
    return out


class BufferPool:
    """Large aligned scratch buffers kept for the next build in the same process.

    Memory a process touches for the first time costs this machine class about ten times more
    than memory it reuses (measured: 1.3 s against 0.13 s per GB; the host backs guest memory
    lazily), and a build's block buffers are a few hundred MB. An ingest worker builds layer
    after layer, so the buffers of a finished layer wait here for the next one instead of
    going back to the operating system. ``take`` is ``aligned_empty`` (uninitialised);
    ``give`` returns an array ``take`` made once nothing reads or writes it any more (no
    other thread, no pending I/O). Arrays not made by ``take`` are ignored. At most
    ``limit`` bytes are kept; thread-safe.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: dict[int, list[npt.NDArray[np.uint8]]] = {}
        self._out: dict[int, npt.NDArray[np.uint8]] = {}  # id(view) -> its raw buffer
        self._kept = 0
        self._lock = threading.Lock()

    def take(self, shape: int | tuple[int, ...], dtype: Any) -> npt.NDArray[Any]:
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) * dt.itemsize
        size = n + ALIGN
        with self._lock:
            free = self._free.get(size)
            raw = free.pop() if free else None
            if raw is not None:
                self._kept -= size
        if raw is None:
            raw = np.empty(size, np.uint8)
        off = (-raw.ctypes.data) % ALIGN
        out: npt.NDArray[Any] = raw[off : off + n].view(dt).reshape(shape)
        with self._lock:
            self._out[id(out)] = raw
        weakref.finalize(out, self._forget, id(out), raw)  # dropped without ``give``
        return out

    def _forget(self, key: int, raw: npt.NDArray[np.uint8]) -> None:
        with self._lock:
            if self._out.get(key) is raw:
                del self._out[key]

    def give(self, arr: npt.NDArray[Any] | None) -> None:
        if arr is None:
            return
        with self._lock:
            raw = self._out.pop(id(arr), None)
            if raw is None or self._kept + raw.size > self.limit:
                return
            self._free.setdefault(raw.size, []).append(raw)
            self._kept += raw.size

    @property
    def kept_bytes(self) -> int:
        return self._kept

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._kept = 0


POOL = BufferPool(512 << 20)
"""The process's pool of block buffers (``LayerWriter``, the fused index, ``build.intervals``,
``parquet.states``)."""


class DirectFile:
    """A file written with ``pwrite`` at any offsets, its aligned parts with ``O_DIRECT``.

    ``size``, if given, is the file's length (set with ``ftruncate`` when it differs). Data
    read back through another descriptor sees every completed write. ``direct=False`` writes
    everything through the page cache (for comparisons).
    """

    def __init__(
        self, path: str | os.PathLike[str], size: int | None = None, direct: bool = True
    ) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.dfd: int | None = None
        self.align = ALIGN
        try:
            if size is not None and os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)
            flag = getattr(os, "O_DIRECT", 0) if direct else 0
            align = dio_alignment(self.path) if flag else None
            if align is not None and ALIGN % align == 0:
                with contextlib.suppress(OSError):
                    self.dfd = os.open(self.path, os.O_WRONLY | flag)
                    self.align = align
        except BaseException:
            os.close(self.fd)
            raise
        self._bounce: npt.NDArray[np.uint8] | None = None
        self.direct_bytes = 0  # written with O_DIRECT (for the benchmarks)
        self.closed = False

    @property
    def direct(self) -> bool:
        """Whether ``O_DIRECT`` is in use."""
        return self.dfd is not None

    def _write_all(self, fd: int, buf: Any, offset: int) -> None:
        mv = memoryview(buf).cast("B")
        done = 0
        while done < len(mv):
            n = os.pwrite(fd, mv[done:], offset + done)
            if n <= 0:  # pragma: no cover - a full disk raises instead
                raise OSError(f"short write to {self.path}")
            done += n

    def pwrite(self, data: npt.NDArray[Any], offset: int) -> None:
        """Write the bytes of the C-contiguous array ``data`` at byte ``offset``."""
        b = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        n = b.size
        if n == 0:
            return
        a = self.align
        if self.dfd is None or n < 2 * a:
            self._write_all(self.fd, b, offset)
            return
        head = (-offset) % a
        tail = (offset + n) % a
        if head:
            self._write_all(self.fd, b[:head], offset)
        mid = b[head : n - tail]
        pos = offset + head
        if mid.ctypes.data % a == 0:
            self._write_all(self.dfd, mid, pos)
        else:  # copied through an aligned buffer, piece by piece
            if self._bounce is None:
                self._bounce = aligned_empty(_BOUNCE_BYTES, np.uint8)
            bounce = self._bounce
            for i in range(0, mid.size, _BOUNCE_BYTES):
                piece = mid[i : i + _BOUNCE_BYTES]
                bounce[: piece.size] = piece
                self._write_all(self.dfd, bounce[: piece.size], pos + i)
        self.direct_bytes += mid.size
        if tail:
            self._write_all(self.fd, b[n - tail :], offset + n - tail)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.dfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.dfd)
        os.close(self.fd)

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
