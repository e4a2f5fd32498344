"""Match view (paper §5.3, Fig. 1b): run a match of the selected cells (an async job with
progress), show the top results as a word matrix aligned at the match start with context, the
match-count heatmap and one heatmap per chosen annotation track beside it, map a heatmap's colours
onto the matrix, and open any result in the select view."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt
import streamlit as st
from hiddenscope_client import (
    ApiError,
    DatasetInfo,
    Hit,
    MatchJob,
    MatchJobResult,
    MatchRequest,
    NotFound,
    TrackInfo,
    job_failure,
)
from hiddenscope_ui import api, charts
from hiddenscope_ui.common import (
    PAGES,
    accept,
    bound,
    current_view,
    dataset_picker,
    layer_picker,
    open_dataset,
    set_view,
    show_api_error,
    show_url_problems,
    track_infos,
)
from hiddenscope_ui.settings import get_settings
from hiddenscope_ui.state import ViewState, to_query_params

LEFT = 3
# Context columns before the match start (as the original).
MAX_MATRIX_ROWS = 50
MAX_COLUMNS = 60


def _query(view: ViewState) -> MatchRequest:
    return MatchRequest(
        layer=str(view.layer),
        cells=view.cells,
        threshold=view.threshold,
        left_off=view.off[0],
        right_off=view.off[1],
        min_length=view.min_length,
        max_length=view.max_length,
        top_k=view.top_k,
        stats=view.stats,
    )


def _params(view: ViewState) -> ViewState:
    sb = st.sidebar
    sb.markdown(
        f"θ = **{view.threshold:g}**, off before/after = **{view.off[0]}/{view.off[1]}** "
        "(set in the select view)"
    )
    c1, c2 = sb.columns(2)
    min_len = c1.number_input(
        "min length", 1, 100_000, step=1, key=bound("min_len", view.min_length)
    )
    max_len = c2.number_input(
        "max length",
        0,
        1_000_000,
        step=1,
        key=bound("max_len", view.max_length or 0),
        help="0 = no limit",
    )
    top_k = sb.number_input("results (top k)", 1, 1000, step=10, key=bound("top_k", view.top_k))
    stats = sb.checkbox(
        "candidate statistics",
        key=bound("stats", view.stats),
        help="also count every candidate and histogram their lengths (the original's two "
        "length histograms); slower on large data, as no candidate can be skipped",
    )
    new = replace(
        view,
        min_length=int(min_len),
        max_length=int(max_len) or None,
        top_k=int(top_k),
        stats=bool(stats),
    )
    if new.max_length is not None and new.max_length < new.min_length:
        sb.warning("max length is below min length; ignoring it")
        new = replace(new, max_length=None)
    if new != view:
        accept("min_len", int(min_len))
        accept("max_len", int(max_len))
        accept("top_k", int(top_k))
        accept("stats", bool(stats))
        new = replace(new, job=None)
        set_view(new)
    return new


def _start(view: ViewState, ds_id: str) -> None:
    try:
        job = api.client().start_match(ds_id, _query(view), wait=0.5)
    except ApiError as exc:
        show_api_error(exc, where="starting the match")
        return
    st.session_state["match_jobs"] = {**st.session_state.get("match_jobs", {})}
    st.session_state["match_jobs"][job.id] = job
    set_view(replace(view, job=job.id))
    st.rerun()


def _job(view: ViewState) -> MatchJob | None:
    """The current match job (from the session, else fetched by the id in the URL)."""
    if not view.job:
        return None
    jobs: dict[str, MatchJob] = st.session_state.setdefault("match_jobs", {})
    job = jobs.get(view.job)
    if job is not None and job.terminal:
        return job
    try:
        job = api.client().match_job(view.job, page_size=1)
    except NotFound:
        st.warning(
            f"Match job `{view.job}` is unknown (finished jobs expire, or the link is stale). "
            "Run the match again."
        )
        set_view(replace(view, job=None), history=False)
        return None
    jobs[view.job] = job
    return job


@st.fragment(run_every=get_settings().poll_seconds)
def _monitor(job_id: str) -> None:
    """Polls the job (only this fragment reruns) and reruns the page when it ends."""
    try:
        job = api.client().match_job(job_id, page_size=1)
    except ApiError as exc:
        st.warning(f"cannot read the job: {exc.message}")
        return
    st.session_state.setdefault("match_jobs", {})[job_id] = job
    done, total = job.progress.done, job.progress.total
    frac = done / total if total else 0.0
    st.progress(frac, text=f"match {job.status}: {done}/{total or '?'} shards")
    if job.terminal:
        st.rerun(scope="app")
    if st.button("Cancel", key="cancel-match"):
        try:
            api.client().cancel_job(job.id)
        except ApiError as exc:
            st.warning(f"cancel failed: {exc.message}")


def _rows(
    hits: list[Hit],
    right: int,
    tracks: list[str],
    track_meta: dict[str, TrackInfo],
) -> dict[str, Any]:
    """Tokens, match counts and track values of each result row over offsets ``-LEFT .. right``
    (from each hit's ``context``: the server clips it to the hit's sequence)."""
    offsets = list(range(-LEFT, right))
    width = len(offsets)
    texts: list[list[str]] = []
    counts = np.full((len(hits), width), np.nan)
    tz: dict[str, npt.NDArray[np.float64]] = {
        t: np.full((len(hits), width), np.nan) for t in tracks
    }
    thover: dict[str, list[list[str]]] = {t: [[""] * width for _ in hits] for t in tracks}
    for i, h in enumerate(hits):
        ctx = h.context
        s = h.start
        c0 = ctx.start if ctx is not None else s

        def col(j: int, c0: int = c0, s: int = s) -> int:
            return c0 + j - s + LEFT  # column of the j-th context step

        row = [""] * width
        for j, tok in enumerate((ctx.tokens if ctx else None) or []):
            if 0 <= col(j) < width:
                row[col(j)] = tok
        texts.append(row)
        for j, c in enumerate((ctx.counts if ctx else None) or []):
            if 0 <= col(j) < width:
                counts[i, col(j)] = c
        for t in tracks:
            tw = ((ctx.tracks if ctx else None) or {}).get(t)
            if tw is None:
                continue
            if track_meta[t].kind == "discrete":
                names = tw.labels or track_meta[t].labels or []
                for j, lab in enumerate(tw.label or []):
                    if lab >= 0 and 0 <= col(j) < width:
                        tz[t][i, col(j)] = lab % len(charts.CATEGORICAL)
                        thover[t][i][col(j)] = names[lab] if lab < len(names) else str(lab)
            elif track_meta[t].kind == "topk":  # the best prediction: its score and word
                words = tw.texts or []
                ids = tw.ids or []
                for j, scores in enumerate(tw.scores or []):
                    if not scores or not 0 <= col(j) < width:
                        continue
                    best = scores[0]
                    if best is not None and math.isfinite(best):
                        tz[t][i, col(j)] = best
                    word = words[j][0] if j < len(words) and words[j] else None
                    if word is None and j < len(ids) and ids[j]:
                        word = f"#{ids[j][0]}"
                    thover[t][i][col(j)] = f"{word} ({best:.3g})" if best is not None else ""
            else:
                for j, v in enumerate(tw.value or []):
                    if v is not None and math.isfinite(v) and 0 <= col(j) < width:
                        tz[t][i, col(j)] = v
                        thover[t][i][col(j)] = f"{v:.3g}"
    return {"offsets": offsets, "texts": texts, "counts": counts, "tracks": tz, "hover": thover}


def _select_link(view: ViewState, start: int) -> str:
    target = replace(view, pos=start, range=None, job=None, hl=None)
    return "select?" + urlencode(to_query_params(target))


HEATMAP_KINDS = ("discrete", "scalar", "topk")


def _heatmap_toggles(view: ViewState, manifest: DatasetInfo) -> tuple[ViewState, list[str]]:
    """Annotation heatmaps, each switched on and off with one click (the original's heatmap
    hide buttons). They share the URL's ``tracks`` with the select view's meta tracks."""
    track_meta = {n: t for n, t in track_infos(manifest).items() if t.kind in HEATMAP_KINDS}
    if not track_meta:
        return view, []
    on = [t for t in view.tracks if t in track_meta]
    chosen = st.pills(
        "Annotation heatmaps (click to switch on/off)",
        list(track_meta),
        selection_mode="multi",
        key=bound("match-tracks", on),
        format_func=lambda n: f"{n} ({track_meta[n].kind})",
    )
    chosen = [t for t in track_meta if t in (chosen or [])]
    if chosen != on:
        accept("match-tracks", chosen)
        keep = [t for t in view.tracks if t not in track_meta]
        view = replace(view, tracks=tuple(keep + chosen))
        set_view(view)
    return view, chosen


def _stats(result: MatchJobResult | None, hits: list[Hit]) -> None:
    """Candidate count and run-length histograms (the original's fuzzy and strict ones, when
    the match ran with ``stats``), beside the lengths of the top results."""
    stats = result.stats if result is not None else None
    with st.expander("Run lengths" + (" and candidates" if stats else ""), expanded=bool(stats)):
        if stats:
            n_cand = stats.n_candidates
            strict = stats.strict_length_histogram
            st.markdown(
                f"**{n_cand:,} candidates** (runs of at least one selected cell), "
                f"**{int(sum(strict)):,}** of them with every selected cell on (S1 ⊆ S2)"
            )
        else:
            st.caption(
                "Lengths of the top results. Tick *candidate statistics* in the sidebar and run "
                "again for the count and lengths of all candidates."
            )
        fig = charts.length_figure(
            [h.length for h in hits],
            stats.length_histogram if stats else None,
            stats.strict_length_histogram if stats else None,
        )
        st.plotly_chart(fig, key="match-lengths", config={"displaylogo": False})


def _results(view: ViewState, manifest: DatasetInfo, job: MatchJob) -> None:
    result = job.result
    if result is None or not result.n_hits:
        st.info(
            "No matches: no run of the selected cells reaches the minimum length. Lower the "
            "min length or the threshold, or select other cells."
        )
        _stats(result, [])
        return
    n_hits = result.n_hits
    note = "" if result.threshold_on_grid else " (θ off the index grid, verified exactly)"
    took = job.timings.total_seconds
    took_txt = f" in {took:.2f} s" if took is not None else ""
    st.markdown(f"**{n_hits} results**{note} for {len(view.cells)} cells{took_txt}")
    track_meta = {n: t for n, t in track_infos(manifest).items() if t.kind in HEATMAP_KINDS}
    view, chosen = _heatmap_toggles(view, manifest)
    c2, c3, c4 = st.columns([4, 1, 2], vertical_alignment="bottom")
    options = ["none", "count", *chosen]
    mapped = view.map if view.map in options else "count"
    mapped = c2.radio(
        "Map a heatmap's colours onto the results",
        options,
        horizontal=True,
        key=bound("map", mapped),
        format_func=lambda o: {"none": "plain", "count": "match count"}.get(o, o),
    )
    if mapped != view.map:
        accept("map", mapped)
        view = replace(view, map=mapped)
        set_view(view, history=False)
    mask = c3.toggle(
        "mask",
        key=bound("match-mask", view.mask),
        help="fade the background where few selected cells are on (opacity 0.1 .. 1 by the "
        "match count)",
        disabled=mapped == "none",
    )
    if mask != view.mask:
        accept("match-mask", mask)
        view = replace(view, mask=bool(mask))
        set_view(view, history=False)
    right = c4.slider("columns after the start", 1, MAX_COLUMNS - LEFT, 15)
    try:
        page = api.match_page(
            api.base_url(), job.id, min(n_hits, view.top_k), right, tuple(chosen), LEFT
        )
    except ApiError as exc:
        show_api_error(exc, where="reading the results")
        return
    hits = page.result.hits if page.result is not None else []
    shown = hits[:MAX_MATRIX_ROWS]
    data = _rows(shown, right, list(chosen), track_meta)
    n_sel = max(1, len(view.cells))
    panels: list[tuple[str, Any, Any, tuple[float, float], list[list[str]]]] = [
        (
            "match count",
            data["counts"],
            charts.COUNT_SCALE,
            (0.0, float(n_sel)),
            [
                [("" if not math.isfinite(v) else str(int(v))) for v in row]
                for row in data["counts"]
            ],
        )
    ]
    for t in chosen:
        z = data["tracks"][t]
        if track_meta[t].kind == "discrete":
            panels.append(
                (
                    t,
                    z,
                    charts.categorical_scale(),
                    (0.0, len(charts.CATEGORICAL) - 1.0),
                    data["hover"][t],
                )
            )
        else:
            finite = z[np.isfinite(z)]
            rng = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            scale = charts.SCORE_SCALE if track_meta[t].kind == "topk" else charts.SCALAR_SCALE
            panels.append((t, z, scale, rng, data["hover"][t]))
    background = None
    bscale: Any = charts.COUNT_SCALE
    brange = (0.0, 1.0)
    for title, z, scale, rng, _hover in panels:
        if (mapped == "count" and title == "match count") or title == mapped:
            background, bscale, brange = z, scale, rng
    labels = [f"#{i + 1} {h.start:,}" for i, h in enumerate(shown)]
    fig = charts.matrix_figure(
        offsets=data["offsets"],
        texts=data["texts"],
        lengths=[h.length for h in shown],
        row_labels=labels,
        background=background,
        background_scale=bscale,
        background_range=brange,
        panels=panels,
        mask=charts.mask_alpha(data["counts"], n_sel, 0.1) if view.mask else None,
    )
    if len(hits) > len(shown):
        st.caption(f"The matrix shows the first {len(shown)} results; the table lists all.")
    st.plotly_chart(fig, key="match-matrix", config={"displaylogo": False})
    table = [
        {
            "rank": i + 1,
            "open": _select_link(view, h.start),
            "start": h.start,
            "end": h.end,
            "length": h.length,
            "sequence": h.sequence_name or h.sequence,
            "shared": h.intersection,
            "union": h.union,
            "jaccard": h.jaccard,
            "missing": h.missing,
            "extra": h.extra,
            "level": h.level,
        }
        for i, h in enumerate(hits)
    ]
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "open": st.column_config.LinkColumn(
                "open", display_text="select view ↗", help="open this result in the select view"
            ),
            "jaccard": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    _stats(result, hits)


def render() -> None:
    view = current_view()
    show_url_problems()
    view = dataset_picker(view)
    manifest = open_dataset(view)
    st.title("Match view")
    if manifest is None:
        st.info("Choose a dataset in the sidebar.")
        return
    view = layer_picker(view, manifest)
    view = _params(view)
    ds_id = manifest.id
    if not view.cells:
        st.info(
            "No cells selected: brush a range in the select view first (or type cell ids there)."
        )
        if "select" in PAGES:
            st.page_link(PAGES["select"], label="Select view", icon="📈")
        return
    cells_txt = ", ".join(map(str, view.cells[:40])) + (" …" if len(view.cells) > 40 else "")
    st.markdown(f"Layer **{view.layer}** · **{len(view.cells)} cells**: {cells_txt}")
    if st.button("Run match", type="primary"):
        _start(view, ds_id)
    job = _job(view)
    if job is None:
        return
    status = job.status
    if not job.terminal:
        _monitor(str(view.job))
        return
    if status == "cancelled":
        st.info("The match was cancelled. **Run match** starts it again.", icon="⏹️")
        return
    if status != "succeeded":
        show_api_error(job_failure(job), where=f"match {status}")
        return
    _results(view, manifest, job)


render()
