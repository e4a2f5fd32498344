"""Pydantic models shared by the core, the services and the client.

Units: steps are 0-based positions in the concatenated stream of a dataset; every range is
half-open ``[start, end)``. Cells are 0-based column indices of a layer.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
"""Dataset, layer and track names: lower-case, digits, ``._-``, 1-64 characters."""

MAX_TOP_K = 1000

Transform = Literal["none", "tanh"]
StorageDType = Literal["float32", "float16"]
TrackKind = Literal["discrete", "scalar", "topk"]


class LayerInfo(BaseModel):
    """One layer (source) of states: a ``(T, n_cells)`` matrix."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    n_cells: int = Field(ge=1)
    dtype: StorageDType = "float32"
    transform: Transform = "none"
    thresholds: list[float] = Field(
        default_factory=list, description="the threshold grid of the index, ascending"
    )
    kind: str | None = Field(default=None, description="e.g. 'cell' (c_t) or 'hidden' (h_t)")
    value_min: float | None = Field(default=None, description="min finite transformed value")
    value_max: float | None = Field(default=None, description="max finite transformed value")
    value_mean: float | None = None
    nan_count: int = 0


class TrackInfo(BaseModel):
    """A meta track aligned to steps."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: TrackKind
    labels: list[str] | None = Field(default=None, description="label dictionary (discrete)")
    k: int | None = Field(default=None, description="predictions per step (topk)")
    description: str = ""


class SequenceInfo(BaseModel):
    """A declared sequence (document, sentence, chromosome): steps ``[start, end)``."""

    index: int
    name: str
    start: int
    end: int


class DatasetManifest(BaseModel):
    """What a published dataset holds; written once at publication as ``manifest.json``."""

    format_version: int = 1
    id: str
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(
        default=1,
        ge=1,
        description="1 when ingested; a change of the tracks publishes version + 1 (a new id)",
    )
    parent_id: str | None = Field(
        default=None, description="the id of the version this one was made from (None for v1)"
    )
    origin_id: str | None = Field(
        default=None,
        description="the id of version 1 of this dataset (None for version 1 itself): every "
        "version of one dataset has the same origin",
    )
    description: str = ""
    n_steps: int = Field(ge=1)
    n_sequences: int = Field(ge=1)
    vocab_size: int = 0
    has_tokens: bool = False
    layers: list[LayerInfo]
    tracks: list[TrackInfo] = Field(default_factory=list)
    part_steps: int = Field(description="steps per Parquet part file of states")
    created_at: datetime
    sizes: dict[str, int] = Field(default_factory=dict, description="bytes on disk per component")
    provenance: dict[str, Any] = Field(default_factory=dict)

    def layer(self, name: str) -> LayerInfo:
        from hiddenscope_core.errors import NotFound

        for layer in self.layers:
            if layer.name == name:
                return layer
        known = ", ".join(x.name for x in self.layers)
        raise NotFound(f"unknown layer {name!r}; this dataset has: {known}")

    def track(self, name: str) -> TrackInfo:
        from hiddenscope_core.errors import NotFound

        for track in self.tracks:
            if track.name == name:
                return track
        known = ", ".join(x.name for x in self.tracks) or "none"
        raise NotFound(f"unknown track {name!r}; this dataset has: {known}")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


class SelectQuery(BaseModel):
    """SPEC §2 select: cells on over ``[start, end)`` and off ``left_off`` steps before and
    ``right_off`` steps after."""

    layer: str
    start: int = Field(ge=0)
    end: int = Field(ge=1)
    threshold: float = 0.3
    left_off: int = Field(default=1, ge=0, le=10_000)
    right_off: int = Field(default=0, ge=0, le=10_000)
    window_start: int | None = Field(default=None, ge=0, description="default: start - left_off")
    window_end: int | None = Field(default=None, ge=1, description="default: end + right_off")

    @field_validator("threshold")
    @classmethod
    def _threshold_finite(cls, v: float) -> float:
        return _finite(v, "threshold")

    @model_validator(mode="after")
    def _range(self) -> SelectQuery:
        if self.end <= self.start:
            raise ValueError(f"empty range: end ({self.end}) must be > start ({self.start})")
        return self


class SelectResult(BaseModel):
    cells: list[int] = Field(description="S1, ascending")
    window_start: int
    window_end: int
    counts: list[int] = Field(description="per step of the window: how many S1 cells are on")


class MatchQuery(BaseModel):
    """SPEC §2 match."""

    layer: str
    cells: list[int] = Field(min_length=1, description="S1; sorted and de-duplicated here")
    threshold: float = 0.3
    left_off: int = Field(default=1, ge=0, le=10_000)
    right_off: int = Field(default=0, ge=0, le=10_000)
    min_length: int = Field(default=2, ge=1)
    max_length: int | None = Field(default=None, ge=1)
    top_k: int = Field(default=50, ge=1, le=MAX_TOP_K)
    search_start: int | None = Field(
        default=None, ge=0, description="only candidates with search_start <= start"
    )
    search_end: int | None = Field(
        default=None, ge=1, description="only candidates with end <= search_end"
    )
    stats: bool = False

    @field_validator("cells")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError("cell ids must be >= 0")
        return sorted(set(v))

    @field_validator("threshold")
    @classmethod
    def _threshold_finite(cls, v: float) -> float:
        return _finite(v, "threshold")

    @model_validator(mode="after")
    def _lengths(self) -> MatchQuery:
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(
                f"max_length ({self.max_length}) must be >= min_length ({self.min_length})"
            )
        if (
            self.search_start is not None
            and self.search_end is not None
            and self.search_end <= self.search_start
        ):
            raise ValueError("search_end must be > search_start")
        return self


class MatchHit(BaseModel):
    """One ranked candidate run ``[start, end)``."""

    start: int
    end: int
    length: int
    sequence: int = Field(description="index of the sequence holding the run")
    sequence_name: str | None = None
    intersection: int = Field(description="|S1 ∩ S2|")
    union: int = Field(description="|S1 ∪ S2|")
    jaccard: float
    missing: int = Field(description="|S1| - |S1 ∩ S2|")
    extra: int = Field(description="|S2 \\ S1|")
    level: int = Field(description="min over the run of the number of S1 cells on")

    def sort_key(self) -> tuple[int, int, int, int]:
        """SPEC §2 ranking key, ascending."""
        return (-self.intersection, self.union, -self.length, self.start)


class MatchStats(BaseModel):
    """Candidate count and the original tool's two length histograms (index = run length)."""

    n_candidates: int = 0
    length_histogram: list[int] = Field(default_factory=list)
    strict_length_histogram: list[int] = Field(
        default_factory=list, description="candidates with S1 ⊆ S2"
    )


class MatchPartial(BaseModel):
    """The answer of one shard: its own top-k (by the global key) and, with ``stats``, its
    counts. Shards own the candidates that *start* inside them, so partials merge exactly."""

    shard_start: int
    shard_end: int
    hits: list[MatchHit]
    stats: MatchStats | None = None
    threshold_on_grid: bool = True

    def kth_intersection(self, top_k: int) -> int:
        """The intersection of this shard's ``top_k``-th best (0 with fewer hits): a ``floor``
        for the other shards of the same query (see ``match.match_shard``)."""
        return self.hits[top_k - 1].intersection if len(self.hits) >= top_k else 0


class MatchResult(BaseModel):
    query: MatchQuery
    hits: list[MatchHit]
    stats: MatchStats | None = None
    threshold_on_grid: bool = Field(description="answered from the precomputed index")
