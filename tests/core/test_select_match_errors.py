"""Typed errors of select and match (hiddenscope_core.errors): bad input is a clear 4xx."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hiddenscope_core.errors import HiddenScopeError, InvalidQuery, NotFound
from hiddenscope_core.match import match, match_shard, plan_shards
from hiddenscope_core.models import MAX_TOP_K, MatchQuery, SelectQuery
from hiddenscope_core.select import select_cells
from pydantic import ValidationError

from tests.core.datagen import DataSpec, LayerSpec, write_dataset
from tests.core.reference import ref_match, ref_select

T, D = 40, 5


@pytest.fixture(scope="module")
def spec() -> DataSpec:
    rng = np.random.default_rng(3)
    spec = DataSpec(n_steps=T, starts=[0, 10, 11, 25], names=["a", "b", "c", "d"])
    spec.layers = [
        LayerSpec("main", rng.normal(0.3, 0.3, (T, D)).astype(np.float32), "none"),
        LayerSpec("half", rng.normal(0.3, 0.3, (T, 2)).astype(np.float16), "tanh"),
    ]
    return spec


@pytest.fixture(scope="module")
def ds(spec: DataSpec, tmp_path_factory):
    return write_dataset(spec, tmp_path_factory.mktemp("errors"))


def assert_4xx(exc: HiddenScopeError) -> None:
    assert 400 <= exc.status < 500
    assert exc.detail


def test_unknown_layer_is_not_found(ds) -> None:
    with pytest.raises(NotFound) as e:
        select_cells(ds, SelectQuery(layer="nope", start=0, end=2))
    assert_4xx(e.value)
    with pytest.raises(NotFound) as e:
        match(ds, MatchQuery(layer="nope", cells=[0]))
    assert_4xx(e.value)
    with pytest.raises(NotFound):
        match_shard(ds, MatchQuery(layer="nope", cells=[0]), 0, T)


@pytest.mark.parametrize("cells", [[D], [0, D], [0, 1, 10**6], [2**40]])
def test_cell_out_of_range(ds, cells) -> None:
    with pytest.raises(InvalidQuery) as e:
        match(ds, MatchQuery(layer="main", cells=cells))
    assert_4xx(e.value)
    with pytest.raises(InvalidQuery):
        match(ds, MatchQuery(layer="half", cells=[2]))


def test_negative_and_empty_cells_rejected_by_model() -> None:
    with pytest.raises(ValidationError):
        MatchQuery(layer="main", cells=[-1])
    with pytest.raises(ValidationError):
        MatchQuery(layer="main", cells=[])


def test_cells_sorted_and_deduplicated() -> None:
    assert MatchQuery(layer="main", cells=[3, 1, 3, 0]).cells == [0, 1, 3]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, T + 1),  # past the data
        (T, T + 1),
        (T + 5, T + 9),
        (8, 12),  # crosses the boundary at 10 (and 11)
        (9, 11),
        (10, 12),  # sequence "b" is [10, 11)
        (24, 26),
        (0, T),
    ],
)
def test_select_range_outside_data_or_across_sequences(ds, start: int, end: int) -> None:
    with pytest.raises(InvalidQuery) as e:
        select_cells(ds, SelectQuery(layer="main", start=start, end=end))
    assert_4xx(e.value)


def test_select_ranges_inside_one_sequence_are_fine(ds, spec: DataSpec) -> None:
    raw = spec.layer("main").raw
    for a, b in [(0, 10), (10, 11), (11, 25), (25, T), (39, 40)]:
        got = select_cells(ds, SelectQuery(layer="main", start=a, end=b))
        want = ref_select(raw, "none", spec.starts, start=a, end=b)
        assert got.cells == want.cells, (a, b)
        assert (got.window_start, got.window_end) == (want.window_start, want.window_end)
        assert got.counts == want.counts, (a, b)


def test_select_empty_range_rejected_by_model() -> None:
    with pytest.raises(ValidationError):
        SelectQuery(layer="main", start=3, end=3)
    with pytest.raises(ValidationError):
        SelectQuery(layer="main", start=-1, end=3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_threshold_rejected_by_model(bad: float) -> None:
    with pytest.raises(ValidationError):
        SelectQuery(layer="main", start=0, end=2, threshold=bad)
    with pytest.raises(ValidationError):
        MatchQuery(layer="main", cells=[0], threshold=bad)


@pytest.mark.parametrize("top_k", [0, -1, MAX_TOP_K + 1, 10**9])
def test_top_k_out_of_bounds(top_k: int) -> None:
    with pytest.raises(ValidationError):
        MatchQuery(layer="main", cells=[0], top_k=top_k)


def test_top_k_bounds_accepted(ds, spec: DataSpec) -> None:
    raw = spec.layer("main").raw
    for top_k in [1, MAX_TOP_K]:
        got = match(ds, MatchQuery(layer="main", cells=[0], top_k=top_k))
        want = ref_match(raw, "none", spec.starts, cells=[0], top_k=top_k,
                         sequence_names=list(spec.names or []))  # fmt: skip
        assert len(got.hits) == min(top_k, want.n_candidates) > 0
        assert [h.model_dump() for h in got.hits] == [h.model_dump() for h in want.hits]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_length": 0},
        {"min_length": 3, "max_length": 2},
        {"max_length": 0},
        {"left_off": -1},
        {"right_off": -1},
        {"search_start": 5, "search_end": 5},
        {"search_start": -1},
    ],
)
def test_match_model_rejects(kwargs) -> None:
    with pytest.raises(ValidationError):
        MatchQuery(layer="main", cells=[0], **kwargs)


@pytest.mark.parametrize(("lo", "hi"), [(T, None), (T + 3, None), (T, T + 5)])
def test_match_search_range_outside_data(ds, lo: int, hi: int | None) -> None:
    with pytest.raises(InvalidQuery) as e:
        match(ds, MatchQuery(layer="main", cells=[0], search_start=lo, search_end=hi))
    assert_4xx(e.value)


def test_plan_shards_rejects_bad_shard_size(ds) -> None:
    q = MatchQuery(layer="main", cells=[0])
    with pytest.raises((InvalidQuery, ValueError)):
        plan_shards(ds, q, 0)
