"""Exactness of select and match (SPEC §2) against the brute-force reference.

Every answer of ``select_cells``, ``match`` and the sharded ``match_shard`` + ``merge_partials``
is compared field by field with ``tests/core/reference.py`` on small random datasets written
with ``DatasetWriter``: float16 and float32, transforms none and tanh, NaNs, several sequences
(including length-1 sequences), thresholds on the index grid, equal to stored values and off
the grid.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from hiddenscope_core.match import match, match_shard, merge_partials, plan_shards
from hiddenscope_core.models import MatchHit, MatchQuery, SelectQuery
from hiddenscope_core.select import select_cells
from hiddenscope_core.transforms import transform_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.datagen import F16_TINY, DataSpec, LayerSpec, random_dataspec, write_dataset
from tests.core.reference import RefMatch, histogram, ref_match, ref_select

SETTINGS = settings(
    deadline=None,
    # more examples for a deeper local run: HIDDENSCOPE_EXACT_EXAMPLES=500 pytest ...
    max_examples=int(os.environ.get("HIDDENSCOPE_EXACT_EXAMPLES", "30")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


# ------------------------------------------------------------------------------------ strategies


@st.composite
def dataspecs(draw) -> DataSpec:
    T = draw(
        st.one_of(
            st.integers(1, 8),
            st.integers(9, 200),
            st.integers(200, 3000),
            st.sampled_from([63, 64, 65, 127, 128, 129, 1023, 1024, 1025]),
        )
    )
    # mostly D <= 40; sometimes more than one 64-bit word of cells
    D = draw(
        st.one_of(
            st.integers(1, 6),
            st.integers(7, 40),
            st.integers(1, 40),
            st.sampled_from([64, 65, 100]),
        )
    )
    return random_dataspec(
        seed=draw(st.integers(0, 2**32 - 1)),
        T=T,
        D=D,
        dtype=draw(st.sampled_from(["float32", "float16"])),
        transform=draw(st.sampled_from(["none", "tanh"])),
        nan_frac=draw(st.sampled_from([0.0, 0.0, 0.02, 0.3])),
    )


# beyond every value, at the float16 range end and past it, and around float16 subnormals
EXTREME_THRESHOLDS = [-1e30, 1e30, 3e38, -65504.0, 65504.0, 65505.0, 65520.0, -65520.0]
EXTREME_THRESHOLDS += [1e-7, F16_TINY, -F16_TINY, F16_TINY / 2, 3e-8]


def draw_threshold(draw, ds, layer: LayerSpec) -> float:
    """On the layer's grid, equal to a stored value, just beside either, or anywhere."""
    grid = list(ds.manifest.layer(layer.name).thresholds)
    v = transform_values(layer.raw, layer.transform).astype(np.float64)
    finite = v[np.isfinite(v)]
    choices = ["default", "uniform", "extreme", "zero"]
    if grid:
        choices += ["grid", "grid", "grid", "beside_grid", "between_grid"]
    if finite.size:
        choices += ["stored", "stored", "beside_stored"]
    kind = draw(st.sampled_from(choices))
    if kind == "default":
        return 0.3
    if kind == "uniform":
        return draw(st.floats(-1.6, 1.6, allow_nan=False))
    if kind == "extreme":
        return draw(st.sampled_from(EXTREME_THRESHOLDS))
    if kind == "zero":
        return draw(st.sampled_from([0.0, -0.0]))
    if kind == "grid":
        return float(draw(st.sampled_from(grid)))
    if kind == "beside_grid":
        g = float(draw(st.sampled_from(grid)))
        return float(np.nextafter(g, draw(st.sampled_from([-np.inf, np.inf]))))
    if kind == "between_grid":
        i = draw(st.integers(0, len(grid)))
        lo = grid[i - 1] if i > 0 else grid[0] - 1.0
        hi = grid[i] if i < len(grid) else grid[-1] + 1.0
        return (lo + hi) / 2
    x = float(finite[draw(st.integers(0, finite.size - 1))])
    if kind == "beside_stored":
        x = float(np.nextafter(x, draw(st.sampled_from([-np.inf, np.inf]))))
    return x


def draw_range_in_sequence(draw, spec: DataSpec, max_len: int = 12) -> tuple[int, int]:
    lo, hi = draw(st.sampled_from(spec.bounds()))
    a = draw(st.integers(lo, hi - 1))
    b = draw(st.integers(a + 1, min(hi, a + max_len)))
    return a, b


# ------------------------------------------------------------------------------------- checking


def ref_names(ds, n: int) -> list:
    names = list(ds.sequence_names())
    assert len(names) == n
    return names


