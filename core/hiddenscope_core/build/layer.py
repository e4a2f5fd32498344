"""``LayerWriter``: the rows of one layer, in step order, into its states, ``values.bin`` and
(when the grid is known by the first flush) its fused index.

Rows are buffered in blocks of at most ``BuildSizes.buffer_bytes``; each flush folds the
per-cell statistics with the transpose of the block (``kernels``), hands the raw rows to a
background thread writing the Parquet parts (``parquet.states``) and ``values.bin``
(``O_DIRECT`` when the index is fused, so never read back), and indexes the block
(``fused.FusedIndex``). A shard of a sharded build is a ``LayerWriter`` over the shard's steps.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hiddenscope_core.build.format import ROW_GROUP_STEPS, STATES_META_CELLS, STATES_META_DTYPE
from hiddenscope_core.build.fused import FusedIndex, IndexOwner
from hiddenscope_core.build.kernels import (
    f16_lut,
    fast_stats_transpose_f16,
    fast_stats_transpose_f32,
    keys_to_f32,
    stats_transpose_f16,
    stats_transpose_f32,
)
from hiddenscope_core.direct_io import POOL, DirectFile
from hiddenscope_core.errors import Conflict, InvalidData
from hiddenscope_core.models import LayerInfo
from hiddenscope_core.parquet.states import StatesParquetWriter
from hiddenscope_core.thresholds import default_grid
from hiddenscope_core.transforms import transform_values, values_dtype


class LayerOwner(IndexOwner, Protocol):
    """What a ``LayerWriter`` needs of the dataset writer it belongs to."""

    @property
    def staging(self) -> Path: ...
    @property
    def part_steps(self) -> int: ...
    def check_open(self) -> None: ...


class LayerWriter:
    """Receives the rows of one layer, in step order, in chunks of any size.

    Each flush of the row buffer (a) hands the raw rows to a background I/O thread writing the
    Parquet parts, (b) folds per-cell min/max/sum/NaN counts while transposing the transformed
    values, (c) indexes the block if the index is fused (``FusedIndex``) and (d) has the I/O
    thread write the transposed values into ``values.bin`` (one ``pwrite`` per cell) and the
    block's row planes. ``sizes.buffer_bytes`` of the owner bounds the buffer.
    """

    def __init__(
        self,
        owner: LayerOwner,
        info: LayerInfo,
        explicit_grid: bool,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self._owner = owner
        self.info = info
        self.explicit_grid = explicit_grid
        self.n_steps = owner.n_steps
        # the rows this writer receives: all T, or one shard [start, stop) of a sharded build
        self.start = start
        self.stop = owner.n_steps if stop is None else stop
        self._part_steps = owner.part_steps
        self.dir = owner.staging / "layers" / info.name
        if start == 0 and stop is None:
            (self.dir / "states").mkdir(parents=True)
        else:  # a shard: save_build made it (an aborted build stays gone)
            (self.dir / "states").mkdir(exist_ok=True)
        d = info.n_cells
        self._raw_dtype = np.dtype(info.dtype)
        self._val_dtype = values_dtype(info.dtype, info.transform)
        row_bytes = d * self._raw_dtype.itemsize
        rows = max(
            ROW_GROUP_STEPS,
            owner.sizes.buffer_bytes // row_bytes // ROW_GROUP_STEPS * ROW_GROUP_STEPS,
        )
        # a power of two that divides the part size, so no flush straddles a part file
        self._buf_rows = min(self._part_steps, 1 << (rows.bit_length() - 1))
        self._bufs = [POOL.take((self._buf_rows, d), self._raw_dtype) for _ in range(2)]
        self._pending: list[Future[None] | None] = [None, None]
        self._cur = 0
        self._fill = 0
        self.rows_written = 0  # rows flushed or buffered
        self._flushed = start  # the step of the first row not yet flushed
        # transposed rows; the row stride is padded off a power of two (see the kernels) by
        # 512 bytes, so that each row starts aligned for O_DIRECT
        pad = 512 // self._val_dtype.itemsize
        # one: the next block is transposed after the I/O thread has written this one (measured:
        # ~1.4 CPU-s less per 1e7 steps than two buffers that let the transpose run beside the
        # writes, which cost ~1 s of wall time; the transposed block stays in cache)
        self._tbase = POOL.take((d, self._buf_rows + pad), self._val_dtype)
        self._values_pending: Future[None] | None = None
        self.cmin = np.full(d, np.inf, np.float32)
        self.cmax = np.full(d, -np.inf, np.float32)
        self.csum = np.zeros(d, np.float64)
        self.cnan = np.zeros(d, np.int64)
        # the whole layer in one writer builds its index as the rows come (FusedIndex) and
        # never reads values.bin back, which it therefore writes around the page cache
        self._fused: FusedIndex | bool | None = start == 0 and stop is None
        size = d * self.n_steps * self._val_dtype.itemsize
        if self._fused:
            self._values: DirectFile | None = DirectFile(self.dir / "values.bin", size)
            self._values_fd = self._values.fd
        else:
            self._values = None
            self._values_fd = os.open(self.dir / "values.bin", os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(self._values_fd).st_size != size:  # shards of a sharded build share it
                os.ftruncate(self._values_fd, size)
        self._row_bytes = row_bytes
        self._states_meta = {
            STATES_META_DTYPE: info.dtype.encode(),
            STATES_META_CELLS: str(d).encode(),
            b"hiddenscope.byte_order": b"little",
        }
        self._part: StatesParquetWriter | None = None
        self._part_index = -1
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parquet-{info.name}")
        self._lut = f16_lut() if info.dtype == "float16" else None
        self.timings: dict[str, float] = {"transform": 0.0, "stats": 0.0, "values": 0.0}
        self.parquet_wait = 0.0  # seconds the caller waited for the Parquet thread
        self.closed = False

    def write(self, chunk: npt.ArrayLike) -> None:
        """Append rows ``(n, D)`` of raw values (any real float dtype; cast to the layer's
        storage dtype). NaN is allowed (it is never on); ±inf is not.

        Raises:
            InvalidData: wrong rank, width or dtype, more than ``T`` rows in total, infinite values.
            Conflict: the dataset was published or aborted.
        """
        self._owner.check_open()
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
        if self.rows_written + n > self.stop - self.start:
            raise InvalidData(
                f"layer {name!r}: {self.rows_written + n} rows written but "
                + (
                    f"the dataset declares n_steps={self.n_steps}; write exactly T rows in total"
                    if self.start == 0 and self.stop == self.n_steps
                    else f"the shard has {self.stop - self.start} steps"
                )
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
        if self.rows_written == self.stop - self.start and n:
            self.finish()  # complete: its buffers go to the next layer now, not at publication

    def _buf(self) -> npt.NDArray[Any]:
        fut = self._pending[self._cur]
        if fut is not None:  # the Parquet thread still reads this buffer
            t = time.perf_counter()
            fut.result()
            self.parquet_wait += time.perf_counter() - t
            self._pending[self._cur] = None
        return self._bufs[self._cur]

    def _flush(self) -> None:
        n = self._fill
        if n == 0:
            return
        raw = self._bufs[self._cur][:n]
        t0 = self._flushed
        # the Parquet thread starts on the raw rows at once (it only reads them)
        self._pending[self._cur] = self._pool.submit(self._write_parquet, raw, t0)
        tic = time.perf_counter()
        v = transform_values(raw, self.info.transform)
        tac = time.perf_counter()
        cmin, cmax = self.cmin.copy(), self.cmax.copy()
        csum, cnan = self.csum.copy(), self.cnan.copy()
        if self._values_pending is not None:  # the last block's values.bin writes
            t = time.perf_counter()
            self._values_pending.result()
            self.parquet_wait += time.perf_counter() - t
            self._values_pending = None
        tbase = self._tbase
        tb = tbase[:, : self._buf_rows]
        f16 = v.dtype == np.float16
        # the fast kernel first; a chunk with NaN or infinity is redone by the exact one
        kmin = np.full(self.info.n_cells, np.iinfo(np.int32).max, np.int32)
        kmax = np.full(self.info.n_cells, np.iinfo(np.int32).min, np.int32)
        fsum = np.zeros(self.info.n_cells, np.float64)
        if f16:
            bad = fast_stats_transpose_f16(v.view(np.uint16), tb.view(np.uint16), kmin, kmax, fsum)
        else:
            bad = fast_stats_transpose_f32(v, tb, kmin, kmax, fsum)
        n_inf = 0
        if bad == 0:
            lo, hi = keys_to_f32(kmin, kmax, f16)
            np.minimum(cmin, lo, out=cmin)
            np.maximum(cmax, hi, out=cmax)
            csum += fsum
        elif f16:
            assert self._lut is not None
            n_inf = stats_transpose_f16(
                v.view(np.uint16), self._lut, tb.view(np.uint16), cmin, cmax, csum, cnan
            )
        else:
            n_inf = stats_transpose_f32(v, tb, cmin, cmax, csum, cnan)
        toc = time.perf_counter()
        if n_inf:
            raise InvalidData(
                f"layer {self.info.name!r}: {n_inf} infinite values in steps [{t0}, {t0 + n}) "
                f"(after casting to {self.info.dtype}); replace them with NaN or clip them"
            )
        self.cmin, self.cmax, self.csum, self.cnan = cmin, cmax, csum, cnan
        if self._fused is True:  # the first flush: is the grid known?
            self._fused = self._start_fused()
        if isinstance(self._fused, FusedIndex):
            self._fused.add(tbase, v, n, t0, self.cmin, self.cmax)
        # values.bin and the row planes are written by the I/O thread (after this buffer's
        # Parquet rows; _buf waits for it before the raw buffer is reused, the next flush
        # before the transposed buffer is)
        fut = self._pool.submit(self._write_values, n, t0)
        self._pending[self._cur] = self._values_pending = fut
        self.timings["transform"] += tac - tic
        self.timings["stats"] += toc - tac
        self.timings["index"] = self.timings.get("index", 0.0) + time.perf_counter() - toc
        self._cur ^= 1
        self._fill = 0
        self._flushed += n

    def _write_values(self, n: int, t0: int) -> None:
        """values.bin (one pwrite per cell row, each a contiguous run of ``n`` values) and the
        row planes of the last flushed block."""
        tic = time.perf_counter()
        tb = self._tbase
        item = self._val_dtype.itemsize
        for c in range(self.info.n_cells):
            if self._values is not None:
                self._values.pwrite(tb[c, :n], (c * self.n_steps + t0) * item)
            else:
                os.pwrite(self._values_fd, tb[c, :n].data, (c * self.n_steps + t0) * item)
        if isinstance(self._fused, FusedIndex):
            self._fused.write_rows(n, t0)
        self.timings["values"] += time.perf_counter() - tic

    def _start_fused(self) -> FusedIndex | None:
        """The fused index of this layer, if its grid is known now: the explicit one, or the
        default grid of the value range seen so far - a guess that ``fused_index`` checks
        against the whole range at publication (the default grid is made of "nice" numbers,
        so the first rows usually give the same one)."""
        if self.explicit_grid:
            grid = list(self.info.thresholds)
        else:
            finite = self.cmin <= self.cmax
            if not finite.any():
                return None  # no value seen yet: the index is built from values.bin
            grid = default_grid(float(self.cmin[finite].min()), float(self.cmax[finite].max()))
        return FusedIndex(self._owner, self.info, self.dir, grid, self._buf_rows, self._val_dtype)

    def fused_index(self, grid: Sequence[float], frame: tuple[int, int]) -> FusedIndex | None:
        """The index built during the writes, if it was built for ``grid`` and its histogram
        has the bins ``frame`` of the layer's whole value range (after ``finish``)."""
        f = self._fused
        if not isinstance(f, FusedIndex) or f.grid != list(grid):
            return None
        if f.hist.frame != frame and f.hist.frame is not None:
            return None
        return f

    def _write_parquet(self, raw: npt.NDArray[Any], t0: int) -> None:
        part = t0 // self._part_steps
        if part != self._part_index:
            if self._part is not None:
                self._part.close()
            self._part = StatesParquetWriter(
                self.dir / "states" / f"part-{part:05d}.parquet",
                self._row_bytes,
                ROW_GROUP_STEPS,
                self._states_meta,
            )
            self._part_index = part
        assert self._part is not None
        self._part.write(raw)

    def finish(self) -> None:
        """Flush the last rows and close the files (called by ``publish``)."""
        if self.closed:
            return
        if self.rows_written != self.stop - self.start:
            raise InvalidData(
                f"layer {self.info.name!r} has {self.rows_written} rows but the dataset declares "
                f"n_steps={self.n_steps}"
                + (
                    ""
                    if self.stop - self.start == self.n_steps
                    else f" (shard [{self.start}, {self.stop}))"
                )
            )
        self._flush()
        for fut in self._pending:
            if fut is not None:
                fut.result()
        self._pool.shutdown()
        if self._part is not None:
            self._part.close()
        if isinstance(self._fused, FusedIndex):
            self._fused.finish()
        if self._values is not None:
            self._values.close()
        else:
            os.close(self._values_fd)
        self.closed = True
        self._give_buffers()

    def _give_buffers(self) -> None:
        """Hand the block buffers to the next layer built in this process (no thread uses
        them any more)."""
        for b in self._bufs:
            POOL.give(b)
        POOL.give(self._tbase)
        self._bufs = []

    def close_quietly(self) -> None:
        """Release threads and file handles without finishing (abort)."""
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            if self._part is not None:
                self._part.abort()
        if isinstance(self._fused, FusedIndex):
            self._fused.close()
        with contextlib.suppress(OSError):
            if self._values is not None:
                self._values.close()
            else:
                os.close(self._values_fd)
        self._give_buffers()
