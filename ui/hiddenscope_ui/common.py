"""What every page shares: the view state kept in the session and mirrored into the URL, the
back/forward history, widget binding, and turning API errors into messages with a way on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import streamlit as st
from hiddenscope_client import (
    ApiError,
    ApiUnavailable,
    BadRequest,
    DatasetInfo,
    JobFailed,
    LayerInfo,
    NotFound,
    TrackInfo,
)

from hiddenscope_ui import api
from hiddenscope_ui.state import ParsedState, ViewState, parse_query_params, to_query_params

HISTORY_LIMIT = 100
PAGES: dict[str, Any] = {}
"""Page name -> script path; filled by ``app.py`` (for ``st.switch_page``)."""

T = TypeVar("T")


def _read_url() -> ParsedState:
    qp = st.query_params
    return parse_query_params({k: qp.get_all(k) for k in qp})


def current_view() -> ViewState:
    """The view state: from the URL when the URL changed under us (a pasted link, a link from a
    match result), else from the session. The URL is rewritten to match either way."""
    qp = st.query_params.to_dict()
    written = st.session_state.get("_qp_written")
    if "view" not in st.session_state or (qp and qp != written):
        parsed = _read_url()
        st.session_state["view"] = parsed.state
        st.session_state["url_problems"] = parsed.problems
        _push_history(parsed.state)
    view: ViewState = st.session_state["view"]
    _write_url(view)
    return view


def _write_url(view: ViewState) -> None:
    params = to_query_params(view)
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    st.session_state["_qp_written"] = params


def _push_history(view: ViewState) -> None:
    hist: list[ViewState] = st.session_state.setdefault("history", [])
    idx: int = st.session_state.get("history_index", len(hist) - 1)
    if hist and 0 <= idx < len(hist) and hist[idx] == view:
        return
    del hist[idx + 1 :]
    hist.append(view)
    del hist[:-HISTORY_LIMIT]
    st.session_state["history_index"] = len(hist) - 1


def set_view(view: ViewState, *, history: bool = True) -> None:
    """Make ``view`` current (session + URL); ``history`` records it for back/forward."""
    st.session_state["view"] = view
    if history:
        _push_history(view)
    _write_url(view)


def update_view(**changes: Any) -> ViewState:
    view = replace(current_view(), **changes)
    set_view(view)
    return view


def can_go(step: int) -> bool:
    hist: list[ViewState] = st.session_state.get("history", [])
    idx = int(st.session_state.get("history_index", len(hist) - 1)) + step
    return 0 <= idx < len(hist)


def go(step: int) -> None:
    """Back (-1) / forward (+1) through the session's history of views."""
    hist: list[ViewState] = st.session_state.get("history", [])
    idx = st.session_state.get("history_index", len(hist) - 1) + step
    if 0 <= idx < len(hist):
        st.session_state["history_index"] = idx
        set_view(hist[idx], history=False)


def new_run(page: str) -> None:
    """Count the app's script runs and note the page drawn (``app.py`` calls this once per
    run; fragment reruns do not), so that :func:`bound` knows whether a widget was drawn, on
    this page, in the previous run."""
    st.session_state["_run"] = (int(st.session_state.get("_run", (0, ""))[0]) + 1, page)


def _run() -> tuple[int, str]:
    run: tuple[int, str] = st.session_state.get("_run", (0, ""))
    return run


def bound(key: str, value: T) -> str:
    """Keep widget ``key`` showing ``value`` when the view changed elsewhere (history, a jump,
    another page), while letting the user's own edits stand. Returns ``key`` for the widget.

    Streamlit keeps a widget's value only while the same page keeps drawing it: a widget not
    drawn in the previous run, or drawn there by another page, is given the view's value
    again, not its default."""
    run, page = _run()
    marker = f"_bound::{key}"
    last = st.session_state.get(marker)
    if (
        last is None
        or last[0] != value
        or last[1] < run - 1
        or last[2] != page
        or key not in st.session_state
    ):
        st.session_state[key] = value
    st.session_state[marker] = (value, run, page)
    return key


def accept(key: str, value: T) -> T:
    """Record that the widget ``key`` now shows ``value`` (after the user changed it)."""
    st.session_state[f"_bound::{key}"] = (value, *_run())
    return value


def show_url_problems() -> None:
    problems: list[str] = st.session_state.pop("url_problems", [])
    if problems:
        st.warning("This link had parameters that could not be used:\n\n- " + "\n- ".join(problems))


def _dataset_gone() -> bool:
    """Whether the open view's dataset has gone (asked uncached: after a 404 from one of its
    windows, the cached description may be stale)."""
    view: ViewState | None = st.session_state.get("view")
    if view is None or not view.dataset:
        return False
    api.dataset.clear()
    try:
        api.client().info(view.dataset)
    except NotFound:
        return True
    except ApiError:
        return False
    return False


def show_dataset_gone(view: ViewState) -> None:
    """The dataset of ``view`` does not exist: say so, and offer another one."""
    st.error(
        f"Dataset **{view.dataset}** does not exist (any more): it may have been deleted "
        "while open, or the link is stale.",
        icon="🗑️",
    )
    if st.button("Choose another dataset", key="gone-choose"):
        set_view(view.with_dataset(None))
        st.rerun()
    if "datasets" in PAGES:
        st.page_link(PAGES["datasets"], label="Go to the datasets", icon="🗂️")


