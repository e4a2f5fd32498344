"""Settings base shared by the services.

Each service subclasses :class:`ServiceSettings` with its own ``env_prefix``
(``HIDDENSCOPE_INGEST_``, ``HIDDENSCOPE_MATCH_``) and exposes one cached ``get_settings()``;
nothing is read from the environment or connected at import time::

    class IngestSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_INGEST_")
        max_upload_bytes: int = 10 * 2**30

    @functools.cache
    def get_settings() -> IngestSettings:
        return IngestSettings()
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service needs: where the data lives and where Redis is."""

    model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_", extra="ignore")

    data_root: Path = Field(
        default=Path("data"), description="root of the dataset layout (datasets/, staging/, names/)"
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for the job store (and the default Celery broker)",
    )
    broker_url: str | None = Field(default=None, description="Celery broker; defaults to redis_url")
    job_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=24 * 3600,
        description="how long a finished job stays readable (at least 24 h)",
    )
    task_time_limit: int = Field(
        default=3 * 3600, ge=1, description="hard time limit of one task run, seconds"
    )
    visibility_timeout: int = Field(
        default=4 * 3600,
        ge=2,
        description="Redis broker visibility timeout, seconds; must exceed task_time_limit",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="deliveries of one job before it is failed (poison cap)"
    )

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url
