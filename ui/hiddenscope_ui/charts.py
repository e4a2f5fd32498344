"""Plotly figures of the select and match views (WebGL line traces; heatmaps for word rows).

Pure functions of numpy arrays, lists and the client's response values: no HTTP, no Streamlit,
so they are testable alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go
from hiddenscope_client import TrackSummary, TrackWindow
from plotly.subplots import make_subplots

ON_BLUE = "#1399e4"
"""The original's colour for selected cells and on-counts."""
HIGHLIGHT = "#ff7f0e"
THRESHOLD_RED = "#d62728"
CATEGORICAL = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]
COUNT_SCALE = [[0.0, "#ffffff"], [1.0, ON_BLUE]]
SCORE_SCALE = [[0.0, "#ffffff"], [1.0, "#6a51a3"]]
SCALAR_SCALE = "Viridis"
FADE_SCALE = [[0.0, "rgba(255,255,255,0)"], [1.0, "rgba(255,255,255,1)"]]
"""An overlay that fades what is under it to white (z = 0: untouched, z = 1: white)."""
CLEAR_SCALE = [[0.0, "rgba(0,0,0,0)"], [1.0, "rgba(0,0,0,0)"]]
MAX_TEXT_STEPS = 160
"""Above this many steps per window, words are not written into the rows."""
MAX_SELECTED_TRACES = 64


def categorical_scale(n: int = len(CATEGORICAL)) -> list[list[float | str]]:
    """A stepwise colorscale for integer z in ``[0, n-1]`` (z = label % 20)."""
    scale: list[list[float | str]] = []
    for i in range(n):
        lo, hi = i / n, (i + 1) / n
        scale.append([lo, CATEGORICAL[i % len(CATEGORICAL)]])
        scale.append([hi, CATEGORICAL[i % len(CATEGORICAL)]])
    return scale


@dataclass(frozen=True)
class TrackRows:
    """One meta track prepared for plotting: ``z`` is ``(rows, n)``; ``text`` the same shape."""

    name: str
    kind: str
    z: npt.NDArray[np.float64]
    text: list[list[str]]
    row_labels: list[str]
    zmin: float
    zmax: float