def check_select(ds, spec: DataSpec, q: SelectQuery):
    layer = spec.layer(q.layer)
    got = select_cells(ds, q)
    ref = ref_select(
        layer.raw,
        layer.transform,
        spec.starts,
        start=q.start,
        end=q.end,
        threshold=q.threshold,
        left_off=q.left_off,
        right_off=q.right_off,
        window_start=q.window_start,
        window_end=q.window_end,
    )
    assert got.cells == ref.cells, q
    assert (got.window_start, got.window_end) == (ref.window_start, ref.window_end), q
    assert got.counts == ref.counts, q
    return got


def run_ref_match(ds, spec: DataSpec, q: MatchQuery) -> RefMatch:
    layer = spec.layer(q.layer)
    return ref_match(
        layer.raw,
        layer.transform,
        spec.starts,
        cells=q.cells,
        threshold=q.threshold,
        left_off=q.left_off,
        right_off=q.right_off,
        min_length=q.min_length,
        max_length=q.max_length,
        top_k=q.top_k,
        search_start=q.search_start,
        search_end=q.search_end,
        sequence_names=ref_names(ds, len(spec.starts)),
    )


def dump_hits(hits: list[MatchHit]) -> list[dict]:
    return [h.model_dump() for h in hits]


def assert_hits_equal(got: list[MatchHit], want: list[MatchHit], q) -> None:
    g, w = dump_hits(got), dump_hits(want)
    if g != w:
        diff = next(
            i for i in range(max(len(g), len(w))) if i >= len(g) or i >= len(w) or g[i] != w[i]
        )
        pytest.fail(
            f"hits differ for {q!r}\n first difference at rank {diff}:\n"
            f"  implementation: {g[diff] if diff < len(g) else None}\n"
            f"  reference:      {w[diff] if diff < len(w) else None}\n"
            f" ({len(g)} vs {len(w)} hits)"
        )


def assert_stats_equal(got, ref: RefMatch, q) -> None:
    assert got is not None, f"stats requested but missing: {q!r}"
    assert got.n_candidates == ref.n_candidates, q
    assert got.length_histogram == ref.length_histogram, q
    assert got.strict_length_histogram == ref.strict_length_histogram, q


def check_match(ds, spec: DataSpec, q: MatchQuery) -> RefMatch:
    ref = run_ref_match(ds, spec, q)
    got = match(ds, q)
    assert got.query == q
    assert_hits_equal(got.hits, ref.hits, q)
    if q.stats:
        assert_stats_equal(got.stats, ref, q)
    else:
        assert got.stats is None
    grid = ds.manifest.layer(q.layer).thresholds
    assert got.threshold_on_grid == (q.threshold in grid), (q.threshold, grid)
    return ref


def shard_owned(ref: RefMatch, lo: int, hi: int, top_k: int) -> RefMatch:
    """The reference answer of one shard: the candidates that start in ``[lo, hi)``."""
    own = [h for h in ref.ranked if lo <= h.start < hi]
    lengths = [h.length for h in own]
    strict = [h.length for h in own if h.missing == 0]  # S1 ⊆ S2
    return RefMatch(
        hits=own[:top_k],
        n_candidates=len(own),
        length_histogram=histogram(lengths),
        strict_length_histogram=histogram(strict),
        ranked=own,
    )


def check_shards(ds, spec: DataSpec, q: MatchQuery, ref: RefMatch, shard_steps: int) -> None:
    T = spec.n_steps
    plan = [(int(lo), int(hi)) for lo, hi in plan_shards(ds, q, shard_steps)]
    assert plan, (q, shard_steps)
    for (_, h0), (l1, _) in itertools.pairwise(plan):
        assert h0 == l1, f"shards are not contiguous: {plan}"
    assert all(0 <= lo < hi <= T for lo, hi in plan), plan
    # the plan covers every candidate start the query can return
    first = q.search_start or 0
    assert plan[0][0] <= first or plan[0][0] <= min((h.start for h in ref.ranked), default=T)
    assert plan[-1][1] >= max((h.start + 1 for h in ref.ranked), default=0)
    partials = [match_shard(ds, q, lo, hi) for lo, hi in plan]
    for (lo, hi), p in zip(plan, partials, strict=True):
        assert (p.shard_start, p.shard_end) == (lo, hi)
        own = shard_owned(ref, lo, hi, q.top_k)
        assert_hits_equal(p.hits, own.hits, (q, "shard", lo, hi))
        if q.stats:
            assert_stats_equal(p.stats, own, (q, "shard", lo, hi))
    merged = merge_partials(q, partials)
    assert_hits_equal(merged.hits, ref.hits, (q, "merged", shard_steps))
    if q.stats:
        assert_stats_equal(merged.stats, ref, (q, "merged", shard_steps))
    # the library's own sharded (and parallel) path
    for workers in [1, 2]:
        direct = match(ds, q, shard_steps=shard_steps, workers=workers)
        assert_hits_equal(direct.hits, ref.hits, (q, "match(shard_steps)", shard_steps, workers))
        if q.stats:
            assert_stats_equal(direct.stats, ref, (q, "match(shard_steps)", shard_steps))


