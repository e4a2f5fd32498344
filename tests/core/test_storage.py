"""Dataset storage layer: writer + reader round trips, index correctness, atomic publication."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
from hiddenscope_core import bits
from hiddenscope_core.build import BuildSizes, DatasetWriter
from hiddenscope_core.errors import Conflict, InvalidData, InvalidQuery, NotFound
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.reader import Catalog, open_dataset
from hiddenscope_core.thresholds import default_grid, validate_grid
from hiddenscope_core.transforms import transform_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.helpers import make_states, write_dataset


def brute_intervals(on: np.ndarray, starts: list[int]) -> list[tuple[int, int]]:
    """Maximal on-runs of a bool vector, cut at sequence starts."""
    cut = set(starts)
    out: list[tuple[int, int]] = []
    cur: int | None = None
    for t, x in enumerate(on):
        if x and (cur is None or t in cut):
            if cur is not None:
                out.append((cur, t))
            cur = t
        elif not x and cur is not None:
            out.append((cur, t))
            cur = None
    if cur is not None:
        out.append((cur, len(on)))
    return out


@pytest.mark.parametrize(
    ("dtype", "transform"),
    [("float32", "tanh"), ("float32", "none"), ("float16", "none"), ("float16", "tanh")],
)
def test_planes_and_intervals_equal_brute_force(tmp_path: Path, dtype: str, transform: str) -> None:
    T, D = 3001, 5  # T not a multiple of 64
    x = make_states(T, D, seed=1)
    starts = [0, 64, 65, 1000, 2999]
    grid = [-0.5, 0.0, 0.3, 0.55] if transform == "none" else None
    write_dataset(
        tmp_path, "ds", x, dtype=dtype, transform=transform, starts=starts, thresholds=grid
    )
    ds = Catalog(tmp_path).get("ds")
    v = transform_values(x.astype(dtype), transform).astype(np.float32)  # type: ignore[arg-type]
    assert np.array_equal(ds.window("l1", 0, T), v, equal_nan=True)
    assert np.array_equal(np.asarray(ds.values("l1")).T.astype(np.float32), v, equal_nan=True)
    planes = ds.planes("l1")
    grid_used = ds.thresholds("l1")
    assert grid_used == (grid if grid is not None else [0.1 * i for i in range(1, 10)]) or (
        grid is None and np.allclose(grid_used, np.arange(1, 10) / 10)
    )
    assert planes.shape == (len(grid_used), D, bits.n_words(T))
    for g, theta in enumerate(grid_used):
        for c in range(D):
            on = v[:, c].astype(np.float64) >= theta
            assert np.array_equal(bits.unpack(planes[g, c], T), on)
            s, e = ds.on_intervals("l1", theta, c)
            assert list(zip(s.tolist(), e.tolist(), strict=True)) == brute_intervals(on, starts)
            frac = ds.cell_on_fraction("l1")[g, c]
            assert frac == pytest.approx(on.mean())
    # a sub-range query returns the overlapping runs only
    s, e = ds.on_intervals("l1", grid_used[0], 0, 100, 200)
    assert all(a < 200 and b > 100 for a, b in zip(s, e, strict=True))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    T=st.integers(1, 400),
    D=st.integers(1, 4),
    chunk=st.integers(1, 300),
    n_seq=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_intervals_property(
    tmp_path_factory: pytest.TempPathFactory, T: int, D: int, chunk: int, n_seq: int, seed: int
) -> None:
    root = tmp_path_factory.mktemp("p")
    rng = np.random.default_rng(seed)
    # smooth-ish states so that runs have varied lengths
    x = np.cumsum(rng.standard_normal((T, D)), axis=0).astype(np.float32) * 0.3
    x[rng.random((T, D)) < 0.05] = np.nan
    starts = sorted({0, *rng.integers(0, T, n_seq - 1).tolist()})
    write_dataset(root, "p", x, transform="none", starts=starts, chunk=chunk, thresholds=[0.0, 0.5])
    ds = Catalog(root).get("p")
    for g, theta in enumerate([0.0, 0.5]):
        for c in range(D):
            on = x[:, c] >= theta
            assert np.array_equal(bits.unpack(ds.planes("l1")[g, c], T), on)
            s, e = ds.on_intervals("l1", theta, c)
            assert list(zip(s.tolist(), e.tolist(), strict=True)) == brute_intervals(on, starts)


def test_round_trip_tokens_tracks_sequences(tmp_path: Path) -> None:
    T, D, K = 2 * 1024 + 37, 3, 4
    rng = np.random.default_rng(2)
    x = make_states(T, D, seed=3)
    w = DatasetWriter.create(tmp_path, "rt", n_steps=T, description="d", provenance={"a": 1})
    w.set_sequences([0, 10, 2000], names=["chr1", "chr2", "chrX"])
    w.set_vocab(["A", "C", "G", "T"])
    tok = rng.integers(0, 4, T)
    for s in range(0, T, 501):
        w.write_tokens(tok[s : s + 501])
    lw = w.add_layer("h", n_cells=D, transform="none", kind="hidden")
    for s in range(0, T, 13):
        lw.write(x[s : s + 13])
    labels = rng.integers(-1, 3, T)
    w.add_track(TrackInfo(name="pos", kind="discrete", labels=["N", "V", "D"]), labels)
    scal = rng.standard_normal(T).astype(np.float32)
    tw = w.add_track(TrackInfo(name="score", kind="scalar"), scal[:100])
    tw.write(scal[100:])
    ids = rng.integers(0, 4, (T, K))
    sc = rng.random((T, K)).astype(np.float32)
    w.add_track(TrackInfo(name="top", kind="topk", k=K), ids=ids, scores=sc)
    m = w.publish()
    assert (m.n_sequences, m.has_tokens, m.vocab_size) == (3, True, 4)
    assert m.sizes["layers/h/states"] > 0
    assert m.sizes["index.duckdb"] > 0
    ds = open_dataset(tmp_path / "names" / "rt")
    assert ds.manifest.provenance == {"a": 1}
    assert ds.sequence_starts().tolist() == [0, 10, 2000]
    assert ds.sequence_ends().tolist() == [10, 2000, T]
    assert ds.sequence_names() == ["chr1", "chr2", "chrX"]
    assert [ds.sequence_of(t) for t in (0, 9, 10, T - 1)] == [0, 0, 1, 2]
    assert ds.vocab() == ["A", "C", "G", "T"]
    for a, b in [(0, T), (1020, 1030), (5, 6), (T - 1, T)]:
        assert ds.tokens(a, b).tolist() == tok[a:b].tolist()
        assert np.array_equal(ds.window("h", a, b), x[a:b], equal_nan=True)
        assert np.array_equal(ds.window("h", a, b, cells=[2, 0]), x[a:b][:, [2, 0]], equal_nan=True)
        assert ds.track("pos", a, b)["label"].tolist() == labels[a:b].tolist()
        assert np.array_equal(ds.track("score", a, b)["value"], scal[a:b])
        top = ds.track("top", a, b)
        assert np.array_equal(top["ids"], ids[a:b])
        assert np.array_equal(top["scores"], sc[a:b])
    st_ = ds.cell_stats("h")
    for c in range(D):
        col = x[:, c]
        assert st_["min"][c] == pytest.approx(np.nanmin(col))
        assert st_["max"][c] == pytest.approx(np.nanmax(col))
        assert st_["mean"][c] == pytest.approx(np.nanmean(col), rel=1e-5)
        assert st_["nan_count"][c] == np.isnan(col).sum()
        # documented approximation: within one bin (at most twice (max - min) / 4096 of the
        # layer) of the order statistics around rank q(n-1)
        bin_width = 2 * (np.nanmax(x) - np.nanmin(x)) / 4096
        ordered = np.sort(col[~np.isnan(col)])
        for q, key in [(0.01, "q01"), (0.5, "q50"), (0.99, "q99")]:
            r = q * (ordered.size - 1)
            lo, hi = ordered[int(np.floor(r))], ordered[int(np.ceil(r))]
            assert lo - 2 * bin_width <= st_[key][c] <= hi + 2 * bin_width
    info = ds.layer("h")
    assert info.nan_count == int(np.isnan(x).sum())
    assert info.value_min == pytest.approx(float(np.nanmin(x)))


def test_multiple_parts(tmp_path: Path) -> None:
    T, D = 5000, 4
    x = make_states(T, D, seed=5)
    sizes = BuildSizes(buffer_bytes=4096 * 4)
    w = DatasetWriter.create(tmp_path, "parts", n_steps=T, part_steps=2048, sizes=sizes)
    lw = w.add_layer("l", n_cells=D)
    for s in range(0, T, 999):
        lw.write(x[s : s + 999])
    m = w.publish()
    assert m.part_steps == 2048
    ds = Catalog(tmp_path).get(m.id)
    assert len(list((ds.path / "layers" / "l" / "states").iterdir())) == 3
    assert np.array_equal(ds.window("l", 2000, 4500), x[2000:4500], equal_nan=True)


def test_default_grid() -> None:
    assert default_grid(-1.0, 1.0) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert default_grid(-0.9999, 0.9995)[2] == 0.3
    assert default_grid(0.0, 7.3) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert default_grid(-5.0, -1.0)[0] == -4.5
    assert default_grid(1.0, 1.0) == []
    with pytest.raises(InvalidData, match="ascending"):
        validate_grid([0.3, 0.1])
    with pytest.raises(InvalidData, match="finite"):
        validate_grid([float("nan")])
    with pytest.raises(InvalidData, match="at most"):
        validate_grid(list(range(40)))


def test_abort_and_crash_leave_nothing(tmp_path: Path) -> None:
    x = make_states(100, 2, seed=0)

    def crash() -> None:
        with DatasetWriter.create(tmp_path, "crash", n_steps=100) as w:
            w.add_layer("l", n_cells=2).write(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        crash()
    w2 = DatasetWriter.create(tmp_path, "aborted", n_steps=100)
    w2.add_layer("l", n_cells=2).write(x[:50])
    w2.abort()
    # publish failing validation rolls back too
    w3 = DatasetWriter.create(tmp_path, "short", n_steps=100)
    w3.add_layer("l", n_cells=2).write(x[:50])
    with pytest.raises(InvalidData, match="50 rows"):
        w3.publish()
    for sub in ("datasets", "names", "staging"):
        assert list((tmp_path / sub).iterdir()) == []
    assert Catalog(tmp_path).list() == []


def test_name_conflict(tmp_path: Path) -> None:
    x = make_states(70, 2, seed=0)
    w1 = DatasetWriter.create(tmp_path, "same", n_steps=70)
    w2 = DatasetWriter.create(tmp_path, "same", n_steps=70)  # both start before either publishes
    for w in (w1, w2):
        w.add_layer("l", n_cells=2).write(x)
    w1.publish()
    with pytest.raises(Conflict, match="same"):
        w2.publish()
    with pytest.raises(Conflict):
        DatasetWriter.create(tmp_path, "same", n_steps=70)
    assert len(list((tmp_path / "datasets").iterdir())) == 1
    assert [m.name for m in Catalog(tmp_path).list()] == ["same"]


def test_catalog_delete(tmp_path: Path) -> None:
    x = make_states(70, 2, seed=0)
    ida = write_dataset(tmp_path, "a", x)
    write_dataset(tmp_path, "b", x)
    cat = Catalog(tmp_path)
    assert [m.name for m in cat.list()] == ["a", "b"]
    assert cat.get(ida).name == "a"
    cat.delete("a")
    assert [m.name for m in cat.list()] == ["b"]
    assert not (tmp_path / "datasets" / ida).exists()
    with pytest.raises(NotFound):
        cat.get("a")
    with pytest.raises(NotFound):
        cat.delete("../b")


def _read_in_child(path: str, q: mp.Queue[object]) -> None:
    ds = open_dataset(path)
    s, _e = ds.on_intervals("l1", ds.thresholds("l1")[0], 0)
    stats = ds.cell_stats("l1")
    q.put((len(s), float(stats["mean"][0])))


def test_two_processes_read_duckdb(tmp_path: Path) -> None:
    x = make_states(2000, 3, seed=4)
    dsid = write_dataset(tmp_path, "mp", x)
    path = str(tmp_path / "datasets" / dsid)
    ctx = mp.get_context("spawn")
    q: mp.Queue[object] = ctx.Queue()
    ds = open_dataset(path)
    con = ds.connect()  # this process holds a read-only connection meanwhile
    procs = [ctx.Process(target=_read_in_child, args=(path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    con.close()
    expected = len(ds.on_intervals("l1", ds.thresholds("l1")[0], 0)[0])
    assert [r[0] for r in results] == [expected, expected]  # type: ignore[index]


def test_bad_input_messages(tmp_path: Path) -> None:
    with pytest.raises(InvalidData, match="name"):
        DatasetWriter.create(tmp_path, "Bad Name", n_steps=10)
    with pytest.raises(InvalidData, match="n_steps"):
        DatasetWriter.create(tmp_path, "x", n_steps=0)
    w = DatasetWriter.create(tmp_path, "x", n_steps=10)
    lw = w.add_layer("l", n_cells=3)
    with pytest.raises(InvalidData, match=r"shape \(n, 3\)"):
        lw.write(np.zeros((4, 2), np.float32))
    with pytest.raises(InvalidData, match="float16/float32/float64"):
        lw.write(np.zeros((4, 3), np.int64))
    with pytest.raises(InvalidData, match="n_steps=10"):
        lw.write(np.zeros((11, 3), np.float32))
    with pytest.raises(InvalidData, match="strictly increasing"):
        w.set_sequences([0, 5, 5])
    with pytest.raises(InvalidData, match="step 0"):
        w.set_sequences([1, 5])
    with pytest.raises(InvalidData, match="outside"):
        w.set_sequences([0, 10])
    with pytest.raises(InvalidData, match="unique"):
        w.set_sequences([0, 5], names=["a", "a"])
    with pytest.raises(InvalidData, match="ascending"):
        w.add_layer("m", n_cells=3, thresholds=[0.5, 0.1])
    with pytest.raises(Conflict):
        w.add_layer("l", n_cells=3)
    with pytest.raises(InvalidData, match="label indices"):
        w.add_track(TrackInfo(name="t", kind="discrete", labels=["a"]), np.array([0, 3]))
    with pytest.raises(InvalidData, match="infinite"):  # the last rows: checked at once
        lw.write(np.full((10, 3), np.inf, np.float32))
    with pytest.raises(InvalidData, match="infinite"):
        w.publish()
    assert list((tmp_path / "staging").iterdir()) == []


def test_reader_errors(tmp_path: Path) -> None:
    x = make_states(300, 2, seed=0)
    write_dataset(tmp_path, "r", x)
    ds = Catalog(tmp_path).get("r")
    with pytest.raises(NotFound, match="l1"):
        ds.window("nope", 0, 10)
    with pytest.raises(InvalidQuery, match="inside"):
        ds.window("l1", 250, 301)
    with pytest.raises(InvalidQuery, match="cell ids"):
        ds.window("l1", 0, 10, cells=[5])
    with pytest.raises(InvalidQuery, match="not on the grid"):
        ds.on_intervals("l1", 0.33, 0)
    with pytest.raises(NotFound, match="track"):
        ds.track("nope", 0, 1)
    with pytest.raises(NotFound):
        ds.tokens(0, 1)
    with pytest.raises(NotFound):
        open_dataset(tmp_path / "nowhere")
    assert os.path.islink(tmp_path / "names" / "r")


def brute_rows(v: np.ndarray, theta: float) -> np.ndarray:
    """(T, Dw) uint64: bit c & 63 of word c >> 6 of row t is v[t, c] >= theta."""
    T, D = v.shape
    on = v.astype(np.float64) >= theta
    Dw = (D + 63) // 64
    padded = np.zeros((T, Dw * 64), bool)
    padded[:, :D] = on
    weights = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))
    return (padded.reshape(T, Dw, 64).astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)


@pytest.mark.parametrize("D", [1, 63, 64, 65, 130])
@pytest.mark.parametrize(
    ("dtype", "transform"),
    [("float32", "tanh"), ("float32", "none"), ("float16", "none"), ("float16", "tanh")],
)
def test_rows_equal_brute_force(tmp_path: Path, dtype: str, transform: str, D: int) -> None:
    # several index blocks; flushes of 1024-2048 rows
    sizes = BuildSizes(block_values=64 * 64, buffer_bytes=1024 * D * 4)
    T = 2600 + D  # not a multiple of 64; rows of the fused index in 2-3 flushes
    x = make_states(T, D, seed=D, nan_frac=0.05)
    grid = [-0.4, 0.0, 0.3] if transform == "none" else None
    write_dataset(
        tmp_path, "rows", x, dtype=dtype, transform=transform, thresholds=grid, sizes=sizes
    )
    ds = Catalog(tmp_path).get("rows")
    v = transform_values(x.astype(dtype), transform).astype(np.float32)  # type: ignore[arg-type]
    rows = ds.rows("l1")
    thetas = ds.thresholds("l1")
    assert rows.shape == (len(thetas), T, (D + 63) // 64)
    assert not rows.flags.writeable
    for g, theta in enumerate(thetas):
        assert np.array_equal(np.asarray(rows[g]), brute_rows(v, theta)), (g, theta)


def test_empty_grid_has_empty_rows_and_intervals(tmp_path: Path) -> None:
    x = make_states(200, 3, seed=9)
    write_dataset(tmp_path, "e", x, transform="none", thresholds=[])
    ds = Catalog(tmp_path).get("e")
    assert ds.rows("l1").shape == (0, 200, 1)
    assert ds.planes("l1").shape[0] == 0
    con = ds.connect()
    try:
        row = con.execute("SELECT count(*) FROM on_intervals").fetchone()
    finally:
        con.close()
    assert row == (0,)


def test_tanh_is_float32_numpy() -> None:
    from hiddenscope_core.transforms import tanh_f16_table

    # the float16 table is exactly np.tanh of the float32 value of every bit pattern
    f16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    expect = np.tanh(f16.astype(np.float32))
    assert np.array_equal(tanh_f16_table(), expect, equal_nan=True)
    assert np.array_equal(transform_values(f16, "tanh"), expect, equal_nan=True)
    assert transform_values(f16.reshape(256, 256), "tanh").shape == (256, 256)
    # float32: np.tanh in float32, independent of chunking, slicing and strides
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 37)) * 3).astype(np.float32)
    full = transform_values(x, "tanh")
    assert full.dtype == np.float32
    assert np.array_equal(full, np.tanh(x))
    assert np.array_equal(transform_values(x[3:500:7, ::3], "tanh"), full[3:500:7, ::3])
    assert np.array_equal(transform_values(x[:, [5, 1]], "tanh"), full[:, [5, 1]])
    assert all(
        transform_values(x[i : i + 1], "tanh")[0, 4] == full[i, 4] for i in range(0, 1000, 97)
    )
    # float16 through float32 and through the table agree
    h = x.astype(np.float16)
    assert np.array_equal(transform_values(h, "tanh"), np.tanh(h.astype(np.float32)))


def test_states_parquet_layout(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = make_states(3000, 5, seed=7)
    for dtype in ("float32", "float16"):
        root = tmp_path / dtype
        write_dataset(root, "st", x, dtype=dtype, transform="none")
        ds = Catalog(root).get("st")
        f = pq.ParquetFile(ds.path / "layers" / "l1" / "states" / "part-00000.parquet")
        item = np.dtype(dtype).itemsize
        assert f.schema_arrow.field("v").type == pa.binary(5 * item)
        meta = f.schema_arrow.metadata
        assert meta[b"hiddenscope.dtype"] == dtype.encode()
        assert meta[b"hiddenscope.n_cells"] == b"5"
        md = f.metadata
        assert md.num_row_groups == 3
        assert md.row_group(0).num_rows == 1024
        assert md.row_group(0).column(0).compression == "UNCOMPRESSED"
        raw = np.frombuffer(
            f.read().column(0).chunk(0).buffers()[1], dtype=np.dtype(dtype).newbyteorder("<")
        )
        xs = x.astype(dtype)
        assert np.array_equal(raw.reshape(3000, 5)[:1024], xs[:1024], equal_nan=True)
        for a, b in [(0, 3000), (1000, 1100), (1023, 1025), (2999, 3000)]:
            assert np.array_equal(ds.window("l1", a, b), xs[a:b].astype(np.float32), equal_nan=True)


def _view_in_child(path: str, q: mp.Queue[object]) -> None:
    ds = open_dataset(path)
    con = ds.connect()
    try:
        rows = con.execute(
            'SELECT layer, threshold, cell, start, "end" FROM on_intervals '
            "ORDER BY layer, threshold, cell, start"
        ).fetchall()
    finally:
        con.close()
    q.put(rows)


def test_on_intervals_view_after_publication(tmp_path: Path) -> None:
    T = 700
    x = make_states(T, 3, seed=11)
    starts = [0, 100, 101, 640]
    w = DatasetWriter.create(tmp_path, "view", n_steps=T)
    w.set_sequences(starts)
    for name, transform in (("a", "tanh"), ("b", "none")):
        lw = w.add_layer(name, n_cells=3, transform=transform, thresholds=[0.0, 0.3])  # type: ignore[arg-type]
        for s in range(0, T, 300):
            lw.write(x[s : s + 300])
    m = w.publish()
    # the staging directory is gone: the view resolves its relative paths in the published one
    assert not (tmp_path / "staging" / m.id).exists()
    expected = []
    for name, transform in (("a", "tanh"), ("b", "none")):
        v = transform_values(x, transform).astype(np.float64)  # type: ignore[arg-type]
        for theta in (0.0, 0.3):
            for c in range(3):
                for s, e in brute_intervals(v[:, c] >= theta, starts):
                    expected.append((name, theta, c, s, e))
    path = str(tmp_path / "names" / "view")  # through the name link
    ctx = mp.get_context("spawn")
    q: mp.Queue[object] = ctx.Queue()
    p = ctx.Process(target=_view_in_child, args=(path, q))
    p.start()
    got = q.get(timeout=120)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert got == expected
    # the index holds no absolute path
    ds = open_dataset(path)
    con = ds.connect()
    try:
        (sql,) = con.execute(
            "SELECT sql FROM duckdb_views() WHERE view_name = 'on_intervals'"
        ).fetchone() or ("",)
        typ = con.execute(
            'SELECT typeof(start), typeof("end") FROM on_intervals LIMIT 1'
        ).fetchone()
    finally:
        con.close()
    assert str(tmp_path) not in sql
    assert "layers/a/intervals/" in sql
    assert typ == ("BIGINT", "BIGINT")
    files = sorted((ds.path / "layers" / "a" / "intervals").iterdir())
    assert [f.name for f in files] == ["part-00000.parquet"]


@pytest.mark.parametrize("chunk_log2", [6, 7])
def test_intervals_across_small_chunks(tmp_path: Path, chunk_log2: int) -> None:
    """Runs that cross interval-extraction chunks (and sequence starts) come out whole, once."""
    sizes = BuildSizes(
        interval_chunk_log2=chunk_log2,
        block_values=64,
        interval_row_group=5,  # many row groups
        interval_part_rows=20,  # several part files
    )
    T, D = 1000, 3
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.standard_normal((T, D)), axis=0).astype(np.float32) * 0.2
    x[:, 2] = 1.0  # always on: one run per sequence, crossing every chunk
    x[rng.random((T, D)) < 0.01] = np.nan
    starts = [0, 64, 130, 500, 999]
    write_dataset(
        tmp_path, "ch", x, transform="none", starts=starts, thresholds=[0.0, 0.5], sizes=sizes
    )
    ds = Catalog(tmp_path).get("ch")
    assert len(list((ds.path / "layers" / "l1" / "intervals").iterdir())) > 1
    for theta in (0.0, 0.5):
        for c in range(D):
            s, e = ds.on_intervals("l1", theta, c)
            on = x[:, c] >= theta
            assert list(zip(s.tolist(), e.tolist(), strict=True)) == brute_intervals(on, starts)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float32", "float16"]),
    T=st.integers(1, 700),
    D=st.integers(1, 5),
)
def test_cell_statistics_exact_whatever_the_values(
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    dtype: str,
    T: int,
    D: int,
) -> None:
    """min, max, NaN count and mean per cell equal numpy's on the stored values, for buffers
    with and without NaN (the writer's fast statistics kernel and its exact fallback), signed
    zeros, subnormals and the largest finite values of the dtype."""
    sizes = BuildSizes(buffer_bytes=64 * D * 4)  # flushes of 64 rows
    info = np.finfo(np.dtype(dtype))
    pool = np.array(
        [0.0, -0.0, 0.5, -0.75, float(info.tiny) / 4, -float(info.tiny) / 2, float(info.max),
         -float(info.max), 1e-3, np.nan],
        np.float64,
    ).astype(dtype)  # fmt: skip
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((T, D)).astype(dtype)
    mask = rng.random((T, D)) < data.draw(st.sampled_from([0.0, 0.05, 0.5]))
    x[mask] = rng.choice(pool, mask.sum())
    if data.draw(st.booleans()):
        x[:, 0] = np.nan  # an all-NaN cell
    root = tmp_path_factory.mktemp("stats")
    write_dataset(
        root, "s", x, dtype=dtype, transform="none", chunk=50, thresholds=[0.0], sizes=sizes
    )
    ds = Catalog(root).get("s")
    stats = ds.cell_stats("l1")
    xf = x.astype(np.float64)
    for c in range(D):
        col = xf[:, c]
        assert stats["nan_count"][c] == np.isnan(col).sum()
        if np.isnan(col).all():
            assert np.isnan(stats["min"][c])
            assert np.isnan(stats["max"][c])
            assert np.isnan(stats["mean"][c])
            continue
        assert stats["min"][c] == np.nanmin(col)
        assert stats["max"][c] == np.nanmax(col)
        scale = np.nanmax(np.abs(col))
        assert abs(stats["mean"][c] - np.nanmean(col)) <= 1e-12 * scale + 1e-12


@pytest.mark.parametrize("later_range", ["same_grid", "other_grid"])
def test_default_grid_guessed_from_the_first_rows(tmp_path: Path, later_range: str) -> None:
    """Without an explicit grid, the index is built during the writes for the default grid of
    the first flushed rows. If the later rows keep that grid it is used as built (the histogram
    re-binned as the range grew); if they change it, the index is rebuilt from values.bin. Both
    give the brute-force intervals, planes and on-fractions of the final default grid."""
    sizes = BuildSizes(buffer_bytes=1024 * 3 * 4)  # flushes of 1024 steps
    T, D = 2000, 3
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.95, 0.95, (T, D)).astype(np.float32)
    if later_range == "other_grid":
        x[:1024] *= 0.04  # the first flush spans only [-0.038, 0.038]: a grid of 0.005 steps
    x[1500:1510, 1] = 0.999  # the range grows after the first flush (the histogram re-bins)
    x[rng.random((T, D)) < 0.02] = np.nan
    starts = [0, 300, 1024]
    sources: dict[str, str] = {}
    write_dataset(
        tmp_path, "g", x, transform="none", starts=starts, chunk=100, sizes=sizes,
        index_sources=sources,
    )  # fmt: skip
    ds = Catalog(tmp_path).get("g")
    grid = ds.thresholds("l1")
    assert grid == default_grid(float(np.nanmin(x)), float(np.nanmax(x)))
    assert sources == {"l1": "values.bin" if later_range == "other_grid" else "fused"}
    planes = ds.planes("l1")
    for g, theta in enumerate(grid):
        for c in range(D):
            on = x[:, c] >= theta
            s, e = ds.on_intervals("l1", theta, c)
            assert list(zip(s.tolist(), e.tolist(), strict=True)) == brute_intervals(on, starts)
            assert np.array_equal(bits.unpack(np.asarray(planes[g, c]), T), on)
    st_ = ds.cell_stats("l1")
    for c in range(D):
        col = x[:, c][~np.isnan(x[:, c])]
        width = 2 * (np.nanmax(x) - np.nanmin(x)) / 4096
        r = 0.5 * (col.size - 1)
        lo, hi = np.sort(col)[[int(np.floor(r)), int(np.ceil(r))]]
        assert lo - 2 * width <= st_["q50"][c] <= hi + 2 * width
