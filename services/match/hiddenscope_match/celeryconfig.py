"""Celery configuration of the match worker, imported lazily by Celery (``config_from_object``)
the first time the app's configuration is needed — never at import of the tasks module."""

from __future__ import annotations

import os

from hiddenscope_service.celery_app import celery_config

from hiddenscope_match.settings import get_settings

_s = get_settings()
_restore = os.environ.get("HIDDENSCOPE_MATCH_UNACKED_RESTORE_INTERVAL")  # tests only

globals().update(
    celery_config(
        broker_url=_s.celery_broker_url,
        queue=_s.queue,
        task_time_limit=_s.task_time_limit,
        visibility_timeout=_s.visibility_timeout,
        unacked_restore_interval=float(_restore) if _restore else None,
    )
)
