"""A Parquet writer for a layer's hidden-state rows whose data pages bypass the page cache.

The states table is one REQUIRED column ``v`` of ``FixedSizeBinary(row_bytes)`` (the raw
little-endian values of one step), uncompressed, without dictionary or statistics, in row groups
of ``row_group_rows`` steps. pyarrow's writer copies every byte into the page cache, which on
this VM costs 0.3-1.7 CPU-seconds of kernel time per written GB; this writer puts the pages on
the disk with ``O_DIRECT`` (``direct_io``), straight from the caller's memory when it is
aligned, at ~0.05 CPU-seconds a GB. The files read back in pyarrow and DuckDB exactly like
pyarrow's (``tests/core/test_parquet_states.py``).

Format (``parquet-format``: ``parquet.thrift``, ``Encodings.md``):

* Physical type FIXED_LEN_BYTE_ARRAY, ``type_length = row_bytes``, REQUIRED, no logical type;
  readers map it to ``fixed_size_binary[row_bytes] not null`` (arrow) and ``BLOB`` (DuckDB).
  PLAIN encoding of FLBA is the values back to back and a required column has no levels, so
  a row group is one data page (v1, uncompressed) whose body is the caller's rows, byte for
  byte. Row groups hold exactly ``row_group_rows`` rows except the last, however ``write`` is
  called, as pyarrow's ``write_table(t, row_group_size)`` cuts them for a single table.
* The footer is arrow's minus ``ARROW:schema`` (readers derive the same arrow schema from the
  Parquet one): FileMetaData version 2, ``column_orders`` (TYPE_ORDER), ``encoding_stats``,
  encodings ``[RLE, PLAIN]``, the caller's ``key_value_metadata`` in the given order.
* Aligned layout (when a full row group is a multiple of ``ALIGN`` bytes and at least
  ``MIN_ALIGNED_BYTES``; for ``row_group_rows = 1024`` whenever ``row_bytes`` is a multiple of 4
  and at least 64): the data of every row group starts at a multiple of ``ALIGN`` (4096); its
  page header (~20 bytes) sits right before it, at the end of a block of zeros (the first block
  also holds the ``PAR1`` magic). A column chunk (``data_page_offset``, the size in the footer)
  is header plus data; readers seek to it, so the zeros between chunks are never read (pyarrow
  and DuckDB, tested). A full row group is then one ``ALIGN`` block of header and whole data
  blocks, all written with ``O_DIRECT``; from memory that is aligned (``direct_io.
  aligned_empty``) without a copy, all of one ``write`` call in one ``pwritev``. Cost: ``ALIGN``
  bytes a row group (1.6% for 256-byte rows in groups of 1024).
* Compact layout (any other size): headers and data back to back. Everything is copied through
  an aligned staging buffer and the whole blocks are written with ``O_DIRECT``.
* The last partial block and the footer are written through the page cache at ``close``
  (they never share a block with an ``O_DIRECT`` write). Where ``O_DIRECT`` is unavailable
  (some file systems; tmpfs before Linux 6.6) or a direct write fails with EINVAL, the rest
  goes through the page cache (the data without staging copies); the file is the same byte
  for byte.

Measured (2-vCPU VM, ext4 on virtio; 2 GB of float32 rows with D = 64 in 65536-row aligned
batches, part files of 2**20 steps, median of 3; ``PYTHONPATH=. uv run --frozen --all-extras
python -m bench.states_parquet_bench --gb 2``): 0.03 user + 0.01 system CPU-seconds a GB
against pyarrow's 0.22 + 0.24 (which leaves the page cache's writeback to kernel threads on
top), at the same wall time (~0.5 s a GB: the disk's speed, waited for in ``write``). The
footer takes ~2 ms for 1024 row groups.

Memory: a 4 MB staging buffer and, once ``write`` is given a number of rows that does not end
a row group, a carry of one row group.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from hiddenscope_core.direct_io import ALIGN, POOL, DirectFile, aligned_empty
from hiddenscope_core.parquet.thrift import (
    CREATED_BY,
    DATA_PAGE,
    FIXED_LEN_BYTE_ARRAY,
    MAGIC,
    PLAIN,
    REQUIRED,
    RLE,
    UNCOMPRESSED,
    CompactWriter,
)

COLUMN = "v"
MIN_ALIGNED_BYTES = 16 * ALIGN
"""Smallest full row group (bytes) written in the aligned layout (the padding block then costs
at most 1/16 of the data)."""
MAX_PAGE_BYTES = (1 << 31) - 1 - 4096
"""A page's size is a thrift i32: the largest row group (``row_group_rows * row_bytes``)."""