def check_any_partition(ds, spec: DataSpec, q: MatchQuery, ref: RefMatch, cuts: list[int]):
    """Any partition of [0, T) into shards merges to the exact answer (shards own the
    candidates that start inside them), including shards not aligned to 64 steps."""
    edges = [0, *sorted(set(cuts) - {0, spec.n_steps}), spec.n_steps]
    partials = [match_shard(ds, q, lo, hi) for lo, hi in itertools.pairwise(edges)]
    for p in partials:
        own = shard_owned(ref, p.shard_start, p.shard_end, q.top_k)
        assert_hits_equal(p.hits, own.hits, (q, "shard", p.shard_start, p.shard_end))
    merged = merge_partials(q, partials)
    assert_hits_equal(merged.hits, ref.hits, (q, "partition", edges))
    if q.stats:
        assert_stats_equal(merged.stats, ref, (q, "partition", edges))


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    counter = iter(range(10**9))

    def fresh():
        return tmp_path_factory.mktemp(f"ds{next(counter)}")

    return fresh


@SETTINGS
@given(spec=dataspecs(), data=st.data())
def test_select_exact(roots, spec: DataSpec, data) -> None:
    ds = write_dataset(spec, roots())
    assert ds.n_steps == spec.n_steps
    assert [int(x) for x in ds.sequence_starts()] == spec.starts
    if spec.names is not None:
        assert list(ds.sequence_names()) == spec.names
    for _ in range(8):
        layer = spec.layers[data.draw(st.sampled_from([0, 0, 0, 1]))]
        a, b = draw_range_in_sequence(data.draw, spec)
        window = {}
        if data.draw(st.booleans()):
            ws = data.draw(st.integers(0, spec.n_steps - 1))
            we = data.draw(st.integers(ws + 1, spec.n_steps))
            window = {"window_start": ws, "window_end": we}
        q = SelectQuery(
            layer=layer.name,
            start=a,
            end=b,
            threshold=draw_threshold(data.draw, ds, layer),
            left_off=data.draw(st.integers(0, 3)),
            right_off=data.draw(st.integers(0, 3)),
            **window,
        )
        check_select(ds, spec, q)


def draw_match_query(draw, ds, spec: DataSpec, layer: LayerSpec, cells: list[int] | None):
    D = layer.raw.shape[1]
    if cells is None:
        size = draw(st.one_of(st.integers(1, min(D, 4)), st.integers(1, D), st.just(D)))
        cells = draw(st.permutations(range(D)))[:size]
    min_length = draw(st.integers(1, 3))
    max_length = draw(st.one_of(st.none(), st.integers(min_length, min_length + 30)))
    search_start = search_end = None
    if draw(st.integers(0, 3)) == 0:
        search_start = draw(st.one_of(st.none(), st.integers(0, spec.n_steps - 1)))
        lo = 1 if search_start is None else search_start + 1
        search_end = draw(st.one_of(st.none(), st.integers(lo, spec.n_steps)))
    return MatchQuery(
        layer=layer.name,
        cells=cells,
        threshold=draw_threshold(draw, ds, layer),
        left_off=draw(st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(4, 130))),
        right_off=draw(st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(4, 130))),
        min_length=min_length,
        max_length=max_length,
        top_k=draw(st.one_of(st.integers(1, 60), st.just(1000))),
        search_start=search_start,
        search_end=search_end,
        stats=draw(st.booleans()),
    )


@SETTINGS
@given(spec=dataspecs(), data=st.data())
def test_match_exact(roots, spec: DataSpec, data) -> None:
    ds = write_dataset(spec, roots())
    for i in range(6):
        layer = spec.layers[data.draw(st.sampled_from([0, 0, 0, 1]))]
        cells = None
        if i % 2 == 0:  # S1 from a select, as the UI does
            a, b = draw_range_in_sequence(data.draw, spec, max_len=4)
            sel = select_cells(
                ds,
                SelectQuery(
                    layer=layer.name,
                    start=a,
                    end=b,
                    threshold=draw_threshold(data.draw, ds, layer),
                    left_off=data.draw(st.integers(0, 2)),
                ),
            )
            cells = sel.cells or None
        q = draw_match_query(data.draw, ds, spec, layer, cells)
        check_match(ds, spec, q)


