"""URL state: our encoding round-trips; the original LSTMVis parameters are understood."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

import pytest
from hiddenscope_ui.state import (
    DEFAULT_OFF,
    LEFT_CONTEXT,
    SequenceRef,
    ViewState,
    parse_jump,
    parse_query_params,
    to_original_query_params,
    to_query_params,
)
from hypothesis import given
from hypothesis import strategies as st

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)


@st.composite
def states(draw: st.DrawFn) -> ViewState:
    pos = draw(st.integers(0, 10**9))
    rng = draw(st.none() | st.tuples(st.integers(0, 10**9), st.integers(1, 1000)))
    min_len = draw(st.integers(1, 50))
    return ViewState(
        dataset=draw(st.none() | names),
        layer=draw(st.none() | names),
        compare=draw(st.none() | names),
        pos=pos,
        threshold=draw(st.floats(-5, 5, allow_nan=False).map(lambda f: float(f"{f:.6g}"))),
        cw=draw(st.sampled_from([30.0, 5.0, 0.5, 0.01, 45.0])),
        tracks=tuple(draw(st.lists(names, max_size=4, unique=True))),
        cells=tuple(sorted(draw(st.sets(st.integers(0, 4000), max_size=30)))),
        range=None if rng is None else (rng[0], rng[0] + rng[1]),
        off=draw(st.tuples(st.integers(0, 20), st.integers(0, 20))),
        hl=draw(st.none() | st.integers(0, 4000)),
        mask=draw(st.booleans()),
        map=draw(st.none() | st.just("count") | names),
        min_length=min_len,
        max_length=draw(st.none() | st.integers(min_len, 500)),
        top_k=draw(st.integers(1, 1000)),
        stats=draw(st.booleans()),
        job=draw(st.none() | st.from_regex(r"[A-Za-z0-9_-]{8,22}", fullmatch=True)),
    )


def _through_url(params: dict[str, str]) -> dict[str, list[str]]:
    """What a browser hands back: the query string encoded and parsed again."""
    return parse_qs(urlencode(params), keep_blank_values=True)


@given(states())
def test_our_encoding_round_trips(state: ViewState) -> None:
    parsed = parse_query_params(_through_url(to_query_params(state)))
    assert parsed.problems == []
    assert parsed.state == state


@given(states())
def test_original_encoding_round_trips_what_it_can_hold(state: ViewState) -> None:
    params = to_original_query_params(state)
    assert set(params) <= {
        "project", "source", "pos", "activation", "cw", "meta", "sc", "wordBrush", "wordBrushZero"
    }  # fmt: skip
    parsed = parse_query_params(_through_url(params))
    got = parsed.state
    assert (got.dataset, got.layer, got.pos) == (state.dataset, state.layer, state.pos)
    assert (got.threshold, got.cw, got.tracks) == (state.threshold, state.cw, state.tracks)
    assert (got.cells, got.range, got.off) == (state.cells, state.range, state.off)


def test_original_link_from_lstmvis() -> None:
    """A link the original client wrote (`..a,b,c` arrays, `file::path` source, window-relative
    wordBrush)."""
    parsed = parse_query_params(
        {
            "project": "children-books",
            "source": "states::states1",
            "pos": "100",
            "activation": "0.45",
            "cw": "25",
            "meta": "..part_of_speech,predictions",
            "sc": "..11,3,7",
            "wordBrush": "..3,6",
            "wordBrushZero": "..1,1",
        }
    )
    s = parsed.state
    assert parsed.problems == []
    assert s.dataset == "children-books"
    assert s.layer == "states1"
    assert s.pos == 100
    assert s.threshold == 0.45
    assert s.cw == 25
    assert s.tracks == ("part_of_speech", "predictions")
    assert s.cells == (3, 7, 11)
    base = 100 - LEFT_CONTEXT
    assert s.range == (base + 3, base + 6)
    assert s.off == (1, 1)


def test_ours_win_over_original_names() -> None:
    s = parse_query_params({"dataset": "new", "project": "old", "threshold": "0.5",
                            "activation": "0.1"}).state  # fmt: skip
    assert (s.dataset, s.threshold) == ("new", 0.5)


def test_original_left_handle_at_minus_one_means_no_left_extent() -> None:
    assert parse_query_params({"wordBrushZero": "..-1,2"}).state.off == (0, 2)


def test_repeated_keys_and_plain_commas() -> None:
    s = parse_query_params({"cells": ["5", "1,2"], "tracks": ["a", "b"]}).state
    assert s.cells == (1, 2, 5)
    assert s.tracks == ("a", "b")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pos": "abc"}, "pos"),
        ({"pos": "-4"}, "pos"),
        ({"threshold": "nan"}, "threshold"),
        ({"cw": "0"}, "cw"),
        ({"cells": "1,x,3"}, "cells"),
        ({"range": "9,3"}, "range"),
        ({"range": "1,2,3"}, "range"),
        ({"off": "-1,0"}, "off"),
        ({"dataset": "../etc/passwd"}, "dataset"),
        ({"max_length": "1", "min_length": "5"}, "max_length"),
        ({"bogus": "1"}, "bogus"),
        ({"mask": "maybe"}, "mask"),
        ({"stats": "2"}, "stats"),
        ({"compare": "a b"}, "compare"),
    ],
)
def test_malformed_params_are_dropped_with_a_message(params: dict[str, str], field: str) -> None:
    parsed = parse_query_params(params)
    assert any(field in p for p in parsed.problems), parsed.problems
    defaults = ViewState()
    if hasattr(defaults, field):
        assert getattr(parsed.state, field) == getattr(defaults, field)


def test_defaults_are_left_out_of_the_url() -> None:
    assert to_query_params(ViewState()) == {}
    assert to_query_params(ViewState(dataset="d", off=DEFAULT_OFF)) == {"dataset": "d"}


def test_window_and_span() -> None:
    s = ViewState(pos=100, cw=30)
    assert s.window() == (97, 97 + s.span)
    assert ViewState(pos=0).window()[0] == 0
    assert ViewState(pos=990, cw=30).window(1000) == (1000 - 40, 1000)
    assert ViewState(pos=5, cw=0.01).span == 120_000


def test_layer_switch_clears_the_selection() -> None:
    s = ViewState(layer="a", compare="c", cells=(1,), range=(3, 5), hl=1, job="j")
    t = s.with_layer("b")
    assert (t.cells, t.range, t.hl, t.job) == ((), None, None, None)
    assert t.compare == "c"
    assert s.with_layer("a") is s
    # the compared layer becoming the main one: nothing left to compare
    assert s.with_layer("c").compare is None


def test_flags_in_the_url() -> None:
    assert to_query_params(ViewState(mask=True, stats=True)) == {"mask": "1", "stats": "1"}
    s = parse_query_params({"mask": "true", "stats": "0", "compare": "states::states2"}).state
    assert (s.mask, s.stats, s.compare) == (True, False, "states2")


SEQS = [SequenceRef(0, "chr1", 0, 1000), SequenceRef(1, "chr2", 1000, 5000)]


@pytest.mark.parametrize(
    ("text", "step"),
    [("0", 0), ("4999", 4999), ("1,234", 1234), ("chr2:0", 1000), ("chr2:3_999", 4999),
     ("#1:10", 1010), (" chr1:5 ", 5)],
)  # fmt: skip
def test_jump_targets(text: str, step: int) -> None:
    assert parse_jump(text, SEQS, 5000) == step


@pytest.mark.parametrize("text", ["", "5000", "chr3:1", "chr1:1000", "x", "-1", "chr1:-2"])
def test_bad_jump_targets_say_why(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_jump(text, SEQS, 5000)
