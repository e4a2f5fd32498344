"""Writing a dataset: streaming ingest into a staging directory, index build, atomic publication.

Layout and API: ``docs/architecture.md``. Memory stays bounded whatever ``T`` is: layer rows are
buffered in blocks of at most ``_BUFFER_BYTES``, the index is built per flushed block or in step
blocks of at most ``_BLOCK_VALUES`` values, and on-intervals are extracted and encoded one page
at a time (``interval_build``).

Measured choices (2-vCPU reference box, D=64; numbers in the lead's notes and the PR report):

* Parquet states are one ``FixedSizeBinary(D * itemsize)`` column ``v`` per step holding the raw
  values' little-endian bytes (float32 or float16; the dtype and ``D`` are in the schema
  metadata), **uncompressed**, without statistics or dictionary. pyarrow's fixed-size-list
  encoder costs about 8 ns per value (~2 M steps/s at D=64); a fixed-size binary column is plain
  bytes. On float states LZ4/Snappy gain nothing (ratio 1.00-1.02) and zstd 9-22% at 25-40% less
  write speed. Written by our own writer (``parquet_states``: pages aligned for ``O_DIRECT``,
  ~12x less CPU than pyarrow's writer through the page cache) on a background thread.
* Files the build does not read back (states, ``values.bin``, ``rows.bin``) are written with
  ``O_DIRECT`` (``direct_io``): through the page cache each GB costs this VM class 0.3-1.7
  CPU-seconds of kernel time.
* When the grid is known as the rows arrive (an explicit grid, or the default grid of the first
  flushed rows, checked against the whole value range at publication), each flushed block is
  indexed at once (``_FusedIndex``: planes, row planes, run counts, histogram) while its
  transposed values are in memory, so ``values.bin`` is never read back; otherwise (a sharded
  build, a default grid that the later rows changed) the index is built from ``values.bin``
  after the last row (``_planes_range``). Both give the same files: the histogram bins are a
  function of the value range alone (``hist_frame``).
* On-intervals are **Parquet files** in the dataset (``layers/<layer>/intervals/part-*.parquet``,
  sorted by (threshold, cell, start), delta-encoded), and ``index.duckdb`` only defines the view
  ``on_intervals`` over them (paths relative to the dataset directory; readers set
  ``file_search_path``, see ``reader.Dataset.connect``). Reason: DuckDB inserts run at 10-27 M
  rows/s, while noisy LSTM-like states give ~20 on-intervals per step at D=64 and 9 thresholds
  (2e8 per 1e7 steps), i.e. 8-20 s of inserts per 1e7 steps; pyarrow encodes the same rows at
  ~45 M rows/s. ``interval_build`` extracts them from the planes after the last row, one page of
  starts and ends at a time, and encodes each page at once with ``parquet_intervals``' kernels
  (~290 M intervals per CPU-second, O_DIRECT writes); the run starts counted per (threshold,
  cell, 2^24-step chunk) by the plane pass check it.
* ``rows.bin`` (row-major planes for the match kernel) is made from ``planes.bin`` in the same
  pass by 64x64 bit-matrix transposes of blocks that are still in cache (about 0.1 operation per
  bit instead of a second comparison of every value with every threshold).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import duckdb
import numba as nb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from hiddenscope_core import bits, interval_build
from hiddenscope_core.direct_io import POOL, DirectFile
from hiddenscope_core.errors import Conflict, InvalidData, NotFound
from hiddenscope_core.models import (
    NAME_PATTERN,
    DatasetManifest,
    LayerInfo,
    SequenceInfo,
    StorageDType,
    TrackInfo,
    Transform,
)
from hiddenscope_core.parquet_states import StatesParquetWriter
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
STATES_META_DTYPE = b"hiddenscope.dtype"
"""Parquet schema metadata key of the states' value dtype (``float32`` | ``float16``)."""
STATES_META_CELLS = b"hiddenscope.n_cells"
"""Parquet schema metadata key of ``D`` (values per step)."""
INTERVAL_COLUMNS = ("threshold_index", "cell", "start", "end")
"""Columns of the interval Parquet files: int16 grid index, int32 cell, start and end (exclusive)
as uint32 when ``T < 2^32``, else int64."""
INTERVAL_ROW_GROUP = interval_build.ROW_GROUP_ROWS
INTERVAL_CHUNK_LOG2 = 24
"""Run starts are counted per ``2^24`` steps of each (threshold, cell) (``counts``), which
``interval_build`` checks the extracted runs against."""
DUCKDB_MEMORY_LIMIT = "1GB"

# raw rows buffered per layer before a flush: 64 MB makes values.bin's per-cell writes 1 MB
# at D = 64 (0.04 CPU-s per GB written with O_DIRECT here, 0.17 at 256 KB: benchmarks.md)
_BUFFER_BYTES = 64 << 20
_BLOCK_VALUES = 1 << 22  # values (steps x cells) per index-build block (planes stay in cache)
_INTERVAL_PART_ROWS = interval_build.PART_ROWS  # interval rows per part file
_NAME_RE = NAME_PATTERN
_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")


# ----------------------------------------------------------------------------- numba kernels

# numba intrinsics, typed Any because mypy reads their call signature as (typingctx, x)
_popcount: Any = bits.popcount64


@nb.njit(cache=True, nogil=True)
def _stats_transpose_f32(v: Any, out: Any, cmin: Any, cmax: Any, csum: Any, cnan: Any) -> int:
    """``out[:, :n] = v.T`` (``v`` row-major float32 ``(n, D)``) and fold per-cell
    min/max/sum/NaN count (branch-free over the cells of a row, so it vectorises). Returns the
    number of infinite values (rejected by the caller). Single-threaded: the Parquet thread
    has the other core."""
    n, d = v.shape
    inf = np.float32(np.inf)
    ninf = np.zeros(d, np.int64)
    lo = cmin.copy()
    hi = cmax.copy()
    sm = np.zeros(d, np.float64)
    for i0 in range(0, n, 64):
        i1 = min(n, i0 + 64)
        for i in range(i0, i1):
            for j in range(d):
                x = v[i, j]
                fin = x - x == 0
                isnan = x != x
                cnan[j] += isnan
                ninf[j] += (not fin) and (not isnan)
                lo[j] = min(lo[j], x if fin else inf)
                hi[j] = max(hi[j], x if fin else -inf)
                sm[j] += np.float64(x) if fin else 0.0
        for j in range(d):
            for i in range(i0, i1):
                out[j, i] = v[i, j]
    for j in range(d):
        cmin[j] = lo[j]
        cmax[j] = hi[j]
        csum[j] += sm[j]
    return int(ninf.sum())