STAGE_BYTES = 4 << 20
"""Bytes of the aligned staging buffer (headers, padding, unaligned rows)."""
_IOV_MAX = 1024
with contextlib.suppress(AttributeError, ValueError, OSError):
    _IOV_MAX = max(16, min(_IOV_MAX, os.sysconf("SC_IOV_MAX")))
IOV_LIMIT = _IOV_MAX - 2
"""Buffers queued before a ``pwritev`` (below the system's ``IOV_MAX``)."""


def _page_header(rows: int, size: int) -> bytes:
    """PageHeader{type DATA_PAGE, sizes, DataPageHeader{num_values, PLAIN, RLE, RLE}}."""
    t = CompactWriter()
    t.integer(1, DATA_PAGE)
    t.integer(2, size)  # uncompressed_page_size
    t.integer(3, size)  # compressed_page_size
    t.begin(5)  # data_page_header
    t.integer(1, rows)  # num_values
    t.integer(2, PLAIN)  # encoding
    t.integer(3, RLE)  # definition_level_encoding
    t.integer(4, RLE)  # repetition_level_encoding
    t.end()
    t.end()
    return bytes(t.buf)


def _zigzag_varint(v: int) -> bytes:
    """An i64 as the compact protocol writes it (zigzag varint)."""
    u = (v << 1) ^ (v >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _row_group_template(column: str, rows: int, size: int) -> tuple[bytes, bytes, bytes]:
    """A RowGroup struct (a list element) of one column chunk of ``rows`` rows and ``size``
    bytes, cut around its two offsets (``ColumnMetaData.data_page_offset`` and
    ``RowGroup.file_offset``): the struct is ``a + varint(off) + b + varint(off) + c``."""
    t = CompactWriter()
    t.begin()  # RowGroup
    t.list(1, t.STRUCT, 1)  # columns
    t.begin()  # ColumnChunk
    t.integer(2, 0, t.I64)  # file_offset (deprecated; arrow writes 0)
    t.begin(3)  # ColumnMetaData
    t.integer(1, FIXED_LEN_BYTE_ARRAY)
    t.list(2, t.I32, 2)  # encodings, as arrow lists them
    t.element(RLE)
    t.element(PLAIN)
    t.list(3, t.BINARY, 1)  # path_in_schema
    t.binary(None, column)
    t.integer(4, UNCOMPRESSED)
    t.integer(5, rows, t.I64)  # num_values
    t.integer(6, size, t.I64)  # total_uncompressed_size
    t.integer(7, size, t.I64)  # total_compressed_size
    t.integer(9, 0, t.I64)  # data_page_offset: its value (one byte, 0) is cut out
    i = len(t.buf) - 1
    t.list(13, t.STRUCT, 1)  # encoding_stats
    t.begin()
    t.integer(1, DATA_PAGE)
    t.integer(2, PLAIN)
    t.integer(3, 1)  # count
    t.end()
    t.end()  # ColumnMetaData
    t.end()  # ColumnChunk
    t.integer(2, size, t.I64)  # total_byte_size
    t.integer(3, rows, t.I64)  # num_rows
    t.integer(5, 0, t.I64)  # file_offset: cut out too
    j = len(t.buf) - 1
    t.integer(6, size, t.I64)  # total_compressed_size
    t.end()
    buf = bytes(t.buf)
    return buf[:i], buf[i + 1 : j], buf[j + 1 :]


class StatesParquetWriter:
    """Streams rows of ``row_bytes`` bytes to one Parquet file (format: the module docstring).

    ``write(rows)`` appends rows, in batches of any size (0 included); ``close()`` writes the
    last row group and the footer; a file without rows is a valid Parquet file with the schema,
    the metadata and no row groups. ``abort()`` closes without a footer and removes the file.
    As a context manager: ``close()`` on a clean exit, ``abort()`` after an exception.

    ``metadata`` is the schema's key/value metadata (arrow's ``schema.metadata``).
    ``min_aligned_bytes`` (default ``MIN_ALIGNED_BYTES``), ``stage_bytes`` (the staging
    buffer, a multiple of ``ALIGN``; default ``STAGE_BYTES``) and ``iov_limit`` (buffers per
    ``pwritev``; default ``IOV_LIMIT``) exist for tests. ``bytes_written``
    is the file's size so far (its final size after ``close``), ``direct_bytes`` the part
    written with ``O_DIRECT``, ``num_rows`` the rows received.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        row_bytes: int,
        row_group_rows: int,
        metadata: Mapping[bytes, bytes] | None = None,
        *,
        column: str = COLUMN,
        created_by: str = CREATED_BY,
        min_aligned_bytes: int = MIN_ALIGNED_BYTES,
        stage_bytes: int = STAGE_BYTES,
        iov_limit: int = IOV_LIMIT,
    ) -> None:
        row_bytes, row_group_rows = int(row_bytes), int(row_group_rows)
        if row_bytes < 1 or row_group_rows < 1:
            raise ValueError("row_bytes and row_group_rows must be >= 1")
        if row_bytes * row_group_rows > MAX_PAGE_BYTES:
            raise ValueError(
                f"a row group of {row_group_rows} rows of {row_bytes} bytes exceeds the "
                f"largest Parquet page ({MAX_PAGE_BYTES} bytes); use smaller row groups"
            )
        self.path = Path(path)
        self.row_bytes = row_bytes
        self.row_group_rows = row_group_rows
        self.metadata = [(bytes(k), bytes(v)) for k, v in (metadata or {}).items()]
        self.column = column
        self.created_by = created_by
        chunk = row_bytes * row_group_rows
        self.aligned_layout = chunk % ALIGN == 0 and chunk >= max(min_aligned_bytes, ALIGN)
        self._full_header = _page_header(row_group_rows, chunk)
        self._carry: npt.NDArray[np.uint8] | None = None  # allocated on first use
        self._carry_n = 0  # rows in the carry
        self._chunks: list[tuple[int, int, int]] = []  # per row group: offset, rows, size
        self.num_rows = 0
        self.direct_bytes = 0
        self.closed = False
        self._failed = False  # a write raised: close() refuses to write a footer
        self._file = DirectFile(self.path, size=0)
        self._direct = self._file.direct
        # The staging buffer mirrors the file from file offset _seg_file at stage[_s0] to the
        # write position at stage[_s1]; the queue holds buffers (stage slices, caller memory)
        # for the file range [_q_off, _seg_file), to be written with one pwritev. With O_DIRECT
        # _s0 and _seg_file are multiples of ALIGN and only whole blocks get queued.
        self._stage = POOL.take(stage_bytes, np.uint8)
        self._iov_limit = iov_limit
        self._s0 = 0
        self._s1 = 0
        self._seg_file = 0
        self._queue: list[memoryview] = []  # of 1-d uint8 arrays
        self._q_off = 0
        self._copy(np.frombuffer(MAGIC, np.uint8))

    # ------------------------------------------------------------------------------- API

    @property
    def direct(self) -> bool:
        """Whether pages are written with ``O_DIRECT``."""
        return self._direct

    @property
    def bytes_written(self) -> int:
        """Bytes of the file so far (its size once closed)."""
        return self._seg_file + self._s1 - self._s0

    def __enter__(self) -> StatesParquetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, rows: npt.ArrayLike) -> None:
        """Append rows: a 2-d array ``(n, row_bytes)`` of uint8, or ``(n, D)`` of any plain
        dtype with ``D * itemsize == row_bytes`` (written as its bytes; big-endian values are
        converted to little-endian). Row groups start at every multiple of ``row_group_rows``
        rows whatever the batches; the fast path is a batch of whole row groups whose data is
        ``ALIGN``-aligned in memory (``direct_io.aligned_empty``), written without a copy.

        Raises:
            ValueError: the writer is closed, or a wrong shape. TypeError: an object dtype.
        """
        if self.closed:
            raise ValueError("the writer is closed")
        if self._failed:
            raise ValueError("an earlier write failed; abort() the writer")
        flat = self._as_bytes(rows)
        try:
            self._write(flat)
        except BaseException:
            self._failed = True  # the file and the writer's state may disagree
            raise

    def _write(self, flat: npt.NDArray[np.uint8]) -> None:
        rb, R = self.row_bytes, self.row_group_rows
        n = flat.size // rb
        if n == 0:
            return
        i = 0  # rows of the batch consumed
        if self._carry_n:  # complete the carried row group
            carry = self._carry
            assert carry is not None
            k = min(n, R - self._carry_n)
            carry[self._carry_n * rb : (self._carry_n + k) * rb] = flat[: k * rb]
            self._carry_n += k
            i = k
            if self._carry_n == R:
                self._row_group(carry, R)
                self._carry_n = 0
        while n - i >= R:  # whole row groups straight from the batch
            data = flat[i * rb :]
            if (
                self.aligned_layout
                and self.bytes_written % ALIGN == 0
                and (not self._direct or data.ctypes.data % ALIGN == 0)
            ):
                k = (n - i) // R
                self._aligned_row_groups(data[: k * R * rb], k)
                i += k * R
            else:
                self._row_group(data[: R * rb], R)
                i += R
        self._sync()  # nothing queued refers to the batch or the carry any more
        if i < n:
            if self._carry is None:
                self._carry = aligned_empty(R * rb, np.uint8)
            self._carry[: (n - i) * rb] = flat[i * rb :]
            self._carry_n = n - i
        self.num_rows += n

    def close(self) -> None:
        """Write the last row group and the footer, and close the file (idempotent). If a
        ``write`` failed, abort instead and raise ValueError. If writing fails here, the
        descriptors are closed and the exception propagates (the file is left)."""
        if self.closed:
            return
        if self._failed:
            self.abort()
            raise ValueError(f"an earlier write failed: {self.path} is incomplete (removed)")
        try:
            if self._carry_n:
                assert self._carry is not None
                self._row_group(self._carry[: self._carry_n * self.row_bytes], self._carry_n)
                self._carry_n = 0
            self._seal()
            self._flush()
            # the last partial block (never written with O_DIRECT) and the footer
            footer = self._footer()
            off = self._seg_file
            blob = bytes(self._stage[self._s0 : self._s1]) + footer
            blob += struct.pack("<I", len(footer)) + MAGIC
            self._write_buffered(blob, off)
            self._s0 = self._s1 = 0
            self._seg_file = end = off + len(blob)
            if os.fstat(self._file.fd).st_size != end:
                os.ftruncate(self._file.fd, end)
        finally:
            self.closed = True
            self._file.close()
            POOL.give(self._stage)

    def abort(self) -> None:
        """Close without writing a footer and remove the file (quietly; idempotent)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            POOL.give(self._stage)
        self._queue = []

    # ------------------------------------------------------------------------------ writing

    def _as_bytes(self, rows: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """The rows' bytes as a flat uint8 array (a view when they are C-contiguous)."""
        a = np.asarray(rows)
        if a.dtype.hasobject:
            raise TypeError(f"rows of dtype {a.dtype} have no fixed bytes")
        if a.ndim != 2 or a.shape[1] * a.dtype.itemsize != self.row_bytes:
            raise ValueError(
                f"rows must have shape (n, D) with D * itemsize == {self.row_bytes}, "
                f"got shape {a.shape} of {a.dtype}"
            )
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.ascontiguousarray(a)
        return a.reshape(-1).view(np.uint8)

    def _row_group(self, data: npt.NDArray[np.uint8], rows: int) -> None:
        """Queue one row group: its page header (in the aligned layout at the end of a block
        of padding) and its data."""
        size = data.size
        header = self._full_header if rows == self.row_group_rows else _page_header(rows, size)
        h = len(header)
        pos = self.bytes_written
        if self.aligned_layout:
            start = -(-(pos + h) // ALIGN) * ALIGN  # the data's (aligned) offset
            self._zeros(start - h - pos)
        else:
            start = pos + h
        self._copy(np.frombuffer(header, np.uint8))
        self._chunks.append((start - h, rows, h + size))
        self._append(data)

    def _aligned_row_groups(self, data: npt.NDArray[np.uint8], k: int) -> None:
        """``_row_group`` for ``k`` whole row groups at an aligned file position (aligned
        layout), from aligned memory if O_DIRECT: the header blocks are made together and
        queued with the data without a copy (~1 us a row group)."""
        self._seal()
        h = len(self._full_header)
        chunk = self.row_group_rows * self.row_bytes
        stride = ALIGN + chunk  # file bytes a row group
        header = np.frombuffer(self._full_header, np.uint8)
        mv = data.data
        j = 0
        while j < k:
            if self._queue and len(self._queue) + 2 > self._iov_limit:
                self._flush()
            room = (self._stage.size - self._s1) // ALIGN
            if room == 0:
                self._make_room()
                continue
            g = min(k - j, room, max(1, (self._iov_limit - len(self._queue)) // 2))
            a = self._s1
            blocks = self._stage[a : a + g * ALIGN].reshape(g, ALIGN)
            blocks[:, : ALIGN - h] = 0
            blocks[:, ALIGN - h :] = header
            pos = self._seg_file  # == bytes_written: the segment is empty after _seal
            self._chunks += [
                (pos + q * stride + ALIGN - h, self.row_group_rows, h + chunk) for q in range(g)
            ]
            bmv = self._stage[a : a + g * ALIGN].data
            for q in range(g):
                self._queue.append(bmv[q * ALIGN : (q + 1) * ALIGN])
                self._queue.append(mv[(j + q) * chunk : (j + q + 1) * chunk])
            self._s1 = self._s0 = a + g * ALIGN
            self._seg_file = pos + g * stride
            j += g
        if len(self._queue) >= self._iov_limit:
            self._flush()

    def _zeros(self, n: int) -> None:
        while n:
            if self._s1 == self._stage.size:
                self._make_room()
            k = min(n, self._stage.size - self._s1)
            self._stage[self._s1 : self._s1 + k] = 0
            self._s1 += k
            n -= k

    def _copy(self, data: npt.NDArray[np.uint8]) -> None:
        """Append bytes through the staging buffer."""
        i = 0
        while i < data.size:
            if self._s1 == self._stage.size:
                self._make_room()
            k = min(data.size - i, self._stage.size - self._s1)
            self._stage[self._s1 : self._s1 + k] = data[i : i + k]
            self._s1 += k
            i += k

    def _append(self, data: npt.NDArray[np.uint8]) -> None:
        """Append bytes, queued without a copy where that is allowed (buffered writes, or an
        aligned file position and an aligned address)."""
        if not self._direct:
            self._seal()
            self._push(data)
            self._seg_file += data.size
            return
        if (
            data.size >= ALIGN
            and (self._s1 - self._s0) % ALIGN == 0
            and data.ctypes.data % ALIGN == 0
        ):
            self._seal()
            m = data.size - data.size % ALIGN
            self._push(data[:m])
            self._seg_file += m
            data = data[m:]
        self._copy(data)

    def _seal(self) -> None:
        """Queue the staged bytes (only whole blocks with O_DIRECT); a new segment starts."""
        n = self._s1 - self._s0
        if self._direct:
            n -= n % ALIGN
        if n:
            self._push(self._stage[self._s0 : self._s0 + n])
            self._s0 += n
            self._seg_file += n

    def _push(self, buf: npt.NDArray[np.uint8]) -> None:
        self._queue.append(buf.data)
        if len(self._queue) >= self._iov_limit:
            self._flush()

    def _make_room(self) -> None:
        """Write what is queued and move the staged rest (< ALIGN bytes) to the front."""
        self._seal()
        self._flush()
        rest = self._s1 - self._s0
        if rest:
            self._stage[:rest] = self._stage[self._s0 : self._s1]
        self._s0, self._s1 = 0, rest

    def _sync(self) -> None:
        """Write all whole blocks: afterwards nothing queued refers to the caller's memory."""
        self._make_room()

    def _flush(self) -> None:
        """Write the queued buffers with ``pwritev`` (several if the kernel writes less)."""
        bufs = self._queue
        self._queue = []
        off = self._q_off
        total = sum(b.nbytes for b in bufs)
        self._q_off = off + total
        while bufs:
            fd = self._file.dfd if self._direct else self._file.fd
            assert fd is not None
            try:
                n = os.pwritev(fd, bufs, off)
            except OSError as e:
                if not (self._direct and e.errno == errno.EINVAL):
                    raise
                self._direct = False  # O_DIRECT refused after all: the page cache from now on
                continue
            if n <= 0:  # pragma: no cover - a full disk raises instead
                raise OSError(f"short write to {self.path}")
            if self._direct:
                self.direct_bytes += n
            off += n
            k = 0
            while k < len(bufs) and n >= bufs[k].nbytes:
                n -= bufs[k].nbytes
                k += 1
            bufs = bufs[k:]
            if n:
                bufs[0] = bufs[0][n:]

    def _write_buffered(self, data: bytes, off: int) -> None:
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            n = os.pwrite(self._file.fd, mv[done:], off + done)
            if n <= 0:  # pragma: no cover - a full disk raises instead
                raise OSError(f"short write to {self.path}")
            done += n

    # ------------------------------------------------------------------------------- footer

    def _footer(self) -> bytes:
        """FileMetaData (thrift compact), laid out as arrow lays it out."""
        t = CompactWriter()
        t.integer(1, 2)  # version
        t.list(2, t.STRUCT, 2)  # schema: the root and the column
        t.begin()
        t.integer(3, REQUIRED)
        t.binary(4, "schema")
        t.integer(5, 1)  # num_children
        t.end()
        t.begin()
        t.integer(1, FIXED_LEN_BYTE_ARRAY)
        t.integer(2, self.row_bytes)  # type_length
        t.integer(3, REQUIRED)
        t.binary(4, self.column)
        t.end()
        t.integer(3, self.num_rows, t.I64)
        t.list(4, t.STRUCT, len(self._chunks))  # row_groups: from templates (~1 us each)
        templates: dict[tuple[int, int], tuple[bytes, bytes, bytes]] = {}
        for off, rows, size in self._chunks:
            tpl = templates.get((rows, size))
            if tpl is None:
                tpl = templates[rows, size] = _row_group_template(self.column, rows, size)
            v = _zigzag_varint(off)
            t.buf += tpl[0]
            t.buf += v
            t.buf += tpl[1]
            t.buf += v
            t.buf += tpl[2]
        if self.metadata:
            t.list(5, t.STRUCT, len(self.metadata))  # key_value_metadata
            for k, val in self.metadata:
                t.begin()
                t.binary(1, k)
                t.binary(2, val)
                t.end()
        t.binary(6, self.created_by)
        t.list(7, t.STRUCT, 1)  # column_orders
        t.begin()
        t.begin(1)  # TYPE_ORDER (an empty struct)
        t.end()
        t.end()
        t.end()
        return bytes(t.buf)
