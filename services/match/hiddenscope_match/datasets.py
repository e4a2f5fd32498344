"""Published datasets as the match service reads them: by name or id through the core
:class:`~hiddenscope_core.reader.Catalog`, with opened :class:`Dataset` objects cached per thread
(a ``Dataset`` caches Parquet handles, which are not meant to be shared across threads)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from hiddenscope_core.reader import Catalog, Dataset

_CACHED_PER_THREAD = 16


class Datasets:
    def __init__(self, data_root: Path) -> None:
        self.catalog = Catalog(data_root)
        self._local = threading.local()

    def get(self, name_or_id: str) -> Dataset:
        """The published dataset ``name_or_id``. Raises ``NotFound`` (404).

        The name is resolved on every call (a deleted dataset disappears at once); the opened
        dataset is reused while its id is the same (a published dataset never changes)."""
        fresh = self.catalog.get(name_or_id)
        cache: OrderedDict[str, Dataset] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = OrderedDict()
            self._local.cache = cache
        hit = cache.get(fresh.id)
        if hit is not None:
            cache.move_to_end(fresh.id)
            return hit
        cache[fresh.id] = fresh
        while len(cache) > _CACHED_PER_THREAD:
            cache.popitem(last=False)
        return fresh
