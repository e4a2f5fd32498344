"""The synchronous HTTP client of the HiddenScope API (one base URL: the gateway, or one
service).

Endpoints (``schemas/ingest.openapi.json``, ``schemas/match.openapi.json``)::

    GET    /healthz                                        health
    GET    /v1/datasets                                    list_datasets        (ingest)
    GET    /v1/datasets/{ds}                               manifest             (ingest)
    DELETE /v1/datasets/{ds}                               delete_dataset       (ingest)
    POST   /v1/datasets                                    upload_dataset, ingest_path
    POST   /v1/datasets/{ds}/tracks                        upload_tracks        (ingest)
    DELETE /v1/datasets/{ds}/tracks/{track}                remove_track         (ingest)
    GET    /v1/datasets/{ds}/info                          info, sequences      (match)
    GET    /v1/datasets/{ds}/layers/{layer}/states         states               (match)
    GET    /v1/datasets/{ds}/layers/{layer}/summary        summary              (match)
    GET    /v1/datasets/{ds}/layers/{layer}/on-count/summary  on_count_summary  (match)
    GET    /v1/datasets/{ds}/tokens                        tokens               (match)
    GET    /v1/datasets/{ds}/vocab                         vocab                (match)
    GET    /v1/datasets/{ds}/tracks/{track}                track                (match)
    GET    /v1/datasets/{ds}/tracks/{track}/summary        track_summary        (match)
    POST   /v1/datasets/{ds}/select                        select               (match)
    GET    /v1/datasets/{ds}/search                        search               (match)
    POST   /v1/datasets/{ds}/matches                       start_match          (match)
    GET    /v1/jobs/{id}                                   job, match_job, wait_job
    POST   /v1/jobs/{id}/cancel                            cancel_job

Every failure raises an :class:`~hiddenscope_client.errors.ApiError` subclass carrying the
problem's ``status``, ``title`` and ``detail``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

from hiddenscope_client.errors import (
    ApiError,
    ApiUnavailable,
    JobFailed,
    ServerError,
    raise_for_problem,
)
from hiddenscope_client.models import (
    DatasetInfo,
    DatasetManifest,
    IngestJob,
    Job,
    LayerSummary,
    MatchJob,
    MatchRequest,
    OnCountSummary,
    SearchResult,
    SelectQuery,
    SelectResult,
    SequenceInfo,
    StatesWindow,
    TokensWindow,
    TrackSummary,
    TrackWindow,
    VocabPage,
    ingest_job,
    match_job,
)

T = TypeVar("T")

ARROW_STREAM = "application/vnd.apache.arrow.stream"
VOCAB_PAGE_IDS = 1000
"""Ids asked for per ``GET /vocab?ids=``."""
SEQUENCES_PAGE_SIZE = 10_000


@dataclass(frozen=True)
class UploadFile:
    """A file of a multipart upload: ``size`` bytes read from ``stream``."""

    name: str
    size: int
    stream: IO[bytes]


def _seg(value: str) -> str:
    """One path segment (a dataset name, layer, track or job id), percent-encoded."""
    return quote(value, safe="")


def _cells(cells: Sequence[int] | None) -> str | None:
    return None if cells is None else ",".join(str(int(c)) for c in cells)


def job_failure(job: Job[Any]) -> JobFailed:
    """The :class:`JobFailed` of a job that ended ``failed`` or ``cancelled``: its problem's
    fields, and its ``detail`` (else ``title``, else the status) as the message."""
    err = job.error
    if err is None:
        return JobFailed(job.status)
    return JobFailed(
        err.detail or err.title or job.status,
        status=err.status,
        title=err.title,
        detail=err.detail,
        type=err.type,
        instance=err.instance,
    )


class HiddenScopeClient:
    """A typed client of the API over one pooled ``httpx.Client``. ``timeout`` is the read
    timeout per request in seconds, ``connect_timeout`` that of opening a connection.
    ``transport`` replaces the network (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        user_agent: str = "hiddenscope-client",
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"Accept": "application/json", "User-Agent": user_agent},
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HiddenScopeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; a transport failure or a non-2xx answer raises its
        :class:`ApiError`."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiUnavailable(
                f"the API at {self.base_url} did not answer in time ({method} {path})"
            ) from None
        except httpx.TransportError as exc:
            raise ApiUnavailable(
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}); is it running?"
            ) from None
        raise_for_problem(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        params = kwargs.pop("params", None)
        if params is not None:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError:
            raise ServerError(
                f"the API answered {method} {path} with something other than JSON",
                status=resp.status_code,
            ) from None

    def _parse(self, parse: Callable[[Any], T], body: Any, what: str) -> T:
        """``parse(body)``; a body without the documented fields is a :class:`ServerError`."""
        try:
            return parse(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ServerError(f"unexpected {what} from the API ({exc!r})") from None

    def health(self) -> bool:
        """Whether ``/healthz`` answers 2xx."""
        try:
            self.request("GET", "/healthz")
        except ApiError:
            return False
        return True

    # -- catalog (ingest)

    def list_datasets(self) -> list[DatasetManifest]:
        body = self._json("GET", "/v1/datasets")
        return self._parse(
            lambda b: [DatasetManifest.from_json(d) for d in b["datasets"]], body, "dataset list"
        )

    def manifest(self, ds: str) -> DatasetManifest:
        """The catalog's manifest of dataset ``ds`` (a name or an id)."""
        body = self._json("GET", f"/v1/datasets/{_seg(ds)}")
        return self._parse(DatasetManifest.from_json, body, "manifest")

    def delete_dataset(self, ds: str) -> None:
        self.request("DELETE", f"/v1/datasets/{_seg(ds)}")

    def upload_dataset(
        self,
        manifest: str,
        files: Sequence[UploadFile],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        chunk_bytes: int = 1 << 20,
        timeout: float = 600.0,
        idempotency_key: str | None = None,
    ) -> IngestJob:
        """POST a multipart upload (``manifest``: YAML or JSON text; the files streamed,
        reporting ``(bytes sent, total)``); returns the ingest job (202)."""
        return self._multipart(
            "/v1/datasets", manifest, files, on_progress, chunk_bytes, timeout, idempotency_key
        )

    def upload_tracks(
        self,
        ds: str,
        manifest: str,
        files: Sequence[UploadFile],
        on_progress: Callable[[int, int], None] | None = None,
        *,
        chunk_bytes: int = 1 << 20,
        timeout: float = 600.0,
        idempotency_key: str | None = None,
    ) -> IngestJob:
        """POST meta tracks for a new version of ``ds`` (a tracks manifest and its files);
        returns the ingest job (202)."""
        return self._multipart(
            f"/v1/datasets/{_seg(ds)}/tracks",
            manifest,
            files,
            on_progress,
            chunk_bytes,
            timeout,
            idempotency_key,
        )

    def ingest_path(
        self, manifest: Mapping[str, Any], path: str, *, idempotency_key: str | None = None
    ) -> IngestJob:
        """POST a dataset whose files are already on the server, under ``path`` (inside one of
        its allowed roots); returns the ingest job (202)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = self._json(
            "POST",
            "/v1/datasets",
            json={"manifest": dict(manifest), "path": path},
            headers=headers,
        )
        return self._parse(ingest_job, body, "ingest job")

    def remove_track(self, ds: str, track: str) -> IngestJob:
        """DELETE a meta track (a new version of ``ds`` without it); returns the ingest job."""
        body = self._json("DELETE", f"/v1/datasets/{_seg(ds)}/tracks/{_seg(track)}")
        return self._parse(ingest_job, body, "ingest job")

    def _multipart(
        self,
        path: str,
        manifest: str,
        files: Sequence[UploadFile],
        on_progress: Callable[[int, int], None] | None,
        chunk_bytes: int,
        timeout: float,
        idempotency_key: str | None,
    ) -> IngestJob:
        # written by hand rather than with httpx's `files=`: that one reads each file whole
        # into memory, and reports no progress
        boundary = "hiddenscope-" + secrets.token_hex(12)
        head_manifest = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="manifest"\r\n'
                f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            ).encode()
            + manifest.encode()
            + b"\r\n"
        )
        heads = [
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{f.name.replace(chr(34), "_")}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            for f in files
        ]
        tail = f"--{boundary}--\r\n".encode()
        total = (
            len(head_manifest) + sum(len(h) + f.size + 2 for h, f in zip(heads, files, strict=True))
        ) + len(tail)

        def content() -> Iterator[bytes]:
            sent = 0

            def tick(n: int) -> None:
                nonlocal sent
                sent += n
                if on_progress is not None:
                    on_progress(sent, total)

            yield head_manifest
            tick(len(head_manifest))
            for head, f in zip(heads, files, strict=True):
                yield head
                tick(len(head))
                while chunk := f.stream.read(chunk_bytes):
                    yield chunk
                    tick(len(chunk))
                yield b"\r\n"
                tick(2)
            yield tail
            tick(len(tail))

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(total),
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        body = self._json(
            "POST",
            path,
            content=content(),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=self.http.timeout.connect),
        )
        return self._parse(ingest_job, body, "ingest job")

    # -- jobs (both services, one resource: /v1/jobs/{id})

    def job(self, job_id: str, *, wait: float = 0) -> IngestJob:
        """Job ``job_id`` of either service, its result as the API's free-form object (use
        :meth:`match_job` for a typed match result). ``wait`` seconds: the server answers as
        soon as the job ends, or after that long."""
        body = self._json("GET", f"/v1/jobs/{_seg(job_id)}", params={"wait": wait or None})
        return self._parse(ingest_job, body, "job")

    def match_job(
        self,
        job_id: str,
        *,
        wait: float = 0,
        page_size: int | None = None,
        page_token: str | None = None,
        context_left: int | None = None,
        context_right: int | None = None,
        context_tracks: Sequence[str] | None = None,
        context_counts: bool | None = None,
        context_tokens: bool | None = None,
    ) -> MatchJob:
        """Match job ``job_id``; once it succeeded, ``result.hits`` is one page (``page_size``
        hits from ``page_token``) with each hit's context as asked (default: the match's)."""

        def flag(v: bool | None) -> str | None:
            return None if v is None else str(bool(v)).lower()

        params = {
            "wait": wait or None,
            "page_size": page_size,
            "page_token": page_token,
            "context_left": context_left,
            "context_right": context_right,
            "context_tracks": None if context_tracks is None else ",".join(context_tracks),
            "context_counts": flag(context_counts),
            "context_tokens": flag(context_tokens),
        }
        body = self._json("GET", f"/v1/jobs/{_seg(job_id)}", params=params)
        return self._parse(match_job, body, "match job")

    def wait_job(self, job_id: str, *, timeout: float = 600.0, poll: float = 30.0) -> IngestJob:
        """Block until job ``job_id`` ends (long polls of at most ``poll`` s) and return it;
        :class:`JobFailed` (the job's problem) if it failed or was cancelled,
        :class:`ApiUnavailable` if it is still running after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            job = self.job(job_id, wait=max(0.0, min(poll, left)))
            if job.terminal:
                break
            if left <= 0:
                raise ApiUnavailable(f"job {job_id} still {job.status} after {timeout:g} s")
        if job.status != "succeeded":
            raise job_failure(job)
        return job

    def cancel_job(self, job_id: str) -> IngestJob:
        """Ask job ``job_id`` to stop (202); returns the job as it is then."""
        body = self._json("POST", f"/v1/jobs/{_seg(job_id)}/cancel")
        return self._parse(ingest_job, body, "job")

    # -- datasets and windows (match)

    def info(
        self,
        ds: str,
        *,
        cell_stats: bool = False,
        sequences_page_size: int | None = None,
        sequences_page_token: str | None = None,
    ) -> DatasetInfo:
        """Layers, tracks and one page of the sequences of ``ds``."""
        body = self._json(
            "GET",
            f"/v1/datasets/{_seg(ds)}/info",
            params={
                "cell_stats": str(cell_stats).lower(),
                "sequences_page_size": sequences_page_size,
                "sequences_page_token": sequences_page_token,
            },
        )
        return self._parse(DatasetInfo.from_json, body, "dataset info")

    def sequences(self, ds: str, *, max_pages: int | None = None) -> list[SequenceInfo]:
        """Every declared sequence of ``ds`` (pages of ``/info``; at most ``max_pages``)."""
        out: list[SequenceInfo] = []
        token: str | None = None
        pages = 0
        while max_pages is None or pages < max_pages:
            page = self.info(
                ds, sequences_page_size=SEQUENCES_PAGE_SIZE, sequences_page_token=token
            )
            out.extend(page.sequences)
            pages += 1
            token = page.next_sequences_token
            if not token:
                break
        return out

    def states(
        self,
        ds: str,
        layer: str,
        start: int,
        end: int,
        cells: Sequence[int] | None = None,
        *,
        arrow: bool = False,
    ) -> StatesWindow:
        """Transformed values of steps ``[start, end)`` of ``cells`` (default all): float32
        ``(end - start, len(cells))``. ``arrow`` asks for the Arrow IPC stream (needs the
        ``arrow`` extra: pyarrow)."""
        path = f"/v1/datasets/{_seg(ds)}/layers/{_seg(layer)}/states"
        params = {"start": start, "end": end, "cells": _cells(cells)}
        if not arrow:
            body = self._json("GET", path, params=params)
            return self._parse(StatesWindow.from_json, body, "states window")
        import pyarrow as pa  # the optional extra

        resp = self.request(
            "GET",
            path,
            params={k: v for k, v in params.items() if v is not None},
            headers={"Accept": ARROW_STREAM},
        )
        table = pa.ipc.open_stream(resp.content).read_all()
        meta = table.schema.metadata or {}
        got_cells = [int(c) for c in json.loads(meta.get(b"cells", b"[]"))]
        steps = table.column("step").to_numpy()
        flat = table.column("values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return StatesWindow(
            layer=meta.get(b"layer", layer.encode()).decode(),
            start=int(steps[0]) if len(steps) else start,
            end=int(steps[-1]) + 1 if len(steps) else start,
            sequence=None,
            cells=got_cells,
            values=np.asarray(flat, dtype=np.float32).reshape(len(steps), len(got_cells)),
        )

    def summary(
        self,
        ds: str,
        layer: str,
        start: int,
        end: int,
        bins: int,
        cells: Sequence[int] | None = None,
    ) -> LayerSummary:
        """Per-bin min/max/mean of every cell (or of ``cells``) over ``[start, end)``."""
        body = self._json(
            "GET",
            f"/v1/datasets/{_seg(ds)}/layers/{_seg(layer)}/summary",
            params={"start": start, "end": end, "bins": bins, "cells": _cells(cells)},
        )
        return self._parse(LayerSummary.from_json, body, "layer summary")

    def on_count_summary(
        self,
        ds: str,
        layer: str,
        cells: Sequence[int],
        threshold: float,
        start: int,
        end: int,
        bins: int,
    ) -> OnCountSummary:
        """Per bin: min / max / mean of how many of ``cells`` are on at ``threshold``."""
        body = self._json(
            "GET",
            f"/v1/datasets/{_seg(ds)}/layers/{_seg(layer)}/on-count/summary",
            params={
                "cells": _cells(cells),
                "threshold": threshold,
                "start": start,
                "end": end,
                "bins": bins,
            },
        )
        return self._parse(OnCountSummary.from_json, body, "on-count summary")

    def tokens(self, ds: str, start: int, end: int) -> TokensWindow:
        body = self._json(
            "GET", f"/v1/datasets/{_seg(ds)}/tokens", params={"start": start, "end": end}
        )
        return self._parse(TokensWindow.from_json, body, "tokens window")

    def vocab(self, ds: str, ids: Sequence[int]) -> dict[int, str]:
        """Texts of vocabulary ``ids`` (``""`` outside the vocabulary), asked for in pages of
        :data:`VOCAB_PAGE_IDS` ids."""
        out: dict[int, str] = {}
        wanted = [int(i) for i in ids]
        for lo in range(0, len(wanted), VOCAB_PAGE_IDS):
            page = self.vocab_page(ds, ids=wanted[lo : lo + VOCAB_PAGE_IDS])
            out.update(zip(page.ids, page.texts, strict=True))
        return out

    def vocab_page(
        self,
        ds: str,
        *,
        ids: Sequence[int] | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> VocabPage:
        """The texts of ``ids``, or a page of the vocabulary from ``offset``."""
        params: dict[str, Any] = (
            {"ids": _cells(ids)} if ids is not None else {"offset": offset, "limit": limit}
        )
        body = self._json("GET", f"/v1/datasets/{_seg(ds)}/vocab", params=params)
        return self._parse(VocabPage.from_json, body, "vocabulary page")

    def track(self, ds: str, track: str, start: int, end: int) -> TrackWindow:
        body = self._json(
            "GET",
            f"/v1/datasets/{_seg(ds)}/tracks/{_seg(track)}",
            params={"start": start, "end": end},
        )
        return self._parse(TrackWindow.from_json, body, "track window")

    def track_summary(self, ds: str, track: str, start: int, end: int, bins: int) -> TrackSummary:
        body = self._json(
            "GET",
            f"/v1/datasets/{_seg(ds)}/tracks/{_seg(track)}/summary",
            params={"start": start, "end": end, "bins": bins},
        )
        return self._parse(TrackSummary.from_json, body, "track summary")

    # -- select, search, match (match)

    def select(self, ds: str, query: SelectQuery) -> SelectResult:
        body = self._json("POST", f"/v1/datasets/{_seg(ds)}/select", json=query.to_json())
        return self._parse(SelectResult.from_json, body, "select result")

    def search(
        self,
        ds: str,
        q: str,
        *,
        limit: int = 20,
        from_step: int | None = None,
        within_sequence: int | None = None,
        wait_seconds: float = 0.0,
    ) -> SearchResult:
        """Occurrences of the phrase ``q`` (token texts separated by spaces). While the
        dataset's search index is being built (503 + ``Retry-After``) this retries for up to
        ``wait_seconds``."""
        deadline = time.monotonic() + wait_seconds
        params = {
            "q": q,
            "limit": limit,
            "from_step": from_step,
            "within_sequence": within_sequence,
        }
        while True:
            try:
                body = self._json("GET", f"/v1/datasets/{_seg(ds)}/search", params=params)
                break
            except ApiUnavailable as exc:
                left = deadline - time.monotonic()
                if exc.retry_after is None or left <= 0:
                    raise
                time.sleep(min(max(exc.retry_after, 0.2), left))
        return self._parse(SearchResult.from_json, body, "search result")

    def start_match(
        self,
        ds: str,
        request: MatchRequest,
        *,
        wait: float = 0,
        page_size: int | None = None,
        idempotency_key: str | None = None,
    ) -> MatchJob:
        """POST a match; returns its job (``queued``/``running``, or ended within ``wait``
        seconds, then with the first ``page_size`` hits)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = self._json(
            "POST",
            f"/v1/datasets/{_seg(ds)}/matches",
            json=request.to_json(),
            params={"wait": wait or None, "page_size": page_size},
            headers=headers,
        )
        return self._parse(match_job, body, "match job")
