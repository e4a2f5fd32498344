"""Select view (paper §5.2, Fig. 1a): the cells over a window of steps, the threshold, a range
brushed on the words with its off extents, the on-count heatmap under the words, the selected
cells, meta tracks, and navigation (back/forward, shift, zoom, jump, phrase search)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import streamlit as st
from hiddenscope_client import (
    ApiError,
    BadRequest,
    DatasetInfo,
    LayerInfo,
    LayerSummary,
    SelectQuery,
    SelectResult,
    TrackInfo,
)
from hiddenscope_ui import api, charts
from hiddenscope_ui.common import (
    PAGES,
    accept,
    bound,
    can_go,
    current_view,
    dataset_picker,
    go,
    layer_picker,
    open_dataset,
    set_view,
    show_api_error,
    show_url_problems,
    track_infos,
)
from hiddenscope_ui.state import LEFT_CONTEXT, MAX_CW, MIN_CW, SequenceRef, ViewState, parse_jump

SUMMARY_ABOVE = 400
# Windows longer than this many steps show per-bin min/max summaries.
SUMMARY_BINS = 300
SHIFT = 5
SELECT_MEMO = 8


def _sequence_refs(manifest: DatasetInfo) -> list[SequenceRef]:
    try:
        seqs = api.sequences(api.base_url(), manifest.id)
    except ApiError:
        seqs = []
    if not seqs:
        return [SequenceRef(0, "all", 0, manifest.n_steps)]
    return [SequenceRef(s.index, s.name, s.start, s.end) for s in seqs]


def _where(step: int, seqs: list[SequenceRef]) -> str:
    for s in seqs:
        if s.start <= step < s.end:
            return f"{s.name}:{step - s.start:,}" if len(seqs) > 1 else f"step {step:,}"
    return f"step {step:,}"


def _navigation(view: ViewState, n_steps: int, seqs: list[SequenceRef]) -> ViewState:
    """Back/forward, shift, zoom, jump and phrase search (a row above the plot)."""
    cols = st.columns([1, 1, 1, 1, 1, 1, 1, 1, 5], vertical_alignment="bottom")
    span = view.window(n_steps)[1] - view.window(n_steps)[0]
    if cols[0].button("⟵", help="back (history)", disabled=not can_go(-1)):
        go(-1)
        st.rerun()
    if cols[1].button("⟶", help="forward (history)", disabled=not can_go(+1)):
        go(+1)
        st.rerun()
    moves = {
        2: ("«", -span),
        3: ("‹", -SHIFT),
        4: ("›", SHIFT),
        5: ("»", span),
    }
    for i, (label, delta) in moves.items():
        if cols[i].button(label, key=f"shift{i}", help=f"shift the window by {delta:+,} steps"):
            pos = min(max(0, view.pos + delta), max(0, n_steps - 1))
            set_view(replace(view, pos=pos))
            st.rerun()
    zoom_in = cols[6].button("A+", help="wider words (zoom in)", disabled=view.cw >= MAX_CW)
    if zoom_in:
        cw = view.cw + 5 if view.cw >= 5 else min(5.0, view.cw * 4)
        set_view(replace(view, cw=min(MAX_CW, cw)))
        st.rerun()
    zoom_out = cols[7].button("A−", help="narrower words (zoom out)", disabled=view.cw <= MIN_CW)
    if zoom_out:
        cw = view.cw - 5 if view.cw > 5 else view.cw / 4
        set_view(replace(view, cw=max(MIN_CW, cw)))
        st.rerun()
    with cols[8].form("jump", clear_on_submit=False, border=False):
        j1, j2 = st.columns([3, 1], vertical_alignment="bottom")
        target = j1.text_input(
            "Jump to step or sequence:offset", placeholder=f"e.g. 1200 or {seqs[0].name}:100"
        )
        if j2.form_submit_button("Go"):
            try:
                step = parse_jump(target, seqs, n_steps)
            except ValueError as exc:
                st.session_state["jump_error"] = str(exc)
            else:
                set_view(replace(view, pos=step))
                st.rerun()
    if err := st.session_state.pop("jump_error", None):
        st.warning(err)
    return view


def _search(view: ViewState, ds_id: str) -> None:
    with st.sidebar.expander("Phrase search", expanded=False):
        with st.form("search", border=False):
            q = st.text_input("Phrase", key="search-q")
            submitted = st.form_submit_button("Search")
        if submitted and q.strip():
            st.session_state["search-run"] = q.strip()
        q_run = st.session_state.get("search-run")
        if not q_run:
            return
        try:
            found = api.search(api.base_url(), ds_id, q_run, 20)
        except ApiError as exc:
            st.warning(f"search failed: {exc.message}")
            return
        if not found.positions:
            st.caption(f"no hits for “{q_run}”")
            return
        st.caption(f"{len(found.positions)} hits for “{q_run}”")
        for i, start in enumerate(found.positions):
            end = start + max(1, len(found.query))
            if st.button(f"{start:,}: ", key=f"hit-{i}-{start}"):
                set_view(replace(view, pos=start, range=(start, end), cells=(), hl=None))
                st.rerun()


def _controls(view: ViewState, manifest: DatasetInfo, layer: LayerInfo | None) -> ViewState:
    sb = st.sidebar
    lo = layer.value_min if layer else None
    hi = layer.value_max if layer else None
    help_range = (
        f"layer values span [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else None
    )
    thr = sb.number_input(
        "Threshold θ",
        step=0.01,
        format="%.3f",
        key=bound("thr", float(view.threshold)),
        help=help_range,
    )
    if thr != view.threshold and math.isfinite(thr):
        accept("thr", thr)
        view = replace(view, threshold=round(float(thr), 6))
        set_view(view)
    c1, c2 = sb.columns(2)
    zl = c1.number_input(
        "off before",
        min_value=0,
        max_value=1000,
        step=1,
        key=bound("zl", view.off[0]),
        help="steps before the range that must be off",
    )
    zr = c2.number_input(
        "off after",
        min_value=0,
        max_value=1000,
        step=1,
        key=bound("zr", view.off[1]),
        help="steps after the range that must be off",
    )
    if (int(zl), int(zr)) != view.off:
        accept("zl", int(zl))
        accept("zr", int(zr))
        view = replace(view, off=(int(zl), int(zr)))
        set_view(view)
    others = [x.info.name for x in manifest.layers if x.info.name != view.layer]
    if others:
        compare = sb.selectbox(
            "Compare with layer",
            ["", *others],
            key=bound("compare", view.compare if view.compare in others else ""),
            format_func=lambda n: n or "— (none)",
            help="draw a second layer under this one over the same steps, with the cells on "
            "over the same range",
        )
        if (compare or None) != view.compare:
            accept("compare", compare)
            view = replace(view, compare=compare or None)
            set_view(view)
    with sb.expander("Cells by hand"):
        text = st.text_input(
            "Cell ids (used when no range is brushed)",
            key=bound("cells-text", ",".join(map(str, view.cells))),
            placeholder="3,7,11",
        )
        if st.button("Use these cells"):
            try:
                cells = tuple(sorted({int(x) for x in text.replace(" ", "").split(",") if x}))
                n_cells = layer.n_cells if layer else 0
                if any(c < 0 or c >= n_cells for c in cells):
                    raise ValueError(f"cell ids are 0 .. {n_cells - 1}")
            except ValueError as exc:
                st.warning(f"not a list of cell ids: {exc}")
            else:
                set_view(replace(view, cells=cells, range=None, hl=None))
                st.rerun()
    return view


def _track_toggles(view: ViewState, manifest: DatasetInfo) -> ViewState:
    """Every meta track of the dataset as a toggle (any number on, in the order the dataset
    lists them), and the mask switch. Track names in the link that the dataset does not have
    are reported and dropped."""
    tracks = track_infos(manifest)
    stale = [t for t in view.tracks if t not in tracks]
    if stale:
        st.warning(
            f"Track(s) {', '.join(stale)} not in this dataset (a stale link?); not shown.",
            icon="🏷️",
        )
        view = replace(view, tracks=tuple(t for t in view.tracks if t in tracks))
        set_view(view, history=False)
    if not tracks:
        return view
    c1, c2 = st.columns([6, 1], vertical_alignment="bottom")
    chosen = c1.pills(
        "Meta tracks (click to switch on/off)",
        list(tracks),
        selection_mode="multi",
        key=bound("tracks", list(view.tracks)),
        format_func=lambda n: f"{n} ({tracks[n].kind})",
    )
    chosen = [t for t in tracks if t in (chosen or [])]
    if tuple(chosen) != view.tracks:
        accept("tracks", chosen)
        view = replace(view, tracks=tuple(chosen))
        set_view(view)
    mask = c2.toggle(
        "mask",
        key=bound("mask", view.mask),
        help="fade the tracks where few selected cells are on (opacity 0.2 .. 1 by the "
        "on-count under the words)",
        disabled=not view.tracks,
    )
    if mask != view.mask:
        accept("mask", mask)
        view = replace(view, mask=bool(mask))
        set_view(view, history=False)
    return view


def _range_control(view: ViewState, ws: int, we: int, texts: list[str]) -> ViewState:
    """Range over the words of the window (also set by a box selection on the plot)."""
    c1, c2 = st.columns([8, 1], vertical_alignment="bottom")
    steps = list(range(ws, we))

    def label(t: int) -> str:
        i = t - ws
        word = texts[i] if 0 <= i < len(texts) else ""
        return f"{t} {word}" if word else str(t)

    if view.range is not None and ws <= view.range[0] and view.range[1] - 1 < we:
        current: tuple[int, int] = (view.range[0], view.range[1] - 1)
    else:
        first = steps[min(LEFT_CONTEXT, len(steps) - 1)]
        current = (first, first)
    # the key follows the state, so a change made elsewhere (box drag, history, jump) shows
    picked_pair: Any = c1.select_slider(
        "Range over the words (first, last)",
        options=steps,
        value=current,
        format_func=label,
        key=f"range-{ws}-{we}-{current[0]}-{current[1]}",
    )
    if not isinstance(picked_pair, tuple | list):
        picked_pair = (picked_pair, picked_pair)
    a, b_incl = int(picked_pair[0]), int(picked_pair[1])
    if (a, b_incl) != current:
        view = replace(view, range=(a, b_incl + 1), hl=None)
        set_view(view)
        st.rerun()
    if c2.button(
        "Clear", help="clear the range (keep hand-picked cells)", disabled=view.range is None
    ):
        set_view(replace(view, range=None, cells=(), hl=None))
        st.rerun()
    return view


def _apply_box(view: ViewState, event: Any, ws: int, we: int) -> None:
    """A plotly box selection on the x axis becomes the range (steps whose centre is inside)."""
    try:
        boxes = event["selection"]["box"]
    except (KeyError, TypeError):
        return
    if not boxes:
        return
    xs = boxes[0].get("x") or []
    if len(xs) < 2:
        return
    x0, x1 = sorted(float(x) for x in xs[:2])
    key = (round(x0, 3), round(x1, 3))
    if st.session_state.get("_last_box") == key:
        return
    st.session_state["_last_box"] = key
    a = max(ws, math.ceil(x0))
    b = min(we, math.floor(x1) + 1)
    if b <= a:
        a = min(max(ws, round((x0 + x1) / 2)), we - 1)
        b = a + 1
    set_view(replace(view, range=(a, b), hl=None))
    st.rerun()


def _track_rows(
    ds_id: str, view: ViewState, tracks_meta: dict[str, TrackInfo], ws: int, we: int
) -> list[charts.TrackRows]:
    rows: list[charts.TrackRows] = []
    for name in view.tracks:
        if name not in tracks_meta:
            continue
        try:
            tw = api.track(api.base_url(), ds_id, name, ws, we)
        except ApiError as exc:
            st.warning(f"track {name}: {exc.message}")
            continue
        rows.append(charts.track_rows(tw, we - ws))
    return rows


def _summary_track_rows(
    ds_id: str, view: ViewState, tracks_meta: dict[str, TrackInfo], ws: int, we: int
) -> tuple[list[charts.TrackRows], list[int] | None]:
    """The view's tracks of every kind per bin, from the server's track summaries (any range;
    the same bins as the layer summary). Returns the rows and their bin edges (``None`` if no
    summary was read)."""
    rows: list[charts.TrackRows] = []
    edges: list[int] | None = None
    for name in [n for n in view.tracks if n in tracks_meta]:
        try:
            summ = api.track_summary(api.base_url(), ds_id, name, ws, we, SUMMARY_BINS)
        except ApiError as exc:
            st.warning(f"track {name}: {exc.message}")
            continue
        if edges is None:
            edges = list(summ.bin_starts)
        elif summ.bin_starts != edges:
            st.warning(f"track {name}: the API answered with other bins; not shown")
            continue
        row = charts.summary_track_rows(summ)
        if row is not None:
            rows.append(row)
    return rows, edges


def _on_count_bins(
    ds_id: str, layer: str, cells: list[int], threshold: float, ws: int, we: int
) -> tuple[charts.OnCountBins | None, list[int] | None]:
    """The on-count of the selected cells per bin (the zoomed-out word row) and its edges."""
    if not cells:
        return None, None
    try:
        oc = api.on_count_summary(
            api.base_url(), ds_id, layer, tuple(cells), float(threshold), ws, we, SUMMARY_BINS
        )
    except ApiError as exc:
        st.warning(f"On-count of the selected cells not shown: {exc.message}")
        return None, None
    bins = charts.OnCountBins(oc.mins, oc.maxs, oc.means, len(oc.cells))
    return bins, list(oc.bin_starts)


def _selection(
    view: ViewState,
    ds_id: str,
    ws: int,
    we: int,
    values: np.ndarray[Any, Any] | None,
    layer: str | None = None,
    *,
    per_step: bool = True,
) -> tuple[list[int], list[int] | None, str | None]:
    """S1 and the per-step on-counts over the window: from the server's select when a range is
    brushed, else the hand-picked cells (counts from the window's values). ``layer`` selects
    on another layer than the view's over the same range (hand-picked cells belong to the
    view's layer only). Without ``per_step`` (a long window, drawn per bin) S1 only: the
    select's window is then one step, whatever the view's length."""
    if layer is not None and view.range is None:
        return [], None, None
    if view.range is not None:
        a, b = view.range
        query = SelectQuery(
            layer=str(layer or view.layer),
            start=a,
            end=b,
            threshold=view.threshold,
            left_off=view.off[0],
            right_off=view.off[1],
            window_start=ws if per_step else a,
            window_end=we if per_step else a + 1,
        )
        # a per-session memo of the last selects (not a cache: POSTs are never cached)
        memo_key = api.dumps([api.base_url(), ds_id, query.to_json()])
        memo: dict[str, SelectResult] = st.session_state.setdefault("_select_memo", {})
        if memo_key in memo:
            res = memo[memo_key]
        else:
            try:
                res = api.client().select(ds_id, query)
            except ApiError as exc:
                return [], None, exc.message
            memo[memo_key] = res
            while len(memo) > SELECT_MEMO:
                memo.pop(next(iter(memo)))
        if res.window_start == ws and len(res.counts) == we - ws:
            return res.cells, res.counts, None
        return res.cells, _counts(values, res.cells, view.threshold), None
    cells = list(view.cells)
    return cells, _counts(values, cells, view.threshold), None


def _counts(
    values: np.ndarray[Any, Any] | None, cells: list[int], threshold: float
) -> list[int] | None:
    if values is None or not cells:
        return None
    idx = [c for c in cells if c < values.shape[1]]
    return [int(x) for x in (values[:, idx] >= threshold).sum(axis=1)]


def _summary_plot(
    view: ViewState,
    manifest: DatasetInfo,
    layer: LayerInfo,
    ws: int,
    we: int,
    *,
    key: str,
    compare: bool = False,
) -> tuple[list[int], str | None] | None:
    """A long window of ``layer`` as per-bin min/max bands, the on-count of the selected cells
    per bin and (for the view's own layer) the meta tracks per bin, all from the server's
    summaries; returns (S1, select error), or ``None`` after showing an API error. A layer
    summary refused as too large (422) leaves out the cells' lines, not the rest."""
    ds_id = manifest.id
    name = layer.name
    summ: LayerSummary | None = None
    try:
        summ = api.summary(api.base_url(), ds_id, name, ws, we, SUMMARY_BINS)
    except BadRequest as exc:
        st.warning(f"The cells of {name} are not drawn over this range: {exc.message}")
    except ApiError as exc:
        show_api_error(exc, where=f"reading the summary of {name}")
        return None
    cells_sel, _counts_unused, select_error = _selection(
        view, ds_id, ws, we, None, layer=name if compare else None, per_step=False
    )
    track_rows: list[charts.TrackRows] = []
    edges = summ.bin_starts if summ is not None else None
    if not compare:
        track_rows, track_edges = _summary_track_rows(ds_id, view, track_infos(manifest), ws, we)
        if edges is not None and track_edges is not None and track_edges != edges:
            st.warning("The meta tracks came back in other bins than the cells; not shown.")
            track_rows = []
        edges = edges or track_edges
    on_count, count_edges = _on_count_bins(ds_id, name, cells_sel, view.threshold, ws, we)
    edges = edges or count_edges
    if on_count is not None and count_edges != edges:
        st.warning("The on-count came back in other bins than the cells; not shown.")
        on_count = None
    if edges is None:
        return cells_sel, select_error
    n_bins = len(edges) - 1
    empty = np.empty((n_bins, 0), np.float32)
    yr = charts.y_range(layer.value_min, layer.value_max, summ.maxs if summ else empty)
    fig = charts.summary_figure(
        bin_starts=edges,
        cells=summ.cells if summ else [],
        mins=summ.mins if summ else empty,
        maxs=summ.maxs if summ else empty,
        selected=cells_sel,
        highlight=None if compare else view.hl,
        threshold=view.threshold,
        brush=view.range,
        yrange=yr,
        tracks=track_rows,
        on_count=on_count,
    )
    event = st.plotly_chart(
        fig, key=key, on_select="rerun", selection_mode="box", config={"displaylogo": False}
    )
    _apply_box(view, event, ws, we)
    return cells_sel, select_error


def _window_plot(
    view: ViewState,
    manifest: DatasetInfo,
    layer: LayerInfo,
    ws: int,
    we: int,
    texts: list[str],
    *,
    key: str,
    compare: bool = False,
) -> tuple[list[int], str | None] | None:
    """The cells of ``layer`` over the window with the words, the on-counts and (for the
    view's own layer) the meta tracks; returns (S1, select error), or ``None`` after showing
    an API error."""
    ds_id = manifest.id
    name = layer.name
    try:
        window = api.states(api.base_url(), ds_id, name, ws, we)
    except ApiError as exc:
        show_api_error(exc, where=f"reading the window of {name}")
        return None
    values = window.values
    cells_sel, counts, select_error = _selection(
        view, ds_id, ws, we, values, layer=name if compare else None
    )
    yr = charts.y_range(layer.value_min, layer.value_max, values)
    track_rows = [] if compare else _track_rows(ds_id, view, track_infos(manifest), ws, we)
    fig = charts.select_figure(
        start=ws,
        texts=texts,
        values=values,
        cells=window.cells,
        selected=cells_sel,
        highlight=None if compare else view.hl,
        threshold=view.threshold,
        brush=view.range,
        off=view.off,
        counts=counts,
        tracks=track_rows,
        yrange=yr,
        mask=view.mask,
    )
    event = st.plotly_chart(
        fig,
        key=key,
        on_select="rerun",
        selection_mode="box",
        config={"displaylogo": False, "scrollZoom": False},
    )
    _apply_box(view, event, ws, we)
    return cells_sel, select_error


def _compare(
    view: ViewState, manifest: DatasetInfo, ws: int, we: int, texts: list[str] | None
) -> None:
    """The second layer, side by side with the first (stacked, over the same steps): its
    cells, and those of its cells that are on over the same range with the same off extents."""
    other = manifest.layer(view.compare)
    if other is None:
        return
    st.markdown(
        f"**Compare: layer {view.compare}** ({other.n_cells} cells, {other.transform}) over the "
        "same steps"
    )
    if texts is None:
        got = _summary_plot(view, manifest, other, ws, we, key="compare-summary", compare=True)
    else:
        got = _window_plot(view, manifest, other, ws, we, texts, key="compare-plot", compare=True)
    if got is None:
        return
    cells, error = got
    if error:
        st.warning(f"Selection on {view.compare} not possible: {error}")
    elif view.range is not None:
        a, b = view.range
        listed = ", ".join(map(str, cells[:60])) + (" …" if len(cells) > 60 else "")
        st.caption(
            f"{len(cells)} cells of {view.compare} on over [{a:,}, {b:,}) with the same θ and "
            f"off extents{': ' + listed if cells else ''}"
        )
    else:
        st.caption(f"Brush a range to see which cells of {view.compare} are on over it.")


def render() -> None:
    view = current_view()
    show_url_problems()
    view = dataset_picker(view)
    manifest = open_dataset(view)
    if manifest is None:
        st.title("Select view")
        st.info("Choose a dataset in the sidebar, or upload one on the datasets page.")
        if "datasets" in PAGES:
            st.page_link(PAGES["datasets"], label="Datasets", icon="🗂️")
        return
    view = layer_picker(view, manifest)
    layer = manifest.layer(view.layer)
    if layer is None:  # a dataset without layers (the picker said so)
        return
    n_steps = manifest.n_steps
    ds_id = manifest.id
    if view.pos >= n_steps:
        st.warning(f"Position {view.pos:,} is past the end ({n_steps:,} steps); showing the start.")
        view = replace(view, pos=0)
        set_view(view, history=False)
    if view.compare is not None and (
        view.compare == view.layer or manifest.layer(view.compare) is None
    ):
        st.warning(f"Layer **{view.compare}** cannot be compared here; showing one layer.")
        view = replace(view, compare=None)
        set_view(view, history=False)
    seqs = _sequence_refs(manifest)
    view = _controls(view, manifest, layer)
    _search(view, ds_id)

    ws, we = view.window(n_steps)
    st.markdown(
        f"**{manifest.name}** · layer **{view.layer}** · {_where(ws, seqs)} – "
        f"{_where(we - 1, seqs)} · {we - ws:,} steps of {n_steps:,} · "
        f"word width {view.cw:g}px"
    )
    _navigation(view, n_steps, seqs)
    view = _track_toggles(view, manifest)
    texts: list[str] | None = None
    if we - ws > SUMMARY_ABOVE:
        st.caption(
            f"{we - ws:,} steps in {SUMMARY_BINS} bins: per-bin min..max of every cell (grey "
            "lines) and of the selected cells (blue bands); the on-count row: the most selected "
            "cells on at one step of each bin; discrete tracks as the share of each label per "
            "bin, scalar tracks as bin means, top-K tracks as each bin's most frequent top-1 "
            "word. Zoom in (A+) to see the words."
        )
        got = _summary_plot(view, manifest, layer, ws, we, key="summary-plot")
    else:
        try:
            toks = api.tokens(api.base_url(), ds_id, ws, we) if manifest.has_tokens else None
        except ApiError as exc:
            show_api_error(exc, where="reading the words")
            return
        texts = toks.texts if toks else [str(t) for t in range(ws, we)]
        if len(texts) < we - ws:
            texts = texts + [""] * (we - ws - len(texts))
        got = _window_plot(view, manifest, layer, ws, we, texts, key="select-plot")
    if got is None:
        return
    cells_sel, select_error = got
    if texts is not None:
        view = _range_control(view, ws, we, texts)
    if select_error:
        st.warning(f"Selection not possible: {select_error}")
    _cell_list(view, cells_sel)
    if view.compare:
        _compare(view, manifest, ws, we, texts)


def _cell_list(view: ViewState, cells: list[int]) -> None:
    if view.range is not None:
        a, b = view.range
        what = (
            f"on over [{a:,}, {b:,}) and off {view.off[0]} before / {view.off[1]} after "
            f"at θ = {view.threshold:g}"
        )
    elif view.cells:
        what = "chosen by hand (or from a link)"
    else:
        st.caption(
            "Brush a range over the words (slider or a box drag on the plot) to select cells."
        )
        return
    st.markdown(f"**{len(cells)} selected cells** — {what}")
    if not cells:
        return
    shown = cells[:400]
    hl = st.pills(
        "Selected cells (pick one to highlight it)",
        shown,
        selection_mode="single",
        key=bound("hl", view.hl if view.hl in shown else None),
        format_func=str,
    )
    if hl != view.hl:
        accept("hl", hl)
        set_view(replace(view, hl=hl, cells=tuple(cells) if view.range is not None else view.cells))
        st.rerun()
    if len(cells) > len(shown):
        st.caption(f"… and {len(cells) - len(shown)} more")
    if view.range is not None and tuple(cells) != view.cells:
        # keep S1 in the URL (the original's `sc`) so a shared link carries it
        set_view(replace(view, cells=tuple(cells)), history=False)
    if "match" in PAGES:
        st.page_link(PAGES["match"], label=f"Match these {len(cells)} cells", icon="🧩")


render()