@nb.njit(cache=True, nogil=True)
def _stats_transpose_f16(
    v: Any, lut: Any, out: Any, cmin: Any, cmax: Any, csum: Any, cnan: Any
) -> int:
    """As ``_stats_transpose_f32`` for float16 values given as uint16 bit patterns (``out`` gets
    the bit patterns; ``lut`` maps them to float32 for the statistics)."""
    n, d = v.shape
    inf = np.float32(np.inf)
    ninf = np.zeros(d, np.int64)
    lo = cmin.copy()
    hi = cmax.copy()
    sm = np.zeros(d, np.float64)
    for i0 in range(0, n, 64):
        i1 = min(n, i0 + 64)
        for i in range(i0, i1):
            for j in range(d):
                x = lut[v[i, j]]
                fin = x - x == 0
                isnan = x != x
                cnan[j] += isnan
                ninf[j] += (not fin) and (not isnan)
                lo[j] = min(lo[j], x if fin else inf)
                hi[j] = max(hi[j], x if fin else -inf)
                sm[j] += np.float64(x) if fin else 0.0
        for j in range(d):
            for i in range(i0, i1):
                out[j, i] = v[i, j]
    for j in range(d):
        cmin[j] = lo[j]
        cmax[j] = hi[j]
        csum[j] += sm[j]
    return int(ninf.sum())


@nb.njit(cache=True, nogil=True)
def _fast_stats_transpose_f32(v: Any, out: Any, kmin: Any, kmax: Any, csum: Any) -> int:
    """The fast path of ``_stats_transpose_f32`` for rows without NaN or infinity (the
    caller re-runs a chunk that has any with the exact kernel, so this one needs no
    per-value selects): ``out[:, :n] = v.T``; per-cell min/max of the sortable integer keys of
    the float bits (integer min/max vectorises, float min/max with NaN semantics does not)
    and the sum. Returns the number of non-finite values (0: the results are valid).
    ``out``'s row stride must not be a large power of two (the writer pads it), or the 64
    scattered stores of a row fall into one cache set."""
    n, d = v.shape
    vi = v.view(np.int32)
    big = np.int32(0x7FFFFFFF)
    bad = np.zeros(d, np.int32)
    for i in range(n):
        row = vi[i]
        xrow = v[i]
        for j in range(d):
            u = row[j]
            k = u ^ ((u >> 31) & big)
            kmin[j] = min(kmin[j], k)
            kmax[j] = max(kmax[j], k)
            bad[j] += np.int32((u & big) >= 0x7F800000)
        for j in range(d):
            csum[j] += np.float64(xrow[j])
        for j in range(d):
            out[j, i] = xrow[j]
    return int(bad.sum())


@nb.njit(cache=True, nogil=True)
def _fast_stats_transpose_f16(v: Any, out: Any, kmin: Any, kmax: Any, csum: Any) -> int:
    """As ``_fast_stats_transpose_f32`` for float16 bit patterns (uint16): integer keys for
    min/max, and for the sum the value as float32 by moving the bits into place and
    multiplying by 2^112 (exact for every finite float16, subnormals included)."""
    n, d = v.shape
    bad = np.zeros(d, np.int32)
    f32 = np.zeros(d, np.uint32)
    fl = f32.view(np.float32)
    mul = np.float32(2.0**112)
    for i in range(n):
        row = v[i]
        for j in range(d):
            u = np.int32(row[j])
            k = u ^ (0x8000 | ((-(u >> 15)) & 0x7FFF))
            kmin[j] = min(kmin[j], k)
            kmax[j] = max(kmax[j], k)
            bad[j] += np.int32((u & 0x7FFF) >= 0x7C00)
            f32[j] = np.uint32(((u & 0x8000) << 16) | ((u & 0x7FFF) << 13))
        for j in range(d):
            csum[j] += np.float64(fl[j] * mul)
        for j in range(d):
            out[j, i] = row[j]
    return int(bad.sum())


def _keys_to_f32(kmin: npt.NDArray[np.int32], kmax: npt.NDArray[np.int32], f16: bool) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32]
]:  # fmt: skip
    """The float32 values of the sortable keys of ``_fast_stats_transpose_*``."""
    out = []
    for k in (kmin, kmax):
        if f16:
            half = np.where(k & 0x8000, k ^ 0x8000, k ^ 0xFFFF).astype(np.uint16)
            out.append(half.view(np.float16).astype(np.float32))
        else:
            bits32 = k ^ ((k >> 31) & np.int32(0x7FFFFFFF))
            out.append(bits32.astype(np.int32).view(np.float32))
    return out[0], out[1]


@nb.njit(cache=True, nogil=True, inline="always")
def _hist_add(colf: Any, scale: float, j0: float, h: Any, idx: Any) -> None:
    """Add the values of ``colf`` (float32) to the histogram ``h`` of bins ``floor(x x scale) -
    j0`` (``scale`` a power of two, see ``hist_frame``: exact, so any build path puts a value
    in the same bin); NaN is not counted. The bin indices are computed in one vectorised pass
    into ``idx``, then counted (one pass that does both is about 1.2x slower: the increments
    stall the conversions)."""
    top = np.float64(h.shape[0] - 1)
    m = colf.shape[0]
    for i in range(m):
        x = colf[i]
        f = min(max(np.floor(np.float64(x) * scale) - j0, 0.0), top)
        idx[i] = np.int32(f) if x == x else -1
    for i in range(m):
        k = idx[i]
        if k >= 0:
            h[k] += 1


@nb.njit(cache=True, nogil=True, inline="always")
def _fold_run(
    word: Any, w: int, cr: Any, cn: Any, on: Any, bm: Any
) -> tuple[np.uint64, np.uint64, np.uint64]:
    """Count a word's run starts (``on & ~prev | on & boundary``) and on bits; ``cr`` is the
    last bit of the previous word. Returns the new ``(cr, cn, on)``."""
    one = np.uint64(1)
    sh = (word << one) | cr
    cn += _popcount(word & (~sh | bm[w]))
    on += _popcount(word)
    return word >> np.uint64(63), cn, on


