"""The match service's logic between HTTP and Celery.

API side: resolve datasets, read windows, select, search, submit match jobs (validate, plan the
shards, create the job, then enqueue one ``match.run_shard`` task per shard whose payload is the
job id and the shard's bounds, never data) and render job results with their context.

Worker side (:func:`run_shard`): one shard of one job, idempotent. The shard's partial top-k is
stored in Redis under the job (a re-run overwrites it); the task that records the last shard
merges all partials with the core's ``merge_partials`` (exact) and finishes the job with a
compare-and-set, so a duplicate merge is harmless.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hiddenscope_core.errors import InvalidQuery, NotFound
from hiddenscope_core.match import match_shard, merge_partials, plan_shards, prepare
from hiddenscope_core.models import (
    MatchHit,
    MatchPartial,
    MatchQuery,
    MatchResult,
    SelectQuery,
    SelectResult,
    SequenceInfo,
)
from hiddenscope_core.reader import Dataset
from hiddenscope_core.select import on_matrix, select_cells
from hiddenscope_core.summary import bin_edges
from hiddenscope_core.summary import on_count_summary as on_counts_per_bin
from hiddenscope_service.job_resource import job_path
from hiddenscope_service.jobs import Job, JobStore, body_hash
from hiddenscope_service.problems import ProblemError, problem_from_exception

from hiddenscope_match.datasets import Datasets
from hiddenscope_match.schemas import (
    ContextOptions,
    DatasetInfo,
    HitContext,
    HitOut,
    LayerDetail,
    LayerSummary,
    MatchJobResource,
    MatchJobResult,
    MatchRequest,
    OnCountSummary,
    SearchResult,
    TokensWindow,
    TrackSummary,
    TrackWindow,
    VocabPage,
)
from hiddenscope_match.search import (
    TokenIndex,
    build_index,
    clean_caches,
    index_exists,
    open_index,
    parse_ids,
    phrase_ids,
)
from hiddenscope_match.settings import MatchSettings

log = logging.getLogger(__name__)

JOB_KIND = "match"
TASK_NAME = "match.run_shard"
JOB_PREFIX = "hiddenscope:match"
INDEX_TASK_NAME = "match.build_search_index"
INDEX_ERROR_TTL = 60
"""Seconds a failed index build is reported (503) before a search enqueues the build again."""
SUMMARY_CHUNK_VALUES = 1 << 22
"""Values (cells x steps) read from the memmap and reduced at once by a summary."""


def _index_key(dataset_id: str) -> str:
    return f"{JOB_PREFIX}:index-build:{dataset_id}"


def _index_error_key(dataset_id: str) -> str:
    return f"{JOB_PREFIX}:index-error:{dataset_id}"


def cache_dir_of(settings: MatchSettings) -> Path:
    return settings.cache_dir or settings.data_root / "cache"


# ------------------------------------------------------------------------------ JSON helpers


def finite_list(a: npt.NDArray[Any]) -> list[Any]:
    """``a.tolist()`` with NaN and ±inf as ``None`` (JSON has no non-finite numbers)."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        return list(a.tolist())
    bad = ~np.isfinite(a)
    if not bad.any():
        return list(a.astype(np.float64).tolist())
    obj = a.astype(np.float64).astype(object)
    obj[bad] = None
    return list(obj.tolist())


