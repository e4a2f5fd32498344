"""Request and response bodies of the match service's HTTP API (``/v1``).

Steps are 0-based positions of the dataset's concatenated stream; every range is half-open
``[start, end)``. Non-finite floats (NaN, ±inf) are ``null`` in JSON.
"""

from __future__ import annotations

import math
from datetime import datetime

from hiddenscope_core.models import (
    MAX_TOP_K,
    LayerInfo,
    MatchHit,
    MatchQuery,
    MatchStats,
    SequenceInfo,
    TrackInfo,
)
from hiddenscope_service.job_resource import JobResourceBase
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ARROW_STREAM = "application/vnd.apache.arrow.stream"


class LayerDetail(BaseModel):
    """A layer and, on request, its per-cell statistics (columns ordered by cell)."""

    info: LayerInfo
    cell_stats: dict[str, list[float | None]] | None = Field(
        default=None,
        description="columns cell, min, max, mean, nan_count, q01 .. q99 (one entry per cell)",
    )


class DatasetInfo(BaseModel):
    id: str
    name: str
    version: int = Field(default=1, description="1 when ingested; +1 per change of the tracks")
    parent_id: str | None = Field(default=None, description="the version this one was made from")
    description: str
    n_steps: int
    n_sequences: int
    vocab_size: int
    has_tokens: bool
    part_steps: int
    created_at: datetime
    layers: list[LayerDetail]
    tracks: list[TrackInfo]
    sequences: list[SequenceInfo] = Field(description="one page of the declared sequences")
    next_sequences_token: str | None = Field(
        default=None, description="pass as sequences_page_token for the next page; absent at end"
    )


class StatesWindow(BaseModel):
    layer: str
    start: int
    end: int
    sequence: int = Field(description="index of the sequence holding `start`")
    cells: list[int]
    values: list[list[float | None]] = Field(
        description="transformed values v, one row per step, one column per requested cell"
    )


class TokensWindow(BaseModel):
    start: int
    end: int
    ids: list[int]
    texts: list[str]


class TrackWindow(BaseModel):
    name: str
    kind: str
    start: int
    end: int
    labels: list[str] | None = Field(default=None, description="label dictionary (discrete)")
    label: list[int] | None = Field(default=None, description="discrete: label per step, -1 none")
    value: list[float | None] | None = Field(default=None, description="scalar: value per step")
    ids: list[list[int]] | None = Field(default=None, description="topk: K token ids per step")
    scores: list[list[float | None]] | None = Field(default=None, description="topk: K scores")
    texts: list[list[str]] | None = Field(
        default=None,
        description="topk: the vocabulary texts of `ids` (absent without a vocabulary; an id "
        "outside the vocabulary is an empty string)",
    )


class VocabPage(BaseModel):
    """Texts of vocabulary ids: a page (``offset``, ``limit``) or the ids asked for."""

    vocab_size: int = Field(description="entries in the dataset's vocabulary")
    ids: list[int]
    texts: list[str] = Field(description="text of each id; an id outside the vocabulary is ''")
    next_offset: int | None = Field(
        default=None, description="pass as offset for the next page; absent at the end or by ids"
    )


class LayerSummary(BaseModel):
    """Per-bin reductions of a long range: bin ``i`` covers steps
    ``[bin_starts[i], bin_starts[i + 1])``; ``mins``/``maxs``/``means`` are ``[bin][cell]`` over
    the finite values of the bin (``null`` if it has none)."""

    layer: str
    start: int
    end: int
    bins: int = Field(description="number of bins (at most the requested one, and the steps)")
    bin_starts: list[int] = Field(description="bins + 1 edges, the last one = end")
    cells: list[int]
    mins: list[list[float | None]]
    maxs: list[list[float | None]]
    means: list[list[float | None]]


class TrackSummary(BaseModel):
    """A meta track over a long range, per bin: bin ``i`` covers steps
    ``[bin_starts[i], bin_starts[i + 1])`` (the same bins as the layer summary of the range).
    Only the fields of the track's kind are set (the others are ``null``)."""

    name: str
    kind: str
    start: int
    end: int
    bins: int = Field(description="number of bins (at most the requested one, and the steps)")
    bin_starts: list[int] = Field(description="bins + 1 edges, the last one = end")
    labels: list[str] | None = Field(default=None, description="label dictionary (discrete)")
    label_counts: list[list[int]] | None = Field(
        default=None, description="discrete: [bin][label] steps with each label"
    )
    unlabelled: list[int] | None = Field(
        default=None, description="discrete: [bin] steps without a label (-1)"
    )
    mins: list[float | None] | None = Field(
        default=None, description="scalar: [bin] least finite value (null: none in the bin)"
    )
    maxs: list[float | None] | None = Field(
        default=None, description="scalar: [bin] greatest finite value"
    )
    means: list[float | None] | None = Field(
        default=None, description="scalar: [bin] mean of the finite values"
    )
    counts: list[int] | None = Field(
        default=None, description="scalar: [bin] finite values (NaN and ±inf are missing)"
    )
    mode_ids: list[int] | None = Field(
        default=None,
        description="topk: [bin] the token id most often ranked first (top-1) in the bin; "
        "ties: the smallest id",
    )
    mode_counts: list[int] | None = Field(
        default=None, description="topk: [bin] steps of the bin whose top-1 is mode_ids"
    )
    mode_texts: list[str] | None = Field(
        default=None,
        description="topk: [bin] the vocabulary text of mode_ids (absent without a vocabulary; "
        "an id outside it is an empty string)",
    )


