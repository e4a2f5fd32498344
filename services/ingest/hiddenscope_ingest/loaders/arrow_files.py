"""Parquet and Arrow IPC (Feather v2) columns. A column is either a list /
fixed-size-list of numbers (one row per step → ``(T, D)``) or a plain numeric column (``(T,)``).
Footer row counts and uncompressed sizes are checked before anything is decoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from hiddenscope_ingest.errors import InvalidData, TooLarge, UnsafeContent
from hiddenscope_ingest.loaders.base import Limits, check_declared_size, check_numeric


def _column_layout(field: pa.Field, name: str) -> tuple[np.dtype[Any], int | None]:
    """``(dtype, width)``: width None for a scalar column, else the list size (None if the list
    is variable-sized: checked per batch)."""
    t = field.type
    if isinstance(t, pa.ExtensionType):
        raise UnsafeContent(f"{name}: extension types are refused")
    if pa.types.is_fixed_size_list(t):
        dtype = np.dtype(t.value_type.to_pandas_dtype())
        return dtype, t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return np.dtype(t.value_type.to_pandas_dtype()), -1
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np.dtype(t.to_pandas_dtype()), None
    raise InvalidData(f"{name}: column type {t} is not numeric or a list of numbers")


def _to_numpy(col: pa.ChunkedArray | pa.Array, width: int | None, name: str) -> npt.NDArray[Any]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise InvalidData(f"{name}: the column has {arr.null_count} null values")
    if width is None:
        out: npt.NDArray[Any] = arr.to_numpy(zero_copy_only=False)
        return out
    if pa.types.is_fixed_size_list(arr.type):
        fixed: npt.NDArray[Any] = arr.flatten().to_numpy(zero_copy_only=False)
        return fixed.reshape(len(arr), arr.type.list_size)
    offsets = arr.offsets.to_numpy()
    sizes = np.diff(offsets)
    if len(sizes) and (sizes.min() != sizes.max()):
        raise InvalidData(
            f"{name}: list rows have different lengths ({sizes.min()}..{sizes.max()})"
        )
    values = arr.flatten()
    if values.null_count:
        raise InvalidData(f"{name}: the lists hold null values")
    d = int(sizes[0]) if len(sizes) else 0
    flat: npt.NDArray[Any] = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), d)


class _BatchedSource:
    """Shared logic: batches (row groups / record batches) with known row offsets; reads
    concatenate the batches overlapping ``[start, stop)`` and cache the last one."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    width: int | None
    offsets: npt.NDArray[np.int64]

    def _batch(self, i: int) -> npt.NDArray[Any]:
        raise NotImplementedError

    def _cached(self, i: int) -> npt.NDArray[Any]:
        if getattr(self, "_cache_i", None) != i:
            self._cache = self._batch(i)
            self._cache_i = i
        return self._cache

    def read(self, start: int, stop: int) -> npt.NDArray[np.generic]:
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while start < stop and i < len(self.offsets) - 1:
            b = self._cached(i)
            lo = start - int(self.offsets[i])
            hi = min(stop, int(self.offsets[i + 1])) - int(self.offsets[i])
            parts.append(b[lo:hi])
            start += hi - lo
            i += 1
        if not parts:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        out = np.concatenate(parts, axis=0)
        if out.ndim > 1 and out.shape[1:] != self.shape[1:]:
            raise InvalidData(
                f"{self.name}: rows of width {out.shape[1]}, expected {self.shape[1]}"
            )
        return out


class ParquetSource(_BatchedSource):
    def __init__(self, path: Path, key: str | None, name: str, limits: Limits) -> None:
        self.name = name
        try:
            self.pf = pq.ParquetFile(path, memory_map=True)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidData(f"{name}: not a readable Parquet file ({exc})") from None
        schema = self.pf.schema_arrow
        self.key = _pick_column(schema, key, name)
        self.col_dtype, self.width = _column_layout(schema.field(self.key), name)
        check_numeric(name, self.col_dtype)
        md = self.pf.metadata
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        total_bytes = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        if total_bytes > limits.max_array_bytes:
            raise TooLarge(f"{name}: {total_bytes} uncompressed bytes exceed the limit")
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        if n == 0:
            raise InvalidData(f"{name}: the file has no rows")
        width = self.width
        if width == -1:  # variable list: learn the width from the first row
            width = _to_numpy(
                self.pf.read_row_group(0, columns=[self.key]).column(0)[:1], -1, name
            ).shape[1]
        self.shape = (n,) if width is None else (n, int(width))
        self.dtype = self.col_dtype
        check_declared_size(name, self.shape, self.dtype.itemsize, limits)

    def _batch(self, i: int) -> npt.NDArray[Any]:
        col = self.pf.read_row_group(i, columns=[self.key]).column(0)
        return _to_numpy(col, self.width, self.name)

    def close(self) -> None:
        self.pf.close()


class ArrowSource(_BatchedSource):
    def __init__(self, path: Path, key: str | None, name: str, limits: Limits) -> None:
        self.name = name
        try:
            self.mm = pa.memory_map(str(path), "r")
            self.reader = ipc.open_file(self.mm)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidData(f"{name}: not a readable Arrow IPC file ({exc})") from None
        schema = self.reader.schema
        self.key = _pick_column(schema, key, name)
        self.col_idx = schema.get_field_index(self.key)
        self.col_dtype, self.width = _column_layout(schema.field(self.key), name)
        check_numeric(name, self.col_dtype)
        sizes = [self.reader.get_batch(i).num_rows for i in range(self.reader.num_record_batches)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        if n == 0:
            raise InvalidData(f"{name}: the file has no rows")
        width = self.width
        if width == -1:
            width = self._batch(0).shape[1]
        self.shape = (n,) if width is None else (n, int(width))
        self.dtype = self.col_dtype
        check_declared_size(name, self.shape, self.dtype.itemsize, limits)

    def _batch(self, i: int) -> npt.NDArray[Any]:
        return _to_numpy(self.reader.get_batch(i).column(self.col_idx), self.width, self.name)

    def close(self) -> None:
        self.mm.close()


def _pick_column(schema: pa.Schema, key: str | None, name: str) -> str:
    names = list(schema.names)
    if key is None:
        if len(names) != 1:
            raise InvalidData(f"{name}: the file has {len(names)} columns; name one as 'key'")
        return str(names[0])
    if key not in names:
        raise InvalidData(f"{name}: no column {key!r} (has: {', '.join(names[:20])})")
    return key


def open_parquet(path: Path, key: str | None, name: str, limits: Limits) -> ParquetSource:
    return ParquetSource(path, key, name, limits)


def open_arrow(path: Path, key: str | None, name: str, limits: Limits) -> ArrowSource:
    return ArrowSource(path, key, name, limits)
