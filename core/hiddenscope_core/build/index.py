"""The index build of a dataset's layers, after their last row: planes and row planes from
``values.bin`` (unless built during the writes or by the shards), interval files, statistics
and ``index.duckdb``.

* When the grid is known as the rows arrive, each flushed block was indexed at once
  (``fused.FusedIndex``) and ``values.bin`` is never read back; otherwise (a sharded build, a
  default grid that the later rows changed) the index is built from ``values.bin`` after the
  last row (``IndexBuild.planes_range``), or by the shards of a sharded build
  (``DatasetWriter.index_layer_shard``, the same function over the shard's steps). All give the
  same files: the histogram bins are a function of the value range alone
  (``histograms.hist_frame``).
* ``rows.bin`` (row-major planes for the match kernel) is made in the same pass as the planes:
  from the planes by 64x64 bit-matrix transposes of blocks that are still in cache
  (``kernels.rows_block``; about 0.1 operation per bit instead of a second comparison of every
  value with every threshold), or, in the fused float32 path, straight from the row-major
  values of the flushed block (``kernels.rows_f32``).
* On-intervals are **Parquet files** in the dataset (``layers/<layer>/intervals/part-*.parquet``,
  sorted by (threshold, cell, start), delta-encoded), and ``index.duckdb`` only defines the view
  ``on_intervals`` over them (paths relative to the dataset directory; readers set
  ``file_search_path``, see ``reader.Dataset.connect``). Reason: DuckDB inserts run at 10-27 M
  rows/s, while noisy LSTM-like states give ~20 on-intervals per step at D=64 and 9 thresholds
  (2e8 per 1e7 steps), i.e. 8-20 s of inserts per 1e7 steps. ``intervals`` extracts them from
  the planes after the last row, one page of starts and ends at a time, and encodes each page
  at once with ``parquet.delta``'s kernels (~290 M intervals per CPU-second, O_DIRECT writes);
  the run starts counted per (threshold, cell, ``2^interval_chunk_log2``-step chunk) by the
  plane pass check it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from hiddenscope_core import bits
from hiddenscope_core.build.format import (
    DUCKDB_MEMORY_LIMIT,
    HIST_BINS,
    QUANTILE_COLUMNS,
    interval_glob,
)
from hiddenscope_core.build.histograms import hist_block, hist_block_f16, hist_frame, hist_quantiles
from hiddenscope_core.build.intervals import write_layer_intervals
from hiddenscope_core.build.kernels import f16_lut, planes_f16, planes_f32, rows_block
from hiddenscope_core.build.layer import LayerWriter
from hiddenscope_core.build.sharded import ShardedLayer
from hiddenscope_core.build.sizes import BuildSizes
from hiddenscope_core.errors import InvalidData
from hiddenscope_core.models import LayerInfo
from hiddenscope_core.thresholds import default_grid
from hiddenscope_core.transforms import values_dtype


class LayerStats(Protocol):
    """What the index build needs of a layer: its info, directory and value statistics."""

    info: LayerInfo
    dir: Path
    explicit_grid: bool
    cmin: npt.NDArray[np.float32]
    cmax: npt.NDArray[np.float32]
    csum: npt.NDArray[np.float64]
    cnan: npt.NDArray[np.int64]


def value_range(lw: LayerStats) -> tuple[float | None, float | None]:
    """The smallest and largest finite value of the layer (None, None without any)."""
    finite = lw.cmin <= lw.cmax
    if not finite.any():
        return None, None
    return float(lw.cmin[finite].min()), float(lw.cmax[finite].max())


def layer_grid(lw: LayerStats) -> list[float]:
    """The layer's threshold grid: the explicit one, or the default for its value range."""
    if lw.explicit_grid:
        return list(lw.info.thresholds)
    vmin, vmax = value_range(lw)
    return default_grid(vmin, vmax) if vmin is not None and vmax is not None else []


