"""HTTP routes of the match service (``/v1``). HTTP only: parsing, status codes, headers,
content negotiation; everything else is in :mod:`hiddenscope_match.browse`,
:mod:`hiddenscope_match.search` and :mod:`hiddenscope_match.matches`.

Paths (beside the ingest service behind one gateway, which owns ``/v1/datasets`` and
``/v1/datasets/{name_or_id}``): dataset sub-resources
``/v1/datasets/{name_or_id}/{info,layers/..,tokens,vocab,tracks/..,select,search,matches}`` and
match jobs at the job resource both services share, ``/v1/jobs/{id}`` (ids ``match-…``; the
gateway routes them here by that prefix): :data:`job_routes`, built by the shared
:func:`~hiddenscope_service.job_resource.job_router`.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import numpy as np
import orjson
import pyarrow as pa
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from hiddenscope_core.errors import InvalidQuery
from hiddenscope_core.models import SelectQuery, SelectResult
from hiddenscope_service.job_resource import (
    IdempotencyKey,
    job_path,
    job_router,
    wait_seconds,
    wait_until_terminal,
)
from hiddenscope_service.problems import problem_responses

from hiddenscope_match.browse import Browse
from hiddenscope_match.matches import MatchJobs, ResultView
from hiddenscope_match.schemas import (
    ARROW_STREAM,
    ContextOptions,
    DatasetInfo,
    LayerSummary,
    MatchJobResource,
    MatchRequest,
    OnCountSummary,
    SearchResult,
    StatesWindow,
    TokensWindow,
    TrackSummary,
    TrackWindow,
    VocabPage,
)
from hiddenscope_match.search import PhraseSearch

router = APIRouter(prefix="/v1")


def get_browse(request: Request) -> Browse:
    browse: Browse = request.app.state.browse
    return browse


def get_phrase_search(request: Request) -> PhraseSearch:
    search: PhraseSearch = request.app.state.search
    return search


def get_matches(request: Request) -> MatchJobs:
    matches: MatchJobs = request.app.state.matches
    return matches


Browsing = Annotated[Browse, Depends(get_browse)]
Search = Annotated[PhraseSearch, Depends(get_phrase_search)]
Matches = Annotated[MatchJobs, Depends(get_matches)]
DatasetRef = Annotated[str, Path(description="dataset name or id", max_length=200)]
LayerRef = Annotated[str, Path(description="layer name", max_length=200)]
StartQ = Annotated[int | None, Query(ge=0, description="first step (default 0)")]
EndQ = Annotated[int | None, Query(ge=1, description="end step, exclusive (default start+100)")]
SequenceQ = Annotated[
    str | None, Query(max_length=200, description="a sequence name or index (instead of steps)")
]
OffsetQ = Annotated[int, Query(ge=0, description="steps into the sequence")]
LengthQ = Annotated[
    int | None, Query(ge=1, description="window length (default: to the sequence's end)")
]
PageSize = Annotated[int | None, Query(ge=1, description="hits per page (default: all)")]
PageToken = Annotated[str | None, Query(max_length=2000, description="from next_page_token")]
ContextLeft = Annotated[int | None, Query(ge=0, description="context steps before each hit")]
ContextRight = Annotated[int | None, Query(ge=0, description="context steps after each hit")]
ContextTracks = Annotated[
    str | None, Query(max_length=2000, description="comma-separated meta tracks over the context")
]
ContextCounts = Annotated[
    bool | None, Query(description="per-step counts of S1 cells on over the context")
]
ContextTokens = Annotated[bool | None, Query(description="token ids and texts of the context")]

_CELLS = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*$")


def _parse_cells(cells: str | None) -> list[int] | None:
    if cells is None:
        return None
    if not _CELLS.match(cells):
        raise InvalidQuery("cells must be comma-separated cell ids, e.g. cells=0,5,17")
    return [int(x) for x in cells.split(",")]


def _context(
    left: int | None,
    right: int | None,
    tracks: str | None,
    counts: bool | None,
    tokens: bool | None,
) -> ContextOptions | None:
    """Context options from query parameters (``None`` if none was given: the job's own)."""
    if left is None and right is None and tracks is None and counts is None and tokens is None:
        return None
    return ContextOptions(
        left=left or 0,
        right=right or 0,
        tracks=[t for t in (tracks or "").split(",") if t],
        counts=bool(counts),
        tokens=True if tokens is None else tokens,
    )


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """A JSON response built here, not by FastAPI (large windows skip response-model
    validation), by orjson: numpy arrays are written directly (float32 values as the shortest
    decimal that reads back as the same float32; NaN and ±inf as ``null``), about 35x faster
    than ``json.dumps`` of their lists for a 500 x 1024 window."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


@router.get(
    "/datasets/{name_or_id}/info",
    response_model=DatasetInfo,
    summary="Layers, sizes, threshold grids, per-cell statistics, sequences (paged) and tracks",
    responses=problem_responses(404, 422),
)
def get_info(
    name_or_id: DatasetRef,
    browse: Browsing,
    cell_stats: Annotated[bool, Query(description="include per-cell statistics")] = True,
    sequences_page_size: Annotated[int, Query(ge=1, description="sequences per page")] = 1000,
    sequences_page_token: Annotated[str | None, Query(max_length=2000)] = None,
) -> DatasetInfo:
    size = min(sequences_page_size, browse.settings.max_sequences_page)
    return browse.info(
        name_or_id, cell_stats=cell_stats, page_size=size, page_token=sequences_page_token
    )


@router.get(
    "/datasets/{name_or_id}/layers/{layer}/states",
    response_model=StatesWindow,
    summary="Transformed values of a window (JSON, or Arrow IPC stream on Accept)",
    responses={
        **problem_responses(404, 422),
        200: {
            "description": "JSON, or with `Accept: application/vnd.apache.arrow.stream` one "
            "record batch: `step` int64 and `values` fixed_size_list<float32>[n cells] (schema "
            "metadata: layer, cells as JSON)",
            "content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
def get_states(
    request: Request,
    name_or_id: DatasetRef,
    layer: LayerRef,
    browse: Browsing,
    start: StartQ = None,
    end: EndQ = None,
    sequence: SequenceQ = None,
    offset: OffsetQ = 0,
    length: LengthQ = None,
    cells: Annotated[
        str | None, Query(max_length=200_000, description="comma-separated cell ids (default all)")
    ] = None,
) -> Response:
    ds = browse.dataset(name_or_id)
    ds.layer(layer)
    a, b = browse.resolve_range(ds, start, end, sequence, offset, length)
    values, sel = browse.states(ds, layer, a, b, _parse_cells(cells))
    if ARROW_STREAM in request.headers.get("accept", ""):
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "step": pa.array(np.arange(a, b, dtype=np.int64)),
                "values": pa.FixedSizeListArray.from_arrays(flat, len(sel)),
            }
        ).replace_schema_metadata({"layer": layer, "cells": json.dumps(sel)})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)
    body = {
        "layer": layer,
        "start": a,
        "end": b,
        "sequence": ds.sequence_of(a),
        "cells": sel,
        "values": np.ascontiguousarray(values),
    }
    return _json(body)


SummaryStartQ = Annotated[int | None, Query(ge=0, description="first step (default 0)")]
SummaryEndQ = Annotated[
    int | None, Query(ge=1, description="end step, exclusive (default: the last step)")
]
BinsQ = Annotated[int, Query(ge=1, description="number of bins (at most the steps)")]


@router.get(
    "/datasets/{name_or_id}/layers/{layer}/summary",
    response_model=LayerSummary,
    summary="Per-bin min, max and mean of each cell over a long range (zoomed-out views)",
    responses=problem_responses(404, 422),
)
def get_summary(
    name_or_id: DatasetRef,
    layer: LayerRef,
    browse: Browsing,
    start: SummaryStartQ = None,
    end: SummaryEndQ = None,
    bins: BinsQ = 500,
    cells: Annotated[
        str | None, Query(max_length=200_000, description="comma-separated cell ids (default all)")
    ] = None,
) -> Response:
    ds = browse.dataset(name_or_id)
    out = browse.summary(ds, layer, start, end, bins, _parse_cells(cells))
    return _json(out.model_dump(mode="json"))


@router.get(
    "/datasets/{name_or_id}/layers/{layer}/on-count/summary",
    response_model=OnCountSummary,
    summary="Per-bin min, max and mean of how many of the given cells are on (zoomed-out views)",
    description="Counted from the layer's bit planes when `threshold` is on its grid, else "
    "from its values; streamed in chunks. The bins are those of the layer summary of the same "
    "range.",
    responses=problem_responses(404, 422),
)
def get_on_count_summary(
    name_or_id: DatasetRef,
    layer: LayerRef,
    browse: Browsing,
    cells: Annotated[
        str, Query(max_length=200_000, description="comma-separated cell ids to count (S1)")
    ],
    threshold: Annotated[float, Query(description="a cell is on where v >= threshold")] = 0.3,
    start: SummaryStartQ = None,
    end: SummaryEndQ = None,
    bins: BinsQ = 500,
) -> Response:
    ds = browse.dataset(name_or_id)
    out = browse.on_count_summary(ds, layer, _parse_cells(cells), threshold, start, end, bins)
    return _json(out.model_dump(mode="json"))


@router.get(
    "/datasets/{name_or_id}/vocab",
    response_model=VocabPage,
    summary="Vocabulary texts: a page of ids (offset, limit) or the ids asked for",
    responses=problem_responses(404, 422),
)
def get_vocab(
    name_or_id: DatasetRef,
    browse: Browsing,
    offset: Annotated[int, Query(ge=0, description="first id of the page")] = 0,
    limit: Annotated[int, Query(ge=1, description="ids per page")] = 1000,
    ids: Annotated[
        str | None,
        Query(max_length=200_000, description="comma-separated ids (instead of a page)"),
    ] = None,
) -> VocabPage:
    ds = browse.dataset(name_or_id)
    id_list = None
    if ids is not None:
        if not _CELLS.match(ids):
            raise InvalidQuery("ids must be comma-separated token ids, e.g. ids=0,5,17")
        id_list = [int(x) for x in ids.split(",")]
    return browse.vocab(ds, offset, limit, id_list)


@router.get(
    "/datasets/{name_or_id}/tokens",
    response_model=TokensWindow,
    summary="Token ids and texts of a window",
    responses=problem_responses(404, 422),
)
def get_tokens(
    name_or_id: DatasetRef,
    browse: Browsing,
    start: StartQ = None,
    end: EndQ = None,
    sequence: SequenceQ = None,
    offset: OffsetQ = 0,
    length: LengthQ = None,
) -> TokensWindow:
    ds = browse.dataset(name_or_id)
    a, b = browse.resolve_range(ds, start, end, sequence, offset, length)
    return browse.tokens(ds, a, b)


@router.get(
    "/datasets/{name_or_id}/tracks/{track}",
    response_model=TrackWindow,
    summary="A meta track over a window",
    responses=problem_responses(404, 422),
)
def get_track(
    name_or_id: DatasetRef,
    track: Annotated[str, Path(max_length=200)],
    browse: Browsing,
    start: StartQ = None,
    end: EndQ = None,
    sequence: SequenceQ = None,
    offset: OffsetQ = 0,
    length: LengthQ = None,
) -> Response:
    ds = browse.dataset(name_or_id)
    ds.manifest.track(track)
    a, b = browse.resolve_range(ds, start, end, sequence, offset, length)
    return _json(browse.track(ds, track, a, b).model_dump(mode="json"))


@router.get(
    "/datasets/{name_or_id}/tracks/{track}/summary",
    response_model=TrackSummary,
    summary="A meta track per bin over a long range (zoomed-out views)",
    description="discrete: steps of each label (and unlabelled) per bin; scalar: min, max, "
    "mean and count of the finite values per bin; topk: the most frequent top-1 id per bin, its "
    "count and text. Streamed from the track's row groups. The bins are those of the layer "
    "summary of the same range.",
    responses=problem_responses(404, 422),
)
def get_track_summary(
    name_or_id: DatasetRef,
    track: Annotated[str, Path(max_length=200)],
    browse: Browsing,
    start: SummaryStartQ = None,
    end: SummaryEndQ = None,
    bins: BinsQ = 500,
) -> Response:
    ds = browse.dataset(name_or_id)
    out = browse.track_summary(ds, track, start, end, bins)
    return _json(out.model_dump(mode="json"))


@router.post(
    "/datasets/{name_or_id}/select",
    response_model=SelectResult,
    summary="S1: cells on over [start, end) and off around it; per-step counts over a window",
    responses=problem_responses(404, 422),
)
def post_select(name_or_id: DatasetRef, query: SelectQuery, browse: Browsing) -> SelectResult:
    return browse.select(name_or_id, query)


@router.get(
    "/datasets/{name_or_id}/search",
    response_model=SearchResult,
    summary="Start steps of a phrase (token sequence), in step order",
    description="503 + `Retry-After` while the dataset's search index is being built (by a "
    "worker, queued when the dataset's info is first read or on the first search).",
    responses=problem_responses(404, 422, 503),
)
def get_search(
    name_or_id: DatasetRef,
    search: Search,
    q: Annotated[
        str | None, Query(max_length=10_000, description="token texts separated by spaces")
    ] = None,
    ids: Annotated[
        str | None, Query(max_length=10_000, description="token ids separated by spaces")
    ] = None,
    limit: Annotated[int, Query(ge=1, description="positions per page")] = 100,
    from_step: Annotated[
        int, Query(ge=0, description="only occurrences starting here or later")
    ] = 0,
    within_sequence: Annotated[
        bool, Query(description="skip occurrences that run across a sequence boundary")
    ] = False,
) -> SearchResult:
    limit = min(limit, search.settings.max_search_results)
    return search.search(name_or_id, q, ids, limit, from_step, within_sequence)


WaitQ = Annotated[
    float | None,
    Query(ge=0, description="wait up to this many seconds for the end (also `Prefer: wait=N`)"),
]
PreferH = Annotated[str | None, Header(alias="Prefer", max_length=200)]


@router.post(
    "/datasets/{name_or_id}/matches",
    status_code=202,
    response_model=MatchJobResource,
    summary="Start a match job (202 + Location); with wait, 200 and the result if it ends in time",
    responses={**problem_responses(404, 409, 422, 503), 200: {"model": MatchJobResource}},
)
async def post_match(
    name_or_id: DatasetRef,
    body: MatchRequest,
    response: Response,
    matches: Matches,
    idempotency_key: IdempotencyKey = None,
    wait: WaitQ = None,
    prefer: PreferH = None,
    page_size: PageSize = None,
) -> MatchJobResource:
    job, _created = await run_in_threadpool(matches.submit, name_or_id, body, idempotency_key)
    seconds = wait_seconds(wait, prefer, matches.max_wait_seconds)
    if seconds > 0:
        await wait_until_terminal(lambda: matches.job_status(job.id), seconds)
        job = await run_in_threadpool(matches.job, job.id)
        if prefer and "wait" in prefer:
            response.headers["Preference-Applied"] = f"wait={seconds:g}"
    response.headers["Location"] = job_path(job.id)
    if job.terminal:
        response.status_code = 200
    else:
        response.status_code = 202
        response.headers["Retry-After"] = "1"
    return await run_in_threadpool(matches.render_job, job, ResultView(page_size=page_size))


def result_view(
    page_size: PageSize = None,
    page_token: PageToken = None,
    context_left: ContextLeft = None,
    context_right: ContextRight = None,
    context_tracks: ContextTracks = None,
    context_counts: ContextCounts = None,
    context_tokens: ContextTokens = None,
) -> ResultView:
    """The page and context a ``GET /v1/jobs/{job_id}`` asks for."""
    ctx = _context(context_left, context_right, context_tracks, context_counts, context_tokens)
    return ResultView(page_size=page_size, page_token=page_token, context=ctx)


job_routes = job_router(
    get_matches,
    MatchJobResource,
    noun="match_job",
    id_description="a match job id (match-…)",
    get_summary="A match job's status, progress (shards), timings, and a page of its result",
    get_description="The job resource both services share: the gateway sends ids `match-…` "
    "here. Paging (`page_size`, `page_token`) and context (`context_*`) apply to a succeeded "
    "job.",
    cancel_summary="Cancel a match job (queued: at once; running: before its next shard starts)",
    view=result_view,
)
