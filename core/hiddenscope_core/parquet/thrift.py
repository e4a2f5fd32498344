"""Thrift's compact protocol and the Parquet format's enums, as this package writes them.

The Parquet writers (``states``, ``intervals``) build their page headers and footers by hand
with :class:`CompactWriter` (a footer takes ~0.07 ms a row group; pyarrow is not involved), and
name the enums of ``parquet-format``'s ``parquet.thrift`` with the constants below.
"""

from __future__ import annotations

MAGIC = b"PAR1"
"""The 4 bytes at the start and the end of every Parquet file."""
CREATED_BY = "hiddenscope"
"""``FileMetaData.created_by`` of the files written here."""

# Type
INT32, INT64, FIXED_LEN_BYTE_ARRAY = 1, 2, 7
# FieldRepetitionType
REQUIRED = 0
# CompressionCodec
UNCOMPRESSED = 0
# Encoding
PLAIN, RLE, DELTA_BINARY_PACKED = 0, 3, 5
# PageType
DATA_PAGE = 0
# ConvertedType
UINT_32, INT_16 = 13, 16


class CompactWriter:
    """A thrift compact-protocol writer for the subset Parquet's page headers and footers
    need (the interval and the states writers build theirs with it). Fields must come in
    increasing id order within a struct; ``begin``/``end`` open and close a nested struct (a
    struct field, or a struct element of a list after ``list``)."""

    # element types
    TRUE, FALSE, BYTE, I32, I64, BINARY, LIST, STRUCT = 1, 2, 3, 5, 6, 8, 9, 12

    def __init__(self) -> None:
        self.buf = bytearray()
        self._last = [0]  # last field id of each open struct

    def _varint(self, u: int) -> None:
        while u >= 0x80:
            self.buf.append((u & 0x7F) | 0x80)
            u >>= 7
        self.buf.append(u)

    def _head(self, fid: int, t: int) -> None:
        delta = fid - self._last[-1]
        if 0 < delta <= 15:
            self.buf.append((delta << 4) | t)
        else:
            self.buf.append(t)
            self._varint(((fid << 1) ^ (fid >> 15)) & 0xFFFF)  # zigzag i16
        self._last[-1] = fid

    def integer(self, fid: int, v: int, t: int = I32) -> None:
        """An i32 or (``t=I64``) i64 field: zigzag varint."""
        self._head(fid, t)
        self._varint((v << 1) ^ (v >> 63))

    def byte(self, fid: int, v: int) -> None:
        self._head(fid, self.BYTE)
        self.buf.append(v & 0xFF)

    def boolean(self, fid: int, v: bool) -> None:
        self._head(fid, self.TRUE if v else self.FALSE)

    def binary(self, fid: int | None, v: bytes | str) -> None:
        """A binary/string field, or a list element (``fid=None``)."""
        b = v.encode() if isinstance(v, str) else v
        if fid is not None:
            self._head(fid, self.BINARY)
        self._varint(len(b))
        self.buf += b

    def list(self, fid: int, t: int, n: int) -> None:
        """The header of a list field of ``n`` elements of type ``t``; the elements follow."""
        self._head(fid, self.LIST)
        if n < 15:
            self.buf.append((n << 4) | t)
        else:
            self.buf.append(0xF0 | t)
            self._varint(n)

    def element(self, v: int) -> None:
        """An i32 element of a list."""
        self._varint((v << 1) ^ (v >> 63))

    def begin(self, fid: int | None = None) -> None:
        """Open a struct field (or, ``fid=None``, a struct element of a list)."""
        if fid is not None:
            self._head(fid, self.STRUCT)
        self._last.append(0)

    def end(self) -> None:
        self.buf.append(0)  # field stop
        self._last.pop()
