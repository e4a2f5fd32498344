"""The API's resources as typed, immutable values, with the API's own field names (as in
``schemas/ingest.openapi.json`` and ``schemas/match.openapi.json``).

Each class parses one response body with ``from_json``; windows and summaries of cell values
become float32 numpy arrays (``null``, i.e. NaN or ±inf on the server, becomes NaN). Request
bodies (:class:`SelectQuery`, :class:`MatchRequest`) serialise with ``to_json``. No class here
knows the server's code: the JSON is the contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

Json = Mapping[str, Any]
R = TypeVar("R")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""Job statuses after which a job never changes."""


def float_matrix(rows: Sequence[Sequence[float | None]], n_cols: int) -> npt.NDArray[np.float32]:
    """``[[x | None]]`` → a ``(len(rows), n_cols)`` float32 matrix with NaN for ``None``."""
    if not rows:
        return np.empty((0, n_cols), np.float32)
    # numpy reads None as NaN when the dtype is floating
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), n_cols)


def _ints(xs: Sequence[Any] | None) -> list[int] | None:
    return None if xs is None else [int(x) for x in xs]


def _floats(xs: Sequence[Any] | None) -> list[float | None] | None:
    return None if xs is None else [None if x is None else float(x) for x in xs]


# ---------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class LayerInfo:
    """A layer of a dataset: ``n_cells`` cells, stored as ``dtype``, read through
    ``transform``; ``thresholds`` is its grid of indexed θ; ``value_*`` span the transformed
    values (``None`` before statistics)."""

    name: str
    n_cells: int
    dtype: str = "float32"
    transform: str = "none"
    kind: str | None = None
    thresholds: list[float] = field(default_factory=list)
    value_min: float | None = None
    value_max: float | None = None
    value_mean: float | None = None
    nan_count: int = 0

    @classmethod
    def from_json(cls, d: Json) -> LayerInfo:
        return cls(
            name=str(d["name"]),
            n_cells=int(d["n_cells"]),
            dtype=str(d.get("dtype", "float32")),
            transform=str(d.get("transform", "none")),
            kind=d.get("kind"),
            thresholds=[float(x) for x in d.get("thresholds") or []],
            value_min=d.get("value_min"),
            value_max=d.get("value_max"),
            value_mean=d.get("value_mean"),
            nan_count=int(d.get("nan_count", 0)),
        )


@dataclass(frozen=True)
class TrackInfo:
    """A meta track: ``kind`` is ``discrete`` (with the label dictionary ``labels``),
    ``scalar`` or ``topk`` (``k`` predictions per step)."""

    name: str
    kind: str
    description: str = ""
    labels: list[str] | None = None
    k: int | None = None

    @classmethod
    def from_json(cls, d: Json) -> TrackInfo:
        labels = d.get("labels")
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            description=str(d.get("description", "")),
            labels=None if labels is None else [str(x) for x in labels],
            k=d.get("k"),
        )


@dataclass(frozen=True)
class DatasetManifest:
    """A published dataset as the catalog lists it (``GET /v1/datasets[/{ds}]``); ``sizes``
    are bytes per part of the dataset."""

    id: str
    name: str
    n_steps: int
    n_sequences: int
    layers: list[LayerInfo]
    tracks: list[TrackInfo]
    part_steps: int
    created_at: str
    description: str = ""
    has_tokens: bool = False
    vocab_size: int = 0
    version: int = 1
    parent_id: str | None = None
    origin_id: str | None = None
    format_version: int = 1
    sizes: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Json) -> DatasetManifest:
        return cls(
            id=str(d["id"]),
            name=str(d["name"]),
            n_steps=int(d["n_steps"]),
            n_sequences=int(d["n_sequences"]),
            layers=[LayerInfo.from_json(x) for x in d.get("layers") or []],
            tracks=[TrackInfo.from_json(x) for x in d.get("tracks") or []],
            part_steps=int(d["part_steps"]),
            created_at=str(d["created_at"]),
            description=str(d.get("description", "")),
            has_tokens=bool(d.get("has_tokens", False)),
            vocab_size=int(d.get("vocab_size", 0)),
            version=int(d.get("version", 1)),
            parent_id=d.get("parent_id"),
            origin_id=d.get("origin_id"),
            format_version=int(d.get("format_version", 1)),
            sizes={str(k): int(v) for k, v in (d.get("sizes") or {}).items()},
            provenance=dict(d.get("provenance") or {}),
        )


