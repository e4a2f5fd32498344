"""Settings base shared by the services.

Each service subclasses :class:`ServiceSettings` with its own ``env_prefix``
(``HIDDENSCOPE_INGEST_``, ``HIDDENSCOPE_MATCH_``) and exposes one cached ``get_settings()``;
nothing is read from the environment or connected at import time::

    class IngestSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_INGEST_")
        max_upload_bytes: int = 10 * 2**30

    @functools.cache
    def get_settings() -> IngestSettings:
        return load_settings(IngestSettings)

:func:`load_settings` turns a wrong or empty value into :class:`SettingsError` naming the
environment variable, so a misconfigured API or worker stops at start with a message such as
``HIDDENSCOPE_MATCH_SHARD_STEPS: Input should be a valid integer`` (values are not echoed: a
Redis URL may hold a password).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)

REDIS_SCHEMES = ("redis", "rediss", "unix")


class SettingsError(ValueError):
    """A setting is wrong or empty; the message names the environment variable(s)."""


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of ``field`` (``HIDDENSCOPE_MATCH_`` + ``SHARD_STEPS``)."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def load_settings(cls: type[S]) -> S:
    """``cls()`` read from the environment; raises :class:`SettingsError` naming every wrong
    variable (``HIDDENSCOPE_INGEST_MAX_FILES: Input should be greater than or equal to 1``)."""
    try:
        return cls()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(x) for x in err["loc"]]
            msg = str(err["msg"]).removeprefix("Value error, ")
            if loc:
                where = env_name(cls, loc[0]) + "".join(f"[{x}]" for x in loc[1:])
                lines.append(f"{where}: {msg}")
            else:
                lines.append(msg)
        raise SettingsError(
            f"the {cls.__name__} are wrong (fix the environment and start again):\n  "
            + "\n  ".join(lines)
        ) from None


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
    max_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="longest synchronous wait for a job (?wait= or Prefer: wait=); more is capped",
    )

    @field_validator("data_root", mode="before")
    @classmethod
    def _data_root_given(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: name the directory of the dataset store")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_well_formed(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path):
            raise ValueError(
                "must be a Redis URL such as redis://host:6379/0 (schemes: "
                + ", ".join(REDIS_SCHEMES)
                + ")"
            )
        return value.strip()

    @field_validator("broker_url")
    @classmethod
    def _broker_url_well_formed(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # empty: the broker is redis_url
        if "://" not in value:
            raise ValueError("must be a Celery broker URL such as redis://host:6379/0")
        return value.strip()

    @model_validator(mode="after")
    def _time_limit_below_visibility(self) -> Self:
        if self.task_time_limit >= self.visibility_timeout:
            cls = type(self)
            raise ValueError(
                f"{env_name(cls, 'task_time_limit')} ({self.task_time_limit}) must be below "
                f"{env_name(cls, 'visibility_timeout')} ({self.visibility_timeout}), else a "
                "running task is delivered a second time"
            )
        return self

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url
