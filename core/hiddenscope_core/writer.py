"""Writing a dataset: streaming ingest into a staging directory, index build, atomic publication.

Layout and API: ``docs/architecture.md``. Memory stays bounded whatever ``T`` is: layer rows are
buffered in blocks of at most ``_BUFFER_BYTES``, the index is built in step blocks, and on-intervals
are streamed into DuckDB in batches of at most ``_INTERVAL_BATCH`` rows.

Measured choices (2-vCPU reference box, D=64, see the report in the lead's notes):

* Parquet states are written **uncompressed**: on float states LZ4/Snappy gain nothing (ratio
  1.00-1.02) and zstd gains 9-22% at 25-40% less write speed; the fixed-size-list column costs
  about 8 ns per value in pyarrow's level encoder, so it runs in a background thread overlapped
  with the transform and the ``values.bin`` write.
* On-intervals go to a compact physical table ``on_intervals_data`` (small integer keys, start
  plus length, 4-byte integers when ``T < 2^32``) behind the view ``on_intervals``: about 2x the
  insert speed of the wide table, which matters at 1e8+ intervals per 1e7 steps on noisy states.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import numba as nb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from hiddenscope_core import bits
from hiddenscope_core.errors import Conflict, InvalidData
from hiddenscope_core.models import (
    NAME_PATTERN,
    DatasetManifest,
    LayerInfo,
    SequenceInfo,
    StorageDType,
    TrackInfo,
    Transform,
)
from hiddenscope_core.thresholds import default_grid, validate_grid
from hiddenscope_core.transforms import transform_values, values_dtype

PART_STEPS = 1 << 20
"""Steps per Parquet part file of states."""
ROW_GROUP_STEPS = 1024
"""Steps per Parquet row group of states (a window read decodes only these)."""
AUX_ROW_GROUP = 1 << 16
"""Rows per row group of tokens and tracks."""
HIST_BINS = 4096
"""Bins of the per-cell histogram behind the quantiles (between the layer min and max)."""
QUANTILES = (0.01, 0.05, 0.25, 0.50, 0.75, 0.95, 0.99)
QUANTILE_COLUMNS = ("q01", "q05", "q25", "q50", "q75", "q95", "q99")
PARQUET_COMPRESSION = "none"

_BUFFER_BYTES = 16 << 20  # raw rows buffered per layer before a flush
_BLOCK_VALUES = 1 << 26  # values (steps x cells) per index-build block
_INTERVAL_BATCH = 1 << 23  # on-interval rows per DuckDB insert batch
_NAME_RE = NAME_PATTERN


# ----------------------------------------------------------------------------- numba kernels

# numba intrinsics, typed Any because mypy reads their call signature as (typingctx, x)
_popcount: Any = bits.popcount64
_ctz: Any = bits.ctz64


@nb.njit(cache=True, nogil=True)
def _f16_to_f32(src: Any, lut: Any, out: Any) -> None:
    """``out[i, j] = lut[src[i, j]]``: float16 bit patterns to float32 (exact)."""
    n, d = src.shape
    for i in range(n):
        for j in range(d):
            out[i, j] = lut[src[i, j]]


@nb.njit(cache=True, nogil=True)
def _chunk_stats(v: Any, cmin: Any, cmax: Any, csum: Any, cnan: Any) -> int:
    """Fold a row-major float32 chunk ``(n, D)`` into per-cell min/max/sum/NaN count.
    Returns the number of infinite values (rejected by the caller)."""
    n, d = v.shape
    n_inf = 0
    for i in range(n):
        for j in range(d):
            x = v[i, j]
            if x != x:
                cnan[j] += 1
            elif x - x != 0:
                n_inf += 1
            else:
                cmin[j] = min(cmin[j], x)
                cmax[j] = max(cmax[j], x)
                csum[j] += x
    return n_inf


@nb.njit(cache=True, nogil=True)
def _transpose(src: Any, out: Any) -> None:
    """``out[:, :n] = src.T`` in cache-friendly tiles."""
    n, d = src.shape
    for i0 in range(0, n, 64):
        i1 = min(n, i0 + 64)
        for j in range(d):
            for i in range(i0, i1):
                out[j, i] = src[i, j]


@nb.njit(cache=True, nogil=True, inline="always")
def _ends_in_words(words: Any, bm: Any, carry: np.uint64) -> tuple[int, int, np.uint64]:
    """Count run ends (E bits) and on bits in ``words`` given the previous bit ``carry``.
    Returns ``(ends, ons, carry_out)``."""
    ends = 0
    ons = 0
    one = np.uint64(1)
    for i in range(words.shape[0]):
        w = words[i]
        sh = (w << one) | carry
        carry = w >> np.uint64(63)
        e = sh & (~w | bm[i])
        ends += _popcount(e)
        ons += _popcount(w)
    return ends, ons, carry


@nb.njit(cache=True, nogil=True)
def _hist_col(col: Any, lo: float, scale: float, hist: Any) -> None:
    nb_ = hist.shape[0]
    for i in range(col.shape[0]):
        x = col[i]
        if x == x:
            b = int((x - lo) * scale)
            b = min(max(b, 0), nb_ - 1)
            hist[b] += 1


@nb.njit(cache=True, nogil=True, parallel=True)
def _pass1_f32(
    vals: Any,
    b0: int,
    b1: int,
    thetas: Any,
    bm: Any,
    carry: Any,
    planes: Any,
    ends: Any,
    ons: Any,
    lo: float,
    scale: float,
    hist: Any,
    last: bool,
) -> None:
    """For a step block of every cell: pack the on-planes, count run ends and on steps,
    and add to the value histogram. ``vals`` is the whole ``(D, T)`` float32 array and
    ``planes`` the whole ``(G, D, W)`` array (slicing inside keeps the C layout, so the packing
    loops vectorise); the block is steps ``[b0, b1)``, ``b0 % 64 == 0``."""
    d = vals.shape[0]
    g_n = thetas.shape[0]
    w0 = b0 >> 6
    w1 = (b1 + 63) >> 6
    for c in nb.prange(d):
        col = vals[c, b0:b1]
        for g in range(g_n):
            out = planes[g, c, w0:w1]
            bits.pack_ge_f32(col, thetas[g], out)
            e, o, cout = _ends_in_words(out, bm, carry[g, c])
            if last and cout != 0:
                e += 1  # a run open at T - 1 ends at T (only when T % 64 == 0)
            ends[g, c] = e
            ons[g, c] += o
        _hist_col(col, lo, scale, hist[c])


@nb.njit(cache=True, nogil=True, parallel=True)
def _pass1_f16(
    vals: Any,
    b0: int,
    b1: int,
    keys: Any,
    lut: Any,
    bm: Any,
    carry: Any,
    planes: Any,
    ends: Any,
    ons: Any,
    lo: float,
    scale: float,
    hist: Any,
    last: bool,
) -> None:
    """As ``_pass1_f32`` for float16 values given as uint16 bit patterns (``keys`` from
    ``bits.f16_key_threshold``; ``lut`` maps bit patterns to float32 for the histogram)."""
    d = vals.shape[0]
    g_n = keys.shape[0]
    w0 = b0 >> 6
    w1 = (b1 + 63) >> 6
    for c in nb.prange(d):
        col = vals[c, b0:b1]
        for g in range(g_n):
            out = planes[g, c, w0:w1]
            bits.pack_ge_f16bits(col, keys[g], out)
            e, o, cout = _ends_in_words(out, bm, carry[g, c])
            if last and cout != 0:
                e += 1
            ends[g, c] = e
            ons[g, c] += o
        h = hist[c]
        nb_ = h.shape[0]
        for i in range(col.shape[0]):
            x = lut[col[i]]
            if x == x:
                b = int((x - lo) * scale)
                b = min(max(b, 0), nb_ - 1)
                h[b] += 1


@nb.njit(cache=True, nogil=True, parallel=True)
def _pass2_intervals(
    planes: Any,
    bm: Any,
    base: int,
    b1: int,
    n_steps: int,
    last: bool,
    c0: int,
    c1: int,
    offsets: Any,
    carry: Any,
    open_start: Any,
    out_g: Any,
    out_cell: Any,
    out_start: Any,
    out_len: Any,
) -> None:
    """Emit the on-intervals whose end lies in this step block for cells ``[c0, c1)``.

    Run starts are ``on & ~prev | on & boundary`` and ends ``prev & ~on | prev & boundary``
    (``boundary`` = sequence starts), so runs are cut at sequence boundaries. Starts and ends
    alternate per (threshold, cell); an end pairs with the latest start, which may come from an
    earlier block (``open_start``). ``offsets[g, c - c0]`` is where the rows of (g, c) go.
    """
    g_n = offsets.shape[0]
    one = np.uint64(1)
    w0 = base >> 6
    w1 = (b1 + 63) >> 6
    for c in nb.prange(c0, c1):
        for g in range(g_n):
            words = planes[g, c, w0:w1]
            k = offsets[g, c - c0]
            cy = carry[g, c]
            op = open_start[g, c]
            for i in range(words.shape[0]):
                w = words[i]
                sh = (w << one) | cy
                cy = w >> np.uint64(63)
                s = w & (~sh | bm[i])
                e = sh & (~w | bm[i])
                pos = base + (i << 6)
                while (s | e) != 0:
                    pe = _ctz(e)
                    ps = _ctz(s)
                    if pe <= ps:  # an end and a start at one step: the end comes first
                        end = pos + np.int64(pe)
                        out_g[k] = g
                        out_cell[k] = c
                        out_start[k] = op
                        out_len[k] = end - op
                        k += 1
                        e &= e - one
                    else:
                        op = pos + np.int64(ps)
                        s &= s - one
            if last and cy != 0:
                out_g[k] = g
                out_cell[k] = c
                out_start[k] = op
                out_len[k] = n_steps - op
                k += 1
            carry[g, c] = cy
            open_start[g, c] = op


def _f16_lut() -> npt.NDArray[np.float32]:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------- helpers


def _check_name(name: str, what: str) -> None:
    import re

    if not isinstance(name, str) or re.fullmatch(_NAME_RE, name) is None:
        raise InvalidData(
            f"{what} name {name!r} is not allowed: use 1-64 characters of a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit"
        )


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (so the rename publishes durable data)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for fn in filenames:
            _fsync_path(Path(dirpath) / fn)
        _fsync_path(Path(dirpath))


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _as_int_array(data: npt.ArrayLike, what: str) -> npt.NDArray[np.int64]:
    arr = np.asarray(data)
    if arr.dtype.kind not in "iu":
        raise InvalidData(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- layers


class LayerWriter:
    """Receives the rows of one layer, in step order, in chunks of any size.

    Each flush of the row buffer (a) folds per-cell min/max/sum/NaN counts, (b) writes the
    transformed values column-major into ``values.bin`` with ``pwrite`` and (c) hands the raw
    rows to a background thread writing the Parquet parts.
    """

    def __init__(self, owner: DatasetWriter, info: LayerInfo, explicit_grid: bool) -> None:
        self._owner = owner
        self.info = info
        self.explicit_grid = explicit_grid
        self.n_steps = owner.n_steps
        self.dir = owner.staging / "layers" / info.name
        (self.dir / "states").mkdir(parents=True)
        d = info.n_cells
        self._raw_dtype = np.dtype(info.dtype)
        self._val_dtype = values_dtype(info.dtype, info.transform)
        row_bytes = d * self._raw_dtype.itemsize
        rows = max(ROW_GROUP_STEPS, _BUFFER_BYTES // row_bytes // ROW_GROUP_STEPS * ROW_GROUP_STEPS)
        # a power of two that divides PART_STEPS, so no flush straddles a part file
        self._buf_rows = min(PART_STEPS, 1 << (rows.bit_length() - 1))
        self._bufs = [np.empty((self._buf_rows, d), self._raw_dtype) for _ in range(2)]
        self._pending: list[Future[None] | None] = [None, None]
        self._cur = 0
        self._fill = 0
        self.rows_written = 0  # rows flushed or buffered
        self._flushed = 0
        self._tbuf = np.empty((d, self._buf_rows), self._val_dtype)
        self.cmin = np.full(d, np.inf, np.float32)
        self.cmax = np.full(d, -np.inf, np.float32)
        self.csum = np.zeros(d, np.float64)
        self.cnan = np.zeros(d, np.int64)
        self._values_fd = os.open(self.dir / "values.bin", os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self._values_fd, d * self.n_steps * self._val_dtype.itemsize)
        arrow_type = pa.float32() if info.dtype == "float32" else pa.float16()
        self._schema = pa.schema(
            [pa.field("v", pa.list_(pa.field("item", arrow_type, nullable=False), d), False)]
        )
        self._arrow_type = arrow_type
        self._part: pq.ParquetWriter | None = None
        self._part_index = -1
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parquet-{info.name}")
        self._lut = _f16_lut() if info.dtype == "float16" else None
        self.closed = False

    def write(self, chunk: npt.ArrayLike) -> None:
        """Append rows ``(n, D)`` of raw values (any real float dtype; cast to the layer's
        storage dtype). NaN is allowed (it is never on); ±inf is not.

        Raises:
            InvalidData: wrong rank, width or dtype, more than ``T`` rows in total, infinite values.
            Conflict: the dataset was published or aborted.
        """
        self._owner._check_open()
        if self.closed:
            raise Conflict(f"layer {self.info.name!r} is complete; no more rows can be written")
        arr = np.asarray(chunk)
        name = self.info.name
        if arr.ndim != 2 or arr.shape[1] != self.info.n_cells:
            raise InvalidData(
                f"layer {name!r}: a chunk must have shape (n, {self.info.n_cells}) "
                f"(steps x cells), got {arr.shape}"
            )
        if arr.dtype.kind != "f":
            raise InvalidData(
                f"layer {name!r}: values must be float16/float32/float64, got dtype {arr.dtype}"
            )
        n = arr.shape[0]
        if self.rows_written + n > self.n_steps:
            raise InvalidData(
                f"layer {name!r}: {self.rows_written + n} rows written but the dataset declares "
                f"n_steps={self.n_steps}; write exactly T rows in total"
            )
        pos = 0
        while pos < n:
            take = min(n - pos, self._buf_rows - self._fill)
            buf = self._buf()
            with np.errstate(over="ignore"):
                buf[self._fill : self._fill + take] = arr[pos : pos + take]
            self._fill += take
            pos += take
            self.rows_written += take
            if self._fill == self._buf_rows:
                self._flush()

    def _buf(self) -> npt.NDArray[Any]:
        fut = self._pending[self._cur]
        if fut is not None:  # the Parquet thread still reads this buffer
            fut.result()
            self._pending[self._cur] = None
        return self._bufs[self._cur]

    def _flush(self) -> None:
        n = self._fill
        if n == 0:
            return
        raw = self._bufs[self._cur][:n]
        t0 = self._flushed
        v = transform_values(raw, self.info.transform)
        if v.dtype == np.float16:
            assert self._lut is not None
            vf = np.empty(v.shape, np.float32)
            _f16_to_f32(v.view(np.uint16), self._lut, vf)
        else:
            vf = v
        cmin, cmax = self.cmin.copy(), self.cmax.copy()
        csum, cnan = self.csum.copy(), self.cnan.copy()
        n_inf = _chunk_stats(vf, cmin, cmax, csum, cnan)
        if n_inf:
            raise InvalidData(
                f"layer {self.info.name!r}: {n_inf} infinite values in steps [{t0}, {t0 + n}) "
                f"(after casting to {self.info.dtype}); replace them with NaN or clip them"
            )
        self.cmin, self.cmax, self.csum, self.cnan = cmin, cmax, csum, cnan
        # values.bin: one pwrite per cell row, each a contiguous run of n values
        tb = self._tbuf
        if v.dtype == np.float16:
            _transpose(v.view(np.uint16), tb.view(np.uint16))
        else:
            _transpose(v, tb)
        item = self._val_dtype.itemsize
        for c in range(self.info.n_cells):
            os.pwrite(self._values_fd, tb[c, :n].data, (c * self.n_steps + t0) * item)
        self._pending[self._cur] = self._pool.submit(self._write_parquet, raw, t0)
        self._cur ^= 1
        self._fill = 0
        self._flushed += n

    def _write_parquet(self, raw: npt.NDArray[Any], t0: int) -> None:
        part = t0 // PART_STEPS
        if part != self._part_index:
            if self._part is not None:
                self._part.close()
            self._part = pq.ParquetWriter(
                self.dir / "states" / f"part-{part:05d}.parquet",
                self._schema,
                compression=PARQUET_COMPRESSION,
                use_dictionary=False,
                write_statistics=False,
            )
            self._part_index = part
        flat = pa.array(raw.reshape(-1), type=self._arrow_type)
        col = pa.FixedSizeListArray.from_arrays(flat, self.info.n_cells)
        assert self._part is not None
        self._part.write_table(pa.table({"v": col}, schema=self._schema), ROW_GROUP_STEPS)

    def finish(self) -> None:
        """Flush the last rows and close the files (called by ``publish``)."""
        if self.closed:
            return
        if self.rows_written != self.n_steps:
            raise InvalidData(
                f"layer {self.info.name!r} has {self.rows_written} rows but the dataset declares "
                f"n_steps={self.n_steps}"
            )
        self._flush()
        for fut in self._pending:
            if fut is not None:
                fut.result()
        self._pool.shutdown()
        if self._part is not None:
            self._part.close()
        os.close(self._values_fd)
        self.closed = True

    def close_quietly(self) -> None:
        """Release threads and file handles without finishing (abort)."""
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            if self._part is not None:
                self._part.close()
        with contextlib.suppress(OSError):
            os.close(self._values_fd)


# ----------------------------------------------------------------------------- tracks


class TrackWriter:
    """Receives the rows of one meta track in step order.

    ``discrete``: ``values`` int label indices into ``info.labels`` (``-1`` = no label);
    ``scalar``: ``values`` floats (NaN = missing); ``topk``: ``ids`` int ``(n, K)`` and
    ``scores`` float ``(n, K)``.
    """

    def __init__(self, owner: DatasetWriter, info: TrackInfo) -> None:
        self._owner = owner
        self.info = info
        self.rows_written = 0
        if info.kind == "discrete":
            if not info.labels:
                raise InvalidData(
                    f"discrete track {info.name!r} needs its label list (labels=[...])"
                )
            self._schema = pa.schema([pa.field("label", pa.int32(), False)])
        elif info.kind == "scalar":
            self._schema = pa.schema([pa.field("value", pa.float32(), False)])
        else:
            if info.k is None or info.k < 1:
                raise InvalidData(f"topk track {info.name!r} needs k >= 1 (predictions per step)")
            self._schema = pa.schema(
                [
                    pa.field("ids", pa.list_(pa.field("item", pa.int32(), False), info.k), False),
                    pa.field(
                        "scores", pa.list_(pa.field("item", pa.float32(), False), info.k), False
                    ),
                ]
            )
        path = owner.staging / "tracks" / f"{info.name}.parquet"
        path.parent.mkdir(exist_ok=True)
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        self.closed = False

    def write(
        self,
        values: npt.ArrayLike | None = None,
        *,
        ids: npt.ArrayLike | None = None,
        scores: npt.ArrayLike | None = None,
    ) -> None:
        """Append rows. Raises ``InvalidData`` for a wrong shape, dtype, label index or size."""
        self._owner._check_open()
        info = self.info
        name = info.name
        table: pa.Table
        if info.kind in ("discrete", "scalar"):
            if values is None or ids is not None or scores is not None:
                raise InvalidData(f"{info.kind} track {name!r}: pass values=..., not ids/scores")
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise InvalidData(f"track {name!r}: values must be 1-D, got shape {arr.shape}")
            if info.kind == "discrete":
                labels = _as_int_array(arr, f"discrete track {name!r} values")
                n_labels = len(info.labels or [])
                if labels.size and (labels.min() < -1 or labels.max() >= n_labels):
                    raise InvalidData(
                        f"discrete track {name!r}: label indices must be in [-1, {n_labels}) "
                        f"(-1 = none), got [{labels.min()}, {labels.max()}]"
                    )
                table = pa.table({"label": labels.astype(np.int32)}, schema=self._schema)
            else:
                if arr.dtype.kind not in "fiu":
                    raise InvalidData(f"scalar track {name!r}: values must be numbers")
                table = pa.table({"value": arr.astype(np.float32)}, schema=self._schema)
            n = arr.shape[0]
        else:
            if ids is None or scores is None or values is not None:
                raise InvalidData(f"topk track {name!r}: pass ids=... and scores=...")
            k = info.k or 0
            id_arr = _as_int_array(ids, f"topk track {name!r} ids")
            sc_arr = np.asarray(scores)
            if id_arr.ndim != 2 or id_arr.shape[1] != k or sc_arr.shape != id_arr.shape:
                raise InvalidData(
                    f"topk track {name!r}: ids and scores must both have shape (n, {k}), got "
                    f"{id_arr.shape} and {sc_arr.shape}"
                )
            if sc_arr.dtype.kind not in "fiu":
                raise InvalidData(f"topk track {name!r}: scores must be numbers")
            n = id_arr.shape[0]
            table = pa.table(
                {
                    "ids": pa.FixedSizeListArray.from_arrays(
                        pa.array(id_arr.astype(np.int32).reshape(-1)), k
                    ),
                    "scores": pa.FixedSizeListArray.from_arrays(
                        pa.array(sc_arr.astype(np.float32).reshape(-1)), k
                    ),
                },
                schema=self._schema,
            )
        if self.rows_written + n > self._owner.n_steps:
            raise InvalidData(
                f"track {name!r}: {self.rows_written + n} rows written but n_steps="
                f"{self._owner.n_steps}; write exactly one row per step"
            )
        self._writer.write_table(table, AUX_ROW_GROUP)
        self.rows_written += n

    def finish(self) -> None:
        if self.closed:
            return
        if self.rows_written != self._owner.n_steps:
            raise InvalidData(
                f"track {self.info.name!r} has {self.rows_written} rows but n_steps="
                f"{self._owner.n_steps}"
            )
        self._writer.close()
        self.closed = True

    def close_quietly(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._writer.close()


# ----------------------------------------------------------------------------- the dataset


class DatasetWriter:
    """Builds one dataset in ``<data_root>/staging/<id>`` and publishes it atomically.

    Use ``DatasetWriter.create(...)``; as a context manager it aborts on an exception (and on a
    normal exit without ``publish()``). Not thread-safe: one writer per thread.
    """

    def __init__(
        self,
        data_root: Path,
        dataset_id: str,
        name: str,
        n_steps: int,
        description: str,
        provenance: dict[str, Any],
    ) -> None:
        self.data_root = data_root
        self.id = dataset_id
        self.name = name
        self.n_steps = n_steps
        self.description = description
        self.provenance = provenance
        self.staging = data_root / "staging" / dataset_id
        self._layers: dict[str, LayerWriter] = {}
        self._tracks: dict[str, TrackWriter] = {}
        self._starts = np.zeros(1, np.int64)
        self._seq_names: list[str] = ["seq0"]
        self._vocab: list[str] | None = None
        self._tokens: pq.ParquetWriter | None = None
        self._tokens_written = 0
        self._token_max = -1
        self._state = "open"  # open | published | aborted
        self.duckdb_threads: int | None = None  # None: DuckDB's default (all cores)

    @classmethod
    def create(
        cls,
        data_root: str | os.PathLike[str],
        name: str,
        n_steps: int,
        description: str = "",
        provenance: dict[str, Any] | None = None,
    ) -> DatasetWriter:
        """Start a dataset of ``n_steps`` steps named ``name``.

        Raises:
            InvalidData: a bad name or ``n_steps < 1``.
            Conflict: the name is already taken (checked again, atomically, at publication).
        """
        _check_name(name, "dataset")
        if not isinstance(n_steps, int | np.integer) or n_steps < 1:
            raise InvalidData(f"n_steps must be a positive integer, got {n_steps!r}")
        root = Path(data_root)
        for sub in ("staging", "datasets", "names"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if os.path.lexists(root / "names" / name):
            raise Conflict(f"a dataset named {name!r} already exists; choose another name")
        dataset_id = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        (root / "staging" / dataset_id).mkdir()
        return cls(root, dataset_id, name, int(n_steps), description, dict(provenance or {}))

    # -- context manager

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self.abort()

    def _check_open(self) -> None:
        if self._state != "open":
            raise Conflict(f"dataset {self.name!r} is {self._state}; it can no longer be written")

    # -- inputs

    def set_sequences(self, starts: npt.ArrayLike, names: Sequence[str] | None = None) -> None:
        """Declare sequences by their start steps (int, strictly increasing, first 0, all < T)
        and optional unique names (default ``seq<i>``).

        Raises:
            InvalidData: saying which start or name is wrong.
        """
        self._check_open()
        arr = _as_int_array(starts, "sequence starts")
        if arr.ndim != 1 or arr.size == 0:
            raise InvalidData("sequence starts must be a non-empty 1-D list of step numbers")
        if arr[0] != 0:
            raise InvalidData(f"the first sequence must start at step 0, got {arr[0]}")
        bad = np.nonzero(np.diff(arr) <= 0)[0]
        if bad.size:
            i = int(bad[0]) + 1
            raise InvalidData(
                f"sequence starts must be strictly increasing; start {i} ({arr[i]}) is not "
                f"greater than start {i - 1} ({arr[i - 1]})"
            )
        if arr[-1] >= self.n_steps:
            raise InvalidData(
                f"sequence start {arr[-1]} is outside the dataset (n_steps={self.n_steps})"
            )
        if names is None:
            seq_names = [f"seq{i}" for i in range(arr.size)]
        else:
            seq_names = [str(x) for x in names]
            if len(seq_names) != arr.size:
                raise InvalidData(f"{len(seq_names)} sequence names given for {arr.size} starts")
            seen: set[str] = set()
            for x in seq_names:
                if x in seen:
                    raise InvalidData(f"sequence names must be unique; {x!r} appears twice")
                seen.add(x)
        self._starts = arr.copy()
        self._seq_names = seq_names

    def set_vocab(self, texts: Sequence[str]) -> None:
        """Token id ``i`` -> ``texts[i]``."""
        self._check_open()
        self._vocab = [str(x) for x in texts]

    def write_tokens(self, ids_chunk: npt.ArrayLike) -> None:
        """Append token ids (non-negative ints, 1-D) in step order, ``T`` in total.

        Raises:
            InvalidData: wrong dtype/shape, a negative id, or more than ``T`` ids.
        """
        self._check_open()
        arr = _as_int_array(ids_chunk, "token ids")
        if arr.ndim != 1:
            raise InvalidData(f"token ids must be 1-D, got shape {arr.shape}")
        if self._tokens_written + arr.size > self.n_steps:
            raise InvalidData(
                f"{self._tokens_written + arr.size} token ids written but n_steps={self.n_steps}"
            )
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= 2**31:
                raise InvalidData(f"token ids must be in [0, 2^31), got [{lo}, {hi}]")
            self._token_max = max(self._token_max, hi)
        if self._tokens is None:
            schema = pa.schema([pa.field("token_id", pa.int32(), False)])
            self._tokens = pq.ParquetWriter(
                self.staging / "tokens.parquet", schema, compression="zstd"
            )
        self._tokens.write_table(
            pa.table({"token_id": arr.astype(np.int32)}, schema=self._tokens.schema), AUX_ROW_GROUP
        )
        self._tokens_written += arr.size

    def add_layer(
        self,
        name: str,
        n_cells: int,
        dtype: StorageDType = "float32",
        transform: Transform = "none",
        thresholds: Sequence[float] | None = None,
        kind: str | None = None,
    ) -> LayerWriter:
        """Declare a layer; write its rows with the returned ``LayerWriter.write``.

        ``thresholds`` overrides the default grid (validated: finite, ascending, unique, <= 32).

        Raises:
            InvalidData: bad name, size, dtype, transform or grid.
            Conflict: a layer of that name was already added.
        """
        self._check_open()
        _check_name(name, "layer")
        if name in self._layers:
            raise Conflict(f"layer {name!r} was already added")
        if dtype not in ("float32", "float16"):
            raise InvalidData(
                f"layer {name!r}: dtype must be 'float32' or 'float16', got {dtype!r}"
            )
        if transform not in ("none", "tanh"):
            raise InvalidData(f"layer {name!r}: transform must be 'none' or 'tanh'")
        grid = validate_grid(thresholds, name) if thresholds is not None else []
        try:
            info = LayerInfo(
                name=name,
                n_cells=n_cells,
                dtype=dtype,
                transform=transform,
                thresholds=grid,
                kind=kind,
            )
        except ValidationError as e:
            raise InvalidData(f"layer {name!r}: {e.errors()[0]['msg']}") from e
        lw = LayerWriter(self, info, explicit_grid=thresholds is not None)
        self._layers[name] = lw
        return lw

    def add_track(
        self,
        info: TrackInfo,
        values: npt.ArrayLike | None = None,
        *,
        ids: npt.ArrayLike | None = None,
        scores: npt.ArrayLike | None = None,
    ) -> TrackWriter:
        """Declare a meta track and optionally write its first (or only) rows; more rows can be
        written with the returned ``TrackWriter.write``. See ``TrackWriter`` for the data.

        Raises:
            InvalidData: bad data; Conflict: a track of that name exists.
        """
        self._check_open()
        if info.name in self._tracks:
            raise Conflict(f"track {info.name!r} was already added")
        tw = TrackWriter(self, info)
        self._tracks[info.name] = tw
        if values is not None or ids is not None or scores is not None:
            tw.write(values, ids=ids, scores=scores)
        return tw

    # -- publication

    def abort(self) -> None:
        """Discard everything written; the staging directory is removed. Idempotent."""
        if self._state == "published":
            return
        self._state = "aborted"
        for lw in self._layers.values():
            lw.close_quietly()
        for tw in self._tracks.values():
            tw.close_quietly()
        if self._tokens is not None:
            with contextlib.suppress(Exception):
                self._tokens.close()
            self._tokens = None
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(self) -> DatasetManifest:
        """Finish all inputs, build the index, and publish atomically.

        The dataset appears under ``datasets/<id>`` by one rename and gets its name by one
        symlink; on any error the staging directory is removed and nothing is visible.

        Raises:
            InvalidData: missing rows or tokens without a vocabulary (and nothing is published).
            Conflict: the name was taken meanwhile.
        """
        self._check_open()
        try:
            return self._publish()
        except BaseException:
            self.abort()
            raise

    def _publish(self) -> DatasetManifest:
        if not self._layers:
            raise InvalidData("a dataset needs at least one layer (add_layer)")
        for lw in self._layers.values():
            lw.finish()
        for tw in self._tracks.values():
            tw.finish()
        has_tokens = self._tokens is not None
        if self._tokens is not None:
            self._tokens.close()
            self._tokens = None
            if self._tokens_written != self.n_steps:
                raise InvalidData(
                    f"{self._tokens_written} token ids written but n_steps={self.n_steps}"
                )
        if has_tokens and self._vocab is None:
            raise InvalidData("tokens were written but no vocabulary; call set_vocab(texts)")
        if self._vocab is not None and self._token_max >= len(self._vocab):
            raise InvalidData(
                f"token id {self._token_max} is outside the vocabulary of {len(self._vocab)} texts"
            )
        self._write_sequences()
        if self._vocab is not None:
            pq.write_table(
                pa.table(
                    {
                        "id": pa.array(np.arange(len(self._vocab), dtype=np.int32)),
                        "text": pa.array(self._vocab, pa.string()),
                    }
                ),
                self.staging / "vocab.parquet",
                compression="zstd",
            )
        layers = self._build_index()
        sizes: dict[str, int] = {}
        for lw in self._layers.values():
            n = lw.info.name
            sizes[f"layers/{n}/states"] = _dir_size(lw.dir / "states")
            sizes[f"layers/{n}/values.bin"] = _dir_size(lw.dir / "values.bin")
            sizes[f"layers/{n}/planes.bin"] = _dir_size(lw.dir / "planes.bin")
        for part in ("index.duckdb", "sequences.parquet", "tokens.parquet", "vocab.parquet"):
            if (self.staging / part).exists():
                sizes[part] = _dir_size(self.staging / part)
        for tn in self._tracks:
            sizes[f"tracks/{tn}.parquet"] = _dir_size(self.staging / "tracks" / f"{tn}.parquet")
        manifest = DatasetManifest(
            id=self.id,
            name=self.name,
            description=self.description,
            n_steps=self.n_steps,
            n_sequences=int(self._starts.size),
            vocab_size=len(self._vocab) if self._vocab is not None else 0,
            has_tokens=has_tokens,
            layers=layers,
            tracks=[tw.info for tw in self._tracks.values()],
            part_steps=PART_STEPS,
            created_at=datetime.now(UTC),
            sizes=sizes,
            provenance=self.provenance,
        )
        (self.staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        _fsync_tree(self.staging)
        final = self.data_root / "datasets" / self.id
        os.rename(self.staging, final)
        _fsync_path(self.data_root / "datasets")
        self._state = "published"
        link = self.data_root / "names" / self.name
        try:
            os.symlink(Path("..") / "datasets" / self.id, link)
        except FileExistsError:
            self._state = "aborted"
            shutil.rmtree(final, ignore_errors=True)
            raise Conflict(
                f"a dataset named {self.name!r} was published meanwhile; choose another name"
            ) from None
        _fsync_path(self.data_root / "names")
        return manifest

    def _write_sequences(self) -> None:
        ends = np.append(self._starts[1:], self.n_steps)
        pq.write_table(
            pa.table(
                {
                    "start": pa.array(self._starts, pa.int64()),
                    "end": pa.array(ends, pa.int64()),
                    "name": pa.array(self._seq_names, pa.string()),
                }
            ),
            self.staging / "sequences.parquet",
        )

    def sequences(self) -> list[SequenceInfo]:
        """The declared sequences (for callers building a manifest-like view)."""
        ends = np.append(self._starts[1:], self.n_steps)
        return [
            SequenceInfo(index=i, name=n, start=int(s), end=int(e))
            for i, (s, e, n) in enumerate(zip(self._starts, ends, self._seq_names, strict=True))
        ]

    # -- the index

    def _build_index(self) -> list[LayerInfo]:
        path = self.staging / "index.duckdb"
        config: dict[str, Any] = {}
        if self.duckdb_threads is not None:
            config["threads"] = self.duckdb_threads
        con = duckdb.connect(str(path), config=config)
        wide = self.n_steps >= 2**32
        pos_type = "UBIGINT" if wide else "UINTEGER"
        try:
            con.execute("BEGIN")
            con.execute("CREATE TABLE layers (layer_id UTINYINT PRIMARY KEY, name VARCHAR)")
            con.execute(
                "CREATE TABLE layer_thresholds (layer_id UTINYINT, g UTINYINT, threshold DOUBLE)"
            )
            con.execute(
                "CREATE TABLE on_intervals_data (layer_id UTINYINT, g UTINYINT, cell UINTEGER, "
                f"start {pos_type}, len {pos_type})"
            )
            con.execute(
                "CREATE VIEW on_intervals AS SELECT l.name AS layer, t.threshold, "
                "CAST(d.cell AS INTEGER) AS cell, CAST(d.start AS BIGINT) AS start, "
                'CAST(d.start + d.len AS BIGINT) AS "end" FROM on_intervals_data d '
                "JOIN layer_thresholds t ON d.layer_id = t.layer_id AND d.g = t.g "
                "JOIN layers l ON d.layer_id = l.layer_id"
            )
            qcols = ", ".join(f"{q} DOUBLE" for q in QUANTILE_COLUMNS)
            con.execute(
                "CREATE TABLE cell_stats (layer VARCHAR, cell INTEGER, min DOUBLE, max DOUBLE, "
                f"mean DOUBLE, nan_count BIGINT, {qcols})"
            )
            con.execute(
                "CREATE TABLE cell_on_fraction (layer VARCHAR, threshold DOUBLE, cell INTEGER, "
                "fraction DOUBLE)"
            )
            if len(self._layers) > 255:
                raise InvalidData("at most 255 layers per dataset")
            infos = []
            for layer_id, lw in enumerate(self._layers.values()):
                infos.append(self._index_layer(con, layer_id, lw, wide))
            con.execute("COMMIT")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        return infos

    def _index_layer(
        self, con: duckdb.DuckDBPyConnection, layer_id: int, lw: LayerWriter, wide: bool
    ) -> LayerInfo:
        info = lw.info
        T, D = self.n_steps, info.n_cells
        finite = lw.cmin <= lw.cmax
        n_valid = T - lw.cnan  # non-NaN values per cell (inf was rejected)
        vmin = float(lw.cmin[finite].min()) if finite.any() else None
        vmax = float(lw.cmax[finite].max()) if finite.any() else None
        nan_count = int(lw.cnan.sum())
        vmean = float(lw.csum.sum() / n_valid.sum()) if n_valid.sum() else None
        if lw.explicit_grid:
            grid = list(info.thresholds)
        else:
            grid = default_grid(vmin, vmax) if vmin is not None and vmax is not None else []
        G = len(grid)
        W = bits.n_words(T)
        vdt = values_dtype(info.dtype, info.transform)
        values_map = np.memmap(lw.dir / "values.bin", dtype=vdt, mode="r", shape=(D, T))
        values = np.asarray(values_map)  # a plain ndarray view: what numba accepts
        planes_path = lw.dir / "planes.bin"
        if G:
            planes_map = np.memmap(planes_path, dtype=np.uint64, mode="w+", shape=(G, D, W))
            planes = np.asarray(planes_map)
        else:
            planes_path.touch()  # (0, D, W): an empty file
            planes_map = None
            planes = np.zeros((0, D, 0), np.uint64)
        con.execute("INSERT INTO layers VALUES (?, ?)", [layer_id, info.name])
        for g, theta in enumerate(grid):
            con.execute("INSERT INTO layer_thresholds VALUES (?, ?, ?)", [layer_id, g, theta])

        lo = vmin if vmin is not None else 0.0
        hi = vmax if vmax is not None else 0.0
        scale = HIST_BINS / (hi - lo) if hi > lo else 0.0
        hist = np.zeros((D, HIST_BINS), np.int64)
        ons = np.zeros((max(G, 1), D), np.int64)
        carry = np.zeros((max(G, 1), D), np.uint64)
        open_start = np.zeros((max(G, 1), D), np.int64)
        thetas = np.asarray(grid, np.float64)
        keys = np.asarray([bits.f16_key_threshold(t) for t in grid], np.int64)
        lut = _f16_lut()
        block = max(64, (_BLOCK_VALUES // D) >> 6 << 6)
        inserter = _IntervalInserter(con, layer_id, wide)
        try:
            for b0 in range(0, T, block):
                b1 = min(T, b0 + block)
                last = b1 == T
                bm = self._boundary_words(b0, b1)
                ends = np.zeros((max(G, 1), D), np.int64)
                if G == 0:
                    # no planes: only the histogram
                    for c in range(D):
                        col = values[c, b0:b1]
                        colf = lut[col.view(np.uint16)] if vdt == np.float16 else col
                        _hist_col(colf, lo, scale, hist[c])
                    continue
                if vdt == np.float16:
                    _pass1_f16(
                        values.view(np.uint16), b0, b1, keys, lut, bm, carry, planes, ends, ons,
                        lo, scale, hist, last,
                    )  # fmt: skip
                else:
                    _pass1_f32(
                        values, b0, b1, thetas, bm, carry, planes, ends, ons, lo, scale, hist, last
                    )
                self._emit_intervals(inserter, planes, bm, b0, b1, last, ends, carry, open_start)
        finally:
            inserter.close()
        if planes_map is not None:
            planes_map.flush()
        del planes, planes_map, values, values_map

        # per-cell statistics
        cell_min = np.where(finite, lw.cmin, np.nan).astype(np.float64)
        cell_max = np.where(finite, lw.cmax, np.nan).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cell_mean = np.where(n_valid > 0, lw.csum / np.maximum(n_valid, 1), np.nan)
        qs = _hist_quantiles(hist, lo, scale, cell_min, cell_max)
        stats = {
            "layer": pa.array([info.name] * D, pa.string()),
            "cell": pa.array(np.arange(D, dtype=np.int32)),
            "min": cell_min,
            "max": cell_max,
            "mean": cell_mean,
            "nan_count": lw.cnan,
        }
        for qi, qc in enumerate(QUANTILE_COLUMNS):
            stats[qc] = qs[:, qi]
        con.register("stats_src", pa.table(stats))
        con.execute("INSERT INTO cell_stats SELECT * FROM stats_src")
        con.unregister("stats_src")
        if G:
            frac = pa.table(
                {
                    "layer": pa.array([info.name] * (G * D), pa.string()),
                    "threshold": np.repeat(thetas, D),
                    "cell": np.tile(np.arange(D, dtype=np.int32), G),
                    "fraction": (ons[:G] / T).reshape(-1),
                }
            )
            con.register("frac_src", frac)
            con.execute("INSERT INTO cell_on_fraction SELECT * FROM frac_src")
            con.unregister("frac_src")
        return info.model_copy(
            update={
                "thresholds": grid,
                "value_min": vmin,
                "value_max": vmax,
                "value_mean": vmean,
                "nan_count": nan_count,
            }
        )

    def _boundary_words(self, b0: int, b1: int) -> npt.NDArray[np.uint64]:
        """Bit ``t`` set where a sequence (other than the first) starts, for steps [b0, b1)."""
        w0, w1 = b0 >> 6, bits.n_words(b1)
        bm = np.zeros(w1 - w0, np.uint64)
        s = self._starts[(self._starts >= max(b0, 1)) & (self._starts < b1)]
        if s.size:
            rel = s - (w0 << 6)
            np.bitwise_or.at(
                bm, rel >> 6, np.left_shift(np.uint64(1), (rel & 63).astype(np.uint64))
            )
        return bm

    def _emit_intervals(
        self,
        inserter: _IntervalInserter,
        planes: npt.NDArray[np.uint64],
        bm: npt.NDArray[np.uint64],
        b0: int,
        b1: int,
        last: bool,
        ends: npt.NDArray[np.int64],
        carry: npt.NDArray[np.uint64],
        open_start: npt.NDArray[np.int64],
    ) -> None:
        G, D = planes.shape[0], planes.shape[1]
        per_cell = ends[:G].sum(axis=0)
        c0 = 0
        while c0 < D:
            # a group of cells whose intervals fit one batch (at least one cell)
            c1 = c0 + 1
            total = int(per_cell[c0])
            while c1 < D and total + per_cell[c1] <= _INTERVAL_BATCH:
                total += int(per_cell[c1])
                c1 += 1
            counts = ends[:G, c0:c1]
            # rows in (g, cell) order within the block
            flat_off = np.zeros(counts.size, np.int64)
            np.cumsum(counts.reshape(-1)[:-1], out=flat_off[1:])
            offsets = flat_off.reshape(counts.shape)
            pos = np.uint64 if inserter.wide else np.uint32
            out_g = np.empty(total, np.uint8)
            out_cell = np.empty(total, np.uint32)
            out_start = np.empty(total, pos)
            out_len = np.empty(total, pos)
            _pass2_intervals(
                planes, bm, b0, b1, self.n_steps, last, c0, c1, offsets, carry, open_start,
                out_g, out_cell, out_start, out_len,
            )  # fmt: skip
            if total:
                inserter.put(out_g, out_cell, out_start, out_len)
            c0 = c1


def _hist_quantiles(
    hist: npt.NDArray[np.int64],
    lo: float,
    scale: float,
    cell_min: npt.NDArray[np.float64],
    cell_max: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Approximate quantiles ``(D, len(QUANTILES))`` from per-cell histograms of ``HIST_BINS``
    equal bins over the layer's [min, max]: the rank ``q x (n - 1)`` is located in its bin and
    interpolated linearly inside it, then clamped to the cell's [min, max]. The error is at most
    one bin width, ``(max - min) / HIST_BINS`` of the layer. NaN for an all-NaN cell."""
    D = hist.shape[0]
    out = np.full((D, len(QUANTILES)), np.nan)
    cum = np.cumsum(hist, axis=1)
    width = 1.0 / scale if scale > 0 else 0.0
    for c in range(D):
        n = int(cum[c, -1])
        if n == 0:
            continue
        for qi, q in enumerate(QUANTILES):
            r = q * (n - 1)
            b = int(np.searchsorted(cum[c], r, side="right"))
            b = min(b, HIST_BINS - 1)
            before = cum[c, b - 1] if b else 0
            frac = (r - before + 0.5) / hist[c, b] if hist[c, b] else 0.0
            val = lo + (b + min(max(frac, 0.0), 1.0)) * width
            out[c, qi] = min(max(val, cell_min[c]), cell_max[c])
    return out


class _IntervalInserter:
    """Inserts interval batches into DuckDB from a background thread, so the next block's
    kernels run meanwhile (DuckDB and numba both release the GIL). The queue holds at most two
    batches, which bounds memory."""

    def __init__(self, con: duckdb.DuckDBPyConnection, layer_id: int, wide: bool) -> None:
        self.con = con
        self.layer_id = layer_id
        self.wide = wide
        self._q: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="duckdb-intervals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The same connection (not a cursor, which would be a second connection outside the
        # open transaction); the caller does not use it until close().
        cur = self.con
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                if self._error is not None:
                    continue
                try:
                    cur.register("iv_src", item)
                    cur.execute(
                        f"INSERT INTO on_intervals_data SELECT {self.layer_id}, g, cell, start, "
                        "len FROM iv_src"
                    )
                    cur.unregister("iv_src")
                except BaseException as e:
                    self._error = e
        finally:
            pass

    def put(self, g: Any, cell: Any, start: Any, length: Any) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(pa.table({"g": g, "cell": cell, "start": start, "len": length}))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