def _encode_token(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError
        return data
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery(f"{what} is not a token this service issued") from None


# ------------------------------------------------------------------------------ the service


@dataclass
class MatchService:
    settings: MatchSettings
    store: JobStore
    enqueue: Callable[[str, int, int, int], None]
    datasets: Datasets
    enqueue_index: Callable[[str], None] | None = None
    """Sends Celery task ``match.build_search_index`` (dataset id); ``None``: build in-process
    (only for tools and tests without a worker)."""

    # -- info ----------------------------------------------------------------------------------

    def dataset(self, name_or_id: str) -> Dataset:
        return self.datasets.get(name_or_id)

    def info(
        self, name_or_id: str, *, cell_stats: bool, page_size: int, page_token: str | None
    ) -> DatasetInfo:
        ds = self.dataset(name_or_id)
        m = ds.manifest
        if self.settings.search_index_eager and m.has_tokens:
            try:  # a dataset seen for the first time: start its search index now
                self.request_index(ds)
            except ProblemError:
                log.warning("could not queue the search index of %s", ds.id, exc_info=True)
        first = 0
        if page_token:
            tok = _decode_token(page_token, "sequences_page_token")
            if tok.get("d") != ds.id or not isinstance(tok.get("s"), int):
                raise InvalidQuery("sequences_page_token belongs to another dataset or query")
            first = int(tok["s"])
        starts, ends, names = ds.sequence_starts(), ds.sequence_ends(), ds.sequence_names()
        last = min(len(names), first + page_size)
        seqs = [
            SequenceInfo(index=i, name=names[i], start=int(starts[i]), end=int(ends[i]))
            for i in range(first, last)
        ]
        layers = []
        for info in m.layers:
            stats = None
            if cell_stats:
                stats = {k: finite_list(v) for k, v in ds.cell_stats(info.name).items()}
            layers.append(LayerDetail(info=info, cell_stats=stats))
        return DatasetInfo(
            id=m.id,
            name=m.name,
            version=m.version,
            parent_id=m.parent_id,
            description=m.description,
            n_steps=m.n_steps,
            n_sequences=m.n_sequences,
            vocab_size=m.vocab_size,
            has_tokens=m.has_tokens,
            part_steps=m.part_steps,
            created_at=m.created_at,
            layers=layers,
            tracks=list(m.tracks),
            sequences=seqs,
            next_sequences_token=(
                _encode_token({"d": ds.id, "s": last}) if last < len(names) else None
            ),
        )

    # -- windows -------------------------------------------------------------------------------

    def resolve_range(
        self,
        ds: Dataset,
        start: int | None,
        end: int | None,
        sequence: str | None,
        offset: int,
        length: int | None,
    ) -> tuple[int, int]:
        """A window ``[a, b)``: by steps (``start``, ``end``; default 100 steps) or by
        ``sequence`` (name or index) + ``offset`` + ``length`` (default: to the sequence's end).
        Raises ``NotFound`` (sequence) and ``InvalidQuery`` (outside the data, over the cap)."""
        T = ds.n_steps
        if sequence is not None:
            if start is not None or end is not None:
                raise InvalidQuery("give either start/end or sequence/offset/length, not both")
            names = ds.sequence_names()
            if sequence in names:
                i = names.index(sequence)
            elif sequence.isdigit() and int(sequence) < len(names):
                i = int(sequence)
            else:
                raise NotFound(f"no sequence {sequence!r} in dataset {ds.name!r}")
            s_lo, s_hi = int(ds.sequence_starts()[i]), int(ds.sequence_ends()[i])
            a = s_lo + offset
            b = s_hi if length is None else a + length
            if offset < 0 or a >= s_hi or b > s_hi or b <= a:
                raise InvalidQuery(
                    f"offset {offset} and length {length} are outside sequence {names[i]!r} "
                    f"({s_hi - s_lo} steps)"
                )
        else:
            a = 0 if start is None else start
            b = min(T, a + 100) if end is None else end
            if not 0 <= a < b <= T:
                raise InvalidQuery(f"range [{a}, {b}) is not inside [0, {T}) or is empty")
        if b - a > self.settings.max_window_steps:
            raise InvalidQuery(
                f"window of {b - a} steps is over the cap of {self.settings.max_window_steps}"
            )
        return a, b

    def states(
        self, ds: Dataset, layer: str, a: int, b: int, cells: list[int] | None
    ) -> tuple[npt.NDArray[np.float32], list[int]]:
        sel = _cell_list(ds, layer, cells)
        n_values = (b - a) * len(sel)
        if n_values > self.settings.max_window_values:
            raise InvalidQuery(
                f"window of {b - a} steps x {len(sel)} cells = {n_values} values is over the "
                f"cap of {self.settings.max_window_values}; ask for fewer steps or cells"
            )
        values = ds.window(layer, a, b, None if cells is None else np.asarray(sel))
        return values, sel

    def tokens(self, ds: Dataset, a: int, b: int) -> TokensWindow:
        ids = ds.tokens(a, b)
        vocab = ds.vocab()
        return TokensWindow(start=a, end=b, ids=ids.tolist(), texts=_texts(vocab, ids))

    def track(self, ds: Dataset, name: str, a: int, b: int) -> TrackWindow:
        info = ds.manifest.track(name)
        data = ds.track(name, a, b)
        out = TrackWindow(name=name, kind=info.kind, start=a, end=b, labels=info.labels)
        if "label" in data:
            out.label = data["label"].tolist()
        if "value" in data:
            out.value = finite_list(data["value"])
        if "ids" in data:
            out.ids = data["ids"].tolist()
            out.scores = finite_list(data["scores"])
            vocab = ds.vocab()
            if vocab:
                out.texts = _text_matrix(vocab, data["ids"])
        return out

    def vocab(self, ds: Dataset, offset: int, limit: int, ids: list[int] | None) -> VocabPage:
        """Texts of a page of vocabulary ids, or of the ``ids`` given (any order, repeats
        kept). 404 for a dataset without a vocabulary."""
        vocab = ds.vocab()
        if not vocab:
            raise NotFound(f"dataset {ds.name!r} has no vocabulary")
        cap = self.settings.max_vocab_page
        if ids is not None:
            if len(ids) > cap:
                raise InvalidQuery(f"at most {cap} ids per request")
            arr = np.asarray(ids, dtype=np.int64)
            return VocabPage(vocab_size=len(vocab), ids=ids, texts=_texts(vocab, arr))
        end = min(len(vocab), offset + min(limit, cap))
        return VocabPage(
            vocab_size=len(vocab),
            ids=list(range(offset, end)) if offset < end else [],
            texts=vocab[offset:end],
            next_offset=end if end < len(vocab) else None,
        )

    def summary(
        self,
        ds: Dataset,
        layer: str,
        start: int | None,
        end: int | None,
        bins: int,
        cells: list[int] | None,
    ) -> LayerSummary:
        """Per-bin min / max / mean of each cell over ``[start, end)`` (default: all steps),
        reduced with numpy ``reduceat`` from the column-major values memmap, NaN-aware (a bin
        without finite values is ``null``). 422 over ``max_summary_values`` steps x cells."""
        sel = _cell_list(ds, layer, cells)
        a, b = _summary_range(ds, start, end)
        n = b - a
        cap = self.settings.max_summary_values
        if n * len(sel) > cap:
            raise InvalidQuery(
                f"summary of {n} steps x {len(sel)} cells = {n * len(sel)} values is over the "
                f"cap of {cap}; ask for fewer steps or cells"
            )
        nb = self._summary_bins(bins, n)
        if nb * len(sel) > self.settings.max_window_values:
            raise InvalidQuery(
                f"{nb} bins x {len(sel)} cells is over the cap of "
                f"{self.settings.max_window_values} values; ask for fewer bins or cells"
            )
        edges = bin_edges(a, b, nb)
        offsets = edges[:-1] - a
        nb = int(offsets.shape[0])
        values = ds.values(layer)
        mins = np.empty((nb, len(sel)), np.float32)
        maxs = np.empty((nb, len(sel)), np.float32)
        means = np.empty((nb, len(sel)), np.float32)
        per = max(1, SUMMARY_CHUNK_VALUES // n)
        sel_arr = np.asarray(sel, dtype=np.intp)
        for j in range(0, len(sel), per):
            idx = sel_arr[j : j + per]
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            rows = values[lo:hi, a:b] if hi - lo == idx.size else values[idx, a:b]
            block = np.asarray(rows, dtype=np.float32)
            # fmin/fmax skip NaN (NaN only where a bin has no number at all)
            mins[:, j : j + idx.size] = np.fmin.reduceat(block, offsets, axis=1).T
            maxs[:, j : j + idx.size] = np.fmax.reduceat(block, offsets, axis=1).T
            finite = np.isfinite(block)
            count = np.add.reduceat(finite, offsets, axis=1, dtype=np.int64)
            total = np.add.reduceat(
                np.where(finite, block, np.float32(0)), offsets, axis=1, dtype=np.float64
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                means[:, j : j + idx.size] = np.where(count > 0, total / count, np.nan).T
        return LayerSummary.model_construct(
            layer=layer,
            start=a,
            end=b,
            bins=nb,
            bin_starts=[int(x) for x in edges],
            cells=sel,
            mins=finite_list(mins),
            maxs=finite_list(maxs),
            means=finite_list(means),
        )

    def _summary_bins(self, bins: int, n: int) -> int:
        """The bins of a summary of ``n`` steps: ``min(bins, n)``; 422 over the cap."""
        if bins > self.settings.max_summary_bins:
            raise InvalidQuery(f"bins is at most {self.settings.max_summary_bins}")
        return min(bins, n)

    def track_summary(
        self, ds: Dataset, name: str, start: int | None, end: int | None, bins: int
    ) -> TrackSummary:
        """A meta track over ``[start, end)`` (default: all steps) per bin, streamed by the
        core from the track's row groups (``Dataset.track_summary``). 404 for an unknown track;
        422 for a range outside the data, over ``max_track_summary_steps``, bins over
        ``max_summary_bins``, or bins x labels over ``max_window_values``."""
        info = ds.manifest.track(name)
        a, b = _summary_range(ds, start, end)
        n = b - a
        cap = self.settings.max_track_summary_steps
        if n > cap:
            raise InvalidQuery(
                f"track summary of {n} steps is over the cap of {cap} steps; ask for fewer steps"
            )
        nb = self._summary_bins(bins, n)
        n_labels = len(info.labels or [])
        if info.kind == "discrete" and nb * (n_labels + 1) > self.settings.max_window_values:
            raise InvalidQuery(
                f"{nb} bins x {n_labels + 1} label counts is over the cap of "
                f"{self.settings.max_window_values} values; ask for fewer bins"
            )
        edges, got = ds.track_summary(name, a, b, nb)
        out = TrackSummary.model_construct(
            name=name,
            kind=info.kind,
            start=a,
            end=b,
            bins=int(edges.size - 1),
            bin_starts=[int(x) for x in edges],
            labels=info.labels,
            label_counts=None,
            unlabelled=None,
            mins=None,
            maxs=None,
            means=None,
            counts=None,
            mode_ids=None,
            mode_counts=None,
            mode_texts=None,
        )
        if info.kind == "discrete":
            out.label_counts = got["label_counts"].tolist()
            out.unlabelled = got["unlabelled"].tolist()
        elif info.kind == "scalar":
            out.mins = finite_list(got["mins"])
            out.maxs = finite_list(got["maxs"])
            out.means = finite_list(got["means"])
            out.counts = got["counts"].tolist()
        else:
            out.mode_ids = got["mode_ids"].tolist()
            out.mode_counts = got["mode_counts"].tolist()
            vocab = ds.vocab()
            if vocab:
                out.mode_texts = _texts(vocab, got["mode_ids"])
        return out

    def on_count_summary(
        self,
        ds: Dataset,
        layer: str,
        cells: list[int] | None,
        threshold: float,
        start: int | None,
        end: int | None,
        bins: int,
    ) -> OnCountSummary:
        """Per bin of ``[start, end)`` (default: all steps): min / max / mean of how many of
        ``cells`` are on at ``threshold`` — from the bit planes when θ is on the layer's grid,
        else from the values (core ``summary.on_count_summary``, in chunks). 422 for cells or a
        range outside the data, a non-finite θ, bins over ``max_summary_bins``, and over the
        work cap: steps x cells ≤ ``max_summary_values`` off the grid (values read), ≤ 64 x
        ``max_summary_values`` on it (plane words read, 64 steps each)."""
        if cells is None:
            raise InvalidQuery("cells is required: the cell ids to count, e.g. cells=3,7,11")
        sel = _cell_list(ds, layer, cells)
        if not math.isfinite(threshold):
            raise InvalidQuery(f"threshold must be a finite number, got {threshold}")
        a, b = _summary_range(ds, start, end)
        n = b - a
        on_grid = ds.grid_index(layer, threshold) is not None
        cap = self.settings.max_summary_values * (64 if on_grid else 1)
        if n * len(sel) > cap:
            where = "on" if on_grid else "off"
            raise InvalidQuery(
                f"on-count summary of {n} steps x {len(sel)} cells = {n * len(sel)} is over "
                f"the cap of {cap} for a threshold {where} the layer's grid "
                f"({ds.thresholds(layer)}); ask for fewer steps or cells"
                + ("" if on_grid else ", or use a threshold of the grid")
            )
        nb = self._summary_bins(bins, n)
        got = on_counts_per_bin(ds, layer, sel, threshold, a, b, nb)
        return OnCountSummary.model_construct(
            layer=layer,
            start=a,
            end=b,
            bins=int(got.edges.size - 1),
            bin_starts=[int(x) for x in got.edges],
            cells=got.cells,
            threshold=threshold,
            threshold_on_grid=got.on_grid,
            mins=got.mins.tolist(),
            maxs=got.maxs.tolist(),
            means=got.means.tolist(),
        )

    # -- select and search ---------------------------------------------------------------------

    def select(self, name_or_id: str, query: SelectQuery) -> SelectResult:
        return select_cells(self.dataset(name_or_id), query)

    def search(
        self,
        name_or_id: str,
        q: str | None,
        ids: str | None,
        limit: int,
        from_step: int,
        within_sequence: bool,
    ) -> SearchResult:
        ds = self.dataset(name_or_id)
        if (q is None) == (ids is None):
            raise InvalidQuery("give exactly one of q (token texts) or ids (token ids)")
        words = (q or ids or "").split()
        if not words:
            raise InvalidQuery("the phrase is empty")
        if len(words) > self.settings.max_phrase_tokens:
            raise InvalidQuery(f"a phrase has at most {self.settings.max_phrase_tokens} tokens")
        phrase = phrase_ids(ds, words) if q is not None else parse_ids(ids or "")
        index = self.search_index(ds)
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
        task once (a Redis ``SET NX`` key, expiring after the task time limit, dedupes it
        across API processes). Raises ``ProblemError`` (503) if it cannot be queued."""
        cache = cache_dir_of(self.settings)
        if index_exists(ds, cache):
            return
        if self.enqueue_index is None:
            build_index(ds, cache)
            return
        key = _index_key(ds.id)
        client = self.store.client
        try:
            if not client.set(key, "1", nx=True, ex=self.settings.task_time_limit + 60):
                return  # queued or running already
            try:
                self.enqueue_index(ds.id)
            except Exception:
                client.delete(key)
                raise
        except Exception as exc:
            log.exception("queueing the search index build of %s failed", ds.id)
            raise ProblemError(
                503,
                f"the search index of dataset {ds.name!r} could not be queued for building "
                f"({type(exc).__name__}); retry later",
                headers={"Retry-After": "10"},
            ) from None

    def search_index(self, ds: Dataset) -> TokenIndex:
        """The phrase index of ``ds``; if it is not built yet, queue its build and wait up to
        ``search_index_wait_seconds`` for it, then answer 503 + ``Retry-After``."""
        cache = cache_dir_of(self.settings)
        index = open_index(ds, cache)
        if index is not None:
            return index
        raw = self.store.client.get(_index_error_key(ds.id))
        if raw:
            failed = raw.decode() if isinstance(raw, bytes) else str(raw)
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

    # -- match jobs ----------------------------------------------------------------------------

    def build_query(self, ds: Dataset, req: MatchRequest) -> MatchQuery:
        fields = req.model_dump(exclude={"cells", "range", "context"})
        cells = req.cells
        if req.range is not None:
            a, b = req.range
            sel = select_cells(
                ds,
                SelectQuery(
                    layer=req.layer,
                    start=a,
                    end=b,
                    threshold=req.threshold,
                    left_off=req.left_off,
                    right_off=req.right_off,
                    window_start=a,
                    window_end=a + 1,
                ),
            )
            if not sel.cells:
                raise InvalidQuery(
                    f"no cell of layer {req.layer!r} is on over [{a}, {b}) and off around it at "
                    f"threshold {req.threshold}; choose another range or threshold"
                )
            cells = sel.cells
        try:
            return MatchQuery(cells=cells, **fields)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise InvalidQuery(str(exc)) from None

    def submit_match(
        self, name_or_id: str, req: MatchRequest, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        ds = self.dataset(name_or_id)
        digest = body_hash(ds.id, req.model_dump(mode="json"))
        if idempotency_key:
            old = self.store.lookup_idempotent(idempotency_key, digest)
            if old is not None:
                return old, False
        if req.context.tracks:
            for name in req.context.tracks:
                ds.manifest.track(name)
        self._check_context(req.context)
        query = self.build_query(ds, req)
        ctx = prepare(ds, query)  # validates the layer, cells and search range
        span = ctx.search_end - ctx.search_start
        shard_steps = max(self.settings.shard_steps, -(-span // self.settings.max_shards))
        shards = plan_shards(ds, query, shard_steps)
        payload = {
            "dataset_id": ds.id,
            "query": query.model_dump(mode="json"),
            "selected_from_range": list(req.range) if req.range else None,
            "context": req.context.model_dump(mode="json"),
            "shard_steps": shard_steps,
            "n_shards": len(shards),
        }
        job, created = self.store.create(
            JOB_KIND,
            payload,
            idempotency_key=idempotency_key,
            request_hash=digest,
            progress_total=len(shards),
        )
        if created:
            try:
                for i, (lo, hi) in enumerate(shards):
                    self.enqueue(job.id, i, lo, hi)
            except Exception as exc:
                log.exception("enqueueing the shards of job %s failed", job.id)
                self.store.fail(
                    job.id,
                    {
                        "type": "about:blank",
                        "title": "Service Unavailable",
                        "status": 503,
                        "detail": f"the job could not be queued: {type(exc).__name__}",
                    },
                )
                raise
        return job, created

    def _check_context(self, ctx: ContextOptions) -> None:
        cap = self.settings.max_context_steps
        if ctx.left > cap or ctx.right > cap:
            raise InvalidQuery(f"context left/right are at most {cap} steps")

    def job(self, job_id: str) -> Job:
        return self.store.get_of_kind(job_id, JOB_KIND)

    def cancel(self, job_id: str) -> Job:
        self.job(job_id)
        return self.store.request_cancel(job_id)

    def render_job(
        self,
        job: Job,
        *,
        page_size: int | None,
        page_token: str | None,
        context: ContextOptions | None,
    ) -> MatchJobResource:
        result = None
        if job.status == "succeeded" and job.result is not None:
            result = self._result_page(job, page_size, page_token, context)
        base = MatchJobResource.common(job)
        if result is not None and result.next_page_token:
            base["links"]["next"] = f"{job_path(job.id)}?page_token={result.next_page_token}"
        return MatchJobResource(
            **base, dataset_id=str(job.payload.get("dataset_id", "")), result=result
        )

    def _result_page(
        self,
        job: Job,
        page_size: int | None,
        page_token: str | None,
        context: ContextOptions | None,
    ) -> MatchJobResult:
        assert job.result is not None
        res = MatchResult.model_validate(job.result)
        offset = 0
        if page_token:
            tok = _decode_token(page_token, "page_token")
            if tok.get("j") != job.id or not isinstance(tok.get("o"), int) or tok["o"] < 0:
                raise InvalidQuery("page_token belongs to another job")
            offset = int(tok["o"])
        size = min(page_size or len(res.hits) or 1, self.settings.max_page_size)
        page = res.hits[offset : offset + size]
        ctx = context or ContextOptions.model_validate(job.payload.get("context") or {})
        self._check_context(ctx)
        hits = [HitOut(rank=offset + i, **h.model_dump()) for i, h in enumerate(page)]
        want = ctx.left or ctx.right or ctx.tracks or ctx.counts or ctx.tokens
        if hits and want:
            ds = self.datasets.get(str(job.payload["dataset_id"]))
            for h in hits:
                h.context = self._context(ds, res.query, h, ctx)
        nxt = offset + size
        sel = job.payload.get("selected_from_range")
        return MatchJobResult(
            query=res.query,
            selected_from_range=tuple(sel) if sel else None,
            n_hits=len(res.hits),
            threshold_on_grid=res.threshold_on_grid,
            stats=res.stats,
            hits=hits,
            next_page_token=_encode_token({"j": job.id, "o": nxt}) if nxt < len(res.hits) else None,
        )

    def _context(
        self, ds: Dataset, query: MatchQuery, hit: MatchHit, ctx: ContextOptions
    ) -> HitContext:
        s_lo = int(ds.sequence_starts()[hit.sequence])
        s_hi = int(ds.sequence_ends()[hit.sequence])
        a, b = max(s_lo, hit.start - ctx.left), min(s_hi, hit.end + ctx.right)
        out = HitContext(start=a, end=b)
        if ctx.tokens and ds.manifest.has_tokens:
            ids = ds.tokens(a, b)
            out.token_ids = ids.tolist()
            out.tokens = _texts(ds.vocab(), ids)
        if ctx.tracks:
            out.tracks = {name: self.track(ds, name, a, b) for name in ctx.tracks}
        if ctx.counts:
            values = ds.values(query.layer)
            on = on_matrix(values[np.asarray(query.cells), a:b], query.threshold)
            out.counts = on.sum(axis=0).tolist()
        return out


def _texts(vocab: list[str], ids: npt.NDArray[np.integer]) -> list[str]:
    n = len(vocab)
    return [vocab[i] if 0 <= i < n else "" for i in ids.tolist()]


def _text_matrix(vocab: list[str], ids: npt.NDArray[np.integer]) -> list[list[str]]:
    """``ids`` ``(n, K)`` → their texts (``""`` outside the vocabulary)."""
    table = np.asarray([*vocab, ""], dtype=object)
    n = len(vocab)
    safe = np.where((ids >= 0) & (ids < n), ids, n)
    return [[str(x) for x in row] for row in table[safe].tolist()]


def _summary_range(ds: Dataset, start: int | None, end: int | None) -> tuple[int, int]:
    """``[start, end)`` of a summary (default: all steps). Raises ``InvalidQuery``."""
    T = ds.n_steps
    a = 0 if start is None else start
    b = T if end is None else end
    if not 0 <= a < b <= T:
        raise InvalidQuery(f"range [{a}, {b}) is not inside [0, {T}) or is empty")
    return a, b


def _cell_list(ds: Dataset, layer: str, cells: list[int] | None) -> list[int]:
    """Sorted, de-duplicated cells of ``layer`` (all by default). Raises ``InvalidQuery``."""
    info = ds.layer(layer)
    sel = sorted(set(cells)) if cells is not None else list(range(info.n_cells))
    if not sel:
        raise InvalidQuery("cells must name at least one cell")
    bad = [c for c in sel if not 0 <= c < info.n_cells]
    if bad:
        raise InvalidQuery(
            f"cells {bad[:10]} are outside layer {layer!r} (cells 0..{info.n_cells - 1})"
        )
    return sel


# ------------------------------------------------------------------------------ worker side


def run_shard(job_id: str, part: int, lo: int, hi: int, store: JobStore, datasets: Datasets) -> str:
    """Run shard ``part`` (steps ``[lo, hi)``) of match job ``job_id``; merge and finish the job
    if it is the last one. Idempotent; returns what happened (for logs)."""
    begin = store.begin_part(job_id, part)
    if begin.outcome == "cancel":
        store.cancel_now(job_id)
        return "cancelled"
    if begin.outcome != "run":
        return begin.outcome
    job = store.get(job_id)
    t0 = time.perf_counter()
    try:
        ds = datasets.get(str(job.payload["dataset_id"]))
        query = MatchQuery.model_validate(job.payload["query"])
        # shards finished earlier tell how many shared cells the global top k reaches at least
        partial = match_shard(ds, query, lo, hi, floor=_shard_floor(store, job_id))
    except Exception as exc:  # a shard error fails the whole job, with its problem
        if not isinstance(exc, (InvalidQuery, NotFound)):
            log.exception("shard %d [%d, %d) of job %s failed", part, lo, hi, job_id)
        store.fail(job_id, problem_from_exception(exc).model_dump(exclude_none=True))
        return "failed"
    _raise_shard_floor(store, job_id, partial.kth_intersection(query.top_k))
    log.info("job %s shard %d [%d, %d) in %.3fs", job_id, part, lo, hi, time.perf_counter() - t0)
    status, done, total = store.finish_part(job_id, part, partial.model_dump_json())
    if status == "running" and done >= total:
        return merge_job(job_id, query, store)
    return "shard-done"


def build_search_index(
    dataset_id: str, store: JobStore, datasets: Datasets, settings: MatchSettings
) -> str:
    """Worker side of ``match.build_search_index``: build the dataset's phrase index (unless it
    exists), record a failure for the API to report, then remove the caches of datasets that no
    longer exist. Idempotent; returns what happened (for logs)."""
    cache = cache_dir_of(settings)
    t0 = time.perf_counter()
    outcome = "gone"
    try:
        ds = datasets.get(dataset_id)
        outcome = "built" if build_index(ds, cache) else "exists"
        store.client.delete(_index_error_key(dataset_id))
        log.info("search index of %s: %s in %.3fs", ds.id, outcome, time.perf_counter() - t0)
    except NotFound:
        outcome = "gone"  # deleted meanwhile, or no tokens
    except Exception as exc:
        log.exception("building the search index of %s failed", dataset_id)
        store.client.set(_index_error_key(dataset_id), type(exc).__name__, ex=INDEX_ERROR_TTL)
        outcome = "failed"
    finally:
        store.client.delete(_index_key(dataset_id))
        try:
            live = {m.id for m in datasets.catalog.list()}
            removed = clean_caches(cache, live)
            if removed:
                log.info("removed the caches of deleted datasets %s", removed)
        except Exception:
            log.exception("cleaning the caches under %s failed", cache)
    return outcome


def _floor_key(store: JobStore, job_id: str) -> str:
    return f"{store.prefix}:match-floor:{job_id}"


def _shard_floor(store: JobStore, job_id: str) -> int:
    """The best k-th intersection any finished shard of the job reached (0 if none)."""
    score = store.client.zscore(_floor_key(store, job_id), "floor")
    return int(score) if score is not None else 0


def _raise_shard_floor(store: JobStore, job_id: str, value: int) -> None:
    """Raise the job's shard floor to ``value`` (a sorted set with ``GT`` keeps the maximum
    atomically, whatever order the shards finish in)."""
    if value > 0:
        key = _floor_key(store, job_id)
        store.client.zadd(key, {"floor": value}, gt=True)
        store.client.expire(key, store.ttl_seconds)


def merge_job(job_id: str, query: MatchQuery, store: JobStore) -> str:
    """Merge the recorded partials of a job whose shards are all done and finish it."""
    job = store.get(job_id)
    parts = store.parts(job_id)
    if len(parts) < job.progress.total:
        return "shard-done"
    partials = [MatchPartial.model_validate_json(parts[i]) for i in sorted(parts)]
    result = merge_partials(query, partials)
    moved = store.transition(
        job_id, ("running",), "succeeded", result=result.model_dump(mode="json")
    )
    if moved:
        store.drop_parts(job_id)
        store.client.delete(_floor_key(store, job_id))
    return "merged" if moved else "merged-elsewhere"