@dataclass(frozen=True)
class SequenceInfo:
    """A declared sequence: steps ``[start, end)``."""

    index: int
    name: str
    start: int
    end: int

    @classmethod
    def from_json(cls, d: Json) -> SequenceInfo:
        return cls(int(d["index"]), str(d["name"]), int(d["start"]), int(d["end"]))


@dataclass(frozen=True)
class LayerDetail:
    """A layer and, when asked for, its per-cell statistics (columns ``cell, min, max, mean,
    nan_count, q01 .. q99``, one entry per cell)."""

    info: LayerInfo
    cell_stats: dict[str, list[float | None]] | None = None

    @classmethod
    def from_json(cls, d: Json) -> LayerDetail:
        stats = d.get("cell_stats")
        return cls(
            info=LayerInfo.from_json(d["info"]),
            cell_stats=None if stats is None else {str(k): list(v) for k, v in stats.items()},
        )


@dataclass(frozen=True)
class DatasetInfo:
    """The match service's description of a dataset (``GET /v1/datasets/{ds}/info``): its
    layers, tracks and one page of its sequences (``next_sequences_token`` asks for the next)."""

    id: str
    name: str
    description: str
    n_steps: int
    n_sequences: int
    vocab_size: int
    has_tokens: bool
    part_steps: int
    created_at: str
    layers: list[LayerDetail]
    tracks: list[TrackInfo]
    sequences: list[SequenceInfo]
    version: int = 1
    parent_id: str | None = None
    next_sequences_token: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> DatasetInfo:
        return cls(
            id=str(d["id"]),
            name=str(d["name"]),
            description=str(d.get("description", "")),
            n_steps=int(d["n_steps"]),
            n_sequences=int(d["n_sequences"]),
            vocab_size=int(d["vocab_size"]),
            has_tokens=bool(d["has_tokens"]),
            part_steps=int(d["part_steps"]),
            created_at=str(d["created_at"]),
            layers=[LayerDetail.from_json(x) for x in d["layers"]],
            tracks=[TrackInfo.from_json(x) for x in d["tracks"]],
            sequences=[SequenceInfo.from_json(x) for x in d["sequences"]],
            version=int(d.get("version", 1)),
            parent_id=d.get("parent_id"),
            next_sequences_token=d.get("next_sequences_token"),
        )

    def layer(self, name: str | None) -> LayerInfo | None:
        """The layer called ``name`` (``None`` if the dataset has none)."""
        return next((x.info for x in self.layers if x.info.name == name), None)

    def track(self, name: str) -> TrackInfo | None:
        """The track called ``name`` (``None`` if the dataset has none)."""
        return next((t for t in self.tracks if t.name == name), None)


# ---------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class StatesWindow:
    """Transformed values ``v`` of steps ``[start, end)``: ``values`` is float32 of shape
    ``(end - start, len(cells))``, NaN where the value is not finite. ``sequence`` (the index
    of the sequence holding ``start``) is ``None`` when read as Arrow, which does not carry it."""

    layer: str
    start: int
    end: int
    sequence: int | None
    cells: list[int]
    values: npt.NDArray[np.float32]

    @classmethod
    def from_json(cls, d: Json) -> StatesWindow:
        cells = [int(c) for c in d["cells"]]
        values = float_matrix(d["values"], len(cells))
        return cls(
            layer=str(d["layer"]),
            start=int(d["start"]),
            end=int(d["end"]),
            sequence=int(d["sequence"]),
            cells=cells,
            values=values.reshape(int(d["end"]) - int(d["start"]), len(cells)),
        )