SHARD_SIZES = [1, 7, 64, 65, 1000]


@SETTINGS
@given(spec=dataspecs(), data=st.data())
def test_sharded_match_equals_match(roots, spec: DataSpec, data) -> None:
    ds = write_dataset(spec, roots())
    T = spec.n_steps
    for _ in range(2):
        layer = spec.layers[data.draw(st.sampled_from([0, 0, 1]))]
        q = draw_match_query(data.draw, ds, spec, layer, None)
        ref = check_match(ds, spec, q)
        for shard_steps in [*SHARD_SIZES, T, T + 1, T + 1000]:
            if T / shard_steps > 400:  # keep the run time of the file bounded
                continue
            check_shards(ds, spec, q, ref, shard_steps)
        cuts = data.draw(st.lists(st.integers(0, T), max_size=min(T, 40)))
        check_any_partition(ds, spec, q, ref, cuts)


def test_sharded_small_shards_long_data(roots) -> None:
    """Shards of 1 and 7 steps over data long enough for runs to cross many shards."""
    spec = random_dataspec(seed=7, T=900, D=12, dtype="float16", transform="none", nan_frac=0.02)
    ds = write_dataset(spec, roots())
    for threshold in [0.3, 0.29, float(np.float16(0.3))]:
        q = MatchQuery(
            layer="main", cells=[0, 1, 2, 3, 4, 5], threshold=threshold, min_length=1, stats=True
        )
        ref = check_match(ds, spec, q)
        for shard_steps in [1, 7, 64, 65]:
            check_shards(ds, spec, q, ref, shard_steps)


# ------------------------------------------------------------------------------ planted pattern

PHRASE = [11, 12, 13, 14]  # token ids of the planted 4-step phrase
PLANTED_CELLS = [2, 5, 11, 17, 23]


@pytest.fixture(scope="module")
def planted(roots):
    rng = np.random.default_rng(20240611)
    T, D = 20_000, 32
    noise = rng.normal(0.0, 0.2, size=(T, D))
    tokens = rng.integers(20, 100, size=T)
    starts, t = [], int(rng.integers(50, 300))
    while t + 4 < T:
        starts.append(t)
        t += int(rng.integers(200, 500))
    for s in starts:
        tokens[s : s + 4] = PHRASE
        noise[s - 1, PLANTED_CELLS] = -0.6  # off one step before
        noise[s : s + 4, PLANTED_CELLS] = 0.9  # on over the phrase
    plain = noise.astype(np.float32)
    # the same pattern through tanh in float16: arctanh(0.9) = 1.47, arctanh(-0.6) = -0.69
    half = np.arctanh(np.clip(noise, -0.95, 0.95)).astype(np.float16)
    spec = DataSpec(n_steps=T, starts=[0], names=None)
    spec.layers = [LayerSpec("plain", plain, "none"), LayerSpec("half", half, "tanh")]
    ds = write_dataset(spec, roots(), name="planted")
    return spec, ds, starts, tokens


@pytest.mark.parametrize("layer", ["plain", "half"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.3 + 1e-7, "grid"])
def test_planted_pattern(planted, layer: str, threshold) -> None:
    spec, ds, starts, _ = planted
    if threshold == "grid":
        grid = [g for g in ds.manifest.layer(layer).thresholds if 0.3 <= g <= 0.8]
        if not grid:
            pytest.skip("no grid threshold in [0.3, 0.8]")
        threshold = grid[0]
    s0 = starts[3]
    sel = check_select(
        ds, spec, SelectQuery(layer=layer, start=s0, end=s0 + 4, threshold=threshold)
    )
    assert sel.cells == PLANTED_CELLS
    assert sel.counts == [0, 5, 5, 5, 5]
    q = MatchQuery(layer=layer, cells=sel.cells, threshold=threshold, top_k=len(starts) + 5)
    ref = check_match(ds, spec, q)
    got = match(ds, q)
    n = len(starts)
    top = got.hits[:n]
    assert [h.start for h in top] == starts
    for h in top:
        assert (h.end, h.length, h.level) == (h.start + 4, 4, 5)
        assert (h.intersection, h.union, h.missing, h.extra, h.jaccard) == (5, 5, 0, 0, 1.0)
    assert all(h.intersection < 5 or h.union > 5 for h in got.hits[n:])
    assert ref.hits == got.hits
    qs = q.model_copy(update={"stats": True})
    ref_stats = run_ref_match(ds, spec, qs)
    for shard_steps in [1000, 4096, 20_000]:
        check_shards(ds, spec, qs, ref_stats, shard_steps)


