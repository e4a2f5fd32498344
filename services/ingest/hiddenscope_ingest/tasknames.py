"""The names both sides of the ingest queue agree on: the job store's prefix, the job kind and
the Celery task names (the API enqueues by name, the worker registers the tasks under them)."""

from __future__ import annotations

STORE_PREFIX = "hiddenscope:ingest"
"""The job store's key prefix of the ingest service's jobs."""

JOB_KIND = "ingest"
"""The kind of every ingest job (ids ``ingest-…``): conversions and track changes."""

TASK_NAME = "ingest.convert"
"""Runs one attempt at a job (a conversion, or a track change redelivered by the reconciler)."""

TRACKS_TASK_NAME = "ingest.tracks"
"""Runs one attempt at a track change (a job whose payload has ``op: tracks``)."""

HELPER_TASK_NAME = "ingest.convert_shards"
"""Helps a running conversion with its layer shards (:mod:`hiddenscope_ingest.shards`)."""

RECONCILE_TASK_NAME = "hiddenscope_ingest.reconcile"
"""One reconciliation pass (:mod:`hiddenscope_ingest.reconcile`)."""

TRACKS_OP = "tracks"
"""``payload["op"]`` of a track change (a conversion has none)."""