@dataclass(frozen=True)
class LayerSummary:
    """Per-bin reductions of a layer over ``[start, end)``: bin ``i`` covers steps
    ``[bin_starts[i], bin_starts[i + 1])``; ``mins``/``maxs``/``means`` are float32 of shape
    ``(bins, len(cells))`` over the bin's finite values (NaN: none)."""

    layer: str
    start: int
    end: int
    bins: int
    bin_starts: list[int]
    cells: list[int]
    mins: npt.NDArray[np.float32]
    maxs: npt.NDArray[np.float32]
    means: npt.NDArray[np.float32]

    @classmethod
    def from_json(cls, d: Json) -> LayerSummary:
        cells = [int(c) for c in d["cells"]]
        return cls(
            layer=str(d["layer"]),
            start=int(d["start"]),
            end=int(d["end"]),
            bins=int(d["bins"]),
            bin_starts=[int(x) for x in d["bin_starts"]],
            cells=cells,
            mins=float_matrix(d["mins"], len(cells)),
            maxs=float_matrix(d["maxs"], len(cells)),
            means=float_matrix(d["means"], len(cells)),
        )


@dataclass(frozen=True)
class TokensWindow:
    """Token ids and texts of steps ``[start, end)``."""

    start: int
    end: int
    ids: list[int]
    texts: list[str]

    @classmethod
    def from_json(cls, d: Json) -> TokensWindow:
        return cls(
            start=int(d["start"]),
            end=int(d["end"]),
            ids=[int(x) for x in d["ids"]],
            texts=[str(x) for x in d["texts"]],
        )


@dataclass(frozen=True)
class TrackWindow:
    """A meta track over steps ``[start, end)``; only the fields of its ``kind`` are set.
    discrete: ``label`` per step (-1: none) and the dictionary ``labels``; scalar: ``value``
    per step (``None``: not finite); topk: ``ids``, ``scores`` and ``texts``, ``(n, K)``."""

    name: str
    kind: str
    start: int
    end: int
    labels: list[str] | None = None
    label: list[int] | None = None
    value: list[float | None] | None = None
    ids: list[list[int]] | None = None
    scores: list[list[float | None]] | None = None
    texts: list[list[str]] | None = None

    @classmethod
    def from_json(cls, d: Json) -> TrackWindow:
        def rows(key: str) -> list[list[Any]] | None:
            v = d.get(key)
            return None if v is None else [list(r) for r in v]

        labels = d.get("labels")
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            start=int(d["start"]),
            end=int(d["end"]),
            labels=None if labels is None else [str(x) for x in labels],
            label=_ints(d.get("label")),
            value=_floats(d.get("value")),
            ids=rows("ids"),
            scores=rows("scores"),
            texts=rows("texts"),
        )


@dataclass(frozen=True)
class TrackSummary:
    """A meta track per bin over ``[start, end)`` (bins as :class:`LayerSummary`); only the
    fields of its ``kind`` are set. discrete: ``label_counts[bin][label]``, ``unlabelled``,
    ``labels``; scalar: ``mins``, ``maxs``, ``means`` (``None``: no finite value), ``counts``;
    topk: ``mode_ids`` (the most frequent top-1), ``mode_counts``, ``mode_texts``."""

    name: str
    kind: str
    start: int
    end: int
    bins: int
    bin_starts: list[int]
    labels: list[str] | None = None
    label_counts: list[list[int]] | None = None
    unlabelled: list[int] | None = None
    mins: list[float | None] | None = None
    maxs: list[float | None] | None = None
    means: list[float | None] | None = None
    counts: list[int] | None = None
    mode_ids: list[int] | None = None
    mode_counts: list[int] | None = None
    mode_texts: list[str] | None = None

    @classmethod
    def from_json(cls, d: Json) -> TrackSummary:
        labels, counts, texts = d.get("labels"), d.get("label_counts"), d.get("mode_texts")
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            start=int(d["start"]),
            end=int(d["end"]),
            bins=int(d["bins"]),
            bin_starts=[int(x) for x in d["bin_starts"]],
            labels=None if labels is None else [str(x) for x in labels],
            label_counts=None if counts is None else [[int(x) for x in r] for r in counts],
            unlabelled=_ints(d.get("unlabelled")),
            mins=_floats(d.get("mins")),
            maxs=_floats(d.get("maxs")),
            means=_floats(d.get("means")),
            counts=_ints(d.get("counts")),
            mode_ids=_ints(d.get("mode_ids")),
            mode_counts=_ints(d.get("mode_counts")),
            mode_texts=None if texts is None else [str(x) for x in texts],
        )


