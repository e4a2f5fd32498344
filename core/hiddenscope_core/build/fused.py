"""The index of a layer built as its rows are flushed (``FusedIndex``).

When the grid is known at a layer's first flush (an explicit grid, or the default grid of the
first flushed rows, checked against the whole value range at publication), each flushed block
is indexed at once - planes, row planes, run counts, on counts and histogram - while its
transposed values are in memory, so ``values.bin`` is never read back. Otherwise the index
is built from ``values.bin`` after the last row (``index.IndexBuild.planes_range``); both give
the same files.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hiddenscope_core import bits
from hiddenscope_core.build.format import HIST_BINS
from hiddenscope_core.build.histograms import Hist, hist_block, hist_block_f16
from hiddenscope_core.build.kernels import f16_lut, planes_f16, planes_f32, rows_block, rows_f32
from hiddenscope_core.build.sizes import BuildSizes
from hiddenscope_core.direct_io import POOL, DirectFile
from hiddenscope_core.models import LayerInfo


class IndexOwner(Protocol):
    """What a fused index needs of the dataset writer it belongs to."""

    @property
    def n_steps(self) -> int: ...
    @property
    def sizes(self) -> BuildSizes: ...
    def sequence_start_words(self, b0: int, b1: int) -> npt.NDArray[np.uint64]: ...


class FusedIndex:
    """The index of a layer built as its rows are flushed, when the grid is known by then:
    planes, row planes, run counts, on counts and histogram of each block of transposed values
    while they are in cache, so ``values.bin`` is never read back. ``planes.bin`` is written
    in runs of several blocks per (threshold, cell) (it is read back for the intervals, through
    the page cache); ``rows.bin`` with ``O_DIRECT``."""

    def __init__(
        self,
        owner: IndexOwner,
        info: LayerInfo,
        directory: Path,
        grid: list[float],
        buf_rows: int,
        vdt: np.dtype[Any],
    ) -> None:
        self.owner = owner
        self.grid = grid
        T, D, G = owner.n_steps, info.n_cells, len(grid)
        self.T, self.D, self.G = T, D, G
        self.W = bits.n_words(T)
        self.Dw = bits.n_words(D)
        self.f16 = vdt == np.float16
        self.chunk_log2 = chunk_log2 = owner.sizes.interval_chunk_log2
        K = ((T - 1) >> chunk_log2) + 1
        self.counts = np.zeros((max(G, 1), D, K), np.int64)
        self.ons = np.zeros((max(G, 1), D), np.int64)
        self.carry = np.zeros((max(G, 1), D), np.uint64)
        self.hist = Hist(D)
        self.h32 = np.zeros((D, HIST_BINS), np.int32)
        self.th32 = np.asarray([bits.f32_threshold(t) for t in grid], np.float32)
        self.keys = np.asarray([bits.f16_key_threshold(t) for t in grid], np.int64)
        self.lut = f16_lut() if self.f16 else None
        self.idx = np.empty(buf_rows, np.int32)
        self.tmp = np.empty(buf_rows if self.f16 else 0, np.float32)
        self.kv = np.empty(bits.n_words(buf_rows) << 6, np.uint16)
        bw = bits.n_words(buf_rows)
        # planes of up to ~32 MB of blocks are gathered before they are written
        per_block = max(G, 1) * D * bw * 8
        self.acc_words = bw * max(1, (32 << 20) // per_block)
        # uninitialised: the kernels write every word before it is written out
        self.pl = POOL.take((max(G, 1), D, self.acc_words), np.uint64)
        self.acc_w0 = 0  # first word of the gathered planes
        self.acc_n = 0  # words gathered
        self.rows_blk = POOL.take((max(G, 1), buf_rows, self.Dw), np.uint64)
        self.planes_fd = -1
        self.rows: DirectFile | None = None
        if G:
            self.planes_fd = os.open(directory / "planes.bin", os.O_RDWR | os.O_CREAT, 0o644)
            size = G * D * self.W * 8
            if os.fstat(self.planes_fd).st_size != size:
                os.ftruncate(self.planes_fd, size)
            self.rows = DirectFile(directory / "rows.bin", G * T * self.Dw * 8)
        self.timings = {"planes": 0.0, "hist": 0.0, "rows": 0.0, "planes_io": 0.0}

    def add(
        self,
        vals: npt.NDArray[Any],
        rowwise: npt.NDArray[Any],
        n: int,
        t0: int,
        cmin: npt.NDArray[np.float32],
        cmax: npt.NDArray[np.float32],
    ) -> None:
        """Index steps ``[t0, t0 + n)`` (``t0 % 64 == 0``): the first ``n`` values of each row
        of ``vals`` ``(D, >= n)``, C-contiguous; ``rowwise``: the same values row-major ``(n,
        D)``. ``cmin``/``cmax``: the range so far. The row planes stay in a buffer for
        ``write_rows``."""
        tic = time.perf_counter()
        finite = cmin <= cmax
        if finite.any():
            self.hist.cover(float(cmin[finite].min()), float(cmax[finite].max()))
        sc, j0 = self.hist.scale, self.hist.j0
        h32 = self.h32  # int32 counts of one block: half the cache footprint of int64
        h32[:] = 0
        if self.f16:
            assert self.lut is not None
            hist_block_f16(vals.view(np.uint16), n, self.lut, sc, j0, h32, self.tmp, self.idx)
        else:
            hist_block(vals, n, sc, j0, h32, self.idx)
        self.hist.h += h32
        tac = time.perf_counter()
        self.timings["hist"] += tac - tic
        G = self.G
        if G == 0:
            return
        nw = bits.n_words(n)
        if self.acc_n + nw > self.acc_words:
            self._write_planes()
        if self.acc_n == 0:
            self.acc_w0 = t0 >> 6
        cnt = np.zeros((G, self.D), np.int64)
        chunk_log2 = self.chunk_log2
        a = t0
        while a < t0 + n:  # run starts are counted per interval chunk
            b = min(t0 + n, ((a >> chunk_log2) + 1) << chunk_log2)
            bm = self.owner.sequence_start_words(a, b)
            cnt[:] = 0
            w = self.acc_n + ((a - t0) >> 6)
            if self.f16:
                planes_f16(
                    vals.view(np.uint16), a - t0, b - a, self.keys, bm, self.carry, self.pl, w,
                    cnt, self.ons, self.kv,
                )  # fmt: skip
            else:
                planes_f32(
                    vals, a - t0, b - a, self.th32, bm, self.carry, self.pl, w, cnt, self.ons
                )
            self.counts[:, :, a >> chunk_log2] += cnt
            a = b
        toc = time.perf_counter()
        rb = self.rows_blk[:, :n]
        if self.f16:
            rows_block(self.pl[:, :, self.acc_n : self.acc_n + nw], rb, n)
        else:
            rows_f32(np.ascontiguousarray(rowwise), n, self.th32, rb)
        self.acc_n += nw
        self.timings["planes"] += toc - tac
        self.timings["rows"] += time.perf_counter() - toc

    def write_rows(self, n: int, t0: int) -> None:
        """Write the row planes of the last ``add`` (on the I/O thread)."""
        if self.rows is None:
            return
        rb = self.rows_blk
        for g in range(self.G):
            self.rows.pwrite(rb[g, :n], (g * self.T + t0) * self.Dw * 8)

    def _write_planes(self) -> None:
        tic = time.perf_counter()
        k = self.acc_n
        for g in range(self.G):
            for c in range(self.D):
                off = ((g * self.D + c) * self.W + self.acc_w0) * 8
                os.pwrite(self.planes_fd, self.pl[g, c, :k].data, off)
        self.acc_n = 0
        self.timings["planes_io"] += time.perf_counter() - tic

    def finish(self) -> None:
        if self.G and self.acc_n:
            self._write_planes()
        self.close()

    def close(self) -> None:
        if self.planes_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.planes_fd)
            self.planes_fd = -1
        if self.rows is not None:
            self.rows.close()
        POOL.give(self.pl)
        POOL.give(self.rows_blk)
