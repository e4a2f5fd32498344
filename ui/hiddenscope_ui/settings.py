"""UI settings (env ``HIDDENSCOPE_UI_*``), built lazily."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_UI_", extra="ignore")

    api_url: str = Field(
        default="http://127.0.0.1:8000", description="the one base URL of the HiddenScope API"
    )
    connect_timeout: float = Field(default=3.0, gt=0, description="seconds")
    read_timeout: float = Field(default=30.0, gt=0, description="seconds per request")
    poll_seconds: float = Field(default=1.0, gt=0, description="job polling interval")
    search_wait_seconds: float = Field(
        default=20.0,
        ge=0,
        description="how long a phrase search retries while the dataset's search index builds",
    )


@lru_cache(maxsize=1)
def get_settings() -> UiSettings:
    return UiSettings()