def show_api_error(exc: ApiError, *, where: str = "") -> None:
    """A clear message and a way on (retry, the datasets page) instead of a traceback. A 404
    because the open dataset was deleted meanwhile says that."""
    if isinstance(exc, NotFound) and _dataset_gone():
        show_dataset_gone(st.session_state["view"])
        return
    prefix = f"{where}: " if where else ""
    if isinstance(exc, ApiUnavailable):
        st.error(f"{prefix}The HiddenScope API is not reachable.\n\n{exc.message}", icon="🔌")
    elif isinstance(exc, NotFound):
        st.error(f"{prefix}Not found: {exc.message}", icon="🔎")
    elif isinstance(exc, JobFailed):
        st.error(f"{prefix}The job failed: {exc.message}", icon="⚠️")
    elif isinstance(exc, BadRequest):
        st.error(f"{prefix}The API refused the request: {exc.message}", icon="⚠️")
    else:
        st.error(f"{prefix}{exc.message}", icon="⚠️")
    c1, c2, _ = st.columns([1, 2, 5])
    if c1.button("Retry", key=f"retry-{id(exc)}-{where}"):
        st.cache_data.clear()
        st.rerun()
    if "datasets" in PAGES:
        c2.page_link(PAGES["datasets"], label="Go to the datasets", icon="🗂️")


@contextmanager
def api_errors(where: str = "") -> Iterator[None]:
    """``with api_errors(): ...`` shows any :class:`ApiError` and stops the page."""
    try:
        yield
    except ApiError as exc:
        show_api_error(exc, where=where)
        st.stop()


def call(fn: Callable[..., T], *args: Any, where: str = "", **kwargs: Any) -> T:
    with api_errors(where):
        return fn(*args, **kwargs)


def open_dataset(view: ViewState) -> DatasetInfo | None:
    """The current dataset's description, or a message and ``None``: none chosen, or it was
    deleted while open (then the view forgets it)."""
    if not view.dataset:
        return None
    try:
        return api.dataset(api.base_url(), view.dataset)
    except NotFound:
        show_dataset_gone(view)
        st.stop()
    except ApiError as exc:
        show_api_error(exc, where="loading the dataset")
        st.stop()
    return None


def dataset_picker(view: ViewState, *, where: Any = None) -> ViewState:
    """Dataset and layer choice (sidebar); returns the possibly changed view."""
    box = where if where is not None else st.sidebar
    try:
        items = api.list_datasets(api.base_url())
    except ApiError as exc:
        with box:
            st.caption(f"datasets unavailable: {exc.message}")
        return view
    names = [d.name for d in items]
    if view.dataset and view.dataset not in names and not any(d.id == view.dataset for d in items):
        names = [view.dataset, *names]
    if not names:
        return view
    key = bound("pick-dataset", view.dataset if view.dataset in names else None)
    chosen = box.selectbox("Dataset", names, key=key, placeholder="choose a dataset", index=None)
    if chosen != view.dataset and chosen is not None:
        accept("pick-dataset", chosen)
        view = view.with_dataset(chosen)
        set_view(view)
    return view


def layer_picker(view: ViewState, manifest: DatasetInfo, *, where: Any = None) -> ViewState:
    box = where if where is not None else st.sidebar
    layers = [layer.info.name for layer in manifest.layers]
    if not layers:
        box.warning("this dataset has no layers")
        return view
    if view.layer not in layers:
        if view.layer is not None:
            st.warning(f"Layer **{view.layer}** is not in this dataset; showing **{layers[0]}**.")
            view = view.with_layer(layers[0])
        else:  # no layer in the link: the first one, keeping the rest of the state
            view = replace(view, layer=layers[0])
        set_view(view, history=False)
    labels = {
        x.info.name: f"{x.info.name} ({x.info.n_cells} cells, {x.info.transform})"
        for x in manifest.layers
    }
    key = bound("pick-layer", view.layer)
    chosen = box.selectbox("Layer", layers, key=key, format_func=lambda n: labels.get(n, n))
    if chosen != view.layer:
        accept("pick-layer", chosen)
        view = view.with_layer(chosen)
        set_view(view)
    return _check_cells(view, manifest.layer(view.layer))


def _check_cells(view: ViewState, layer: LayerInfo | None) -> ViewState:
    """Cell ids (and the highlighted cell) of a link that the layer does not have are
    reported and dropped."""
    n_cells = layer.n_cells if layer is not None else 0
    bad = [c for c in view.cells if c >= n_cells]
    hl = view.hl if view.hl is None or view.hl < n_cells else None
    if not bad and hl == view.hl:
        return view
    if bad:
        st.warning(
            f"Cell(s) {', '.join(map(str, bad[:20]))} are not in layer **{view.layer}** "
            f"(cells 0 .. {n_cells - 1}); they were dropped."
        )
    view = replace(view, cells=tuple(c for c in view.cells if c < n_cells), hl=hl)
    set_view(view, history=False)
    return view


def track_infos(manifest: DatasetInfo) -> dict[str, TrackInfo]:
    return {t.name: t for t in manifest.tracks}