@dataclass(frozen=True)
class OnCountSummary:
    """Per bin (as :class:`LayerSummary`): the least / greatest / mean number of ``cells`` on
    (``v >= threshold``) at one step; ``threshold_on_grid``: counted from the bit planes."""

    layer: str
    start: int
    end: int
    bins: int
    bin_starts: list[int]
    cells: list[int]
    threshold: float
    threshold_on_grid: bool
    mins: list[int]
    maxs: list[int]
    means: list[float]

    @classmethod
    def from_json(cls, d: Json) -> OnCountSummary:
        return cls(
            layer=str(d["layer"]),
            start=int(d["start"]),
            end=int(d["end"]),
            bins=int(d["bins"]),
            bin_starts=[int(x) for x in d["bin_starts"]],
            cells=[int(x) for x in d["cells"]],
            threshold=float(d["threshold"]),
            threshold_on_grid=bool(d["threshold_on_grid"]),
            mins=[int(x) for x in d["mins"]],
            maxs=[int(x) for x in d["maxs"]],
            means=[float(x) for x in d["means"]],
        )


@dataclass(frozen=True)
class VocabPage:
    """Texts of vocabulary ids (an id outside the vocabulary has ``""``)."""

    vocab_size: int
    ids: list[int]
    texts: list[str]
    next_offset: int | None = None

    @classmethod
    def from_json(cls, d: Json) -> VocabPage:
        return cls(
            vocab_size=int(d["vocab_size"]),
            ids=[int(x) for x in d["ids"]],
            texts=[str(x) for x in d["texts"]],
            next_offset=d.get("next_offset"),
        )


@dataclass(frozen=True)
class SearchResult:
    """Occurrences of a phrase: ``positions`` are the start steps of the first ``limit`` of
    ``total`` occurrences (each ``len(query)`` steps long); ``next_from_step`` pages on."""

    query: list[str]
    token_ids: list[list[int]]
    total: int
    positions: list[int]
    next_from_step: int | None = None

    @classmethod
    def from_json(cls, d: Json) -> SearchResult:
        return cls(
            query=[str(x) for x in d["query"]],
            token_ids=[[int(x) for x in r] for r in d["token_ids"]],
            total=int(d["total"]),
            positions=[int(x) for x in d["positions"]],
            next_from_step=d.get("next_from_step"),
        )


# ---------------------------------------------------------------------------------- select


@dataclass(frozen=True)
class SelectQuery:
    """SPEC §2 select: the cells of ``layer`` on over ``[start, end)`` at ``threshold`` and off
    ``left_off`` steps before / ``right_off`` after; ``window_*`` is the range of the per-step
    on-counts returned."""

    layer: str
    start: int
    end: int
    threshold: float = 0.3
    left_off: int = 1
    right_off: int = 0
    window_start: int | None = None
    window_end: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "layer": self.layer,
            "start": self.start,
            "end": self.end,
            "threshold": self.threshold,
            "left_off": self.left_off,
            "right_off": self.right_off,
        }
        if self.window_start is not None:
            body["window_start"] = self.window_start
        if self.window_end is not None:
            body["window_end"] = self.window_end
        return body


