"""Plotly figures of the select and match views (WebGL line traces; heatmaps for word rows).

Pure functions of numpy arrays and lists: no HTTP, no Streamlit, so they are testable alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go
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


def track_rows(
    name: str,
    kind: str,
    n: int,
    labels: Sequence[int] | None = None,
    label_names: Sequence[str] | None = None,
    values: Sequence[float | None] | None = None,
    texts: Sequence[Sequence[str]] | None = None,
    ids: Sequence[Sequence[int]] | None = None,
    scores: Sequence[Sequence[float]] | None = None,
) -> TrackRows:
    """Turn a track window (see :class:`hiddenscope_ui.api.TrackWindow`) into rows.

    discrete: one row, z = label % 20 (NaN for -1), text = label name. topk: K rows (best first),
    z = score, text = predicted token. scalar: one row, z = value.
    """
    if kind == "discrete":
        lab = np.asarray(list(labels or []) + [-1] * (n - len(labels or [])), dtype=np.float64)[:n]
        z = np.where(lab < 0, np.nan, lab % len(CATEGORICAL))
        names = list(label_names or [])
        text = [
            names[int(v)] if 0 <= v < len(names) else ("" if v < 0 else str(int(v))) for v in lab
        ]
        return TrackRows(name, kind, z[None, :], [text], [name], 0, len(CATEGORICAL) - 1)
    if kind == "topk":
        raw = np.asarray(scores if scores is not None else [], dtype=np.float64)
        sc = raw.T if raw.ndim == 2 and raw.shape[0] == n else np.full((1, n), np.nan)
        k = sc.shape[0]
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
        [np.nan if v is None else float(v) for v in (values or [])] + [np.nan] * n, dtype=np.float64
    )[:n]
    finite = vals[np.isfinite(vals)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    text = ["" if not math.isfinite(v) else f"{v:.3g}" for v in vals]
    return TrackRows(name, kind, vals[None, :], [text], [name], lo, hi if hi > lo else lo + 1)


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
) -> go.Figure:
    """The select view: cells over the window (``values`` is ``(n, len(cells))``, steps
    ``start .. start+n``), the threshold, the brushed range with its off extents, the word row
    coloured by how many selected cells are on, then one row per meta track row."""
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
) -> go.Figure:
    """A long range: per bin, the band between the minimum and maximum over all cells (grey) and
    each selected cell's min..max band (blue)."""
    edges = np.asarray(bin_starts, dtype=np.float64)
    centers = (edges[:-1] + edges[1:] - 1) / 2
    lo_all = np.nanmin(mins, axis=1)
    hi_all = np.nanmax(maxs, axis=1)
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=centers,
            y=hi_all,
            mode="lines",
            line={"width": 0.5, "color": "#999"},
            name="max of all cells",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=centers,
            y=lo_all,
            mode="lines",
            line={"width": 0.5, "color": "#999"},
            fill="tonexty",
            fillcolor="rgba(150,150,150,0.25)",
            name="min of all cells",
            hoverinfo="skip",
        )
    )
    col_of = {c: i for i, c in enumerate(cells)}
    shown = [c for c in selected if c in col_of][:MAX_SELECTED_TRACES]
    if highlight is not None and highlight in col_of and highlight not in shown:
        shown.append(highlight)
    for c in shown:
        color = HIGHLIGHT if c == highlight else ON_BLUE
        i = col_of[c]
        fig.add_trace(
            go.Scattergl(
                x=centers,
                y=maxs[:, i],
                mode="lines",
                line={"width": 1, "color": color},
                name=f"cell {c} max",
            )
        )
        fig.add_trace(
            go.Scattergl(
                x=centers,
                y=mins[:, i],
                mode="lines",
                line={"width": 1, "color": color},
                fill="tonexty",
                opacity=0.5,
                name=f"cell {c} min",
            )
        )
    fig.add_hline(y=threshold, line={"color": THRESHOLD_RED, "dash": "dash", "width": 1.5})
    if brush is not None:
        fig.add_vrect(
            x0=brush[0] - 0.5, x1=brush[1] - 0.5, fillcolor=ON_BLUE, opacity=0.15, line_width=0
        )
    fig.update_layout(
        height=380,
        margin={"l": 60, "r": 10, "t": 10, "b": 40},
        showlegend=False,
        plot_bgcolor="white",
        xaxis_title=f"step (bins of ~{(edges[-1] - edges[0]) / max(1, len(centers)):,.0f})",
        yaxis={"range": yrange, "title": "value (per-bin min..max)"},
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
) -> go.Figure:
    """The match view: the word matrix (one result per row, columns = offsets from the match
    start, a line at the start and a box around each run) and heatmap panels beside it
    (``(title, z, colorscale, (zmin, zmax), hover texts)``, same shape as the matrix)."""
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
            text=[list(r) for r in texts],
            texttemplate="%{text}",
            textfont={"size": 11},
            colorscale=background_scale
            if background is not None
            else [[0, "#ffffff"], [1, "#ffffff"]],
            zmin=background_range[0],
            zmax=background_range[1],
            showscale=False,
            xgap=1,
            ygap=1,
            hovertemplate="%{y} offset %{x}: %{text}<extra></extra>",
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
