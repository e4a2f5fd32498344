"""Long-range summaries (SPEC §6) against the brute-force reference: meta tracks of every kind
per bin (``Dataset.track_summary``, streamed from row groups of random sizes in batches of any
size) and the on-count of a set of cells per bin (``summary.on_count_summary``, from the bit
planes on the grid and from the values off it, in chunks of any size)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hiddenscope_core import summary
from hiddenscope_core.build import DatasetWriter
from hiddenscope_core.errors import InvalidQuery, NotFound
from hiddenscope_core.models import TrackInfo
from hiddenscope_core.reader import Dataset, open_dataset
from hiddenscope_core.summary import bin_edges, on_count_summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.datagen import DataSpec, random_dataspec
from tests.core.reference import (
    ref_bin_edges,
    ref_on_count_summary,
    ref_track_summary,
)

SETTINGS = settings(
    deadline=None,
    max_examples=int(os.environ.get("HIDDENSCOPE_EXACT_EXAMPLES", "30")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
LABELS = ["a", "b", "c", "d", "e"]
K = 3


def _tracks(rng: np.random.Generator, T: int) -> dict[str, np.ndarray]:
    """Rows of one track of each kind: labels with -1 and runs, values with NaN and ±inf, top-K
    ids from a small or a wide id range (ties of the mode likely with the small one)."""
    labels = rng.integers(-1, len(LABELS), T)
    labels[rng.random(T) < 0.5] = rng.integers(-1, len(LABELS))  # long runs of one label
    values = rng.normal(0, 1, T).astype(np.float32)
    values[rng.random(T) < rng.choice([0.0, 0.1, 0.9])] = np.nan
    values[rng.random(T) < 0.02] = rng.choice([np.inf, -np.inf])
    hi = int(rng.choice([3, 20, 5000]))
    ids = rng.integers(-2 if rng.random() < 0.2 else 0, hi, (T, K))
    return {"labels": labels, "values": values, "ids": ids}


def _write(spec: DataSpec, tracks: dict[str, np.ndarray], root: Path) -> Dataset:
    """The layers of ``spec`` and the three tracks, each written in random chunks (so row
    groups of random sizes)."""
    rng = np.random.default_rng(spec.chunk_seed + 7)
    T = spec.n_steps

    def chunks() -> list[tuple[int, int]]:
        out, t = [], 0
        while t < T:
            n = int(rng.integers(1, max(2, T // 3) + 1))
            out.append((t, min(T, t + n)))
            t += n
        return out

    w = DatasetWriter.create(root, "ds", n_steps=T)
    try:
        for layer in spec.layers:
            lw = w.add_layer(
                layer.name,
                n_cells=layer.raw.shape[1],
                dtype=layer.dtype,
                transform=layer.transform,
                thresholds=layer.thresholds,
            )
            for a, b in chunks():
                lw.write(layer.raw[a:b])
        pos = w.add_track(TrackInfo(name="pos", kind="discrete", labels=LABELS))
        loss = w.add_track(TrackInfo(name="loss", kind="scalar"))
        nxt = w.add_track(TrackInfo(name="next", kind="topk", k=K))
        for a, b in chunks():
            pos.write(tracks["labels"][a:b])
        for a, b in chunks():
            loss.write(tracks["values"][a:b])
        for a, b in chunks():
            nxt.write(ids=tracks["ids"][a:b], scores=np.zeros((b - a, K), np.float32))
        manifest = w.publish()
    except BaseException:
        w.abort()
        raise
    return open_dataset(root / "datasets" / manifest.id)


@st.composite
def datasets(draw: st.DrawFn) -> tuple[DataSpec, dict[str, np.ndarray]]:
    T = draw(
        st.one_of(
            st.integers(1, 10),
            st.integers(11, 3000),
            st.sampled_from([63, 64, 65, 127, 128, 129, 1023, 1024, 1025]),
        )
    )
    D = draw(st.one_of(st.integers(1, 8), st.integers(9, 70)))
    seed = draw(st.integers(0, 2**32 - 1))
    spec = random_dataspec(
        seed=seed,
        T=T,
        D=D,
        dtype=draw(st.sampled_from(["float32", "float16"])),
        transform=draw(st.sampled_from(["none", "tanh"])),
        nan_frac=draw(st.sampled_from([0.0, 0.05])),
    )
    return spec, _tracks(np.random.default_rng(seed + 1), T)


def _range(draw: st.DrawFn, T: int) -> tuple[int, int, int]:
    a = draw(st.integers(0, T - 1))
    b = draw(st.integers(a + 1, T))
    bins = draw(st.one_of(st.integers(1, 12), st.integers(1, 2 * (b - a) + 1)))
    return a, b, bins


def _none_nan(x: float) -> float:
    return math.nan if x is None else x


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    counter = iter(range(10**9))
    return lambda: tmp_path_factory.mktemp(f"sum{next(counter)}")


@SETTINGS
@given(data=datasets(), draw=st.data())
def test_track_summary_exact(roots, data, draw) -> None:  # type: ignore[no-untyped-def]
    spec, rows = data
    ds = _write(spec, rows, roots())
    T = spec.n_steps
    for _ in range(6):
        a, b, bins = _range(draw.draw, T)
        batch = draw.draw(st.one_of(st.integers(1, 70), st.just(1 << 20)))
        edges = ref_bin_edges(a, b, bins)
        assert bin_edges(a, b, bins).tolist() == edges
        # discrete
        got_edges, got = ds.track_summary("pos", a, b, bins, batch_rows=batch)
        assert got_edges.tolist() == edges
        ref = ref_track_summary("discrete", rows["labels"], edges, len(LABELS))
        assert got["label_counts"].tolist() == ref.label_counts
        assert got["unlabelled"].tolist() == ref.unlabelled
        # scalar
        _e, got = ds.track_summary("loss", a, b, bins, batch_rows=batch)
        ref = ref_track_summary("scalar", rows["values"], edges)
        assert got["counts"].tolist() == ref.counts
        np.testing.assert_array_equal(got["mins"], [_none_nan(x) for x in ref.mins])
        np.testing.assert_array_equal(got["maxs"], [_none_nan(x) for x in ref.maxs])
        np.testing.assert_allclose(
            got["means"], [_none_nan(x) for x in ref.means], rtol=1e-12, atol=1e-12
        )
        # topk: counted densely (in groups of segments) or by sorting
        dense = draw.draw(st.sampled_from([summary.DENSE_TOPK_CELLS, 0, 8, 64]))
        saved = summary.DENSE_TOPK_CELLS
        summary.DENSE_TOPK_CELLS = dense
        try:
            _e, got = ds.track_summary("next", a, b, bins, batch_rows=batch)
        finally:
            summary.DENSE_TOPK_CELLS = saved
        ref = ref_track_summary("topk", rows["ids"], edges)
        assert got["mode_ids"].tolist() == ref.mode_ids
        assert got["mode_counts"].tolist() == ref.mode_counts


@SETTINGS
@given(data=datasets(), draw=st.data())
def test_on_count_summary_exact(roots, data, draw) -> None:  # type: ignore[no-untyped-def]
    spec, rows = data
    ds = _write(spec, rows, roots())
    T = spec.n_steps
    for _ in range(6):
        layer = spec.layers[draw.draw(st.sampled_from([0, 0, 1]))]
        D = layer.raw.shape[1]
        cells = draw.draw(st.lists(st.integers(0, D - 1), min_size=1, max_size=min(D, 20)))
        grid = ds.thresholds(layer.name)
        on_grid = bool(grid) and draw.draw(st.booleans())
        if on_grid:
            theta = draw.draw(st.sampled_from(grid))
        else:
            theta = draw.draw(
                st.one_of(
                    st.sampled_from([0.3, 0.2998046875, 0.30000001192092896, 0.0, -0.0, 1.0]),
                    st.floats(-2, 2, allow_nan=False),
                )
            )
        a, b, bins = _range(draw.draw, T)
        chunk = draw.draw(st.sampled_from([64, 128, 192, 1 << 20]))
        got = on_count_summary(ds, layer.name, cells, theta, a, b, bins, chunk_steps=chunk)
        edges = ref_bin_edges(a, b, bins)
        ref = ref_on_count_summary(layer.raw, layer.transform, cells, theta, edges)  # type: ignore[arg-type]
        assert got.edges.tolist() == edges
        assert got.cells == sorted(set(cells))
        assert got.on_grid == (theta in grid)
        assert got.mins.tolist() == ref.mins, (theta, a, b, bins, chunk)
        assert got.maxs.tolist() == ref.maxs, (theta, a, b, bins, chunk)
        np.testing.assert_allclose(got.means, ref.means, rtol=1e-12)


def test_summary_bad_input(tmp_path: Path) -> None:
    spec = random_dataspec(seed=3, T=200, D=4, dtype="float32", transform="none", nan_frac=0.0)
    ds = _write(spec, _tracks(np.random.default_rng(3), 200), tmp_path)
    with pytest.raises(NotFound, match="unknown track"):
        ds.track_summary("nope", 0, 10, 2)
    for a, b in ((5, 5), (0, 201), (-1, 3)):
        with pytest.raises(InvalidQuery):
            ds.track_summary("pos", a, b, 2)
        with pytest.raises(InvalidQuery, match="not inside"):
            on_count_summary(ds, "main", [0], 0.3, a, b, 2)
    with pytest.raises(InvalidQuery, match="bins"):
        ds.track_summary("pos", 0, 10, 0)
    with pytest.raises(InvalidQuery, match="outside layer"):
        on_count_summary(ds, "main", [4], 0.3, 0, 10, 2)
    with pytest.raises(InvalidQuery, match="at least one"):
        on_count_summary(ds, "main", [], 0.3, 0, 10, 2)
    with pytest.raises(InvalidQuery, match="finite"):
        on_count_summary(ds, "main", [0], math.nan, 0, 10, 2)
    with pytest.raises(NotFound, match="unknown layer"):
        on_count_summary(ds, "nope", [0], 0.3, 0, 10, 2)
