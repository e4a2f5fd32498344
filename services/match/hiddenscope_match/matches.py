"""Match jobs, the API side: build the query of a request (an explicit cell set, or the cells
S1 selects over a range), plan the shards, create the job, post its shards as a part set of the
job workflow and enqueue one ``match.run_shard`` task per shard (payload: the job id and the
shard's bounds, never data); then render the job: its status and a page of its result with the
context of each hit. The worker side is :mod:`hiddenscope_match.worker`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hiddenscope_core.errors import InvalidQuery
from hiddenscope_core.match import plan_shards, prepare
from hiddenscope_core.models import MatchHit, MatchQuery, MatchResult, SelectQuery
from hiddenscope_core.reader import Dataset
from hiddenscope_core.select import on_matrix, select_cells
from hiddenscope_service.job_resource import job_path
from hiddenscope_service.jobs import Job, JobStore, body_hash
from hiddenscope_service.workflow import Parts, Values

from hiddenscope_match.browse import Browse, decode_token, encode_token, texts
from hiddenscope_match.datasets import Datasets
from hiddenscope_match.schemas import (
    ContextOptions,
    HitContext,
    HitOut,
    MatchJobResource,
    MatchJobResult,
    MatchRequest,
)
from hiddenscope_match.settings import MatchSettings

log = logging.getLogger(__name__)

JOB_KIND = "match"
JOB_PREFIX = "hiddenscope:match"
TASK_NAME = "match.run_shard"


def shard_parts(store: JobStore, job_id: str) -> Parts:
    """The shards of match job ``job_id``: parts that drive the job (the first starts it, each
    done one counts as progress, a failed one fails it)."""
    return Parts(store, job_id, "shards", drives_job=True)


def shard_floor(store: JobStore) -> Values:
    """Per job id: the best k-th intersection any finished shard reached (a shared floor that
    lets later shards prune; a maximum, so the order shards finish in does not matter)."""
    return Values(store, "match-floor")


@dataclass(frozen=True)
class ResultView:
    """Which part of a succeeded job's result to show: a page (``page_size`` hits from
    ``page_token``) and the context of each hit (``None``: the context the job asked for)."""

    page_size: int | None = None
    page_token: str | None = None
    context: ContextOptions | None = None


@dataclass
class MatchJobs:
    """Submitting match jobs and rendering them."""

    settings: MatchSettings
    store: JobStore
    datasets: Datasets
    browse: Browse
    enqueue: Callable[[str, int, int, int], None]
    """Sends Celery task ``match.run_shard`` (job id, shard index, lo, hi)."""

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

    def submit(
        self, name_or_id: str, req: MatchRequest, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        ds = self.datasets.get(name_or_id)
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
                shard_parts(self.store, job.id).post(len(shards))
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

    # -- the job resource (a JobBackend of hiddenscope_service.job_resource) --------------------

    @property
    def max_wait_seconds(self) -> float:
        return float(self.settings.max_wait_seconds)

    def job(self, job_id: str) -> Job:
        return self.store.get_of_kind(job_id, JOB_KIND)

    def job_status(self, job_id: str) -> str | None:
        return self.store.status(job_id)

    def cancel(self, job_id: str) -> Job:
        self.job(job_id)
        return self.store.request_cancel(job_id)

    def render_job(self, job: Job, view: ResultView | None) -> MatchJobResource:
        """The job with a page of its result (``view``: which page, which context; ``None``:
        the first page with the job's own context). Raises ``NotFound`` for a context track the
        dataset does not have."""
        view = view or ResultView()
        ctx = view.context
        if ctx is not None and ctx.tracks:
            ds = self.datasets.get(str(job.payload["dataset_id"]))
            for name in ctx.tracks:
                ds.manifest.track(name)
        result = None
        if job.status == "succeeded" and job.result is not None:
            result = self._result_page(job, view.page_size, view.page_token, ctx)
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
            tok = decode_token(page_token, "page_token")
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
            next_page_token=encode_token({"j": job.id, "o": nxt}) if nxt < len(res.hits) else None,
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
            out.tokens = texts(ds.vocab(), ids)
        if ctx.tracks:
            out.tracks = {name: self.browse.track(ds, name, a, b) for name in ctx.tracks}
        if ctx.counts:
            values = ds.values(query.layer)
            on = on_matrix(values[np.asarray(query.cells), a:b], query.threshold)
            out.counts = on.sum(axis=0).tolist()
        return out