@nb.njit(cache=True, nogil=True)
def _planes_f32(
    vals: Any,
    v0: int,
    n: int,
    th32: Any,
    bm: Any,
    carry: Any,
    pl: Any,
    w0: int,
    counts: Any,
    ons: Any,
) -> None:
    """On-planes of the values ``v0 .. v0 + n`` of every row of ``vals`` (float32,
    C-contiguous; ``v0`` and the block's first step are multiples of 64) into words ``w0 ...``
    of ``pl`` ``(G, D, nw)``; run starts are added to ``counts`` ``(G, D)`` and on steps to ``ons``;
    ``carry[g, c]`` is the bit of the step before the block (updated). ``th32[g]`` is the
    smallest float32 ``>= θ_g``, so ``v >= θ`` is ``v >= th32`` (NaN is off). A full word is
    one 64-lane vector compare (``bits.ge64_f32``), 4-5x faster than the shifted compares of
    the previous kernel, and the run counts stay in registers per (threshold, cell)."""
    d = vals.shape[0]
    g_n = th32.shape[0]
    nw_full = n >> 6
    rem = n & 63
    for c in range(d):
        col = vals[c]
        for g in range(g_n):
            t = np.float32(th32[g])
            cr, cn, on = carry[g, c], np.uint64(0), np.uint64(0)
            for w in range(nw_full):
                word = bits.ge64_f32(col, v0 + (w << 6), t)
                pl[g, c, w0 + w] = word
                cr, cn, on = _fold_run(word, w, cr, cn, on, bm)
            if rem:
                base = v0 + (nw_full << 6)
                word = np.uint64(0)
                for j in range(rem):
                    word |= np.uint64(col[base + j] >= t) << np.uint64(j)
                pl[g, c, w0 + nw_full] = word
                cr, cn, on = _fold_run(word, nw_full, cr, cn, on, bm)
            carry[g, c] = cr
            counts[g, c] += cn
            ons[g, c] += on


@nb.njit(cache=True, nogil=True)
def _planes_f16(
    vals: Any,
    v0: int,
    n: int,
    keys: Any,
    bm: Any,
    carry: Any,
    pl: Any,
    w0: int,
    counts: Any,
    ons: Any,
    kv: Any,
) -> None:
    """As ``_planes_f32`` for float16 values given as uint16 bit patterns: each value's sortable
    key (0 for NaN, below every threshold key) goes into the scratch ``kv`` (at least
    ``n`` rounded up to 64), which is compared with ``keys[g]`` from
    ``bits.f16_key_threshold``."""
    d = vals.shape[0]
    g_n = keys.shape[0]
    nw = (n + 63) >> 6
    for c in range(d):
        col = vals[c]
        for j in range(n):
            u = np.int32(col[v0 + j])
            k = ((~u) & 0xFFFF) if u & 0x8000 else (u | 0x8000)
            kv[j] = np.uint16(0) if (u & 0x7FFF) > 0x7C00 else np.uint16(k)
        for j in range(n, nw << 6):
            kv[j] = 0
        for g in range(g_n):
            kg = np.uint16(keys[g])
            cr, cn, on = carry[g, c], np.uint64(0), np.uint64(0)
            for w in range(nw):
                word = bits.ge64_u16(kv, w << 6, kg)
                pl[g, c, w0 + w] = word
                cr, cn, on = _fold_run(word, w, cr, cn, on, bm)
            carry[g, c] = cr
            counts[g, c] += cn
            ons[g, c] += on


@nb.njit(cache=True, nogil=True)
def _hist_block(vals: Any, n: int, scale: float, j0: float, hist: Any, idx: Any) -> None:
    """Add the first ``n`` values of every row of ``vals`` (float32) to ``hist[c]``."""
    for c in range(vals.shape[0]):
        _hist_add(vals[c, :n], scale, j0, hist[c], idx)


@nb.njit(cache=True, nogil=True)
def _hist_block_f16(
    vals: Any, n: int, lut: Any, scale: float, j0: float, hist: Any, tmp: Any, idx: Any
) -> None:
    """As ``_hist_block`` for float16 bit patterns (converted through ``lut``)."""
    for c in range(vals.shape[0]):
        col = vals[c]
        for j in range(n):
            tmp[j] = lut[col[j]]
        _hist_add(tmp[:n], scale, j0, hist[c], idx)


@nb.njit(cache=True, nogil=True, inline="always")
def _transpose64(a: Any) -> None:
    """In-place 64x64 bit-matrix transpose: afterwards bit ``j`` of ``a[i]`` is what bit ``i``
    of ``a[j]`` was (bit 0 = least significant)."""
    j = 32
    m = np.uint64(0x00000000FFFFFFFF)
    while j != 0:
        sj = np.uint64(j)
        for base in range(0, 64, 2 * j):
            for k in range(base, base + j):
                t = ((a[k] >> sj) ^ a[k + j]) & m
                a[k + j] ^= t
                a[k] ^= t << sj
        j >>= 1
        m ^= m << np.uint64(j)


@nb.njit(cache=True, nogil=True)
def _rows_block(pl: Any, rows: Any, n: int) -> None:
    """``rows[g, i, c >> 6]`` bit ``c & 63`` := ``pl[g, c, i >> 6]`` bit ``i & 63`` for the
    ``n`` steps of a block (``pl`` ``(G, D, nw)``, ``rows`` ``(G, n, Dw)``); bits of cells
    ``>= D`` are 0. 64x64 bit-matrix transposes of blocks in cache (about 0.1 operation per
    bit instead of a second comparison of every value with every threshold)."""
    g_n, d, nw = pl.shape
    dw = rows.shape[2]
    n_par = min(nw, 64)
    for p in range(n_par):
        pa_ = nw * p // n_par
        pb = nw * (p + 1) // n_par
        a = np.empty(64, np.uint64)
        for g in range(g_n):
            for k in range(dw):
                c0 = k << 6
                nc = min(64, d - c0)
                for w in range(pa_, pb):
                    for j in range(nc):
                        a[j] = pl[g, c0 + j, w]
                    for j in range(nc, 64):
                        a[j] = 0
                    _transpose64(a)
                    t0 = w << 6
                    for i in range(min(64, n - t0)):
                        rows[g, t0 + i, k] = a[i]