class OnCountSummary(BaseModel):
    """How many of ``cells`` are on (``v >= threshold``) at each step, reduced per bin: bin
    ``i`` covers steps ``[bin_starts[i], bin_starts[i + 1])`` (the same bins as the layer
    summary of the range)."""

    layer: str
    start: int
    end: int
    bins: int = Field(description="number of bins (at most the requested one, and the steps)")
    bin_starts: list[int] = Field(description="bins + 1 edges, the last one = end")
    cells: list[int] = Field(description="the cells counted, sorted and de-duplicated")
    threshold: float
    threshold_on_grid: bool = Field(
        description="counted from the layer's bit planes (θ on its grid), else from its values"
    )
    mins: list[int] = Field(description="[bin] least number of the cells on at one step")
    maxs: list[int] = Field(description="[bin] greatest number of the cells on at one step")
    means: list[float] = Field(description="[bin] mean number of the cells on per step")


class SearchResult(BaseModel):
    query: list[str] = Field(description="the phrase's tokens")
    token_ids: list[list[int]] = Field(description="vocabulary ids of each token (may be several)")
    total: int = Field(description="occurrences at or after from_step")
    positions: list[int] = Field(
        description="start steps of the first `limit` occurrences, ascending"
    )
    next_from_step: int | None = Field(
        default=None, description="pass as from_step for the next page; absent at the end"
    )


class ContextOptions(BaseModel):
    """What each returned hit carries besides its numbers."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(default=0, ge=0, description="context steps before the hit")
    right: int = Field(default=0, ge=0, description="context steps after the hit")
    tokens: bool = Field(default=True, description="token ids and texts of the context window")
    tracks: list[str] = Field(default_factory=list, description="meta tracks over the window")
    counts: bool = Field(
        default=False, description="per step of the window: how many S1 cells are on"
    )


class MatchRequest(BaseModel):
    """SPEC §2 match. Give either ``cells`` (S1) or a ``range`` ``[start, end)`` from which S1
    is selected server-side (SPEC §2 select with the same threshold and off extents)."""

    model_config = ConfigDict(extra="forbid")

    layer: str
    cells: list[int] | None = Field(
        default=None, min_length=1, description="S1; sorted and de-duplicated by the server"
    )
    range: tuple[int, int] | None = Field(
        default=None, description="[start, end) to select S1 from (inside one sequence)"
    )
    threshold: float = 0.3
    left_off: int = Field(default=1, ge=0, le=10_000)
    right_off: int = Field(default=0, ge=0, le=10_000)
    min_length: int = Field(default=2, ge=1)
    max_length: int | None = Field(default=None, ge=1)
    top_k: int = Field(default=50, ge=1, le=MAX_TOP_K)
    search_start: int | None = Field(default=None, ge=0)
    search_end: int | None = Field(default=None, ge=1)
    stats: bool = False
    context: ContextOptions = Field(
        default_factory=ContextOptions, description="default context of the result pages"
    )

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"threshold must be a finite number, got {v}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> MatchRequest:
        if (self.cells is None) == (self.range is None):
            raise ValueError("give exactly one of `cells` (S1) or `range` ([start, end))")
        if self.range is not None and not 0 <= self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} must satisfy 0 <= start < end")
        return self


class HitContext(BaseModel):
    start: int = Field(description="first step of the context window (clipped to the sequence)")
    end: int
    token_ids: list[int] | None = None
    tokens: list[str] | None = None
    tracks: dict[str, TrackWindow] | None = None
    counts: list[int] | None = Field(default=None, description="S1 cells on, per step")


class HitOut(MatchHit):
    rank: int = Field(description="0-based position in the ranking")
    context: HitContext | None = None


class MatchJobResult(BaseModel):
    query: MatchQuery = Field(description="the query as run (S1 sorted and de-duplicated)")
    selected_from_range: tuple[int, int] | None = Field(
        default=None, description="the range S1 was selected from, if any"
    )
    n_hits: int
    threshold_on_grid: bool
    stats: MatchStats | None = None
    hits: list[HitOut] = Field(description="one page of the ranked hits")
    next_page_token: str | None = Field(default=None, description="absent on the last page")


class MatchJobResource(JobResourceBase):
    """A match job at ``/v1/jobs/{id}`` (the shared job resource; ``progress`` counts shards,
    ``attempts`` shard deliveries). ``result`` holds one page of hits once it succeeded;
    ``links.next`` is the next page."""

    dataset_id: str
    result: MatchJobResult | None = None
