"""The UI's cached calls of the API through :mod:`hiddenscope_client` (no HTTP of its own).

GETs are cached with ``st.cache_data``, keyed by the base URL and, for windows, by the dataset
**id** (so a name deleted and uploaded again never serves stale data); POSTs are never cached.
The client itself is a ``st.cache_resource`` per base URL.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st
from hiddenscope_client import (
    DatasetInfo,
    DatasetManifest,
    HiddenScopeClient,
    LayerSummary,
    MatchJob,
    OnCountSummary,
    SearchResult,
    SequenceInfo,
    StatesWindow,
    TokensWindow,
    TrackSummary,
    TrackWindow,
)

from hiddenscope_ui.settings import get_settings

MAX_SEQUENCE_PAGES = 20


def base_url() -> str:
    return get_settings().api_url.rstrip("/")


@st.cache_resource(show_spinner=False)
def _client(url: str) -> HiddenScopeClient:
    s = get_settings()
    return HiddenScopeClient(
        url, timeout=s.read_timeout, connect_timeout=s.connect_timeout, user_agent="hiddenscope-ui"
    )


def client() -> HiddenScopeClient:
    """The client of the configured API (for the calls that are not cached: POSTs, jobs)."""
    return _client(base_url())


@st.cache_data(ttl=5, show_spinner=False, max_entries=64)
def list_datasets(url: str) -> list[DatasetManifest]:
    return _client(url).list_datasets()


@st.cache_data(ttl=10, show_spinner=False, max_entries=256)
def dataset(url: str, ds: str) -> DatasetInfo:
    """The match service's description of ``ds`` (first page of sequences, no cell
    statistics)."""
    return _client(url).info(ds)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def sequences(url: str, ds_id: str) -> list[SequenceInfo]:
    return _client(url).sequences(ds_id, max_pages=MAX_SEQUENCE_PAGES)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def match_page(
    url: str, job: str, page_size: int, right: int, tracks: tuple[str, ...], left: int = 3
) -> MatchJob:
    """A **finished** match job's hits with context (immutable, so cached)."""
    return _client(url).match_job(
        job,
        page_size=page_size,
        context_left=left,
        context_right=right,
        context_tracks=tracks,
        context_counts=True,
        context_tokens=True,
    )


@st.cache_data(ttl=3600, show_spinner=False, max_entries=512, max_size=None)
def states(
    url: str, ds_id: str, layer: str, start: int, end: int, cells: tuple[int, ...] | None = None
) -> StatesWindow:
    return _client(url).states(ds_id, layer, start, end, cells)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=128)
def summary(url: str, ds_id: str, layer: str, start: int, end: int, bins: int) -> LayerSummary:
    return _client(url).summary(ds_id, layer, start, end, bins)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=1024)
def tokens(url: str, ds_id: str, start: int, end: int) -> TokensWindow:
    return _client(url).tokens(ds_id, start, end)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=1024)
def track(url: str, ds_id: str, name: str, start: int, end: int) -> TrackWindow:
    return _client(url).track(ds_id, name, start, end)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def track_summary(url: str, ds_id: str, name: str, start: int, end: int, bins: int) -> TrackSummary:
    return _client(url).track_summary(ds_id, name, start, end, bins)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def on_count_summary(
    url: str,
    ds_id: str,
    layer: str,
    cells: tuple[int, ...],
    threshold: float,
    start: int,
    end: int,
    bins: int,
) -> OnCountSummary:
    return _client(url).on_count_summary(ds_id, layer, cells, threshold, start, end, bins)


@st.cache_data(ttl=600, show_spinner=False, max_entries=128)
def search(url: str, ds_id: str, q: str, limit: int) -> SearchResult:
    """Occurrences of a phrase; retries while the dataset's search index is being built (at
    most ``search_wait_seconds``)."""
    return _client(url).search(
        ds_id, q, limit=limit, wait_seconds=get_settings().search_wait_seconds
    )


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
