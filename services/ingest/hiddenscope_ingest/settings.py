"""Settings of the ingest service (env prefix ``HIDDENSCOPE_INGEST_``), built lazily."""

from __future__ import annotations

import functools
from pathlib import Path

from hiddenscope_core.layout import Layout
from hiddenscope_service.settings import ServiceSettings, load_settings
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from hiddenscope_ingest.loaders.base import Limits


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="HIDDENSCOPE_INGEST_", extra="ignore")

    upload_dir: Path | None = Field(
        default=None, description="where uploads are spooled; default <data_root>/uploads"
    )
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="server-side directories a JSON ingest request may name (none by default)",
    )
    max_upload_bytes: int = Field(
        default=64 * 2**30, ge=1, description="largest request body (all files together)"
    )
    max_file_bytes: int = Field(default=64 * 2**30, ge=1, description="largest uploaded file")
    max_files: int = Field(default=256, ge=1, description="most files in one upload")
    max_array_bytes: int = Field(
        default=2**40, ge=1, description="largest declared (uncompressed) array"
    )
    max_archive_bytes: int = Field(
        default=64 * 2**30, ge=1, description="most bytes extracted from one archive"
    )
    max_archive_members: int = Field(default=10_000, ge=1)
    max_compression_ratio: float = Field(
        default=200.0, gt=1, description="largest uncompressed/compressed ratio of a member"
    )
    max_vocab_size: int = Field(default=50_000_000, ge=1)
    chunk_bytes: int = Field(
        default=64 * 2**20, ge=2**16, description="bytes of raw values converted per chunk"
    )
    lease_seconds: int = Field(
        default=120, ge=2, description="a worker's job lease, renewed with every chunk"
    )
    shard_steps: int = Field(
        default=1 << 21,
        ge=1,
        description="steps per layer shard of a conversion (rounded up to whole parts); the "
        "shards are written and indexed by every idle ingest worker",
    )
    part_steps: int = Field(
        default=1 << 20,
        ge=1024,
        description="steps per Parquet part file of states (a power of two)",
    )
    max_shard_helpers: int = Field(
        default=64, ge=0, description="most helper tasks a conversion enqueues per phase"
    )
    queue: str = "ingest"
    sandbox: bool = Field(
        default=True,
        description="run the pre-202 check of an upload in a resource-limited child process",
    )
    sandbox_memory_bytes: int = Field(
        default=2 * 2**30, ge=2**24, description="heap (RLIMIT_DATA) the check may add"
    )
    sandbox_cpu_seconds: int = Field(default=60, ge=1, description="CPU time of one check")
    sandbox_timeout_seconds: float = Field(default=120, gt=0, description="wall time of a check")
    validate_text_max_bytes: int = Field(
        default=16 * 2**20,
        ge=0,
        description="text inputs (tokens, CoNLL, FASTA, BED, vocabularies) up to this size in "
        "all are parsed before the 202; larger ones by the worker",
    )
    validate_archive_max_bytes: int = Field(
        default=64 * 2**20,
        ge=0,
        description="archives up to this size are extracted and checked before the 202 (at "
        "most 8x this size is extracted); larger ones by the worker",
    )
    worker_max_data_bytes: int = Field(
        default=0,
        ge=0,
        description="RLIMIT_DATA of each worker pool process (heap; memory maps excluded); "
        "0 = no limit",
    )
    reconcile_interval_seconds: float = Field(
        default=300,
        ge=0,
        description="the API reconciles at startup and then this often (0: never; use the "
        "CLI or the hiddenscope_ingest.reconcile task)",
    )
    requeue_after_seconds: float = Field(
        default=600,
        ge=1,
        description="a job queued this long (or running with an expired lease) is enqueued "
        "again, at most once per this period",
    )
    leftover_after_seconds: float = Field(
        default=3600,
        ge=0,
        description="staging/upload directories of dead or finished jobs unchanged this long "
        "are removed",
    )
    superseded_grace_seconds: float = Field(
        default=24 * 3600,
        ge=0,
        description="a dataset version superseded by a newer one (tracks added or removed) "
        "stays readable this long, then the reconciler removes it",
    )

    @field_validator("part_steps")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two, got {v}")
        return v

    @property
    def layout(self) -> Layout:
        """The paths of the data root (uploads under ``upload_dir`` when it is set)."""
        return Layout(self.data_root, uploads=self.upload_dir)

    @property
    def limits(self) -> Limits:
        """The loaders' limits on what an input may declare or expand to."""
        return Limits(
            max_array_bytes=self.max_array_bytes,
            max_archive_bytes=self.max_archive_bytes,
            max_archive_members=self.max_archive_members,
            max_compression_ratio=self.max_compression_ratio,
            max_vocab_size=self.max_vocab_size,
        )


@functools.cache
def get_settings() -> IngestSettings:
    """The process's settings (read from the environment on first use; raises
    :class:`~hiddenscope_service.settings.SettingsError` naming a wrong variable)."""
    return load_settings(IngestSettings)