@nb.njit(cache=True, nogil=True)
def _rows_f32(v: Any, n: int, th32: Any, rows: Any) -> None:
    """``rows[g, i, k]`` bit ``j`` := ``v[i, 64 k + j] >= th32[g]`` for the first ``n`` rows of
    ``v`` (float32, row-major ``(>= n, D)``, C-contiguous); bits of cells ``>= D`` are 0. The
    row planes straight from the row-major values, one 64-lane compare per word while the row
    is in L1: 1.5 against 2.6 ms per 16 MB block at D = 64 in isolation for the 64x64
    bit-matrix transposes of the planes (``_rows_block``, still used where only transposed
    values exist, and for float16)."""
    d = v.shape[1]
    g_n = th32.shape[0]
    dwf = d >> 6
    rem = d & 63
    flat = v.reshape(-1)
    tail = np.full(64, np.nan, np.float32)  # a partial last word's cells, NaN (off) beyond D
    for i in range(n):
        base = i * d
        for k in range(dwf):
            for g in range(g_n):
                rows[g, i, k] = bits.ge64_f32(flat, base + (k << 6), th32[g])
        if rem:
            for j in range(rem):
                tail[j] = flat[base + (dwf << 6) + j]
            for g in range(g_n):
                rows[g, i, dwf] = bits.ge64_f32(tail, 0, th32[g])


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


def hist_frame(vmin: float, vmax: float) -> tuple[int, int]:
    """The bins of the per-cell histograms of a layer whose finite values span ``[vmin,
    vmax]``: bin ``i`` holds ``floor(x / 2^k) = j0 + i``, for the smallest ``k`` that fits the
    range in ``HIST_BINS`` bins (bins at most 2x as wide as ``(vmax - vmin) / HIST_BINS``) and
    keeps ``|x| / 2^k < 2^50`` (so the bin index is exact in float64). Returns ``(k, j0)``.
    A function of the range alone, and monotone in it, so that a histogram grown block by
    block (``_Hist``), one built from the whole range and the shards of a sharded build all
    end with the same bins and counts."""
    m = max(abs(vmin), abs(vmax))
    k = math.frexp(m)[1] - 50 if m > 0 else -210  # float32 magnitudes are >= 2^-149
    if vmax > vmin:
        k = max(k, math.frexp(vmax - vmin)[1] - 14)  # below this the range cannot fit
        while math.floor(math.ldexp(vmax, -k)) - math.floor(math.ldexp(vmin, -k)) >= HIST_BINS:
            k += 1
    return k, math.floor(math.ldexp(vmin, -k))


class _Hist:
    """Per-cell histograms in the bins of ``hist_frame`` of the values seen so far; new values
    beyond the bins re-bin the counts (exactly: bins of ``2^k`` merge into bins of ``2^k'``)."""

    def __init__(self, d: int) -> None:
        self.h = np.zeros((d, HIST_BINS), np.int64)
        self.frame: tuple[int, int] | None = None

    def cover(self, vmin: float, vmax: float) -> None:
        if not vmin <= vmax:
            return  # no finite value yet
        frame = hist_frame(vmin, vmax)
        if self.frame is not None and frame != self.frame:
            k0, j0 = self.frame
            k1, j1 = frame
            if k1 < k0:  # never: hist_frame is monotone in the range
                raise AssertionError("histogram bins cannot get narrower")
            idx = ((j0 + np.arange(HIST_BINS, dtype=np.int64)) >> (k1 - k0)) - j1
            inside = (idx >= 0) & (idx < HIST_BINS)  # the bins outside are past the values
            if self.h[:, ~inside].any():  # never: the new bins cover every value seen
                raise AssertionError("histogram re-binning lost values")
            new = np.zeros_like(self.h)
            np.add.at(new, (slice(None), idx[inside]), self.h[:, inside])  # type: ignore[arg-type]
            self.h = new
        self.frame = frame

    @property
    def scale(self) -> float:
        return math.ldexp(1.0, -self.frame[0]) if self.frame is not None else 1.0

    @property
    def j0(self) -> float:
        return float(self.frame[1]) if self.frame is not None else 0.0