@dataclass(frozen=True)
class SelectResult:
    """S1 (``cells``, sorted) and, per step of ``[window_start, window_end)``, how many of
    them are on."""

    cells: list[int]
    window_start: int
    window_end: int
    counts: list[int]

    @classmethod
    def from_json(cls, d: Json) -> SelectResult:
        return cls(
            cells=[int(x) for x in d["cells"]],
            window_start=int(d["window_start"]),
            window_end=int(d["window_end"]),
            counts=[int(x) for x in d["counts"]],
        )


# ---------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem (a job's ``error``)."""

    title: str
    status: int
    detail: str | None = None
    type: str = "about:blank"
    instance: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> Problem:
        return cls(
            title=str(d.get("title", "")),
            status=int(d.get("status", 500)),
            detail=d.get("detail"),
            type=str(d.get("type", "about:blank")),
            instance=d.get("instance"),
        )


@dataclass(frozen=True)
class Progress:
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Timings:
    """Seconds a job was queued, running, and both (``None`` until known)."""

    queued_seconds: float | None = None
    running_seconds: float | None = None
    total_seconds: float | None = None


@dataclass(frozen=True)
class Job(Generic[R]):
    """A job resource (``/v1/jobs/{id}``) of either service; ``result`` is set once it
    ``succeeded`` (an ingest job's is the API's free-form object; a match job's a
    :class:`MatchJobResult`), ``error`` once it ``failed``."""

    id: str
    kind: str
    status: str
    progress: Progress
    attempts: int
    cancel_requested: bool
    created_at: str
    updated_at: str
    timings: Timings
    started_at: str | None = None
    finished_at: str | None = None
    error: Problem | None = None
    result: R | None = None
    links: dict[str, str] = field(default_factory=dict)
    dataset_id: str | None = None
    """match jobs: the dataset version matched."""

    @property
    def terminal(self) -> bool:
        """Whether the job ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL

    @classmethod
    def parse(cls, d: Json, result: Any) -> Job[Any]:
        prog = d.get("progress") or {}
        tim = d.get("timings") or {}
        err = d.get("error")
        return cls(
            id=str(d["id"]),
            kind=str(d["kind"]),
            status=str(d["status"]),
            progress=Progress(int(prog.get("done", 0)), int(prog.get("total", 0))),
            attempts=int(d.get("attempts", 0)),
            cancel_requested=bool(d.get("cancel_requested", False)),
            created_at=str(d["created_at"]),
            updated_at=str(d["updated_at"]),
            timings=Timings(
                tim.get("queued_seconds"), tim.get("running_seconds"), tim.get("total_seconds")
            ),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
            error=None if err is None else Problem.from_json(err),
            result=result,
            links={str(k): str(v) for k, v in (d.get("links") or {}).items()},
            dataset_id=d.get("dataset_id"),
        )


IngestJob = Job[dict[str, Any]]
"""An ingest job: ``result["dataset"]`` describes the published dataset."""


def ingest_job(d: Json) -> IngestJob:
    res = d.get("result")
    return Job.parse(d, None if res is None else dict(res))


@dataclass(frozen=True)
class HitContext:
    """What a match hit carries besides its numbers, over steps ``[start, end)`` (clipped to
    the hit's sequence): tokens, meta tracks, and per step how many S1 cells are on."""

    start: int
    end: int
    token_ids: list[int] | None = None
    tokens: list[str] | None = None
    tracks: dict[str, TrackWindow] | None = None
    counts: list[int] | None = None

    @classmethod
    def from_json(cls, d: Json) -> HitContext:
        tokens, tracks = d.get("tokens"), d.get("tracks")
        return cls(
            start=int(d["start"]),
            end=int(d["end"]),
            token_ids=_ints(d.get("token_ids")),
            tokens=None if tokens is None else [str(x) for x in tokens],
            tracks=None
            if tracks is None
            else {str(k): TrackWindow.from_json(v) for k, v in tracks.items()},
            counts=_ints(d.get("counts")),
        )


@dataclass(frozen=True)
class Hit:
    """A match result: steps ``[start, end)`` of sequence ``sequence``, ranked ``rank``."""

    start: int
    end: int
    length: int
    sequence: int
    intersection: int
    union: int
    jaccard: float
    missing: int
    extra: int
    level: int
    rank: int
    sequence_name: str | None = None
    context: HitContext | None = None

    @classmethod
    def from_json(cls, d: Json) -> Hit:
        ctx = d.get("context")
        return cls(
            start=int(d["start"]),
            end=int(d["end"]),
            length=int(d["length"]),
            sequence=int(d["sequence"]),
            intersection=int(d["intersection"]),
            union=int(d["union"]),
            jaccard=float(d["jaccard"]),
            missing=int(d["missing"]),
            extra=int(d["extra"]),
            level=int(d["level"]),
            rank=int(d["rank"]),
            sequence_name=d.get("sequence_name"),
            context=None if ctx is None else HitContext.from_json(ctx),
        )


@dataclass(frozen=True)
class MatchStats:
    """Every candidate counted, and their lengths (all / with every S1 cell on)."""

    n_candidates: int = 0
    length_histogram: list[int] = field(default_factory=list)
    strict_length_histogram: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class MatchJobResult:
    """A succeeded match: ``n_hits`` in all, one page of ``hits``, ``next_page_token`` for
    the next; ``query`` is the match as the server ran it (S1 resolved)."""

    query: dict[str, Any]
    n_hits: int
    threshold_on_grid: bool
    hits: list[Hit]
    next_page_token: str | None = None
    selected_from_range: list[int] | None = None
    stats: MatchStats | None = None

    @classmethod
    def from_json(cls, d: Json) -> MatchJobResult:
        st = d.get("stats")
        rng = d.get("selected_from_range")
        return cls(
            query=dict(d["query"]),
            n_hits=int(d["n_hits"]),
            threshold_on_grid=bool(d["threshold_on_grid"]),
            hits=[Hit.from_json(h) for h in d["hits"]],
            next_page_token=d.get("next_page_token"),
            selected_from_range=_ints(rng),
            stats=None
            if st is None
            else MatchStats(
                int(st.get("n_candidates", 0)),
                [int(x) for x in st.get("length_histogram") or []],
                [int(x) for x in st.get("strict_length_histogram") or []],
            ),
        )


MatchJob = Job[MatchJobResult]


def match_job(d: Json) -> MatchJob:
    res = d.get("result")
    return Job.parse(d, None if res is None else MatchJobResult.from_json(res))


@dataclass(frozen=True)
class ContextOptions:
    """What each returned hit carries: ``left``/``right`` context steps, their tokens, the
    meta ``tracks`` over them, and per step the on-count of S1 (``counts``)."""

    left: int = 0
    right: int = 0
    tokens: bool = True
    tracks: tuple[str, ...] = ()
    counts: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "left": self.left,
            "right": self.right,
            "tokens": self.tokens,
            "tracks": list(self.tracks),
            "counts": self.counts,
        }


@dataclass(frozen=True)
class MatchRequest:
    """SPEC §2 match: give ``cells`` (S1) or a ``range`` ``(start, end)`` to select S1 from."""

    layer: str
    cells: tuple[int, ...] | None = None
    range: tuple[int, int] | None = None
    threshold: float = 0.3
    left_off: int = 1
    right_off: int = 0
    min_length: int = 2
    max_length: int | None = None
    top_k: int = 50
    search_start: int | None = None
    search_end: int | None = None
    stats: bool = False
    context: ContextOptions | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "layer": self.layer,
            "threshold": self.threshold,
            "left_off": self.left_off,
            "right_off": self.right_off,
            "min_length": self.min_length,
            "top_k": self.top_k,
            "stats": self.stats,
        }
        optional = {
            "cells": None if self.cells is None else list(self.cells),
            "range": None if self.range is None else list(self.range),
            "max_length": self.max_length,
            "search_start": self.search_start,
            "search_end": self.search_end,
            "context": None if self.context is None else self.context.to_json(),
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body
