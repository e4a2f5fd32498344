"""The on-interval phase of the index build: runs extracted from a layer's planes and written
as Parquet in one pass.

Why this lives in ``build/`` and not in ``parquet/``: it is a phase of the index build - its
inputs are the build's planes, run counts and sequence starts, and what it does is extract
runs - and it takes its Parquet side from ``parquet`` through public names only (the page
kernels of ``parquet.delta``, the footer of ``parquet.intervals``), fusing the two so that no
batch of rows exists between them. ``parquet`` knows nothing of planes or runs.

``write_layer_intervals(planes, counts, seq_starts, n_steps, directory)`` writes the table that
``parquet.intervals.IntervalParquetWriter`` writes for the same rows: rows sorted by
(``threshold_index``, ``cell``, ``start``), ``end`` exclusive, a run open at the last step
ending at ``T``, runs cut at sequence starts; row groups of ``ROW_GROUP_ROWS`` rows, part files
``part-00000.parquet``... of ``PART_ROWS`` rows (every part file but the last is full; a layer
without runs gets one empty file). Column chunks are byte for byte what
``IntervalParquetWriter`` writes for the same row groups.

How it saves CPU. Measured (2-vCPU Xeon VM, noisy: +-15% run to run; synthetic 64-cell
states at 9 thresholds with 23 runs a step, ``PYTHONPATH=. uv run --frozen --all-extras python
-m bench.interval_build_bench --steps 10000000 --repeats 5``, median): 0.81 CPU-s (user + sys,
all threads) for the 2.33e8 intervals of 1e7 steps against 3.05 for the former path (runs
extracted into batches of 12-byte rows by a ``parallel=True`` kernel, encoded by
``IntervalParquetWriter`` on a second thread; 3.8x:
~290 against ~75 M intervals a CPU-second); wall 0.84 s against 1.9-3.0.

* **Fused, single-threaded.** One numba kernel extracts a page (``PAGE_ROWS = 2**15`` rows) of
  starts and ends into two buffers that stay in L2 and DELTA-encodes them at once, so the 8
  bytes a row of positions never go to DRAM, and no batch is handed over. (The former
  extraction kernel was ``parallel=True``: its second thread bought no wall time beside the Parquet
  thread and cost ~0.6 CPU-s; with ``NUMBA_NUM_THREADS=1`` it took 2.8 CPU-s, same wall.)
* **Branch-light extraction.** Starts (``w & ~prev``) and ends (``prev & ~w``) of a word are
  two independent bit streams; run ``k`` is the ``k``-th start and the ``k``-th end (they
  alternate), so each stream is written out on its own, without a branch per bit: with AVX-512
  VBMI2 one ``vpcompressb`` of the byte indices 0..63 under the word gives the bits' indices,
  widened and stored 16 at a time (a branch only past 16 bits a word); elsewhere eight
  ``tzcnt`` stores unconditionally, a loop only past eight (1.6x the CPU: 1.29 CPU-s above).
  Words where nothing starts or ends (all 0, or all 1 going on) are skipped; sequence starts
  are handled only in the words that hold them (the word loop runs between them).
* **No ``threshold_index``/``cell`` arrays.** A (threshold, cell) unit's rows are known from
  ``counts`` (the plane pass's run-start counts), so those two column chunks are encoded from
  the unit sizes: a page inside one unit is a constant page written without reading any value
  (``parquet.delta.const_page``), only the few pages that straddle units are materialised.
  ``counts`` are checked against the extraction (a mismatch raises).
* **``O_DIRECT`` writes** (``direct_io.DirectFile``; the build never reads these files back)
  from a background thread, so no page-cache copies (0.04-0.06 CPU-s less kernel time on
  the 0.42 GB above); each row group is encoded into an aligned buffer behind the unaligned
  tail of the previous one, and only whole 4 KiB blocks are written until a file's end.

Where the CPU goes (1e7 steps, per interval): extraction ~1.3 ns (the planes are read once,
~3 bytes an interval), DELTA encoding of start and end ~1.2 ns, the rest (row-group assembly,
the writer thread, the memory map's page faults, Python) ~0.8 ns.

Memory is bounded whatever ``T`` is: three output buffers of a row group at the worst case
(only the encoded part is touched: ~2 bytes a row) and page-sized scratch.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
import numpy.typing as npt
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from hiddenscope_core import bits
from hiddenscope_core.direct_io import ALIGN, POOL, DirectFile
from hiddenscope_core.parquet.delta import PAGE_ROWS, const_page, encode_page, worst_case_bytes
from hiddenscope_core.parquet.intervals import ChunkMeta, footer_bytes
from hiddenscope_core.parquet.thrift import MAGIC

ROW_GROUP_ROWS = 1 << 20
"""Rows per row group of the interval files (``BuildSizes.interval_row_group``'s default)."""
PART_ROWS = 1 << 26
"""Rows per part file (``BuildSizes.interval_part_rows``'s default); a multiple of
``ROW_GROUP_ROWS``."""
RELEASE_ROWS = 1 << 22
"""Rows between two calls of the ``release`` callback."""

# typed as Any: mypy reads an intrinsic's signature as (typingctx, x), numba calls it as f(x)
_popcount: Any = bits.popcount64
_ctz: Any = bits.ctz64
_U = np.uint64
_ONE = np.uint64(1)
_SLACK = 256  # extra entries of the start/end buffers: a word adds <= 64, a flatten writes 64

# _extract's state (an int64 array, so that a page can stop anywhere and the next go on)
_S_UNIT, _S_WORD, _S_CARRY, _S_BOUND, _S_STARTS, _S_ENDS, _S_ROW, _S_ERROR = range(8)
_STATE_LEN = 8


# ------------------------------------------------------------------------------ kernels


def _compress_codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    """Code of ``_flatten_vbmi2``: ``vpcompressb`` of the byte indices 0..63 under the mask
    ``x`` gives the set bits' indices in order; the first 16 are widened to the buffer's type,
    offset by ``pos`` and stored as one vector at ``buf[k]``, the rest (a word with more than
    16 set bits: rare) likewise, 16 at a time."""
    aty = signature.args[0]
    ary = context.make_array(aty)(context, builder, args[0])
    k, x, pos = args[1], args[2], args[3]
    i1, i8, i32, i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v64 = ir.VectorType(i8, 64)
    m64 = ir.VectorType(i1, 64)
    fn = cgutils.get_or_insert_function(  # type: ignore[no-untyped-call]
        builder.module,
        ir.FunctionType(v64, [v64, m64, v64]),
        "llvm.experimental.vector.compress.v64i8",
    )
    idx = ir.Constant(v64, list(range(64)))
    comp = builder.call(fn, [idx, builder.bitcast(x, m64), ir.Constant(v64, None)])
    et = ir.IntType(aty.dtype.bitwidth)
    vt = ir.VectorType(et, 16)
    p = pos if aty.dtype.bitwidth == 64 else builder.trunc(pos, et)
    pv = builder.insert_element(ir.Constant(vt, ir.Undefined), p, ir.Constant(i32, 0))
    pv = builder.shuffle_vector(
        pv, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, 16), [0] * 16)
    )

    def group(q: int) -> None:
        lanes = ir.Constant(ir.VectorType(i32, 16), list(range(16 * q, 16 * q + 16)))
        sub = builder.shuffle_vector(comp, ir.Constant(v64, ir.Undefined), lanes)
        val = builder.add(builder.zext(sub, vt), pv)
        ptr = builder.gep(ary.data, [builder.add(k, ir.Constant(i64, 16 * q))])
        builder.store(val, builder.bitcast(ptr, vt.as_pointer()), align=aty.dtype.bitwidth // 8)

    group(0)
    more = builder.icmp_unsigned(">", builder.ctpop(x), ir.Constant(i64, 16))
    with cgutils.if_unlikely(builder, more):  # type: ignore[no-untyped-call]
        for q in range(1, 4):
            group(q)
    return context.get_dummy_value()


@intrinsic
def _compress_store_intr(typingctx: Any, buf: Any, k: Any, x: Any, pos: Any) -> Any:
    """``_compress_store(buf, k, x, pos)``: ``buf[k + j] = pos + `` the index of the ``j``-th
    set bit of the uint64 ``x``, for ``j < 16`` at least (garbage past the count; needs 16
    free entries past it, or 64), in AVX-512 VBMI2 (see ``_compress_codegen``). ``buf``: a
    uint32 or int64 array, no bounds check."""
    if not (isinstance(buf, types.Array) and buf.dtype in (types.uint32, types.int64)):
        return None
    sig = types.void(buf, types.intp, types.uint64, types.uint64)
    return sig, _compress_codegen


_compress_store: Any = _compress_store_intr


def _has_vbmi2() -> bool:
    """Whether numba compiles for a CPU with AVX-512 VBMI2 (``vpcompressb``)."""
    config: Any = nb.config
    name = config.CPU_NAME
    if name and name != "host":  # a fixed target (e.g. a portable cache)
        return "+avx512vbmi2" in str(config.CPU_FEATURES or "")
    try:
        return bool(llvm.get_host_cpu_features().get("avx512vbmi2", False))
    except Exception:  # pragma: no cover - a platform llvmlite cannot query
        return False


VBMI2 = _has_vbmi2()
"""Whether the extraction uses ``vpcompressb`` by default (else the portable scalar ``tzcnt``
code)."""


@nb.njit(cache=True, nogil=True, inline="always")
def _flatten_vbmi2(x: Any, pos: Any, buf: Any, k: int) -> int:
    """``_flatten`` with ``vpcompressb``: no branch unless ``x`` has more than 16 bits."""
    _compress_store(buf, k, x, pos)
    return k + int(_popcount(x))


@nb.njit(cache=True, nogil=True, inline="always")
def _flatten_scalar(x: Any, pos: Any, buf: Any, k: int) -> int:
    """``_flatten`` with ``tzcnt``: the first eight positions are stored unconditionally
    (``tzcnt`` of 0 is 64: garbage past the count, overwritten later), a loop runs only past
    eight."""
    n = int(_popcount(x))
    j = _U(k)
    for t in range(8):
        buf[j + _U(t)] = pos + _ctz(x)
        x &= x - _ONE
    if n > 8:
        j += _U(8)
        while x != 0:
            buf[j] = pos + _ctz(x)
            x &= x - _ONE
            j += _ONE
    return k + n


@nb.njit(cache=True, nogil=True, inline="always")
def _flatten(x: Any, pos: Any, buf: Any, k: int, vbmi2: bool) -> int:
    """Write ``pos + `` the index of every set bit of ``x`` (ascending) at ``buf[k]...`` and
    return ``k + popcount(x)``; no branch per bit. Needs 64 free entries past ``k``. ``vbmi2``
    (loop-invariant: one branch, unswitched or predicted) selects ``vpcompressb``; where the
    CPU lacks it LLVM expands it into slow but correct generic code."""
    if vbmi2:
        return _flatten_vbmi2(x, pos, buf, k)
    return _flatten_scalar(x, pos, buf, k)


@nb.njit(cache=True, nogil=True)
def _extract(
    planes: Any,
    ug: Any,
    uc: Any,
    cum: Any,
    bw_idx: Any,
    bw_mask: Any,
    n_steps: int,
    st: Any,
    sbuf: Any,
    ebuf: Any,
    target: int,
    vbmi2: bool,
) -> None:
    """Extract runs of the units ``(ug, uc)[u]`` (rows ``cum[u]:cum[u+1]``) from where the
    state ``st`` stopped until ``target`` runs are complete in the buffers or the units are
    done: starts into ``sbuf[st[_S_STARTS]...]``, ends into ``ebuf[st[_S_ENDS]...]`` (the
    ``k``-th start and the ``k``-th end are one run; at most one more start than ends, and up
    to ~70 past ``target``: the buffers need ``target + _SLACK`` entries). Sequence starts
    (``bw_idx``: the words holding some, ascending; ``bw_mask``: their bits) end a run and may
    start one. At a unit's end an open run gets the end ``n_steps`` and the unit's row count is
    checked against ``cum`` (else ``st[_S_ERROR] = 1 + u``)."""
    n_units = ug.shape[0]
    n_words = planes.shape[2]
    n_bw = bw_idx.shape[0]
    u = st[_S_UNIT]
    i = st[_S_WORD]
    cy = _U(st[_S_CARRY])
    bi = st[_S_BOUND]
    ks = st[_S_STARTS]
    ke = st[_S_ENDS]
    base = st[_S_ROW]
    c63 = _U(63)
    c6 = _U(6)
    while u < n_units and ke < target:
        words = planes[ug[u], uc[u]]
        while True:
            stop = bw_idx[bi] if bi < n_bw else n_words
            while i < stop and ke < target:  # words without sequence starts
                w = words[i]
                sh = (w << _ONE) | cy  # bit t: step t - 1 on
                cy = w >> c63
                i += 1
                if w == sh:  # all 0 or all 1 and going on: nothing starts or ends
                    continue
                pos = _U(i - 1) << c6
                ks = _flatten(w & ~sh, pos, sbuf, ks, vbmi2)
                ke = _flatten(sh & ~w, pos, ebuf, ke, vbmi2)
            if ke >= target or i >= n_words:
                break
            bm = bw_mask[bi]  # i == stop: a word where sequences start
            w = words[i]
            pos = _U(i) << c6
            sh = (w << _ONE) | cy
            cy = w >> c63
            ks = _flatten(w & (~sh | bm), pos, sbuf, ks, vbmi2)
            ke = _flatten(sh & (~w | bm), pos, ebuf, ke, vbmi2)
            i += 1
            bi += 1
        if i < n_words:  # the target is reached inside the unit
            break
        if ke < ks:  # open at the last step
            ebuf[ke] = n_steps
            ke += 1
        if base + ks != cum[u + 1]:
            st[_S_ERROR] = 1 + u
            break
        u += 1
        i = 0
        cy = _U(0)
        bi = 0
    st[_S_UNIT] = u
    st[_S_WORD] = i
    st[_S_CARRY] = np.int64(cy)
    st[_S_BOUND] = bi
    st[_S_STARTS] = ks
    st[_S_ENDS] = ke


@nb.njit(cache=True, nogil=True)
def _id_chunk(
    vals: Any, cum: Any, r0: int, n_rows: int, page_rows: int, out: Any, p: int, sc: Any,
    d: Any, du: Any, bmin: Any, bw: Any, meta: Any,
) -> int:  # fmt: skip
    """The column chunk of rows ``r0:r0+n_rows`` of a column that is ``vals[u]`` on the rows
    ``cum[u]:cum[u+1]`` of unit ``u`` (``threshold_index`` or ``cell``), in pages of
    ``page_rows``, at ``out[p]``: a page inside one unit is a constant page, a page across
    units is materialised in ``sc`` and encoded. ``meta[:] = (position, size, pages, min,
    max)``. Returns the position after the chunk."""
    a = p
    lo = 0
    hi = 0
    pages = 0
    for q in range(0, n_rows, page_rows):
        n = min(page_rows, n_rows - q)
        ra = r0 + q
        rb = ra + n
        ua = np.searchsorted(cum, ra, side="right") - 1
        ub = np.searchsorted(cum, rb - 1, side="right") - 1
        if ua == ub:
            v = int(vals[ua])
            p = const_page(v, n, False, out, p)
            plo = v
            phi = v
        else:
            for u in range(ua, ub + 1):
                x0 = max(cum[u], ra) - ra
                x1 = min(cum[u + 1], rb) - ra
                sc[x0:x1] = vals[u]
            p, plo, phi = encode_page(sc[:n], out, p, d, du, bmin, bw)
        lo = plo if pages == 0 else min(lo, plo)
        hi = phi if pages == 0 else max(hi, phi)
        pages += 1
    meta[0] = a
    meta[1] = p - a
    meta[2] = pages
    meta[3] = lo
    meta[4] = hi
    return p


@nb.njit(cache=True, nogil=True)
def _row_group(
    planes: Any, ug: Any, uc: Any, ug16: Any, uc32: Any, cum: Any, bw_idx: Any, bw_mask: Any,
    n_steps: int, st: Any, sbuf: Any, ebuf: Any, n_rows: int, page_rows: int, out: Any, p: int,
    eb: Any, d32: Any, du32: Any, dpos: Any, dupos: Any, bmin: Any, bw: Any, gsc: Any,
    csc: Any, meta: Any, vbmi2: bool,
) -> int:  # fmt: skip
    """Encode the next row group, ``n_rows`` rows from row ``st[_S_ROW]``, at ``out[p]``: the
    column chunks of ``threshold_index`` and ``cell`` (from the unit sizes), ``start`` (pages
    extracted and encoded in turn) and ``end`` (encoded into ``eb`` meanwhile, then copied
    behind). ``meta[c] = (position, size, pages, min, max)`` of column ``c``. Returns the
    position after the row group, or -1 if the planes disagree with the counts (the error in
    ``st``)."""
    r0 = st[_S_ROW]
    p = _id_chunk(ug16, cum, r0, n_rows, page_rows, out, p, gsc, d32, du32, bmin, bw, meta[0])
    p = _id_chunk(uc32, cum, r0, n_rows, page_rows, out, p, csc, d32, du32, bmin, bw, meta[1])
    a = p
    pe = 0
    lo = 0
    hi = 0
    pages = 0
    elo = 0
    ehi = 0
    for q in range(0, n_rows, page_rows):
        n = min(page_rows, n_rows - q)
        _extract(planes, ug, uc, cum, bw_idx, bw_mask, n_steps, st, sbuf, ebuf, n, vbmi2)
        if st[_S_ERROR] != 0 or st[_S_ENDS] < n:
            if st[_S_ERROR] == 0:
                st[_S_ERROR] = -1  # fewer runs than counted
            return -1
        p, plo, phi = encode_page(sbuf[:n], out, p, dpos, dupos, bmin, bw)
        pe, plo_e, phi_e = encode_page(ebuf[:n], eb, pe, dpos, dupos, bmin, bw)
        lo = plo if pages == 0 else min(lo, plo)
        hi = phi if pages == 0 else max(hi, phi)
        elo = plo_e if pages == 0 else min(elo, plo_e)
        ehi = phi_e if pages == 0 else max(ehi, phi_e)
        pages += 1
        ks = st[_S_STARTS] - n  # the rows past the page go first in the buffers
        ke = st[_S_ENDS] - n
        for j in range(ks):
            sbuf[j] = sbuf[n + j]
        for j in range(ke):
            ebuf[j] = ebuf[n + j]
        st[_S_STARTS] = ks
        st[_S_ENDS] = ke
        st[_S_ROW] += n
    meta[2, 0] = a
    meta[2, 1] = p - a
    meta[2, 2] = pages
    meta[2, 3] = lo
    meta[2, 4] = hi
    out[p : p + pe] = eb[:pe]
    meta[3, 0] = p
    meta[3, 1] = pe
    meta[3, 2] = pages
    meta[3, 3] = elo
    meta[3, 4] = ehi
    return p + pe


@nb.njit(cache=True, nogil=True)
def _count_starts(planes: Any, bw_idx: Any, bw_mask: Any, chunk_log2: int, counts: Any) -> None:
    """``counts[g, c, k]`` += runs of plane ``(g, c)`` starting in steps ``[k << chunk_log2,
    (k + 1) << chunk_log2)`` (``chunk_log2 >= 6``)."""
    g_n, d, n_words = planes.shape
    n_bw = bw_idx.shape[0]
    sh_k = chunk_log2 - 6
    for g in range(g_n):
        for c in range(d):
            words = planes[g, c]
            cy = _U(0)
            bi = 0
            for i in range(n_words):
                w = words[i]
                bm = _U(0)
                if bi < n_bw and bw_idx[bi] == i:
                    bm = bw_mask[bi]
                    bi += 1
                sh = (w << _ONE) | cy
                cy = w >> _U(63)
                counts[g, c, i >> sh_k] += int(_popcount(w & (~sh | bm)))


# ------------------------------------------------------------------------------ helpers


def boundary_words(
    seq_starts: npt.ArrayLike, n_steps: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
    """The words holding sequence starts (those in ``(0, n_steps)``; others are ignored), in
    ascending order, and per word the mask of its start bits."""
    s = np.unique(np.asarray(seq_starts, np.int64).reshape(-1))
    s = s[(s > 0) & (s < n_steps)]
    idx, first = np.unique(s >> 6, return_index=True)
    masks = np.left_shift(np.uint64(1), (s & 63).astype(np.uint64))
    bm = np.bitwise_or.reduceat(masks, first) if s.size else np.zeros(0, np.uint64)
    return idx.astype(np.int64), bm.astype(np.uint64)


def count_starts(
    planes: npt.NDArray[np.uint64],
    seq_starts: npt.ArrayLike,
    n_steps: int,
    chunk_log2: int = 24,
) -> npt.NDArray[np.int64]:
    """Run starts per (threshold, cell, chunk of ``2**chunk_log2`` steps), ``(G, D, K)``: what
    the plane pass of the index build counts (``index.IndexBuild.planes_range`` and
    ``fused.FusedIndex``). For tests and benchmarks."""
    if chunk_log2 < 6:
        raise ValueError("chunk_log2 must be >= 6")
    g_n, d, _ = planes.shape
    k = max(1, ((n_steps - 1) >> chunk_log2) + 1)
    counts = np.zeros((g_n, d, k), np.int64)
    bw_idx, bw_mask = boundary_words(seq_starts, n_steps)
    _count_starts(planes, bw_idx, bw_mask, chunk_log2, counts)
    return counts


@dataclass
class IntervalStats:
    """What ``write_layer_intervals`` did."""

    rows: int = 0
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    direct_bytes: int = 0  # written with O_DIRECT
    encode_s: float = 0.0  # wall seconds in the extraction + encoding kernel
    wait_s: float = 0.0  # wall seconds waiting for the write thread


class _Files:
    """The part files, written from a background thread.

    Each row group is encoded into one of three aligned buffers behind the unaligned tail
    (less than ``ALIGN`` bytes) of the previous one; the whole blocks go to the thread, which
    writes them (``O_DIRECT`` where supported) and frees the buffer. A file's last bytes and
    footer go through ``DirectFile.pwrite`` (the unaligned tail via the page cache)."""

    def __init__(self, directory: Path, wide: bool, buf_bytes: int, direct: bool) -> None:
        self.dir = directory
        self.wide = wide
        self.direct = direct
        self._bufs = [POOL.take(buf_bytes + ALIGN, np.uint8) for _ in range(3)]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(len(self._bufs)):
            self._free.put(i)
        # (a write, or None; a buffer to free after it, or -1); None: the end
        self._jobs: queue.Queue[tuple[Callable[[], None] | None, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._tail = np.zeros(0, np.uint8)
        self._file: DirectFile | None = None
        self._written = 0  # bytes of the current file handed to the thread
        self._row_groups: list[tuple[int, list[ChunkMeta]]] = []
        self._rows = 0  # rows of the current file
        self.files: list[Path] = []
        self.bytes = 0
        self.direct_bytes = 0
        self.waited = 0.0
        self._thread = threading.Thread(target=self._run, name="interval-files", daemon=True)
        self._thread.start()

    @property
    def rows_in_file(self) -> int:
        return self._rows if self._file is not None else -1

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            write, free = job
            try:
                if write is not None and self._error is None:
                    write()
            except BaseException as e:
                self._error = e
            finally:
                if free >= 0:
                    self._free.put(free)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def open(self) -> None:
        """Start the next part file (closing the current one)."""
        self.close_file()
        path = self.dir / f"part-{len(self.files):05d}.parquet"
        self.files.append(path)
        self._file = DirectFile(path, size=0, direct=self.direct)
        self._written = 0
        self._row_groups = []
        self._rows = 0
        self._tail = np.frombuffer(MAGIC, np.uint8).copy()

    def take(self) -> tuple[int, npt.NDArray[np.uint8], int]:
        """A free buffer (waits while all are in use) with the current tail at its start:
        (its id, the buffer, the tail's length: where the row group goes)."""
        self._check()
        tic = time.perf_counter()
        i = self._free.get()
        self.waited += time.perf_counter() - tic
        buf = self._bufs[i]
        t = self._tail.size
        buf[:t] = self._tail
        return i, buf, t

    def put(self, i: int, end: int, rows: int, metas: npt.NDArray[np.int64]) -> None:
        """Buffer ``i`` holds the tail and a row group of ``rows`` rows up to ``end``, its
        column chunks at ``metas[c] = (position, size, pages, min, max)`` in the buffer."""
        self._check()
        f = self._file
        assert f is not None
        buf = self._bufs[i]
        base = self._written  # the file offset of buf[0]
        self._row_groups.append(
            (rows, [ChunkMeta(base + int(m[0]), int(m[1]), int(m[2]), int(m[3]), int(m[4]))
                    for m in metas])
        )  # fmt: skip
        self._rows += rows
        whole = end - end % ALIGN
        self._tail = buf[whole:end].copy()
        self._written += whole
        self._jobs.put(((lambda: f.pwrite(buf[:whole], base)) if whole else None, i))

    def close_file(self) -> None:
        """Write the current file's tail and footer and close it (in the thread)."""
        f = self._file
        if f is None:
            return
        self._file = None
        footer = footer_bytes(self.wide, self._rows, self._row_groups)
        last = b"".join([self._tail.tobytes(), footer, len(footer).to_bytes(4, "little"), MAGIC])
        at = self._written
        self.bytes += at + len(last)

        def job() -> None:
            try:
                f.pwrite(np.frombuffer(last, np.uint8), at)
            finally:
                self.direct_bytes += f.direct_bytes
                f.close()

        self._jobs.put((job, -1))

    def close(self, complete: bool = True) -> None:
        """Finish: the current file (its footer only if ``complete``: after an error it is
        left incomplete, for the caller to remove), the thread; raises the thread's error."""
        try:
            if self._error is None and complete:
                self.close_file()
        finally:
            tic = time.perf_counter()
            self._jobs.put(None)
            self._thread.join()
            self.waited += time.perf_counter() - tic
            if self._file is not None:  # after an error
                with contextlib.suppress(Exception):
                    self._file.close()
            if not self._thread.is_alive():
                for buf in self._bufs:
                    POOL.give(buf)
                self._bufs = []
        self._check()


# --------------------------------------------------------------------------------- the API


def write_layer_intervals(
    planes: npt.NDArray[np.uint64],
    counts: npt.NDArray[np.int64],
    seq_starts: npt.ArrayLike,
    n_steps: int,
    directory: str | os.PathLike[str],
    wide: bool | None = None,
    *,
    release: Callable[[], None] | None = None,
    release_rows: int = RELEASE_ROWS,
    row_group_rows: int = ROW_GROUP_ROWS,
    part_rows: int = PART_ROWS,
    page_rows: int = PAGE_ROWS,
    direct: bool = True,
    vbmi2: bool | None = None,
) -> IntervalStats:
    """Write the on-intervals of a layer as Parquet part files ``part-00000.parquet``... in
    ``directory`` (created if missing): what the index build writes for each layer
    (``index.IndexBuild.write_intervals``).

    Args:
        planes: ``(G, D, W)`` uint64 on-planes, ``W = ceil(n_steps / 64)``: bit ``t & 63`` of
            word ``t >> 6`` of plane ``[g, c]`` is "cell ``c`` is on at threshold ``g`` at
            step ``t``"; bits past ``n_steps`` are 0. A read-only memory map is fine.
        counts: ``(G, D, K)`` run starts per (threshold, cell, chunk) as the plane pass counts
            them (any chunking: only the sums over the last axis are used). Checked against
            the planes: a disagreement raises ``RuntimeError``; a plane counted empty is not
            read at all.
        seq_starts: the steps where sequences start (0 and steps outside ``(0, n_steps)`` are
            ignored): a run is cut there.
        n_steps: ``T``.
        wide: int64 positions (default: ``n_steps >= 2**32``), else uint32.
        release: called every ``release_rows`` rows (e.g. to ``madvise`` the planes already
            read out of the resident set).
        row_group_rows, part_rows, page_rows: the layout (defaults: the dataset's; tests use
            small ones). ``part_rows`` is rounded down to a multiple of ``row_group_rows``.
        direct: write with ``O_DIRECT`` where the file system supports it.
        vbmi2: extract with ``vpcompressb`` (default: ``VBMI2``, whether the CPU has it);
            ``False`` forces the portable scalar code (tests).

    Returns the rows, files and bytes written and the time spent in the kernel and waiting.
    """
    planes = np.asarray(planes)
    counts = np.asarray(counts)
    directory = Path(directory)
    wide = n_steps >= 2**32 if wide is None else bool(wide)
    if not wide and n_steps >= 2**32:
        raise ValueError("n_steps >= 2**32 needs wide positions")
    if planes.ndim != 3 or planes.dtype != np.uint64 or not planes.flags.c_contiguous:
        raise ValueError("planes must be a C-contiguous uint64 array (G, D, W)")
    g_n, d, n_words = planes.shape
    if g_n and n_words != bits.n_words(n_steps):
        raise ValueError(f"planes have {n_words} words a plane, expected {bits.n_words(n_steps)}")
    if counts.ndim != 3 or counts.shape[:2] != (g_n, d):
        raise ValueError(f"counts must be (G, D, K) = ({g_n}, {d}, K), got {counts.shape}")
    if row_group_rows < 1 or page_rows < 1 or part_rows < row_group_rows:
        raise ValueError("bad layout: need row_group_rows, page_rows >= 1, part_rows >= row_group")
    page_rows = min(page_rows, row_group_rows)
    part_rows -= part_rows % row_group_rows
    vbmi2 = VBMI2 if vbmi2 is None else bool(vbmi2)
    directory.mkdir(parents=True, exist_ok=True)

    tot = counts.reshape(g_n * d, -1).sum(axis=1, dtype=np.int64) if g_n * d else np.zeros(0)
    nz = np.flatnonzero(tot)
    ug = (nz // d).astype(np.int64)
    uc = (nz % d).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(tot[nz])]).astype(np.int64)
    total = int(cum[-1])
    bw_idx, bw_mask = boundary_words(seq_starts, n_steps)

    pos_dt = np.int64 if wide else np.uint32
    sbuf = np.empty(page_rows + _SLACK, pos_dt)
    ebuf = np.empty(page_rows + _SLACK, pos_dt)
    d32 = np.empty(page_rows + 2 * 128, np.int32)
    dpos: npt.NDArray[Any] = np.empty(page_rows + 2 * 128, np.int64) if wide else d32
    du32 = d32.view(np.uint32)
    dupos = dpos.view(np.uint64) if wide else du32
    bmin = np.empty(page_rows // 128 + 2, np.int64)
    bwid = np.empty(page_rows // 128 + 2, np.uint32)
    gsc = np.empty(page_rows, np.int16)
    csc = np.empty(page_rows, np.int32)
    ug16 = ug.astype(np.int16)
    uc32 = uc.astype(np.int32)
    st = np.zeros(_STATE_LEN, np.int64)
    meta = np.zeros((4, 5), np.int64)
    rg = min(row_group_rows, max(total, 1))
    pos_bytes = 8 if wide else 4
    eb = np.empty(worst_case_bytes(rg, page_rows, pos_bytes), np.uint8)
    buf_bytes = ALIGN + 2 * worst_case_bytes(rg, page_rows, 4) + 2 * eb.size

    stats = IntervalStats(rows=total)
    files = _Files(directory, wide, buf_bytes, direct)
    try:
        done = 0
        since_release = 0
        while done < total:
            if files.rows_in_file < 0 or files.rows_in_file >= part_rows:
                files.open()
            n = min(row_group_rows, total - done)
            i, buf, t = files.take()
            tic = time.perf_counter()
            end = _row_group(
                planes, ug, uc, ug16, uc32, cum, bw_idx, bw_mask, n_steps, st, sbuf, ebuf, n,
                page_rows, buf, t, eb, d32, du32, dpos, dupos, bmin, bwid, gsc, csc, meta, vbmi2,
            )  # fmt: skip
            stats.encode_s += time.perf_counter() - tic
            if end < 0:
                _raise_mismatch(st, ug, uc)
            files.put(i, end, n, meta)
            done += n
            since_release += n
            if release is not None and since_release >= release_rows:
                release()
                since_release = 0
        # the rest of the planes must hold no more runs than counted
        _extract(planes, ug, uc, cum, bw_idx, bw_mask, n_steps, st, sbuf, ebuf, 1, vbmi2)
        if st[_S_ERROR] != 0 or st[_S_ENDS] != 0 or st[_S_UNIT] != ug.size:
            _raise_mismatch(st, ug, uc)
        if release is not None and since_release:
            release()
        if not files.files:
            files.open()  # an empty file: the layer's glob must match
    except BaseException:
        with contextlib.suppress(Exception):
            files.close(complete=False)
        raise
    files.close()
    stats.files = files.files
    stats.bytes = files.bytes
    stats.direct_bytes = files.direct_bytes
    stats.wait_s = files.waited
    return stats


def _raise_mismatch(st: npt.NDArray[np.int64], ug: npt.NDArray[Any], uc: npt.NDArray[Any]) -> None:
    e = int(st[_S_ERROR])
    where = f" (threshold {int(ug[e - 1])}, cell {int(uc[e - 1])})" if e > 0 else ""
    raise RuntimeError(f"interval extraction disagrees with the run counts{where}")
