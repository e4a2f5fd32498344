"""The O_DIRECT Parquet writer of hidden-state rows (``parquet.states``): files read back
exactly (pyarrow, DuckDB) whatever the row size, row-group size, batch cuts and memory
alignment; the same row groups, schema and metadata as pyarrow's writer; the page-cache
fallbacks give the same bytes; the reader decodes them like the former pyarrow-written parts."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hiddenscope_core.build.format import (
    ROW_GROUP_STEPS,
    STATES_META_CELLS,
    STATES_META_DTYPE,
)
from hiddenscope_core.direct_io import ALIGN, aligned_empty
from hiddenscope_core.parquet import states
from hiddenscope_core.parquet.states import StatesParquetWriter
from hiddenscope_core.reader import _decode_states
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    deadline=None,
    max_examples=int(os.environ.get("HIDDENSCOPE_EXACT_EXAMPLES", "30")) * 3,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)


def meta(dtype: str = "float32", d: int = 1) -> dict[bytes, bytes]:
    return {
        STATES_META_DTYPE: dtype.encode(),
        STATES_META_CELLS: str(d).encode(),
        b"hiddenscope.byte_order": b"little",
    }


def arrow_schema(row_bytes: int, metadata: dict[bytes, bytes]) -> pa.Schema:
    return pa.schema([pa.field("v", pa.binary(row_bytes), False)], metadata=metadata)


def make_rows(
    rng: np.random.Generator, n: int, row_bytes: int, aligned: bool, shift: int = 0
) -> npt.NDArray[np.uint8]:
    """Random rows ``(n, row_bytes)`` at an ``ALIGN``-aligned address, or ``shift`` bytes
    (1..ALIGN-1) off one."""
    if aligned:
        shift = 0
    buf = aligned_empty(n * row_bytes + ALIGN, np.uint8)
    a = buf[shift : shift + n * row_bytes].reshape(n, row_bytes)
    a[:] = rng.integers(0, 256, a.shape, dtype=np.uint8)
    return a


def as_view(rows: npt.NDArray[np.uint8], view: str) -> npt.NDArray[Any]:
    """The rows as uint8, or as (n, D) float32/float16 of the same bytes where that fits."""
    if view == "f4" and rows.shape[1] % 4 == 0:
        return rows.view(np.float32)
    if view == "f2" and rows.shape[1] % 2 == 0:
        return rows.view(np.float16)
    return rows


def write_ours(
    path: Path,
    rows: npt.NDArray[Any],
    row_bytes: int,
    rg: int,
    cuts: list[int],
    metadata: dict[bytes, bytes],
    **kw: Any,
) -> StatesParquetWriter:
    with StatesParquetWriter(path, row_bytes, rg, metadata, **kw) as w:
        for a, b in zip([0, *cuts], [*cuts, rows.shape[0]], strict=True):
            w.write(rows[a:b])
    return w


def write_pyarrow(
    path: Path, rows: npt.NDArray[np.uint8], rg: int, metadata: dict[bytes, bytes]
) -> None:
    """pyarrow's writer with LayerWriter's settings, all rows in one table."""
    schema = arrow_schema(rows.shape[1], metadata)
    col = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(rows.shape[1]), rows.shape[0], [None, pa.py_buffer(np.ascontiguousarray(rows))]
    )
    with pq.ParquetWriter(
        path, schema, compression="none", use_dictionary=False, write_statistics=False
    ) as w:
        w.write_table(pa.table({"v": col}, schema=schema), rg)


def column_bytes(col: pa.ChunkedArray | pa.Array, row_bytes: int) -> bytes:
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out = []
    for c in chunks:
        buf = c.buffers()[1]
        if buf is not None:
            out.append(buf.to_pybytes()[c.offset * row_bytes : (c.offset + len(c)) * row_bytes])
    return b"".join(out)


def check_file(
    path: Path,
    rows: npt.NDArray[np.uint8],
    rg: int,
    metadata: dict[bytes, bytes],
    ref: Path | None = None,
    rng: np.random.Generator | None = None,
) -> None:
    """pyarrow and DuckDB read exactly ``rows``; row groups of ``rg`` rows (as pyarrow's
    ``ref`` file, if given), the schema and the metadata are right; random subsets of row
    groups read right."""
    n, row_bytes = rows.shape
    expect = rows.tobytes()
    f = pq.ParquetFile(path, memory_map=True)
    assert f.schema_arrow.equals(arrow_schema(row_bytes, metadata), check_metadata=True)
    assert f.metadata.metadata == metadata
    assert f.metadata.num_rows == n
    sizes = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
    assert sizes == [min(rg, n - a) for a in range(0, n, rg)]
    for i in range(f.metadata.num_row_groups):
        c = f.metadata.row_group(i).column(0)
        assert c.compression == "UNCOMPRESSED"
        assert c.physical_type == "FIXED_LEN_BYTE_ARRAY"
        assert c.statistics is None
    t = pq.read_table(path)
    assert t.schema.equals(arrow_schema(row_bytes, metadata), check_metadata=True)
    assert column_bytes(t.column("v"), row_bytes) == expect
    if ref is not None and n:  # (pyarrow writes one empty row group for an empty table)
        fr = pq.ParquetFile(ref)
        assert fr.schema_arrow.equals(f.schema_arrow, check_metadata=True)
        assert [fr.metadata.row_group(i).num_rows for i in range(fr.metadata.num_row_groups)] == (
            sizes
        )
        assert pq.read_table(ref).equals(t)
    if rng is not None and sizes:
        k = int(rng.integers(1, len(sizes) + 1))
        sel = sorted(rng.choice(len(sizes), k, replace=False).tolist())
        got = f.read_row_groups(sel, columns=["v"], use_threads=False)
        want = b"".join(expect[i * rg * row_bytes : (i * rg + sizes[i]) * row_bytes] for i in sel)
        assert column_bytes(got.column(0), row_bytes) == want
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone() == (n,)
    q = "SELECT v FROM read_parquet(?, file_row_number = true) ORDER BY file_row_number"
    got_rows = con.execute(q, [str(path)]).fetchall()
    assert b"".join(r[0] for r in got_rows) == expect
    assert all(len(r[0]) == row_bytes for r in got_rows)


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    row_bytes = draw(
        st.one_of(st.sampled_from([1, 4, 6, 64, 256, 4 * 1023, 4096, 4100]), st.integers(1, 600))
    )
    rg = draw(st.sampled_from([1, 3, 16, 64, 1000, 1024]))
    max_n = min(5000, (3 << 20) // row_bytes)
    special = [0, 1, rg - 1, rg, rg + 1, 2 * rg, 3 * rg + 5]
    n = draw(
        st.one_of(st.sampled_from([x for x in special if 0 <= x <= max_n]), st.integers(0, max_n))
    )
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "row_bytes": row_bytes,
        "rg": rg,
        "n": n,
        "cuts": cuts,
        "aligned": draw(st.booleans()),
        "shift": draw(st.integers(1, ALIGN - 1)),
        "view": draw(st.sampled_from(["u1", "f4", "f2"])),
        # 0 puts every size that is a multiple of ALIGN in the aligned layout
        "min_aligned": draw(st.sampled_from([states.MIN_ALIGNED_BYTES, 0])),
        # a small staging buffer and pwritev batches, to exercise their refills
        "stage": draw(st.sampled_from([states.STAGE_BYTES, ALIGN, 3 * ALIGN])),
        "iov": draw(st.sampled_from([states.IOV_LIMIT, 1, 4])),
    }


@SETTINGS
@given(case=cases())
def test_round_trip(tmp_path: Path, case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    rb, rg, n = case["row_bytes"], case["rg"], case["n"]
    rows = make_rows(rng, n, rb, case["aligned"], case["shift"])
    m = meta("float32", max(1, rb // 4))
    path = tmp_path / "s.parquet"
    w = write_ours(
        path,
        as_view(rows, case["view"]),
        rb,
        rg,
        case["cuts"],
        m,
        min_aligned_bytes=case["min_aligned"],
        stage_bytes=case["stage"],
        iov_limit=case["iov"],
    )
    assert w.bytes_written == path.stat().st_size
    assert w.num_rows == n
    ref = tmp_path / "ref.parquet"
    write_pyarrow(ref, rows, rg, m)
    check_file(path, rows, rg, m, ref=ref, rng=rng)
    if w.aligned_layout:  # every row group's data starts on an ALIGN boundary
        md = pq.ParquetFile(path).metadata
        for i in range(md.num_row_groups):
            c = md.row_group(i).column(0)
            data = md.row_group(i).num_rows * rb
            assert (c.data_page_offset + c.total_compressed_size - data) % ALIGN == 0


@pytest.mark.parametrize("view", ["u1", "f4"])
def test_fast_path_one_pwritev_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, view: str
) -> None:
    """LayerWriter's case: 65536-row aligned batches of 256-byte rows, row groups of 1024: one
    O_DIRECT pwritev per write, no copy, all but the last bytes (footer) written direct."""
    calls: list[int] = []
    real = os.pwritev

    def counting(fd: int, bufs: Any, off: int) -> int:
        calls.append(len(bufs))
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", counting)
    rng = np.random.default_rng(0)
    rows = make_rows(rng, 3 * 65536, 256, aligned=True)
    path = tmp_path / "f.parquet"
    with StatesParquetWriter(path, 256, ROW_GROUP_STEPS, meta("float32", 64)) as w:
        assert w.aligned_layout
        for i in range(3):
            w.write(as_view(rows[i * 65536 : (i + 1) * 65536], view))
            assert len(calls) == i + 1
            assert calls[-1] == 2 * 64  # header block + data per row group
    if w.direct:  # not on a file system without O_DIRECT
        assert w.direct_bytes == 3 * 64 * (256 * 1024 + ALIGN)
        footer = int.from_bytes(path.read_bytes()[-8:-4], "little")
        assert w.bytes_written - w.direct_bytes == footer + 8  # the only buffered write
    overhead = w.bytes_written / rows.nbytes - 1
    assert overhead < 0.017  # one ALIGN block per 256 KB row group, and the footer
    check_file(path, rows, ROW_GROUP_STEPS, meta("float32", 64))


@pytest.mark.parametrize(
    ("rb", "rg", "min_aligned"), [(256, 1024, None), (6, 1024, None), (64, 16, 0), (4100, 3, 0)]
)
def test_page_cache_fallback_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rb: int, rg: int, min_aligned: int | None
) -> None:
    """Without O_DIRECT (no flag), and when O_DIRECT writes fail with EINVAL, the file is the
    same, byte for byte."""
    rng = np.random.default_rng(rb)
    n = 5 * rg + 7
    rows = make_rows(rng, n, rb, aligned=True)
    cuts = [1, rg + 3, 2 * rg + 3, 4 * rg + 3]
    m = meta()
    kw: dict[str, Any] = {} if min_aligned is None else {"min_aligned_bytes": min_aligned}
    write_ours(tmp_path / "a.parquet", rows, rb, rg, cuts, m, **kw)
    with monkeypatch.context() as mp:  # no O_DIRECT at all
        mp.delattr(os, "O_DIRECT")
        b = write_ours(tmp_path / "b.parquet", rows, rb, rg, cuts, m, **kw)
    assert not b.direct
    assert b.direct_bytes == 0
    real = os.pwritev

    def einval(fd: int, bufs: Any, off: int) -> int:
        if fd == c_file.dfd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, bufs, off)

    c = StatesParquetWriter(tmp_path / "c.parquet", rb, rg, m, **kw)
    c_file = c._file
    with monkeypatch.context() as mp:
        mp.setattr(os, "pwritev", einval)
        for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
            c.write(rows[lo:hi])
        c.close()
    assert c.direct_bytes == 0
    data = (tmp_path / "a.parquet").read_bytes()
    assert (tmp_path / "b.parquet").read_bytes() == data
    assert (tmp_path / "c.parquet").read_bytes() == data
    check_file(tmp_path / "b.parquet", rows, rg, m)


def test_tmpfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory under /dev/shm (tmpfs: O_DIRECT only on recent kernels) reads back right."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    rng = np.random.default_rng(5)
    rows = make_rows(rng, 4 * 1024 + 9, 256, aligned=True)
    d = shm / f"hiddenscope-test-{os.getpid()}"
    d.mkdir()
    try:
        path = d / "s.parquet"
        write_ours(path, rows, 256, 1024, [1024, 2048, 2050], meta())
        check_file(path, rows, 1024, meta())
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def test_empty_file(tmp_path: Path) -> None:
    m = meta("float16", 3)
    path = tmp_path / "e.parquet"
    with StatesParquetWriter(path, 6, ROW_GROUP_STEPS, m) as w:
        w.write(np.empty((0, 3), np.float16))
    f = pq.ParquetFile(path)
    assert f.metadata.num_row_groups == 0
    assert f.schema_arrow.equals(arrow_schema(6, m), check_metadata=True)
    t = pq.read_table(path)
    assert t.num_rows == 0
    assert t.schema.equals(arrow_schema(6, m), check_metadata=True)
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone() == (0,)
    # no write call at all gives the same file; so does no metadata, minus the metadata
    StatesParquetWriter(tmp_path / "e2.parquet", 6, ROW_GROUP_STEPS, m).close()
    assert (tmp_path / "e2.parquet").read_bytes() == path.read_bytes()
    StatesParquetWriter(tmp_path / "e3.parquet", 6, ROW_GROUP_STEPS).close()
    assert pq.read_table(tmp_path / "e3.parquet").schema.equals(arrow_schema(6, {}))


def _old_write_parquet(path: Path, raw: npt.NDArray[Any], dtype: str, chunk: int) -> None:
    """LayerWriter._write_parquet before parquet.states (one part, one flush per chunk)."""
    d = raw.shape[1]
    binary_type = pa.binary(d * raw.dtype.itemsize)
    schema = pa.schema(
        [pa.field("v", binary_type, False)],
        metadata={
            STATES_META_DTYPE: dtype.encode(),
            STATES_META_CELLS: str(d).encode(),
            b"hiddenscope.byte_order": b"little",
        },
    )
    with pq.ParquetWriter(
        path, schema, compression="none", use_dictionary=False, write_statistics=False
    ) as part:
        for a in range(0, raw.shape[0], chunk):
            rows = raw[a : a + chunk]
            le = rows.astype(rows.dtype.newbyteorder("<"), copy=False)
            col = pa.FixedSizeBinaryArray.from_buffers(
                binary_type, rows.shape[0], [None, pa.py_buffer(np.ascontiguousarray(le))]
            )
            part.write_table(pa.table({"v": col}, schema=schema), ROW_GROUP_STEPS)


@pytest.mark.parametrize(("dtype", "d"), [("float32", 64), ("float16", 5), ("float32", 1023)])
def test_decodes_like_the_pyarrow_parts(tmp_path: Path, dtype: str, d: int) -> None:
    rng = np.random.default_rng(d)
    chunk = 8192 if d <= 64 else 1000  # (rows a flush; 1000 leaves carries)
    n = 3 * chunk + 100
    raw = aligned_empty((n, d), dtype)
    raw[:] = rng.standard_normal((n, d)).astype(dtype)
    raw[rng.random((n, d)) < 0.01] = np.nan
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    _old_write_parquet(old, raw, dtype, 8192)
    m = meta(dtype, d)
    with StatesParquetWriter(new, d * raw.dtype.itemsize, ROW_GROUP_STEPS, m) as w:
        for a in range(0, n, chunk):
            w.write(raw[a : a + chunk])
    fo, fn = pq.ParquetFile(old, memory_map=True), pq.ParquetFile(new, memory_map=True)
    assert fo.schema_arrow.equals(fn.schema_arrow, check_metadata=True)
    assert fo.schema_arrow.metadata == fn.metadata.metadata
    assert fo.metadata.num_row_groups == fn.metadata.num_row_groups
    dt = np.dtype("<f4" if dtype == "float32" else "<f2")
    k = fo.metadata.num_row_groups
    for sel in ([0], [1, 2], [k - 2, k - 1], list(range(k))):
        x = _decode_states(fo.read_row_groups(sel, columns=["v"]).column(0), dt, d)
        y = _decode_states(fn.read_row_groups(sel, columns=["v"]).column(0), dt, d)
        assert x.dtype == y.dtype == dt
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
    whole = _decode_states(pq.read_table(new).column("v"), dt, d)
    np.testing.assert_array_equal(whole.view(np.uint8), raw.view(np.uint8))


def test_big_endian_input_is_written_little_endian(tmp_path: Path) -> None:
    x = np.arange(2000 * 4, dtype=np.float32).reshape(2000, 4)
    path = tmp_path / "b.parquet"
    with StatesParquetWriter(path, 16, 1024, meta()) as w:
        w.write(x.astype(">f4"))
    check_file(path, x.view(np.uint8), 1024, meta())


def test_errors_abort_and_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    w = StatesParquetWriter(path, 16, 1024, meta())
    with pytest.raises(ValueError, match="shape"):
        w.write(np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        w.write(np.zeros(16, np.uint8))
    with pytest.raises(TypeError):
        w.write(np.zeros((5, 2), object))
    w.write(np.zeros((5, 4), np.float32))
    w.abort()
    assert not path.exists()
    w.abort()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(np.zeros((5, 4), np.float32))

    def fail() -> None:
        with StatesParquetWriter(path, 16, 1024, meta()) as w2:
            w2.write(np.zeros((3000, 4), np.float32))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert not path.exists()
    with StatesParquetWriter(path, 16, 1024, meta()) as w3:
        w3.write(np.zeros((3000, 4), np.float32))
    w3.close()  # idempotent
    assert pq.read_table(path).num_rows == 3000
    with pytest.raises(ValueError, match="row_bytes"):
        StatesParquetWriter(path, 0, 1024)
    with pytest.raises(ValueError, match="largest Parquet page"):
        StatesParquetWriter(path, 1 << 21, 1024)


def test_overwrites_a_longer_file(tmp_path: Path) -> None:
    path = tmp_path / "o.parquet"
    path.write_bytes(b"x" * (1 << 20))
    rows = make_rows(np.random.default_rng(1), 1500, 64, aligned=True)
    write_ours(path, rows, 64, 1024, [], meta())
    check_file(path, rows, 1024, meta())


@pytest.mark.parametrize(("rb", "min_aligned"), [(64, 0), (64, None), (6, None)])
def test_short_writes_and_a_small_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rb: int, min_aligned: int | None
) -> None:
    """A kernel writing less than asked (any ALIGN multiple) and a one-block staging buffer
    with unaligned memory give the same file."""
    rng = np.random.default_rng(rb)
    rg = 128
    n = 9 * rg + 5
    rows = make_rows(rng, n, rb, aligned=False, shift=100)
    cuts = [3, 4 * rg + 1, 4 * rg + 1]
    m = meta()
    kw: dict[str, Any] = {} if min_aligned is None else {"min_aligned_bytes": min_aligned}
    write_ours(tmp_path / "a.parquet", rows, rb, rg, cuts, m, **kw)
    real = os.pwritev
    sizes = iter([ALIGN, 3 * ALIGN, 2 * ALIGN] * 1000)

    def short(fd: int, bufs: Any, off: int) -> int:
        limit, out, total = next(sizes), [], 0
        for b in bufs:
            b = memoryview(b)[: limit - total]
            out.append(b)
            total += b.nbytes
            if total == limit:
                break
        return real(fd, out, off)

    with monkeypatch.context() as mp:
        mp.setattr(os, "pwritev", short)
        write_ours(tmp_path / "b.parquet", rows, rb, rg, cuts, m, stage_bytes=ALIGN, **kw)
    assert (tmp_path / "b.parquet").read_bytes() == (tmp_path / "a.parquet").read_bytes()
    check_file(tmp_path / "b.parquet", rows, rg, m)
    aligned = aligned_empty(rows.shape, np.uint8)  # the no-copy path: the same bytes again
    aligned[:] = rows
    for stage, iov in [
        (states.STAGE_BYTES, states.IOV_LIMIT),
        (ALIGN, 1),
        (2 * ALIGN, 5),
        (8 * ALIGN, 4),
    ]:
        write_ours(
            tmp_path / "c.parquet", aligned, rb, rg, [0, 2 * rg, 7 * rg], m,
            stage_bytes=stage, iov_limit=iov, **kw,
        )  # fmt: skip
        assert (tmp_path / "c.parquet").read_bytes() == (tmp_path / "a.parquet").read_bytes()


def test_a_failed_write_is_not_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.parquet"
    w = StatesParquetWriter(path, 64, 1024, meta())
    w.write(make_rows(np.random.default_rng(0), 1000, 64, aligned=True))

    def full(fd: int, bufs: Any, off: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(os, "pwritev", full)
        with pytest.raises(OSError, match="space"):
            w.write(make_rows(np.random.default_rng(0), 3000, 64, aligned=True))
    with pytest.raises(ValueError, match="earlier write failed"):
        w.write(make_rows(np.random.default_rng(0), 10, 64, aligned=True))
    with pytest.raises(ValueError, match="earlier write failed"):
        w.close()
    assert not path.exists()
    w.close()  # closed now