def layer_hist_frame(lw: LayerStats) -> tuple[int, int]:
    """``hist_frame`` of the layer's value range ((0, 0) without finite values)."""
    vmin, vmax = value_range(lw)
    if vmin is None or vmax is None:
        return 0, 0
    return hist_frame(vmin, vmax)


def sequence_start_words(starts: npt.NDArray[np.int64], b0: int, b1: int) -> npt.NDArray[np.uint64]:
    """Bit ``t`` set where a sequence (other than the first) starts, for steps [b0, b1)
    (``starts``: the sequences' first steps, sorted; the words from ``b0 >> 6``)."""
    w0, w1 = b0 >> 6, bits.n_words(b1)
    bm = np.zeros(w1 - w0, np.uint64)
    # sorted: a binary search, not a scan of every sequence
    s = starts[np.searchsorted(starts, max(b0, 1)) : np.searchsorted(starts, b1)]
    if s.size:
        rel = s - (w0 << 6)
        np.bitwise_or.at(bm, rel >> 6, np.left_shift(np.uint64(1), (rel & 63).astype(np.uint64)))
    return bm


class IndexBuild:
    """Builds the index of one dataset's layers in its staging directory.

    ``timings`` (seconds per phase, for benchmarks) is added to; ``sources`` says per layer
    where its planes came from: ``fused`` (during the writes), ``values.bin`` (rebuilt after
    the last row) or ``shards`` (by ``index_layer_shard``).
    """

    def __init__(
        self,
        staging: Path,
        n_steps: int,
        starts: npt.NDArray[np.int64],
        sizes: BuildSizes,
        *,
        n_shards: int = 0,
        duckdb_threads: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.staging = staging
        self.n_steps = n_steps
        self.starts = starts
        self.sizes = sizes
        self.n_shards = n_shards
        self.duckdb_threads = duckdb_threads
        self.timings: dict[str, float] = {} if timings is None else timings
        self.sources: dict[str, str] = {}

    def build(self, layers: Sequence[LayerStats]) -> list[LayerInfo]:
        """Planes, rows, interval Parquet files and statistics of every layer; then
        ``index.duckdb`` with the native tables and the ``on_intervals`` view. Returns the
        layers' infos with their grids and value statistics."""
        if len(layers) > 255:
            raise InvalidData("at most 255 layers per dataset")
        infos: list[LayerInfo] = []
        stats_tables: list[pa.Table] = []
        frac_tables: list[pa.Table] = []
        for lw in layers:
            info, st_tab, fr_tab = self.index_layer(lw)
            infos.append(info)
            stats_tables.append(st_tab)
            if fr_tab is not None:
                frac_tables.append(fr_tab)
        tic = time.perf_counter()
        path = self.staging / "index.duckdb"
        config: dict[str, Any] = {"memory_limit": DUCKDB_MEMORY_LIMIT}
        if self.duckdb_threads is not None:
            config["threads"] = self.duckdb_threads
        con = duckdb.connect(str(path), config=config)
        try:
            # the view's paths are relative to the dataset directory (it is renamed at
            # publication); every reader sets the same search path (reader.Dataset.connect)
            con.execute(f"SET file_search_path = {_sql_str(str(self.staging))}")
            con.execute("BEGIN")
            con.execute("CREATE TABLE layers (layer_id UTINYINT PRIMARY KEY, name VARCHAR)")
            con.execute(
                "CREATE TABLE layer_thresholds (layer_id UTINYINT, g SMALLINT, threshold DOUBLE)"
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
            selects = []
            for layer_id, info in enumerate(infos):
                con.execute("INSERT INTO layers VALUES (?, ?)", [layer_id, info.name])
                for g, theta in enumerate(info.thresholds):
                    con.execute(
                        "INSERT INTO layer_thresholds VALUES (?, ?, ?)", [layer_id, g, theta]
                    )
                selects.append(
                    f"SELECT {_sql_str(info.name)} AS layer, t.threshold, "
                    "CAST(i.cell AS INTEGER) AS cell, CAST(i.start AS BIGINT) AS start, "
                    'CAST(i."end" AS BIGINT) AS "end" '
                    f"FROM read_parquet({_sql_str(interval_glob(info.name))}) i "
                    f"JOIN layer_thresholds t ON t.layer_id = {layer_id} "
                    "AND t.g = i.threshold_index"
                )
            con.execute("CREATE VIEW on_intervals AS " + " UNION ALL ".join(selects))
            for tab, table in [("cell_stats", t) for t in stats_tables] + [
                ("cell_on_fraction", t) for t in frac_tables
            ]:
                con.register("src", table)
                con.execute(f"INSERT INTO {tab} SELECT * FROM src")
                con.unregister("src")
            con.execute("COMMIT")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        self.timings["duckdb"] = time.perf_counter() - tic
        return infos

    def planes_range(
        self, lw: LayerStats, grid: list[float], start: int, stop: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Build ``planes.bin`` and ``rows.bin`` for steps ``[start, stop)`` (``start % 64 ==
        0``) from ``values.bin``, block by block in memory, written with ``pwrite`` (so
        disjoint ranges can be built by different processes). Returns this range's value
        histogram ``(D, HIST_BINS)``, run-start counts per interval chunk ``(G, D, K)`` (a
        run that starts at ``start`` counts only if step ``start - 1`` is off or in another
        sequence) and on-step counts ``(G, D)``."""
        info = lw.info
        T, D = self.n_steps, info.n_cells
        G = len(grid)
        W = bits.n_words(T)
        Dw = bits.n_words(D)
        chunk_log2 = self.sizes.interval_chunk_log2
        K = ((T - 1) >> chunk_log2) + 1
        vdt = values_dtype(info.dtype, info.transform)
        k, j0i = layer_hist_frame(lw)
        scale, j0 = math.ldexp(1.0, -k), float(j0i)
        hist = np.zeros((D, HIST_BINS), np.int64)
        ons = np.zeros((max(G, 1), D), np.int64)
        counts = np.zeros((max(G, 1), D, K), np.int64)
        # values.bin is read block by block with pread (not mapped: the resident set of a
        # worker stays at its buffers, whatever T is)
        item = np.dtype(vdt).itemsize
        fd_values = os.open(lw.dir / "values.bin", os.O_RDONLY)
        th32 = np.asarray([bits.f32_threshold(t) for t in grid], np.float32)
        keys = np.asarray([bits.f16_key_threshold(t) for t in grid], np.int64)
        lut = f16_lut()
        # a power of two between 64 steps and one interval chunk
        target = max(64, self.sizes.block_values // D)
        block = min(1 << chunk_log2, 1 << (target.bit_length() - 1))
        n_blk = min(block, stop - start)
        pl = np.zeros((G, D, bits.n_words(n_blk)), np.uint64)  # the block's planes
        rows_blk = np.zeros((G, n_blk, Dw), np.uint64)
        vals = np.empty((D, n_blk), vdt)  # the block's values
        idx = np.empty(n_blk, np.int32)  # histogram scratch
        f16_tmp = np.empty(n_blk if vdt == np.float16 else 0, np.float32)
        kv = np.empty(bits.n_words(n_blk) << 6, np.uint16)  # float16 keys scratch
        # carry[g, c]: whether step start-1 is on (a run going on across the range start)
        carry = np.zeros((G, D), np.uint64)
        if G and start > 0 and not np.isin(start, self.starts):
            prev = np.empty(D, vdt)
            for c in range(D):
                os.preadv(fd_values, [prev[c : c + 1].data], (c * T + start - 1) * item)
            if vdt == np.float16:
                u = prev.view(np.uint16).astype(np.int64)
                pk = np.where(u & 0x8000, (~u) & 0xFFFF, u | 0x8000)
                pk[(u & 0x7FFF) > 0x7C00] = 0  # NaN is off
                carry[:] = (pk[None, :] >= keys[:, None]).astype(np.uint64)
            else:
                carry[:] = (prev[None, :] >= th32[:, None]).astype(np.uint64)
        tic = time.perf_counter()
        t_rows = t_io = 0.0
        fd_planes = os.open(lw.dir / "planes.bin", os.O_RDWR | os.O_CREAT, 0o644)
        fd_rows = os.open(lw.dir / "rows.bin", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for fd, size in ((fd_planes, G * D * W * 8), (fd_rows, G * T * Dw * 8)):
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
            b0 = start
            while b0 < stop:
                # a block never straddles an interval chunk (its starts are counted per chunk)
                b1 = min(stop, b0 + block, ((b0 >> chunk_log2) + 1) << chunk_log2)
                n = b1 - b0
                for c in range(D):
                    got = os.preadv(fd_values, [vals[c, :n].data], (c * T + b0) * item)
                    if got != n * item:
                        raise InvalidData(f"layer {info.name!r}: values.bin is short at {b0}")
                if vdt == np.float16:
                    u16 = vals.view(np.uint16)
                    hist_block_f16(u16, n, lut, scale, j0, hist, f16_tmp, idx)
                else:
                    hist_block(vals, n, scale, j0, hist, idx)
                if G == 0:  # no planes: only the histogram
                    b0 = b1
                    continue
                bm = self.sequence_start_words(b0, b1)
                cnt = np.zeros((G, D), np.int64)
                nw = bits.n_words(b1 - b0)
                if vdt == np.float16:
                    planes_f16(u16, 0, n, keys, bm, carry, pl, 0, cnt, ons, kv)
                else:
                    planes_f32(vals, 0, n, th32, bm, carry, pl, 0, cnt, ons)
                counts[:, :, b0 >> chunk_log2] += cnt
                tr = time.perf_counter()
                rb = rows_blk[:, : b1 - b0]
                rows_block(pl[:, :, :nw], rb, b1 - b0)
                ti = time.perf_counter()
                w0 = b0 >> 6
                for g in range(G):
                    for c in range(D):
                        os.pwrite(fd_planes, pl[g, c, :nw].data, ((g * D + c) * W + w0) * 8)
                    os.pwrite(fd_rows, np.ascontiguousarray(rb[g]).data, (g * T + b0) * Dw * 8)
                t_rows += ti - tr
                t_io += time.perf_counter() - ti
                b0 = b1
        finally:
            os.close(fd_planes)
            os.close(fd_rows)
            os.close(fd_values)
        t_planes = time.perf_counter() - tic - t_rows - t_io
        self.timings["planes"] = self.timings.get("planes", 0.0) + t_planes
        self.timings["rows"] = self.timings.get("rows", 0.0) + t_rows
        self.timings["planes_io"] = self.timings.get("planes_io", 0.0) + t_io
        return hist, counts, ons

    def index_layer(self, lw: LayerStats) -> tuple[LayerInfo, pa.Table, pa.Table | None]:
        """Index one layer: its planes and row planes (unless built during the writes or by
        the shards), its interval files, and its ``cell_stats`` and ``cell_on_fraction``
        rows. Returns its info with the grid and value statistics, and the two tables."""
        info = lw.info
        T, D = self.n_steps, info.n_cells
        finite = lw.cmin <= lw.cmax
        n_valid = T - lw.cnan  # non-NaN values per cell (inf was rejected)
        vmin, vmax = value_range(lw)
        nan_count = int(lw.cnan.sum())
        vmean = float(lw.csum.sum() / n_valid.sum()) if n_valid.sum() else None
        grid = layer_grid(lw)
        G = len(grid)
        W = bits.n_words(T)
        frame = layer_hist_frame(lw)
        merged = lw.merged_index(self.n_shards) if isinstance(lw, ShardedLayer) else None
        fused = lw.fused_index(grid, frame) if isinstance(lw, LayerWriter) else None
        if fused is not None:  # built during the writes
            hist, counts, ons = fused.hist.h, fused.counts, fused.ons
            for k, v in fused.timings.items():
                self.timings[k] = self.timings.get(k, 0.0) + v
            self.sources[info.name] = "fused"
        elif merged is None:
            hist, counts, ons = self.planes_range(lw, grid, 0, T)
            self.sources[info.name] = "values.bin"
        else:
            hist, counts, ons = merged
            self.sources[info.name] = "shards"
        tic = time.perf_counter()
        if G:
            planes_map = np.memmap(
                lw.dir / "planes.bin", dtype=np.uint64, mode="r", shape=(G, D, W)
            )
            mm: Any = getattr(planes_map, "_mmap", None)

            def release() -> None:  # drop the read planes from the resident set (not the cache)
                if mm is not None:
                    with contextlib.suppress(OSError, ValueError):
                        mm.madvise(mmap.MADV_DONTNEED)

            self.write_intervals(lw, planes_map.view(np.ndarray), counts[:G], release)
            del planes_map
        else:
            self.write_intervals(lw, np.zeros((0, D, 0), np.uint64), counts[:0])
        self.timings["intervals"] = self.timings.get("intervals", 0.0) + time.perf_counter() - tic

        # per-cell statistics
        cell_min = np.where(finite, lw.cmin, np.nan).astype(np.float64)
        cell_max = np.where(finite, lw.cmax, np.nan).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cell_mean = np.where(n_valid > 0, lw.csum / np.maximum(n_valid, 1), np.nan)
        qs = hist_quantiles(hist, math.ldexp(frame[1], frame[0]), math.ldexp(1.0, -frame[0]),
                             cell_min, cell_max)  # fmt: skip
        stats: dict[str, Any] = {
            "layer": pa.array([info.name] * D, pa.string()),
            "cell": pa.array(np.arange(D, dtype=np.int32)),
            "min": cell_min,
            "max": cell_max,
            "mean": cell_mean,
            "nan_count": lw.cnan,
        }
        for qi, qc in enumerate(QUANTILE_COLUMNS):
            stats[qc] = qs[:, qi]
        frac = None
        if G:
            frac = pa.table(
                {
                    "layer": pa.array([info.name] * (G * D), pa.string()),
                    "threshold": np.repeat(np.asarray(grid, np.float64), D),
                    "cell": np.tile(np.arange(D, dtype=np.int32), G),
                    "fraction": (ons[:G] / T).reshape(-1),
                }
            )
        new_info = info.model_copy(
            update={
                "thresholds": grid,
                "value_min": vmin,
                "value_max": vmax,
                "value_mean": vmean,
                "nan_count": nan_count,
            }
        )
        return new_info, pa.table(stats), frac

    def sequence_start_words(self, b0: int, b1: int) -> npt.NDArray[np.uint64]:
        """``sequence_start_words`` of this dataset's sequences."""
        return sequence_start_words(self.starts, b0, b1)

    def write_intervals(
        self,
        lw: LayerStats,
        planes: npt.NDArray[np.uint64],
        counts: npt.NDArray[np.int64],
        release: Any = None,
    ) -> None:
        """Write the on-intervals of the layer from its planes and per-chunk run counts
        (``intervals``: extraction fused with the Parquet encoding, O_DIRECT)."""
        stats = write_layer_intervals(
            planes,
            counts,
            self.starts,
            self.n_steps,
            lw.dir / "intervals",
            release=release,
            row_group_rows=self.sizes.interval_row_group,
            part_rows=self.sizes.interval_part_rows,
        )
        self.timings["intervals_wait"] = self.timings.get("intervals_wait", 0.0) + stats.wait_s


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