def track_rows(tw: TrackWindow, n: int) -> TrackRows:
    """A track window of ``n`` steps as rows (steps past the window's end are empty).

    discrete: one row, z = label % 20 (NaN for -1), text = the label's name in ``labels``.
    topk: K rows (best first), z = score, text = predicted token (``#id`` without a
    vocabulary). scalar: one row, z = value.
    """
    name, kind = tw.name, tw.kind
    if kind == "discrete":
        label = tw.label or []
        lab = np.asarray(list(label) + [-1] * (n - len(label)), dtype=np.float64)[:n]
        z = np.where(lab < 0, np.nan, lab % len(CATEGORICAL))
        names = tw.labels or []
        text = [
            names[int(v)] if 0 <= v < len(names) else ("" if v < 0 else str(int(v))) for v in lab
        ]
        return TrackRows(name, kind, z[None, :], [text], [name], 0, len(CATEGORICAL) - 1)
    if kind == "topk":
        raw = np.asarray(
            [[np.nan if x is None else x for x in row] for row in tw.scores or []],
            dtype=np.float64,
        )
        sc = raw.T if raw.ndim == 2 and raw.shape[0] == n else np.full((1, n), np.nan)
        k = sc.shape[0]
        texts, ids = tw.texts, tw.ids
        if texts is not None and len(texts) == n:
            words = [[str(texts[t][r]) for t in range(n)] for r in range(k)]
        elif ids is not None and len(ids) == n:
            words = [[f"#{ids[t][r]}" for t in range(n)] for r in range(k)]
        else:
            words = [[""] * n for _ in range(k)]
        finite = sc[np.isfinite(sc)]
        hi = float(finite.max()) if finite.size else 1.0
        lo = min(0.0, float(finite.min())) if finite.size else 0.0
        return TrackRows(
            name, kind, sc, words, [f"{name} #{r + 1}" for r in range(k)], lo, hi or 1.0
        )
    vals = np.asarray(
        [np.nan if v is None else float(v) for v in (tw.value or [])] + [np.nan] * n,
        dtype=np.float64,
    )[:n]
    finite = vals[np.isfinite(vals)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    text = ["" if not math.isfinite(v) else f"{v:.3g}" for v in vals]
    return TrackRows(name, kind, vals[None, :], [text], [name], lo, hi if hi > lo else lo + 1)


def summary_track_rows(summ: TrackSummary) -> TrackRows | None:
    """A track summary from the server (one entry per bin of ``summ.bin_starts``) as rows at
    bin resolution. discrete: one row per label present, z = the share of the bin's steps
    with that label (so a rare label, e.g. a binding site, stays visible); scalar: one row,
    z = the bin's mean, its min and max in the text; topk: one row ``<name> top-1``, text =
    the bin's most frequent top-1 token (``#id`` without a vocabulary), z = the share of the
    bin's steps that have it as top-1. ``None`` when there is nothing to draw."""
    name = summ.name
    edges = np.asarray(summ.bin_starts, dtype=np.int64)
    n_bins = max(0, edges.size - 1)
    if n_bins == 0:
        return None
    width = np.maximum(np.diff(edges), 1).astype(np.float64)
    if summ.kind == "discrete":
        counts = np.asarray(summ.label_counts or [], dtype=np.float64).reshape(n_bins, -1)
        names = summ.labels or []
        present = [int(v) for v in np.flatnonzero(counts.sum(axis=0) > 0)]
        if not present:
            return None
        z = (counts[:, present] / width[:, None]).T
        rows = [f"{name}={names[v] if v < len(names) else v}" for v in present]
        text = [[f"{f:.0%}" for f in row] for row in z]
        return TrackRows(name, "discrete-binned", z, text, rows, 0.0, 1.0)
    if summ.kind == "scalar":

        def col(xs: Sequence[float | None] | None) -> npt.NDArray[np.float64]:
            raw = [np.nan if v is None else float(v) for v in xs or []]
            return np.asarray(raw + [np.nan] * n_bins, dtype=np.float64)[:n_bins]

        mean, lo_v, hi_v = col(summ.means), col(summ.mins), col(summ.maxs)
        finite = mean[np.isfinite(mean)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        stats = [
            "" if not math.isfinite(m) else f"mean {m:.3g} (min {a:.3g}, max {b:.3g})"
            for m, a, b in zip(mean, lo_v, hi_v, strict=True)
        ]
        return TrackRows(
            name, "scalar", mean[None, :], [stats], [name], lo, hi if hi > lo else lo + 1
        )
    if summ.kind == "topk":
        ids = summ.mode_ids or []
        if len(ids) != n_bins:
            return None
        words = summ.mode_texts or [f"#{i}" for i in ids]
        share = np.asarray(summ.mode_counts or [0] * n_bins, dtype=np.float64) / width
        tops = [f"{w} ({f:.0%} of the bin)" for w, f in zip(words, share, strict=True)]
        return TrackRows(name, "topk-binned", share[None, :], [tops], [f"{name} top-1"], 0.0, 1.0)
    return None


@dataclass(frozen=True)
class OnCountBins:
    """The on-count of the selected cells per bin (from the API's on-count summary)."""

    mins: Sequence[int]
    maxs: Sequence[int]
    means: Sequence[float]
    n_cells: int


def mask_alpha(counts: npt.ArrayLike, n_selected: int, floor: float) -> npt.NDArray[np.float64]:
    """The original's "mask": opacity ``floor .. 1`` in proportion to how many of the
    ``n_selected`` cells are on (NaN counts, e.g. outside a sequence, get ``floor``)."""
    c = np.asarray(counts, dtype=np.float64)
    frac = np.clip(np.nan_to_num(c, nan=0.0) / max(1, n_selected), 0.0, 1.0)
    return floor + (1.0 - floor) * frac


def _fade(
    x: Sequence[float] | npt.NDArray[np.float64], y: Sequence[str], alpha: npt.NDArray[np.float64]
) -> go.Heatmap:
    """A white overlay with opacity ``1 - alpha`` per cell (``alpha`` has ``y`` rows)."""
    return go.Heatmap(
        x=list(x),
        y=list(y),
        z=1.0 - alpha,
        colorscale=FADE_SCALE,
        zmin=0,
        zmax=1,
        showscale=False,
        hoverinfo="skip",
        xgap=1,
        ygap=1,
        name="mask",
    )


def y_range(
    value_min: float | None, value_max: float | None, data: npt.NDArray[np.float32]
) -> list[float]:
    """The y axis: the layer's value range when known (auto-scaled per layer), else the data's;
    symmetric around 0 when it holds negative values (as the original)."""
    lo, hi = value_min, value_max
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        finite = data[np.isfinite(data)]
        lo = float(finite.min()) if finite.size else -1.0
        hi = float(finite.max()) if finite.size else 1.0
    if lo < 0:
        m = max(abs(lo), abs(hi)) or 1.0
        return [-m * 1.05, m * 1.05]
    return [0.0, (hi or 1.0) * 1.05]


def _lines_xy(
    x: npt.NDArray[np.float64], values: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """All columns of ``values`` as one polyline with NaN breaks (one WebGL trace for D lines)."""
    n, d = values.shape
    xs = np.empty((d, n + 1))
    ys = np.empty((d, n + 1))
    xs[:, :n] = x
    xs[:, n] = np.nan
    ys[:, :n] = values.T
    ys[:, n] = np.nan
    return xs.ravel(), ys.ravel()


def select_figure(
    *,
    start: int,
    texts: Sequence[str],
    values: npt.NDArray[np.float32],
    cells: Sequence[int],
    selected: Sequence[int],
    highlight: int | None,
    threshold: float,
    brush: tuple[int, int] | None,
    off: tuple[int, int],
    counts: Sequence[int] | None,
    tracks: Sequence[TrackRows],
    yrange: list[float],
    mask: bool = False,
) -> go.Figure:
    """The select view: cells over the window (``values`` is ``(n, len(cells))``, steps
    ``start .. start+n``), the threshold, the brushed range with its off extents, the word row
    coloured by how many selected cells are on, then one row per meta track row. With ``mask``
    (and counts), the track rows fade where few selected cells are on (opacity 0.2 .. 1, as
    the original's mask toggle)."""
    n = values.shape[0]
    x = np.arange(start, start + n, dtype=np.float64)
    track_row_count = sum(t.z.shape[0] for t in tracks)
    rows = 2 + len(tracks)
    line_px, word_px, row_px = 330, 34, 26
    heights = [line_px, word_px] + [row_px * t.z.shape[0] for t in tracks]
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.012,
        row_heights=[h / sum(heights) for h in heights],
    )
    show_text = n <= MAX_TEXT_STEPS
    sel = [c for c in selected if c in set(cells)]
    col_of = {c: i for i, c in enumerate(cells)}
    others = [i for i, c in enumerate(cells) if c not in set(sel)]
    if others:
        xs, ys = _lines_xy(x, values[:, others])
        fig.add_trace(
            go.Scattergl(
                x=xs,
                y=ys,
                mode="lines",
                name="cells",
                hoverinfo="skip",
                line={"color": "rgba(90,90,90,1)", "width": 1},
                opacity=max(0.06, min(0.6, 1 / math.sqrt(max(1, len(others))))),
                showlegend=False,
            ),
            row=1,
            col=1,
        )
    if len(sel) > MAX_SELECTED_TRACES:
        xs, ys = _lines_xy(x, values[:, [col_of[c] for c in sel]])
        fig.add_trace(
            go.Scattergl(
                x=xs,
                y=ys,
                mode="lines",
                name=f"{len(sel)} selected",
                line={"color": ON_BLUE, "width": 1.5},
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
    else:
        for c in sel:
            fig.add_trace(
                go.Scattergl(
                    x=x,
                    y=values[:, col_of[c]],
                    mode="lines",
                    name=f"cell {c}",
                    line={"color": ON_BLUE, "width": 1.8},
                    hovertemplate=f"cell {c}<br>step %{{x}}<br>%{{y:.3f}}<extra></extra>",
                    showlegend=False,
                ),
                row=1,
                col=1,
            )
    if highlight is not None and highlight in col_of:
        fig.add_trace(
            go.Scattergl(
                x=x,
                y=values[:, col_of[highlight]],
                mode="lines",
                name=f"cell {highlight}",
                line={"color": HIGHLIGHT, "width": 3.5},
                hovertemplate=f"cell {highlight}<br>step %{{x}}<br>%{{y:.3f}}<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=1,
        )
    # invisible markers on every step make a box selection report its steps
    fig.add_trace(
        go.Scattergl(
            x=x,
            y=np.full(n, threshold),
            mode="markers",
            marker={"size": 6, "opacity": 0},
            name="steps",
            hoverinfo="skip",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    fig.add_hline(
        y=threshold, line={"color": THRESHOLD_RED, "dash": "dash", "width": 1.5}, row=1, col=1
    )
    if brush is not None:
        a, b = brush
        fig.add_vrect(
            x0=a - 0.5, x1=b - 0.5, fillcolor=ON_BLUE, opacity=0.12, line_width=0, row="all", col=1
        )
        if off[0] > 0:
            fig.add_vrect(
                x0=a - off[0] - 0.5,
                x1=a - 0.5,
                fillcolor="#888",
                opacity=0.18,
                line_width=0,
                row=1,
                col=1,
            )
        if off[1] > 0:
            fig.add_vrect(
                x0=b - 0.5,
                x1=b + off[1] - 0.5,
                fillcolor="#888",
                opacity=0.18,
                line_width=0,
                row=1,
                col=1,
            )
    # the word row: tokens over the on-count of the selected cells
    cnt = np.asarray(list(counts) if counts is not None else [0] * n, dtype=np.float64)[:n]
    fig.add_trace(
        go.Heatmap(
            x=x,
            y=["words"],
            z=[cnt],
            text=[list(texts)[:n]],
            colorscale=COUNT_SCALE,
            zmin=0,
            zmax=max(1, len(sel)),
            showscale=False,
            xgap=1,
            texttemplate="%{text}" if show_text else None,
            textfont={"size": 11},
            hovertemplate="step %{x}: %{text}<br>%{z} selected cells on<extra></extra>",
        ),
        row=2,
        col=1,
    )
    alpha = mask_alpha(cnt, len(sel), 0.2) if mask and counts is not None and sel else None
    r = 3
    for t in tracks:
        scale: object
        if t.kind == "discrete":
            scale = categorical_scale()
        elif t.kind == "topk":
            scale = SCORE_SCALE
        else:
            scale = SCALAR_SCALE
        fig.add_trace(
            go.Heatmap(
                x=x,
                y=t.row_labels,
                z=t.z,
                text=t.text,
                colorscale=scale,
                zmin=t.zmin,
                zmax=t.zmax,
                showscale=False,
                xgap=1,
                ygap=1,
                texttemplate="%{text}" if show_text else None,
                textfont={"size": 10},
                hovertemplate="%{y} step %{x}: %{text}<extra></extra>",
            ),
            row=r,
            col=1,
        )
        if alpha is not None:
            fig.add_trace(
                _fade(x, t.row_labels, np.tile(alpha, (len(t.row_labels), 1))), row=r, col=1
            )
        fig.update_yaxes(autorange="reversed", row=r, col=1)
        r += 1
    ticks = {}
    if show_text:
        ticks = {"tickmode": "array", "tickvals": list(x), "ticktext": list(texts)[:n]}
    fig.update_xaxes(range=[start - 0.5, start + n - 0.5], showgrid=False)
    fig.update_xaxes(showticklabels=True, tickangle=-60 if show_text else 0, row=1, col=1, **ticks)
    fig.update_xaxes(showticklabels=True, row=rows, col=1, title_text="step")
    fig.update_yaxes(
        range=yrange,
        zeroline=True,
        zerolinecolor="#bbb",
        row=1,
        col=1,
        title_text="value",
        fixedrange=True,
    )
    for i in range(2, rows + 1):
        fig.update_yaxes(fixedrange=True, row=i, col=1)
    fig.update_layout(
        height=line_px + word_px + row_px * track_row_count + 140,
        margin={"l": 90, "r": 10, "t": 10, "b": 40},
        dragmode="select",
        selectdirection="h",
        plot_bgcolor="white",
        hovermode="closest",
        showlegend=False,
    )
    return fig


def summary_figure(
    *,
    bin_starts: Sequence[int],
    cells: Sequence[int],
    mins: npt.NDArray[np.float32],
    maxs: npt.NDArray[np.float32],
    selected: Sequence[int],
    highlight: int | None,
    threshold: float,
    brush: tuple[int, int] | None,
    yrange: list[float],
    tracks: Sequence[TrackRows] = (),
    on_count: OnCountBins | None = None,
) -> go.Figure:
    """A long range at bin resolution: every cell's per-bin maximum and minimum as thin grey
    lines (two WebGL traces for all cells; none when ``cells`` is empty), and each selected
    cell's min..max band (blue; the highlighted one orange); with ``on_count`` a row of the
    greatest number of selected cells on at one step of each bin (the zoomed-out word row;
    min and mean in the hover); then one heatmap row per binned track row
    (:func:`summary_track_rows`)."""
    edges = np.asarray(bin_starts, dtype=np.float64)
    centers = (edges[:-1] + edges[1:] - 1) / 2
    col_of = {c: i for i, c in enumerate(cells)}
    shown = [c for c in selected if c in col_of][:MAX_SELECTED_TRACES]
    if highlight is not None and highlight in col_of and highlight not in shown:
        shown.append(highlight)
    line_px, row_px = 330, 22
    count_rows = 1 if on_count is not None else 0
    heights = [line_px] + [row_px + 4] * count_rows + [row_px * t.z.shape[0] for t in tracks]
    fig = make_subplots(
        rows=1 + count_rows + len(tracks),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.012,
        row_heights=[h / sum(heights) for h in heights],
    )
    others = [i for i, c in enumerate(cells) if c not in set(shown)]
    if others:
        opacity = max(0.05, min(0.5, 1 / math.sqrt(len(others))))
        for what, data in (("max", maxs), ("min", mins)):
            xs, ys = _lines_xy(centers, data[:, others])
            fig.add_trace(
                go.Scattergl(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"width": 1, "color": "rgb(90,90,90)"},
                    opacity=opacity,
                    name=f"per-bin {what} of each cell",
                    hoverinfo="skip",
                )
            )
    for c in shown:
        color = HIGHLIGHT if c == highlight else ON_BLUE
        fill = "rgba(255,127,14,0.3)" if c == highlight else "rgba(19,153,228,0.12)"
        i = col_of[c]
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=maxs[:, i],
                mode="lines",
                line={"width": 1, "color": color},
                name=f"cell {c} max",
                hovertemplate=f"cell {c}<br>bin at %{{x:,.0f}}: max %{{y:.3f}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=mins[:, i],
                mode="lines",
                line={"width": 1, "color": color},
                fill="tonexty",
                fillcolor=fill,
                name=f"cell {c} min",
                hovertemplate=f"cell {c}<br>bin at %{{x:,.0f}}: min %{{y:.3f}}<extra></extra>",
            )
        )
    if on_count is not None:
        text = [
            f"max {hi} · mean {m:.2f} · min {lo}"
            for lo, hi, m in zip(on_count.mins, on_count.maxs, on_count.means, strict=True)
        ]
        fig.add_trace(
            go.Heatmap(
                x=centers,
                y=["on-count (max)"],
                z=[np.asarray(on_count.maxs, dtype=np.float64)],
                text=[text],
                colorscale=COUNT_SCALE,
                zmin=0,
                zmax=max(1, on_count.n_cells),
                showscale=False,
                name="on-count",
                hovertemplate="bin at %{x:,.0f}: %{text} of "
                + f"{on_count.n_cells} selected cells on<extra></extra>",
            ),
            row=2,
            col=1,
        )
        fig.update_yaxes(fixedrange=True, row=2, col=1)
    for r, t in enumerate(tracks, start=2 + count_rows):
        fig.add_trace(
            go.Heatmap(
                x=centers,
                y=t.row_labels,
                z=t.z,
                text=t.text,
                colorscale=SCALAR_SCALE if t.kind == "scalar" else SCORE_SCALE,
                zmin=t.zmin,
                zmax=t.zmax,
                showscale=False,
                ygap=1,
                name=t.name,
                hovertemplate="%{y} bin at %{x:,.0f}: %{text}<extra></extra>",
            ),
            row=r,
            col=1,
        )
        fig.update_yaxes(autorange="reversed", fixedrange=True, row=r, col=1)
    fig.add_hline(
        y=threshold, line={"color": THRESHOLD_RED, "dash": "dash", "width": 1.5}, row=1, col=1
    )
    if brush is not None:
        fig.add_vrect(
            x0=brush[0] - 0.5,
            x1=brush[1] - 0.5,
            fillcolor=ON_BLUE,
            opacity=0.15,
            line_width=0,
            row="all",
            col=1,
        )
    n_rows = 1 + count_rows + len(tracks)
    fig.update_xaxes(
        range=[edges[0] - 0.5, edges[-1] - 0.5],
        showgrid=False,
        title_text=f"step (bins of ~{(edges[-1] - edges[0]) / max(1, len(centers)):,.0f})",
        row=n_rows,
        col=1,
    )
    fig.update_yaxes(range=yrange, title_text="value (per-bin min..max)", row=1, col=1)
    fig.update_layout(
        height=sum(heights) + 80,
        margin={"l": 90, "r": 10, "t": 10, "b": 40},
        showlegend=False,
        plot_bgcolor="white",
        dragmode="select",
        selectdirection="h",
    )
    return fig


def matrix_figure(
    *,
    offsets: Sequence[int],
    texts: Sequence[Sequence[str]],
    lengths: Sequence[int],
    row_labels: Sequence[str],
    background: npt.NDArray[np.float64] | None,
    background_scale: str | list[list[float | str]],
    background_range: tuple[float, float],
    panels: Sequence[
        tuple[
            str,
            npt.NDArray[np.float64],
            str | list[list[float | str]],
            tuple[float, float],
            list[list[str]],
        ]
    ],
    mask: npt.NDArray[np.float64] | None = None,
) -> go.Figure:
    """The match view: the word matrix (one result per row, columns = offsets from the match
    start, a line at the start and a box around each run) and heatmap panels beside it
    (``(title, z, colorscale, (zmin, zmax), hover texts)``, same shape as the matrix).

    ``mask`` (opacity per matrix cell, in ``[0, 1]``) fades the matrix's background, not its
    words (the original's match-view mask)."""
    n_rows = len(texts)
    cols = 1 + len(panels)
    widths = [0.55] + [0.45 / max(1, len(panels))] * len(panels) if panels else [1.0]
    fig = make_subplots(
        rows=1,
        cols=cols,
        shared_yaxes=True,
        horizontal_spacing=0.015,
        column_widths=widths,
        subplot_titles=["results (aligned at match start)"] + [p[0] for p in panels],
    )
    x = list(offsets)
    z = background if background is not None else np.zeros((n_rows, len(x)))
    fig.add_trace(
        go.Heatmap(
            x=x,
            y=list(row_labels),
            z=z,
            colorscale=background_scale
            if background is not None
            else [[0, "#ffffff"], [1, "#ffffff"]],
            zmin=background_range[0],
            zmax=background_range[1],
            showscale=False,
            xgap=1,
            ygap=1,
            hoverinfo="skip",
            name="background",
        ),
        row=1,
        col=1,
    )
    if mask is not None and background is not None:
        fig.add_trace(_fade(x, list(row_labels), np.asarray(mask, np.float64)), row=1, col=1)
    # the words on a transparent layer above the background (and its mask)
    fig.add_trace(
        go.Heatmap(
            x=x,
            y=list(row_labels),
            z=np.zeros((n_rows, len(x))),
            text=[list(r) for r in texts],
            texttemplate="%{text}",
            textfont={"size": 11},
            colorscale=CLEAR_SCALE,
            showscale=False,
            hovertemplate="%{y} offset %{x}: %{text}<extra></extra>",
            name="words",
        ),
        row=1,
        col=1,
    )
    fig.add_vline(x=-0.5, line={"color": "#333", "width": 2}, row=1, col=1)
    for i, length in enumerate(lengths):
        fig.add_shape(
            type="rect",
            x0=-0.5,
            x1=length - 0.5,
            y0=i - 0.5,
            y1=i + 0.5,
            line={"color": ON_BLUE, "width": 1.5},
            row=1,
            col=1,
        )
    for j, (title, pz, scale, (lo, hi), hover) in enumerate(panels, start=2):
        fig.add_trace(
            go.Heatmap(
                x=x,
                y=list(row_labels),
                z=pz,
                colorscale=scale,
                zmin=lo,
                zmax=hi,
                showscale=False,
                xgap=1,
                ygap=1,
                text=hover,
                hovertemplate=title + " %{y} offset %{x}: %{text}<extra></extra>",
            ),
            row=1,
            col=j,
        )
        fig.add_vline(x=-0.5, line={"color": "#333", "width": 1}, row=1, col=j)
    fig.update_yaxes(autorange="reversed", type="category", fixedrange=True)
    fig.update_xaxes(fixedrange=True, showgrid=False)
    fig.update_layout(
        height=max(240, 24 * n_rows + 90),
        margin={"l": 70, "r": 10, "t": 30, "b": 30},
        plot_bgcolor="white",
    )
    return fig


def length_figure(
    top_lengths: Sequence[int],
    all_hist: Sequence[int] | None = None,
    strict_hist: Sequence[int] | None = None,
) -> go.Figure:
    """Run lengths as bars: of the top results, and (from ``stats``) the original tool's two
    histograms, all candidates and those with S1 ⊆ S2 (index = length)."""
    fig = go.Figure()
    top: list[int] = (
        [int(c) for c in np.bincount(np.asarray(list(top_lengths), dtype=np.int64))]
        if top_lengths
        else []
    )
    series: list[tuple[str, Sequence[int] | None, str]] = [
        ("all candidates", all_hist, "#bbbbbb"),
        ("candidates with S1 ⊆ S2", strict_hist, ON_BLUE),
        ("top results", top, HIGHLIGHT),
    ]
    longest = 0
    for _name, hist, _color in series:
        nz = np.flatnonzero(np.asarray(list(hist or []), dtype=np.int64))
        if nz.size:
            longest = max(longest, int(nz[-1]))
    for name, hist, color in series:
        if not hist:
            continue
        counts = list(hist)[: longest + 1]
        fig.add_trace(
            go.Bar(
                x=list(range(len(counts))),
                y=counts,
                name=name,
                marker_color=color,
                hovertemplate=f"{name}<br>length %{{x}}: %{{y:,}}<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="group",
        height=260,
        margin={"l": 60, "r": 10, "t": 10, "b": 40},
        plot_bgcolor="white",
        xaxis_title="run length (steps)",
        yaxis={"title": "count", "type": "log" if all_hist else "linear"},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig
