"""Caps on a process's heap: the sandbox's child (:mod:`hiddenscope_ingest.sandbox`) and, when
``worker_max_data_bytes`` is set, each worker pool process (:mod:`hiddenscope_ingest.tasks`).

``RLIMIT_DATA`` caps heap and anonymous memory but not read-only memory maps of input files
(``RLIMIT_AS`` would count them, and a conversion maps inputs far larger than RAM)."""

from __future__ import annotations

import resource


def _data_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def limit_data(extra_bytes: int) -> None:
    """Cap this process's heap (``RLIMIT_DATA``) at its current size + ``extra_bytes``."""
    want = _data_size() + extra_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