class _FusedIndex:
    """The index of a layer built as its rows are flushed, when the grid is known by then:
    planes, row planes, run counts, on counts and histogram of each block of transposed values
    while they are in cache, so ``values.bin`` is never read back. ``planes.bin`` is written
    in runs of several blocks per (threshold, cell) (it is read back for the intervals, through
    the page cache); ``rows.bin`` with ``O_DIRECT``."""

    def __init__(
        self,
        owner: DatasetWriter,
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
        K = ((T - 1) >> INTERVAL_CHUNK_LOG2) + 1
        self.counts = np.zeros((max(G, 1), D, K), np.int64)
        self.ons = np.zeros((max(G, 1), D), np.int64)
        self.carry = np.zeros((max(G, 1), D), np.uint64)
        self.hist = _Hist(D)
        self.h32 = np.zeros((D, HIST_BINS), np.int32)
        self.th32 = np.asarray([bits.f32_threshold(t) for t in grid], np.float32)
        self.keys = np.asarray([bits.f16_key_threshold(t) for t in grid], np.int64)
        self.lut = _f16_lut() if self.f16 else None
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
            _hist_block_f16(vals.view(np.uint16), n, self.lut, sc, j0, h32, self.tmp, self.idx)
        else:
            _hist_block(vals, n, sc, j0, h32, self.idx)
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
        a = t0
        while a < t0 + n:  # run starts are counted per interval chunk
            b = min(t0 + n, ((a >> INTERVAL_CHUNK_LOG2) + 1) << INTERVAL_CHUNK_LOG2)
            bm = self.owner._boundary_words(a, b)
            cnt[:] = 0
            w = self.acc_n + ((a - t0) >> 6)
            if self.f16:
                _planes_f16(
                    vals.view(np.uint16), a - t0, b - a, self.keys, bm, self.carry, self.pl, w,
                    cnt, self.ons, self.kv,
                )  # fmt: skip
            else:
                _planes_f32(
                    vals, a - t0, b - a, self.th32, bm, self.carry, self.pl, w, cnt, self.ons
                )
            self.counts[:, :, a >> INTERVAL_CHUNK_LOG2] += cnt
            a = b
        toc = time.perf_counter()
        rb = self.rows_blk[:, :n]
        if self.f16:
            _rows_block(self.pl[:, :, self.acc_n : self.acc_n + nw], rb, n)
        else:
            _rows_f32(np.ascontiguousarray(rowwise), n, self.th32, rb)
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


class LayerWriter:
    """Receives the rows of one layer, in step order, in chunks of any size.

    Each flush of the row buffer (a) folds per-cell min/max/sum/NaN counts, (b) writes the
    transformed values column-major into ``values.bin`` with ``pwrite`` and (c) hands the raw
    rows to a background thread writing the Parquet parts.
    """

    def __init__(
        self,
        owner: DatasetWriter,
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
        rows = max(ROW_GROUP_STEPS, _BUFFER_BYTES // row_bytes // ROW_GROUP_STEPS * ROW_GROUP_STEPS)
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
        # the whole layer in one writer builds its index as the rows come (_FusedIndex) and
        # never reads values.bin back, which it therefore writes around the page cache
        self._fused: _FusedIndex | bool | None = start == 0 and stop is None
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
        self._lut = _f16_lut() if info.dtype == "float16" else None
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
            bad = _fast_stats_transpose_f16(v.view(np.uint16), tb.view(np.uint16), kmin, kmax, fsum)
        else:
            bad = _fast_stats_transpose_f32(v, tb, kmin, kmax, fsum)
        n_inf = 0
        if bad == 0:
            lo, hi = _keys_to_f32(kmin, kmax, f16)
            np.minimum(cmin, lo, out=cmin)
            np.maximum(cmax, hi, out=cmax)
            csum += fsum
        elif f16:
            assert self._lut is not None
            n_inf = _stats_transpose_f16(
                v.view(np.uint16), self._lut, tb.view(np.uint16), cmin, cmax, csum, cnan
            )
        else:
            n_inf = _stats_transpose_f32(v, tb, cmin, cmax, csum, cnan)
        toc = time.perf_counter()
        if n_inf:
            raise InvalidData(
                f"layer {self.info.name!r}: {n_inf} infinite values in steps [{t0}, {t0 + n}) "
                f"(after casting to {self.info.dtype}); replace them with NaN or clip them"
            )
        self.cmin, self.cmax, self.csum, self.cnan = cmin, cmax, csum, cnan
        if self._fused is True:  # the first flush: is the grid known?
            self._fused = self._start_fused()
        if isinstance(self._fused, _FusedIndex):
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
        if isinstance(self._fused, _FusedIndex):
            self._fused.write_rows(n, t0)
        self.timings["values"] += time.perf_counter() - tic

    def _start_fused(self) -> _FusedIndex | None:
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
        return _FusedIndex(self._owner, self.info, self.dir, grid, self._buf_rows, self._val_dtype)

    def fused_index(self, grid: Sequence[float], frame: tuple[int, int]) -> _FusedIndex | None:
        """The index built during the writes, if it was built for ``grid`` and its histogram
        has the bins ``frame`` of the layer's whole value range (after ``finish``)."""
        f = self._fused
        if not isinstance(f, _FusedIndex) or f.grid != list(grid):
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
        if isinstance(self._fused, _FusedIndex):
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
        if isinstance(self._fused, _FusedIndex):
            self._fused.close()
        with contextlib.suppress(OSError):
            if self._values is not None:
                self._values.close()
            else:
                os.close(self._values_fd)
        self._give_buffers()


# ----------------------------------------------------------------------------- tracks


class TrackOwner(Protocol):
    """What a ``TrackWriter`` needs of the writer it belongs to (a ``DatasetWriter``, or a
    ``versions.VersionWriter`` adding tracks to a published dataset)."""

    @property
    def staging(self) -> Path: ...
    @property
    def n_steps(self) -> int: ...
    def _check_open(self) -> None: ...


class TrackWriter:
    """Receives the rows of one meta track in step order.

    ``discrete``: ``values`` int label indices into ``info.labels`` (``-1`` = no label);
    ``scalar``: ``values`` floats (NaN = missing); ``topk``: ``ids`` int ``(n, K)`` and
    ``scores`` float ``(n, K)``.
    """

    def __init__(self, owner: TrackOwner, info: TrackInfo) -> None:
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


class _LayerStats(Protocol):
    """What the index build needs of a layer: its info, directory and value statistics."""

    info: LayerInfo
    dir: Path
    explicit_grid: bool
    cmin: npt.NDArray[np.float32]
    cmax: npt.NDArray[np.float32]
    csum: npt.NDArray[np.float64]
    cnan: npt.NDArray[np.int64]


class _ShardedLayer:
    """A layer of a sharded build: its rows come from ``write_layer_shard`` in any process;
    each shard leaves its statistics (phase 1) and index parts (phase 2) in
    ``build/<layer>/<kind>-<shard>.npz``, merged here."""

    def __init__(self, owner: DatasetWriter, info: LayerInfo, explicit_grid: bool) -> None:
        self.info = info
        self.explicit_grid = explicit_grid
        self.dir = owner.staging / "layers" / info.name
        self._parts = owner.staging / "build" / info.name
        d = info.n_cells
        self.cmin = np.full(d, np.inf, np.float32)
        self.cmax = np.full(d, -np.inf, np.float32)
        self.csum = np.zeros(d, np.float64)
        self.cnan = np.zeros(d, np.int64)

    def save_part(self, kind: str, shard: int, **arrays: npt.NDArray[Any]) -> None:
        self._parts.mkdir(exist_ok=True)  # not parents: an aborted build stays gone
        tmp = self._parts / f".{kind}-{shard}.{secrets.token_hex(4)}.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, self._parts / f"{kind}-{shard}.npz")

    def _load(self, kind: str, n_shards: int) -> list[dict[str, npt.NDArray[Any]]] | None:
        out = []
        for i in range(n_shards):
            try:
                with np.load(self._parts / f"{kind}-{i}.npz", allow_pickle=False) as z:
                    out.append({k: z[k] for k in z.files})
            except FileNotFoundError:
                return None
        return out

    def merge_stats(self, n_shards: int) -> None:
        """Fold the statistics of every shard (all of phase 1 must be done)."""
        parts = self._load("stats", n_shards)
        if parts is None:
            missing = [i for i in range(n_shards) if not (self._parts / f"stats-{i}.npz").exists()]
            raise InvalidData(
                f"layer {self.info.name!r}: shards {missing} have not been written "
                "(write_layer_shard)"
            )
        self.cmin = np.min([p["cmin"] for p in parts], axis=0).astype(np.float32)
        self.cmax = np.max([p["cmax"] for p in parts], axis=0).astype(np.float32)
        self.csum = np.sum([p["csum"] for p in parts], axis=0).astype(np.float64)
        self.cnan = np.sum([p["cnan"] for p in parts], axis=0).astype(np.int64)

    def merged_index(
        self, n_shards: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """The summed index parts of phase 2, or None unless every shard has one (then the
        publishing process builds the planes itself)."""
        parts = self._load("index", n_shards)
        if parts is None:
            return None
        return (
            np.sum([p["hist"] for p in parts], axis=0),
            np.sum([p["counts"] for p in parts], axis=0),
            np.sum([p["ons"] for p in parts], axis=0),
        )


def remove_build_dir(data_root: Path, directory: Path) -> None:
    """Remove a build's directory although another process may still be writing into it (a
    helper mid-shard of a sharded build). It is first renamed into ``<data_root>/trash``, so
    that the build is gone at once: every later open by its path fails (a helper then sees the
    build gone and stops) and nothing can recreate it. Then the renamed tree is removed; a file
    a writer created in it meanwhile makes a removal fail, so it is retried a few times, and
    what still remains is swept by the ingest reconciler (``trash``)."""
    trash = data_root / "trash" / f"{directory.name}.{secrets.token_hex(4)}"
    try:
        trash.parent.mkdir(exist_ok=True)
        os.rename(directory, trash)
    except FileNotFoundError:
        if not directory.exists():
            return  # already gone
        trash = directory  # no trash directory could be made: remove in place
    except OSError:
        trash = directory
    for attempt in range(20):
        shutil.rmtree(trash, ignore_errors=True)
        if not os.path.lexists(trash):
            return
        time.sleep(0.01 * (attempt + 1))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
        self.part_steps = PART_STEPS
        self.shard_steps = max(1, n_steps)  # one shard unless ``save_build`` says otherwise
        self._layers: dict[str, LayerWriter] = {}
        self._sharded: dict[str, _ShardedLayer] = {}
        self._tracks: dict[str, TrackWriter] = {}
        self._starts = np.zeros(1, np.int64)
        self._seq_names: list[str] = ["seq0"]
        self._vocab: list[str] | None = None
        self._tokens: pq.ParquetWriter | None = None
        self._tokens_written = 0
        self._token_max = -1
        self._state = "open"  # open | published | aborted
        self.duckdb_threads: int | None = None  # None: DuckDB's default (all cores)
        self.timings: dict[str, float] = {}  # seconds per index-build phase (for benchmarks)

    @classmethod
    def create(
        cls,
        data_root: str | os.PathLike[str],
        name: str,
        n_steps: int,
        description: str = "",
        provenance: dict[str, Any] | None = None,
        part_steps: int | None = None,
    ) -> DatasetWriter:
        """Start a dataset of ``n_steps`` steps named ``name``; ``part_steps`` (a power of two,
        at least ``ROW_GROUP_STEPS``; default ``PART_STEPS``) is the steps per Parquet part
        file of states, the unit of a sharded build.

        Raises:
            InvalidData: a bad name, ``n_steps < 1`` or a bad ``part_steps``.
            Conflict: the name is already taken (checked again, atomically, at publication).
        """
        _check_name(name, "dataset")
        if not isinstance(n_steps, int | np.integer) or n_steps < 1:
            raise InvalidData(f"n_steps must be a positive integer, got {n_steps!r}")
        ps = PART_STEPS if part_steps is None else int(part_steps)
        if ps < ROW_GROUP_STEPS or ps & (ps - 1):
            raise InvalidData(
                f"part_steps must be a power of two >= {ROW_GROUP_STEPS}, got {part_steps!r}"
            )
        root = Path(data_root)
        for sub in ("staging", "datasets", "names"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if os.path.lexists(root / "names" / name):
            raise Conflict(f"a dataset named {name!r} already exists; choose another name")
        dataset_id = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        (root / "staging" / dataset_id).mkdir()
        w = cls(root, dataset_id, name, int(n_steps), description, dict(provenance or {}))
        w.part_steps = ps
        return w

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
        info = self._layer_info(name, n_cells, dtype, transform, thresholds, kind)
        lw = LayerWriter(self, info, explicit_grid=thresholds is not None)
        self._layers[name] = lw
        return lw

    def _layer_info(
        self,
        name: str,
        n_cells: int,
        dtype: StorageDType,
        transform: Transform,
        thresholds: Sequence[float] | None,
        kind: str | None,
    ) -> LayerInfo:
        _check_name(name, "layer")
        if name in self._layers or name in self._sharded:
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
        return info

    # -- a sharded build: layers written by several processes, one step range each

    def declare_layer(
        self,
        name: str,
        n_cells: int,
        dtype: StorageDType = "float32",
        transform: Transform = "none",
        thresholds: Sequence[float] | None = None,
        kind: str | None = None,
    ) -> LayerInfo:
        """Declare a layer whose rows other processes write, shard by shard
        (``write_layer_shard``), instead of through a ``LayerWriter``. Same checks as
        ``add_layer``; call ``save_build`` after the last declaration."""
        self._check_open()
        info = self._layer_info(name, n_cells, dtype, transform, thresholds, kind)
        self._sharded[name] = _ShardedLayer(self, info, thresholds is not None)
        return info

    def save_build(self, shard_steps: int) -> list[tuple[int, int]]:
        """Record the sharded build in the staging directory (``build/``) so that other
        processes can ``resume`` it, and return the shards' step ranges. ``shard_steps`` is
        rounded up to a multiple of the part size (a shard writes whole Parquet parts).

        Raises:
            InvalidData: ``shard_steps < 1`` or no layer was declared.
        """
        self._check_open()
        if shard_steps < 1:
            raise InvalidData(f"shard_steps must be >= 1, got {shard_steps}")
        if not self._sharded:
            raise InvalidData("declare the layers (declare_layer) before save_build")
        ps = self.part_steps
        self.shard_steps = -(-shard_steps // ps) * ps
        build = self.staging / "build"
        build.mkdir(exist_ok=True)
        np.save(build / "sequence_starts.npy", self._starts, allow_pickle=False)
        doc = {
            "name": self.name,
            "n_steps": self.n_steps,
            "description": self.description,
            "provenance": self.provenance,
            "part_steps": ps,
            "shard_steps": self.shard_steps,
            "sequence_names": self._seq_names,
            "layers": [
                {"info": sl.info.model_dump(mode="json"), "explicit_grid": sl.explicit_grid}
                for sl in self._sharded.values()
            ],
        }
        _write_atomic(build / "build.json", json.dumps(doc).encode())
        for sl in self._sharded.values():
            sl.dir.mkdir(parents=True, exist_ok=True)
        return self.shard_ranges()

    @classmethod
    def resume(cls, data_root: str | os.PathLike[str], dataset_id: str) -> DatasetWriter:
        """The writer of a sharded build saved by ``save_build`` (in any process).

        Raises:
            NotFound: no such build in ``staging`` (finished, aborted or never started).
        """
        root = Path(data_root)
        if not _ID_RE.fullmatch(dataset_id):
            raise NotFound(f"no dataset build {dataset_id!r}")
        build = root / "staging" / dataset_id / "build"
        try:
            doc = json.loads((build / "build.json").read_text())
            starts = np.load(build / "sequence_starts.npy", allow_pickle=False)
        except FileNotFoundError:
            raise NotFound(f"no dataset build {dataset_id!r} in {root / 'staging'}") from None
        w = cls(root, dataset_id, doc["name"], int(doc["n_steps"]), doc["description"],
                doc["provenance"])  # fmt: skip
        w.part_steps = int(doc["part_steps"])
        w.shard_steps = int(doc["shard_steps"])
        w._starts = starts.astype(np.int64)
        w._seq_names = list(doc["sequence_names"])
        for entry in doc["layers"]:
            info = LayerInfo.model_validate(entry["info"])
            w._sharded[info.name] = _ShardedLayer(w, info, bool(entry["explicit_grid"]))
        return w

    def shard_ranges(self) -> list[tuple[int, int]]:
        """The step ranges ``[start, stop)`` of the shards (after ``save_build``)."""
        T, n = self.n_steps, self.shard_steps
        return [(a, min(T, a + n)) for a in range(0, T, n)]

    def _shard(self, layer: str, shard: int) -> tuple[_ShardedLayer, int, int]:
        sl = self._sharded.get(layer)
        if sl is None:
            raise NotFound(f"layer {layer!r} is not a declared layer of this build")
        ranges = self.shard_ranges()
        if not 0 <= shard < len(ranges):
            raise InvalidData(f"shard {shard} is not in [0, {len(ranges)})")
        a, b = ranges[shard]
        return sl, a, b

    def write_layer_shard(self, layer: str, shard: int, chunks: Iterable[npt.ArrayLike]) -> None:
        """Phase 1 of a sharded build: write the rows of shard ``shard`` of ``layer`` (chunks
        of rows in step order, exactly the shard's steps) - its Parquet parts, its part of
        ``values.bin`` and its statistics. Idempotent: a re-run overwrites the same files."""
        self._check_open()
        sl, a, b = self._shard(layer, shard)
        lw = LayerWriter(self, sl.info, sl.explicit_grid, a, b)
        try:
            for chunk in chunks:
                lw.write(chunk)
            lw.finish()
        except BaseException:
            lw.close_quietly()
            raise
        sl.save_part("stats", shard, cmin=lw.cmin, cmax=lw.cmax, csum=lw.csum, cnan=lw.cnan)

    def index_layer_shard(self, layer: str, shard: int) -> None:
        """Phase 2 of a sharded build (after phase 1 of every shard): the on-planes and row
        planes of the shard's steps, and its part of the histogram and run counts.
        Idempotent."""
        self._check_open()
        sl, a, b = self._shard(layer, shard)
        sl.merge_stats(len(self.shard_ranges()))
        grid = self._layer_grid(sl)
        hist, counts, ons = self._planes_range(sl, grid, a, b)
        sl.save_part("index", shard, hist=hist, counts=counts, ons=ons)

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
        remove_build_dir(self.data_root, self.staging)

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
        if not self._layers and not self._sharded:
            raise InvalidData("a dataset needs at least one layer (add_layer)")
        tic = time.perf_counter()
        n_shards = len(self.shard_ranges()) if self._sharded else 0
        for sl in self._sharded.values():
            sl.merge_stats(n_shards)
        for lw in self._layers.values():
            lw.finish()
        for tw in self._tracks.values():
            tw.finish()
        self.timings["finish_inputs"] = time.perf_counter() - tic
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
        shutil.rmtree(self.staging / "build", ignore_errors=True)
        for n in [*self._layers, *self._sharded]:
            ldir = self.staging / "layers" / n
            sizes[f"layers/{n}/states"] = _dir_size(ldir / "states")
            sizes[f"layers/{n}/values.bin"] = _dir_size(ldir / "values.bin")
            sizes[f"layers/{n}/planes.bin"] = _dir_size(ldir / "planes.bin")
            sizes[f"layers/{n}/rows.bin"] = _dir_size(ldir / "rows.bin")
            sizes[f"layers/{n}/intervals"] = _dir_size(ldir / "intervals")
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
            part_steps=self.part_steps,
            created_at=datetime.now(UTC),
            sizes=sizes,
            provenance=self.provenance,
        )
        (self.staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        tic = time.perf_counter()
        _fsync_tree(self.staging)
        self.timings["fsync"] = time.perf_counter() - tic
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
        """Planes, rows, interval Parquet files and statistics of every layer; then
        ``index.duckdb`` with the native tables and the ``on_intervals`` view."""
        if len(self._layers) + len(self._sharded) > 255:
            raise InvalidData("at most 255 layers per dataset")
        infos: list[LayerInfo] = []
        stats_tables: list[pa.Table] = []
        frac_tables: list[pa.Table] = []
        layers: list[_LayerStats] = [*self._layers.values(), *self._sharded.values()]
        for lw in layers:
            info, st_tab, fr_tab = self._index_layer(lw)
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

    @staticmethod
    def _value_range(lw: _LayerStats) -> tuple[float | None, float | None]:
        finite = lw.cmin <= lw.cmax
        if not finite.any():
            return None, None
        return float(lw.cmin[finite].min()), float(lw.cmax[finite].max())

    def _layer_grid(self, lw: _LayerStats) -> list[float]:
        """The layer's threshold grid: the explicit one, or the default for its value range."""
        if lw.explicit_grid:
            return list(lw.info.thresholds)
        vmin, vmax = self._value_range(lw)
        return default_grid(vmin, vmax) if vmin is not None and vmax is not None else []

    def _hist_frame(self, lw: _LayerStats) -> tuple[int, int]:
        """``hist_frame`` of the layer's value range ((0, 0) without finite values)."""
        vmin, vmax = self._value_range(lw)
        if vmin is None or vmax is None:
            return 0, 0
        return hist_frame(vmin, vmax)

    def _planes_range(
        self, lw: _LayerStats, grid: list[float], start: int, stop: int
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
        K = ((T - 1) >> INTERVAL_CHUNK_LOG2) + 1
        vdt = values_dtype(info.dtype, info.transform)
        k, j0i = self._hist_frame(lw)
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
        lut = _f16_lut()
        # a power of two between 64 steps and one interval chunk
        target = max(64, _BLOCK_VALUES // D)
        block = min(1 << INTERVAL_CHUNK_LOG2, 1 << (target.bit_length() - 1))
        n_blk = min(block, stop - start)
        pl = np.zeros((G, D, bits.n_words(n_blk)), np.uint64)  # the block's planes
        rows_blk = np.zeros((G, n_blk, Dw), np.uint64)
        vals = np.empty((D, n_blk), vdt)  # the block's values
        idx = np.empty(n_blk, np.int32)  # histogram scratch
        f16_tmp = np.empty(n_blk if vdt == np.float16 else 0, np.float32)
        kv = np.empty(bits.n_words(n_blk) << 6, np.uint16)  # float16 keys scratch
        # carry[g, c]: whether step start-1 is on (a run going on across the range start)
        carry = np.zeros((G, D), np.uint64)
        if G and start > 0 and not np.isin(start, self._starts):
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
                b1 = min(stop, b0 + block, ((b0 >> INTERVAL_CHUNK_LOG2) + 1) << INTERVAL_CHUNK_LOG2)
                n = b1 - b0
                for c in range(D):
                    got = os.preadv(fd_values, [vals[c, :n].data], (c * T + b0) * item)
                    if got != n * item:
                        raise InvalidData(f"layer {info.name!r}: values.bin is short at {b0}")
                if vdt == np.float16:
                    u16 = vals.view(np.uint16)
                    _hist_block_f16(u16, n, lut, scale, j0, hist, f16_tmp, idx)
                else:
                    _hist_block(vals, n, scale, j0, hist, idx)
                if G == 0:  # no planes: only the histogram
                    b0 = b1
                    continue
                bm = self._boundary_words(b0, b1)
                cnt = np.zeros((G, D), np.int64)
                nw = bits.n_words(b1 - b0)
                if vdt == np.float16:
                    _planes_f16(u16, 0, n, keys, bm, carry, pl, 0, cnt, ons, kv)
                else:
                    _planes_f32(vals, 0, n, th32, bm, carry, pl, 0, cnt, ons)
                counts[:, :, b0 >> INTERVAL_CHUNK_LOG2] += cnt
                tr = time.perf_counter()
                rb = rows_blk[:, : b1 - b0]
                _rows_block(pl[:, :, :nw], rb, b1 - b0)
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

    def _index_layer(self, lw: _LayerStats) -> tuple[LayerInfo, pa.Table, pa.Table | None]:
        info = lw.info
        T, D = self.n_steps, info.n_cells
        finite = lw.cmin <= lw.cmax
        n_valid = T - lw.cnan  # non-NaN values per cell (inf was rejected)
        vmin, vmax = self._value_range(lw)
        nan_count = int(lw.cnan.sum())
        vmean = float(lw.csum.sum() / n_valid.sum()) if n_valid.sum() else None
        grid = self._layer_grid(lw)
        G = len(grid)
        W = bits.n_words(T)
        frame = self._hist_frame(lw)
        merged = (
            lw.merged_index(len(self.shard_ranges())) if isinstance(lw, _ShardedLayer) else None
        )
        fused = lw.fused_index(grid, frame) if isinstance(lw, LayerWriter) else None
        if fused is not None:  # built during the writes
            hist, counts, ons = fused.hist.h, fused.counts, fused.ons
            for k, v in fused.timings.items():
                self.timings[k] = self.timings.get(k, 0.0) + v
        elif merged is None:
            hist, counts, ons = self._planes_range(lw, grid, 0, T)
        else:
            hist, counts, ons = merged
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

            self._write_intervals(lw, planes_map.view(np.ndarray), counts[:G], release)
            del planes_map
        else:
            self._write_intervals(lw, np.zeros((0, D, 0), np.uint64), counts[:0])
        self.timings["intervals"] = self.timings.get("intervals", 0.0) + time.perf_counter() - tic

        # per-cell statistics
        cell_min = np.where(finite, lw.cmin, np.nan).astype(np.float64)
        cell_max = np.where(finite, lw.cmax, np.nan).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cell_mean = np.where(n_valid > 0, lw.csum / np.maximum(n_valid, 1), np.nan)
        qs = _hist_quantiles(hist, math.ldexp(frame[1], frame[0]), math.ldexp(1.0, -frame[0]),
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

    def _boundary_words(self, b0: int, b1: int) -> npt.NDArray[np.uint64]:
        """Bit ``t`` set where a sequence (other than the first) starts, for steps [b0, b1)."""
        w0, w1 = b0 >> 6, bits.n_words(b1)
        bm = np.zeros(w1 - w0, np.uint64)
        starts = self._starts  # sorted: a binary search, not a scan of every sequence
        s = starts[np.searchsorted(starts, max(b0, 1)) : np.searchsorted(starts, b1)]
        if s.size:
            rel = s - (w0 << 6)
            np.bitwise_or.at(
                bm, rel >> 6, np.left_shift(np.uint64(1), (rel & 63).astype(np.uint64))
            )
        return bm

    def _write_intervals(
        self,
        lw: _LayerStats,
        planes: npt.NDArray[np.uint64],
        counts: npt.NDArray[np.int64],
        release: Any = None,
    ) -> None:
        """Write the on-intervals of the layer from its planes and per-chunk run counts
        (``interval_build``: extraction fused with the Parquet encoding, O_DIRECT)."""
        stats = interval_build.write_layer_intervals(
            planes,
            counts,
            self._starts,
            self.n_steps,
            lw.dir / "intervals",
            release=release,
            row_group_rows=INTERVAL_ROW_GROUP,
            part_rows=_INTERVAL_PART_ROWS,
        )
        self.timings["intervals_wait"] = self.timings.get("intervals_wait", 0.0) + stats.wait_s


def interval_glob(layer: str) -> str:
    """The interval files of a layer, relative to the dataset directory."""
    return f"layers/{layer}/intervals/part-*.parquet"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _hist_quantiles(
    hist: npt.NDArray[np.int64],
    lo: float,
    scale: float,
    cell_min: npt.NDArray[np.float64],
    cell_max: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Approximate quantiles ``(D, len(QUANTILES))`` from per-cell histograms of ``HIST_BINS``
    equal bins from ``lo`` (``hist_frame``: bins at most twice as wide as ``(max - min) /
    HIST_BINS`` of the layer): the rank ``q x (n - 1)`` is located in its bin and interpolated
    linearly inside it, then clamped to the cell's [min, max]. The error is at most one bin
    width. NaN for an all-NaN cell."""
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
