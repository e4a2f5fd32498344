"""Settings of the match service (env prefix ``HIDDENSCOPE_MATCH_``), built lazily."""

from __future__ import annotations

import functools
from pathlib import Path

from hiddenscope_core.layout import Layout
from hiddenscope_service.settings import ServiceSettings, load_settings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class MatchSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_MATCH_", extra="ignore")

    queue: str = "match"
    warm_up: bool = Field(
        default=True,
        description="a worker loads the compiled match kernels at start (about 2 s), so that "
        "its first query is not slower than the others",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="derived per-dataset caches (search index); default <data_root>/cache. "
        "Never inside a published dataset, which is immutable",
    )
    shard_steps: int = Field(
        default=1 << 24, ge=1, description="steps per match shard (one Celery task each)"
    )
    lease_seconds: int = Field(
        default=30,
        ge=2,
        description="a worker's lease on a match shard, renewed by a heartbeat while it runs; "
        "a shard whose worker died is taken over this long after",
    )
    max_shards: int = Field(
        default=100_000, ge=1, description="most shards of one job (shard_steps grows to fit)"
    )
    max_window_steps: int = Field(
        default=100_000, ge=1, description="longest states/tokens/track window"
    )
    max_window_values: int = Field(
        default=1 << 22, ge=1, description="most values (steps x cells) of one states window"
    )
    max_context_steps: int = Field(
        default=1000, ge=0, description="longest left or right context of a match hit"
    )
    max_page_size: int = Field(default=1000, ge=1, description="most hits per result page")
    max_search_results: int = Field(default=10_000, ge=1, description="largest search limit")
    max_phrase_tokens: int = Field(default=64, ge=1, description="longest search phrase")
    max_sequences_page: int = Field(default=10_000, ge=1, description="sequences per info page")
    max_vocab_page: int = Field(default=10_000, ge=1, description="most entries of a vocab page")
    max_summary_values: int = Field(
        default=20_000_000,
        ge=1,
        description="most steps x cells one summary request reduces (more: 422)",
    )
    max_summary_bins: int = Field(default=10_000, ge=1, description="most bins of a summary")
    max_track_summary_steps: int = Field(
        default=1_000_000_000,
        ge=1,
        description="longest range one track summary streams from the track's row groups "
        "(more: 422)",
    )
    search_index_wait_seconds: float = Field(
        default=2.0,
        ge=0,
        description="how long a search waits for a search index being built before it "
        "answers 503 + Retry-After",
    )
    search_index_eager: bool = Field(
        default=True,
        description="start building a dataset's search index when its info is first read",
    )

    @property
    def layout(self) -> Layout:
        """The paths of the data root (the caches under ``cache_dir`` when it is set)."""
        return Layout(self.data_root, cache=self.cache_dir)


@functools.cache
def get_settings() -> MatchSettings:
    """The process's settings (read from the environment on first use; raises
    :class:`~hiddenscope_service.settings.SettingsError` naming a wrong variable)."""
    return load_settings(MatchSettings)
