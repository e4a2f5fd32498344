"""Phrase search, the API side: the search request (a phrase of token texts or ids → its start
steps, in step order) and the dataset's search index it needs
(:mod:`hiddenscope_match.search_index`), which a worker builds: the API queues the build once
per dataset (a lock), waits a little for it and otherwise answers 503 + ``Retry-After``; a
failed build is reported for ``INDEX_ERROR_TTL`` seconds (a note the worker leaves) before a
search queues it again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hiddenscope_core.errors import InvalidQuery
from hiddenscope_core.reader import Dataset
from hiddenscope_service.jobs import JobStore
from hiddenscope_service.problems import ProblemError
from hiddenscope_service.workflow import Lock, Values

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.schemas import SearchResult
from hiddenscope_match.search_index import (
    TokenIndex,
    build_index,
    index_exists,
    open_index,
    parse_ids,
    phrase_ids,
)
from hiddenscope_match.settings import MatchSettings

log = logging.getLogger(__name__)

INDEX_TASK_NAME = "match.build_search_index"
INDEX_ERROR_TTL = 60
"""Seconds a failed index build is reported (503) before a search enqueues the build again."""


def index_build_lock(store: JobStore) -> Lock:
    """Held (per dataset id) from the API's enqueue of a build until the worker ends it."""
    return Lock(store, "index-build")


def index_errors(store: JobStore) -> Values:
    """Per dataset id: the exception name of a failed build, for ``INDEX_ERROR_TTL`` seconds."""
    return Values(store, "index-error", ttl=INDEX_ERROR_TTL)


@dataclass
class PhraseSearch:
    """Phrase search over the datasets' tokens (the API side)."""

    settings: MatchSettings
    store: JobStore
    datasets: Datasets
    enqueue_index: Callable[[str], None] | None = None
    """Sends Celery task ``match.build_search_index`` (dataset id); ``None``: build in-process
    (only for tools and tests without a worker)."""

    def search(
        self,
        name_or_id: str,
        q: str | None,
        ids: str | None,
        limit: int,
        from_step: int,
        within_sequence: bool,
    ) -> SearchResult:
        ds = self.datasets.get(name_or_id)
        if (q is None) == (ids is None):
            raise InvalidQuery("give exactly one of q (token texts) or ids (token ids)")
        words = (q or ids or "").split()
        if not words:
            raise InvalidQuery("the phrase is empty")
        if len(words) > self.settings.max_phrase_tokens:
            raise InvalidQuery(f"a phrase has at most {self.settings.max_phrase_tokens} tokens")
        phrase = phrase_ids(ds, words) if q is not None else parse_ids(ids or "")
        index = self.index(ds)
        pos = index.find(phrase)
        if within_sequence and pos.size:
            seq_starts = ds.sequence_starts()
            first = np.searchsorted(seq_starts, pos, side="right")
            last = np.searchsorted(seq_starts, pos + len(phrase) - 1, side="right")
            pos = pos[first == last]
        pos = pos[pos >= from_step]
        page = pos[:limit]
        return SearchResult(
            query=words,
            token_ids=[p.tolist() for p in phrase],
            total=int(pos.size),
            positions=page.tolist(),
            next_from_step=int(pos[limit]) if pos.size > limit else None,
        )

    def request_index(self, ds: Dataset) -> None:
        """Make sure the search index of ``ds`` is built or being built: enqueue the Celery
        task once (a :class:`~hiddenscope_service.workflow.Lock` per dataset, expiring after the
        task time limit, dedupes it across API processes; the worker releases it). Raises
        ``ProblemError`` (503) if it cannot be queued."""
        cache = self.settings.layout.cache_dir
        if index_exists(ds, cache):
            return
        if self.enqueue_index is None:
            build_index(ds, cache)
            return
        lock = index_build_lock(self.store)
        try:
            token = lock.acquire(self.settings.task_time_limit + 60, scope=ds.id)
            if token is None:
                return  # queued or running already
            try:
                self.enqueue_index(ds.id)
            except Exception:
                lock.release(ds.id, token)
                raise
        except Exception as exc:
            log.exception("queueing the search index build of %s failed", ds.id)
            raise ProblemError(
                503,
                f"the search index of dataset {ds.name!r} could not be queued for building "
                f"({type(exc).__name__}); retry later",
                headers={"Retry-After": "10"},
            ) from None

    def index(self, ds: Dataset) -> TokenIndex:
        """The phrase index of ``ds``; if it is not built yet, queue its build and wait up to
        ``search_index_wait_seconds`` for it, then answer 503 + ``Retry-After``."""
        cache = self.settings.layout.cache_dir
        index = open_index(ds, cache)
        if index is not None:
            return index
        failed = index_errors(self.store).get(ds.id)
        if failed:
            raise ProblemError(
                503,
                f"building the search index of dataset {ds.name!r} failed ({failed}); it is "
                f"tried again after {INDEX_ERROR_TTL} s",
                headers={"Retry-After": str(INDEX_ERROR_TTL)},
            )
        self.request_index(ds)
        deadline = time.monotonic() + self.settings.search_index_wait_seconds
        delay = 0.01
        while True:
            index = open_index(ds, cache)
            if index is not None:
                return index
            if time.monotonic() >= deadline:
                break
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.2)
        raise ProblemError(
            503,
            f"the search index of dataset {ds.name!r} ({ds.n_steps} steps) is being built "
            "(the first search of a dataset waits for it); retry shortly",
            headers={"Retry-After": "2"},
            dataset_id=ds.id,
        )