def test_planted_pattern_search_range(planted) -> None:
    spec, ds, starts, _ = planted
    lo, hi = starts[5], starts[9] + 4
    q = MatchQuery(
        layer="plain", cells=PLANTED_CELLS, search_start=lo, search_end=hi, top_k=10, stats=True
    )
    check_match(ds, spec, q)
    got = match(ds, q)
    assert [h.start for h in got.hits[:5]] == starts[5:10]
    assert all(lo <= h.start and h.end <= hi for h in got.hits)


def test_zero_thresholds_and_negative_zero(roots) -> None:
    """-0.0 and +0.0 are both >= 0.0 and >= -0.0 (float16 and float32)."""
    for dtype in [np.float32, np.float16]:
        raw = np.array([[-0.0, 0.0], [0.0, -0.0], [-1e-3, 1e-3], [0.0, 0.0]], dtype)
        spec = DataSpec(n_steps=4, starts=[0], names=None)
        spec.layers = [LayerSpec("main", raw, "none", thresholds=[0.0])]
        ds = write_dataset(spec, roots())
        for theta in [0.0, -0.0]:
            for a, b in [(0, 1), (0, 2), (1, 2), (3, 4)]:
                check_select(ds, spec, SelectQuery(layer="main", start=a, end=b, threshold=theta))
            q = MatchQuery(layer="main", cells=[0, 1], threshold=theta, min_length=1, stats=True)
            check_match(ds, spec, q)


def test_hit_fields_consistent(planted) -> None:
    spec, ds, _, _ = planted
    q = MatchQuery(layer="plain", cells=[0, 1, 2, 3, 4, 5], threshold=0.1, top_k=200)
    got = match(ds, q)
    check_match(ds, spec, q)
    keys = [h.sort_key() for h in got.hits]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    for h in got.hits:
        assert h.length == h.end - h.start >= q.min_length
        assert h.missing == len(q.cells) - h.intersection
        assert h.union == len(q.cells) + h.extra
        assert math.isclose(h.jaccard, h.intersection / h.union)
        assert 1 <= h.level <= len(q.cells)
        assert h.intersection <= h.level


@pytest.mark.slow
def test_long_corpus_exact(roots) -> None:
    """More than one Parquet part (2^20 steps) and many 64-step words: still exact."""
    T = (1 << 20) + 300
    spec = random_dataspec(seed=11, T=T, D=6, dtype="float16", transform="tanh", nan_frac=0.01)
    ds = write_dataset(spec, roots(), name="long")
    queries = [
        MatchQuery(layer="main", cells=[0, 1, 2, 3], threshold=0.3, top_k=100, stats=True),
        MatchQuery(
            layer="main",
            cells=[1, 4, 5],
            threshold=0.35,
            left_off=2,
            right_off=1,
            min_length=3,
            top_k=1000,
            search_start=T // 3,
            stats=True,
        ),
    ]
    for q in queries:
        ref = check_match(ds, spec, q)
        for shard_steps in [65_536, 1 << 20]:
            check_shards(ds, spec, q, ref, shard_steps)
    for a in [0, (1 << 20) - 2, T - 3]:
        b = min(a + 3, next(hi for lo, hi in spec.bounds() if lo <= a < hi))
        check_select(ds, spec, SelectQuery(layer="main", start=a, end=b, right_off=2))


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_shard_floor_keeps_the_merge_exact(roots, seed: int) -> None:
    """Shards run one after another, each pruned by the best k-th intersection of the shards
    before it (how the match service's Celery shards share their bound), merge to the answer
    of the reference."""
    spec = random_dataspec(seed=seed, T=1500, D=10, dtype="float32", transform="none", nan_frac=0)
    ds = write_dataset(spec, roots())
    for cells, top_k in [([0, 1, 2, 3], 5), ([1, 4, 7], 20), ([2, 5], 3)]:
        q = MatchQuery(layer="main", cells=cells, threshold=0.3, top_k=top_k, min_length=1)
        ref = run_ref_match(ds, spec, q)
        floor = 0
        partials = []
        for lo, hi in plan_shards(ds, q, 97):
            part = match_shard(ds, q, lo, hi, floor=floor)
            assert all(h.intersection >= floor for h in part.hits)
            floor = max(floor, part.kth_intersection(q.top_k))
            partials.append(part)
        assert_hits_equal(merge_partials(q, partials).hits, ref.hits, q)
