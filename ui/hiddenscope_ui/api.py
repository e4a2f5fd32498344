"""The UI's only way to the data: HTTP to the HiddenScope API (one base URL, ``/v1``).

:class:`HiddenScopeApi` wraps an ``httpx.Client`` and turns every failure into a typed
:class:`ApiError` carrying a message fit for the user (RFC 9457 ``detail`` when the server gave
one). The module-level functions are what pages call: GETs are cached with ``st.cache_data``
(keyed by the base URL and, for windows, by the dataset **id**, so a name deleted and uploaded
again never serves stale data); POSTs are never cached. The client itself is a
``st.cache_resource``.

Paths used (ingest: ``docs/ingest.md``; match: ``services/match`` routes, ``docs/api.md``), all
in :data:`PATHS`::

    GET    /v1/datasets                                   {datasets: [manifest]}       (ingest)
    DELETE /v1/datasets/{ds}                                                            (ingest)
    POST   /v1/datasets                                   multipart -> 202 job         (ingest)
    GET    <Location of the POST>[?wait=s]                ingest job                   (ingest)
    GET    /v1/datasets/{ds}/info                         layers, tracks, sequences    (match)
    GET    /v1/datasets/{ds}/layers/{layer}/states        ?start&end[&cells]           (match)
    GET    /v1/datasets/{ds}/layers/{layer}/summary       ?start&end&bins -> per-bin min,
                                                          max, mean (match; against an older
                                                          API the UI bins the states itself)
    GET    /v1/datasets/{ds}/tokens                       ?start&end -> ids, texts     (match)
    GET    /v1/datasets/{ds}/vocab                        ?ids=1,2 -> texts            (match)
    GET    /v1/datasets/{ds}/tracks/{track}               ?start&end                   (match)
    GET    /v1/datasets/{ds}/tracks/{track}/summary       ?start&end&bins -> per-bin label
                                                          counts / min, max, mean / top-1
                                                          mode (match)
    GET    /v1/datasets/{ds}/layers/{layer}/on-count/summary
                                                          ?cells&threshold&start&end&bins ->
                                                          per-bin min, max, mean on-count
    POST   /v1/datasets/{ds}/select                       SelectQuery -> SelectResult  (match)
    GET    /v1/datasets/{ds}/search                       ?q&limit -> positions; 503 +
                                                          Retry-After while its index builds
    POST   /v1/datasets/{ds}/matches[?wait=s]             MatchRequest -> 202 job      (match)
    GET    <Location of the POST>                         ?context_* -> job + hits     (match)
    POST   <the job's links.cancel>                                                    (match)

Jobs are followed where the API says they are: the ``Location`` header of the ``POST`` that
started them (else the body's ``links.self``), remembered per job id. A job known only by its id
(a shared link) is looked up at :data:`JOB_PATHS` (``/v1/jobs/{id}``, SPEC §4: both services'
jobs, through the gateway).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypedDict, cast
from urllib.parse import quote, urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import streamlit as st

from hiddenscope_ui.settings import get_settings

PATHS = {
    "datasets": "/v1/datasets",
    "dataset": "/v1/datasets/{ds}",
    "info": "/v1/datasets/{ds}/info",
    "states": "/v1/datasets/{ds}/layers/{layer}/states",
    "summary": "/v1/datasets/{ds}/layers/{layer}/summary",
    "tokens": "/v1/datasets/{ds}/tokens",
    "vocab": "/v1/datasets/{ds}/vocab",
    "track": "/v1/datasets/{ds}/tracks/{track}",
    "track_summary": "/v1/datasets/{ds}/tracks/{track}/summary",
    "on_count_summary": "/v1/datasets/{ds}/layers/{layer}/on-count/summary",
    "select": "/v1/datasets/{ds}/select",
    "search": "/v1/datasets/{ds}/search",
    "match": "/v1/datasets/{ds}/matches",
}
JOB_PATHS = ("/v1/jobs/{job}",)
"""Where a job known only by its id may live, in the order tried."""
MAX_REMEMBERED_JOBS = 10_000

MAX_WINDOW_VALUES = 1 << 20
"""Most values (steps x cells) requested in one states GET when the UI bins a range itself."""
MAX_SEQUENCE_PAGES = 20


# ---------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """Any failure talking to the API. ``message`` is shown to the user as is."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        title: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.title = title
        self.retry_after = retry_after
        """Seconds from the response's ``Retry-After`` (e.g. a search index being built)."""


class ApiUnavailable(ApiError):
    """The API did not answer (connection refused, DNS, timeout) or answered 502/503/504."""


class NotFound(ApiError):
    """404: the dataset, layer, track or job does not exist (any more)."""


class BadRequest(ApiError):
    """Another 4xx: the request was refused; ``message`` says why."""


class ServerError(ApiError):
    """A 5xx other than 502-504: a bug on the server."""


class JobFailed(ApiError):
    """A job ended ``failed`` or ``cancelled``; ``message`` is its problem's detail."""


class MissingEndpoint(NotFound):
    """The API has no such endpoint (an older API): the caller may fall back."""


def _problem_message(resp: httpx.Response) -> tuple[str, str | None]:
    title: str | None = None
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return (text[:300] or resp.reason_phrase or f"HTTP {resp.status_code}"), None
    if isinstance(body, dict):
        title = body.get("title") if isinstance(body.get("title"), str) else None
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail, title
        if isinstance(detail, list) and detail:  # FastAPI's validation list
            first = detail[0]
            if isinstance(first, dict):
                loc = ".".join(str(x) for x in first.get("loc", []))
                return f"{loc}: {first.get('msg', '')}".strip(": "), title
        if title:
            return title, title
    return f"HTTP {resp.status_code} {resp.reason_phrase}", title


def raise_for_problem(resp: httpx.Response) -> None:
    """Raise the typed :class:`ApiError` for a non-2xx response."""
    if resp.status_code < 400:
        return
    message, title = _problem_message(resp)
    status = resp.status_code
    if status == 404:
        raise NotFound(message, status=status, title=title)
    if status in (502, 503, 504):
        retry_after: float | None = None
        with contextlib.suppress(ValueError):
            retry_after = float(resp.headers.get("retry-after", ""))
        raise ApiUnavailable(
            f"the API is unavailable (HTTP {status}): {message}",
            status=status,
            title=title,
            retry_after=retry_after,
        )
    if status >= 500:
        raise ServerError(f"the server failed (HTTP {status}): {message}", status=status)
    raise BadRequest(message, status=status, title=title)


# ---------------------------------------------------------------------------------- shapes


class SequenceDict(TypedDict):
    index: int
    name: str
    start: int
    end: int


class StatesWindow(TypedDict):
    start: int
    end: int
    cells: list[int]
    values: npt.NDArray[np.float32]
    """``(end - start, len(cells))`` transformed values; NaN where missing."""


class StatesSummary(TypedDict):
    start: int
    end: int
    bin_starts: list[int]
    """``len = bins + 1``: bin ``i`` covers steps ``[bin_starts[i], bin_starts[i+1])``."""
    cells: list[int]
    mins: npt.NDArray[np.float32]
    maxs: npt.NDArray[np.float32]
    """``(bins, len(cells))`` per-bin per-cell minimum / maximum."""
    means: npt.NDArray[np.float32] | None
    """``(bins, len(cells))`` per-bin means (``None`` when the UI binned the states itself)."""


class TokensWindow(TypedDict):
    start: int
    end: int
    texts: list[str]


class TrackWindow(TypedDict, total=False):
    name: str
    kind: str
    start: int
    end: int
    labels: list[int]
    """discrete: label index per step (-1 = none)"""
    label_names: list[str]
    values: list[float | None]
    """scalar"""
    ids: list[list[int]]
    """topk: (n, K) predicted token ids"""
    texts: list[list[str]]
    """topk: (n, K) predicted token texts"""
    scores: list[list[float]]


class TrackSummary(TypedDict, total=False):
    """A meta track per bin over a long range (the fields of its kind are set)."""

    name: str
    kind: str
    start: int
    end: int
    bin_starts: list[int]
    """``len = bins + 1``: bin ``i`` covers steps ``[bin_starts[i], bin_starts[i+1])``."""
    label_names: list[str]
    label_counts: list[list[int]]
    """discrete: ``[bin][label]`` steps with each label"""
    unlabelled: list[int]
    mins: list[float | None]
    maxs: list[float | None]
    means: list[float | None]
    """scalar: per bin over the finite values (``None``: none in the bin)"""
    counts: list[int]
    mode_ids: list[int]
    """topk: the id most often ranked first in each bin"""
    mode_counts: list[int]
    mode_texts: list[str]


class OnCountSummary(TypedDict):
    """Per bin: the least / greatest / mean number of ``cells`` on at one step."""

    start: int
    end: int
    bin_starts: list[int]
    cells: list[int]
    threshold: float
    on_grid: bool
    mins: list[int]
    maxs: list[int]
    means: list[float]


@dataclass(frozen=True)
class UploadFile:
    name: str
    size: int
    stream: IO[bytes]


# ---------------------------------------------------------------------------------- client


class HiddenScopeApi:
    """A thin typed client of the API: one ``httpx.Client`` with pooled connections."""

    def __init__(self, base_url: str, *, connect_timeout: float = 3.0, read_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"Accept": "application/json", "User-Agent": "hiddenscope-ui"},
        )
        self.job_locations: dict[str, str] = {}
        """job id -> the path the API gave for it (``Location`` / ``links.self``)."""

    # -- plumbing

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiUnavailable(
                f"the API at {self.base_url} did not answer in time ({method} {path})"
            ) from None
        except httpx.TransportError as exc:
            raise ApiUnavailable(
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}); "
                "is it running? (settings: HIDDENSCOPE_UI_API_URL)"
            ) from None
        raise_for_problem(resp)
        return resp

    def get_json(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        resp = self.request("GET", path, params=clean)
        try:
            return resp.json()
        except ValueError:
            raise ServerError(f"the API answered {path} with something other than JSON") from None

    @staticmethod
    def path(key: str, **parts: str) -> str:
        return PATHS[key].format(**{k: quote(v, safe="") for k, v in parts.items()})

    # -- catalog (ingest service)

    def health(self) -> bool:
        try:
            self.request("GET", "/healthz")
        except ApiError:
            return False
        return True

    def list_datasets(self) -> list[dict[str, Any]]:
        body = self.get_json(self.path("datasets"))
        items = body.get("datasets", []) if isinstance(body, dict) else body
        return [d for d in items if isinstance(d, dict)]

    def dataset(self, ds: str) -> dict[str, Any]:
        """The match service's ``/info`` (first page of sequences, no cell statistics), with
        ``layers`` flattened to the layer descriptions (``name, n_cells, transform, value_min,
        value_max, thresholds …``)."""
        body = self.get_json(self.path("info", ds=ds), cell_stats="false")
        if not isinstance(body, dict) or "layers" not in body:
            raise ServerError(f"unexpected dataset description for {ds!r}")
        body["layers"] = [
            dict(layer["info"]) if isinstance(layer, dict) and "info" in layer else layer
            for layer in body["layers"]
        ]
        return cast(dict[str, Any], body)

    def delete_dataset(self, ds: str) -> None:
        self.request("DELETE", self.path("dataset", ds=ds))

    # -- jobs (followed where the API says they are)

    def remember_job(self, resp: httpx.Response, body: Any) -> str | None:
        """Record where the job in a ``POST`` answer lives: its ``Location`` header, else the
        body's ``links.self``. Returns that path (``None`` if the answer names none)."""
        location = resp.headers.get("location")
        if not location and isinstance(body, dict):
            links = body.get("links")
            location = links.get("self") if isinstance(links, dict) else None
        if not location or not isinstance(body, dict) or "id" not in body:
            return None
        path = _local_path(str(location))
        self._remember(str(body["id"]), path)
        return path

    def _remember(self, job_id: str, path: str) -> None:
        if job_id not in self.job_locations and len(self.job_locations) >= MAX_REMEMBERED_JOBS:
            self.job_locations.pop(next(iter(self.job_locations)))
        self.job_locations[job_id] = path

    def _job_paths(self, job: str) -> list[str]:
        """Where job ``job`` (an id, or already a path) is: where the API said, else the
        candidates of :data:`JOB_PATHS`."""
        if job.startswith("/"):
            return [job]
        if job in self.job_locations:
            return [self.job_locations[job]]
        return [template.format(job=quote(job, safe="")) for template in JOB_PATHS]

    def job(self, job: str, wait: float = 0, **params: Any) -> dict[str, Any]:
        """A job resource (ingest or match) by id or path. A job known by its id alone is
        asked for at each of :data:`JOB_PATHS` until one knows it (then remembered). Raises
        :class:`NotFound` if none does."""
        paths = self._job_paths(job)
        for i, path in enumerate(paths):
            try:
                body = self.get_json(path, wait=wait or None, **params)
            except NotFound:
                if i == len(paths) - 1:
                    raise
                continue
            if not isinstance(body, dict):
                raise ServerError(f"unexpected job resource for {job!r}")
            if not job.startswith("/"):
                self._remember(job, path)
            return body
        raise NotFound(f"no job {job!r}")  # no paths: not reached

    def match_job(
        self,
        job: str,
        *,
        page_size: int | None = None,
        context_left: int | None = None,
        context_right: int | None = None,
        context_tracks: Sequence[str] | None = None,
        context_counts: bool | None = None,
    ) -> dict[str, Any]:
        """A match job; once it succeeded, ``result.hits`` (a page) with each hit's context."""
        params: dict[str, Any] = {"page_size": page_size}
        if context_left is not None or context_right is not None or context_counts is not None:
            params.update(
                context_left=context_left,
                context_right=context_right,
                context_counts=str(bool(context_counts)).lower(),
                context_tokens="true",
            )
            if context_tracks:
                params["context_tracks"] = ",".join(context_tracks)
        return self.job(job, **params)

    def cancel_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Cancel ``job`` (a job resource) at its ``links.cancel``, else ``<job path>/cancel``."""
        links = job.get("links")
        cancel = links.get("cancel") if isinstance(links, dict) else None
        path = (
            _local_path(str(cancel)) if cancel else self._job_paths(str(job["id"]))[0] + "/cancel"
        )
        return cast(dict[str, Any], self.request("POST", path).json())

    def upload_dataset(
        self,
        manifest: str,
        files: Sequence[UploadFile],
        on_progress: Callable[[int, int], None] | None = None,
        chunk_bytes: int = 1 << 20,
    ) -> dict[str, Any]:
        """POST a multipart upload (streamed, reporting ``(bytes sent, total)``); returns the
        job (202)."""
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

        def body() -> Iterator[bytes]:
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

        resp = self.request(
            "POST",
            self.path("datasets"),
            content=body(),
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(total),
            },
            timeout=httpx.Timeout(600.0, connect=5.0),
        )
        body = resp.json()
        self.remember_job(resp, body)
        return cast(dict[str, Any], body)

    # -- windows (match service)

    def sequences(self, ds: str) -> list[SequenceDict]:
        """Declared sequences (pages of ``/info``; at most ``MAX_SEQUENCE_PAGES`` pages)."""
        out: list[SequenceDict] = []
        token: str | None = None
        for _ in range(MAX_SEQUENCE_PAGES):
            body = self.get_json(
                self.path("info", ds=ds),
                cell_stats="false",
                sequences_page_size=10_000,
                sequences_page_token=token,
            )
            for s in body.get("sequences", []):
                out.append(
                    SequenceDict(
                        index=int(s["index"]),
                        name=str(s["name"]),
                        start=int(s["start"]),
                        end=int(s["end"]),
                    )
                )
            token = body.get("next_sequences_token")
            if not token:
                break
        return out

    def states(
        self, ds: str, layer: str, start: int, end: int, cells: Sequence[int] | None = None
    ) -> StatesWindow:
        params: dict[str, Any] = {"start": start, "end": end}
        if cells is not None:
            params["cells"] = ",".join(str(c) for c in cells)
        body = self.get_json(self.path("states", ds=ds, layer=layer), **params)
        values = np.asarray(
            [[np.nan if v is None else v for v in row] for row in body["values"]],
            dtype=np.float32,
        )
        got_cells = [
            int(c) for c in body.get("cells") or range(values.shape[1] if values.ndim == 2 else 0)
        ]
        if values.size == 0:
            values = values.reshape(
                int(body.get("end", end)) - int(body.get("start", start)), len(got_cells)
            )
        return StatesWindow(
            start=int(body.get("start", start)),
            end=int(body.get("end", end)),
            cells=got_cells,
            values=values,
        )

    def summary(
        self,
        ds: str,
        layer: str,
        start: int,
        end: int,
        bins: int,
        n_cells_hint: int = 64,
        cells: Sequence[int] | None = None,
    ) -> StatesSummary:
        """Per-bin min/max/mean of every cell (or of ``cells``) from the match service's summary
        endpoint; computed from the states here only against an API without that endpoint (at
        most ``max_client_summary_steps`` steps)."""
        try:
            body = self.get_json(
                self.path("summary", ds=ds, layer=layer),
                start=start,
                end=end,
                bins=bins,
                cells=",".join(str(c) for c in cells) if cells is not None else None,
            )
        except NotFound as exc:
            if "layer" in exc.message.lower() and "summary" not in exc.message.lower():
                raise
            return self._client_summary(ds, layer, start, end, bins, n_cells_hint)
        except BadRequest as exc:
            if exc.status == 405:
                return self._client_summary(ds, layer, start, end, bins, n_cells_hint)
            raise
        return StatesSummary(
            start=int(body["start"]),
            end=int(body["end"]),
            bin_starts=[int(x) for x in body["bin_starts"]],
            cells=[int(c) for c in body["cells"]],
            mins=_float_matrix(body["mins"]),
            maxs=_float_matrix(body["maxs"]),
            means=_float_matrix(body["means"]) if body.get("means") is not None else None,
        )

    def _client_summary(
        self, ds: str, layer: str, start: int, end: int, bins: int, n_cells_hint: int
    ) -> StatesSummary:
        limit = get_settings().max_client_summary_steps
        if end - start > limit:
            raise BadRequest(
                f"the API has no summary endpoint and {end - start:,} steps is more than the UI "
                f"bins itself ({limit:,}); zoom in"
            )
        edges = np.linspace(start, end, bins + 1).round().astype(np.int64)
        edges = np.unique(edges)
        mins: list[npt.NDArray[np.float32]] = []
        maxs: list[npt.NDArray[np.float32]] = []
        cells: list[int] = []
        n_cells = max(1, n_cells_hint)
        chunk = max(256, min(65_536, MAX_WINDOW_VALUES // n_cells))
        for lo in range(start, end, chunk):
            hi = min(end, lo + chunk)
            w = self.states(ds, layer, lo, hi)
            cells = w["cells"]
            for i in range(len(edges) - 1):
                a, b = max(lo, int(edges[i])), min(hi, int(edges[i + 1]))
                if a >= b:
                    continue
                part = w["values"][a - lo : b - lo]
                pmin, pmax = np.nanmin(part, axis=0), np.nanmax(part, axis=0)
                if len(mins) <= i:
                    mins.append(pmin)
                    maxs.append(pmax)
                else:
                    mins[i] = np.fmin(mins[i], pmin)
                    maxs[i] = np.fmax(maxs[i], pmax)
        return StatesSummary(
            start=start,
            end=end,
            bin_starts=[int(x) for x in edges],
            cells=cells,
            mins=np.vstack(mins).astype(np.float32),
            maxs=np.vstack(maxs).astype(np.float32),
            means=None,
        )

    def tokens(self, ds: str, start: int, end: int) -> TokensWindow:
        body = self.get_json(self.path("tokens", ds=ds), start=start, end=end)
        texts = body.get("texts") or body.get("tokens") or body.get("words") or []
        return TokensWindow(
            start=int(body.get("start", start)),
            end=int(body.get("end", end)),
            texts=[str(t) for t in texts],
        )

    def track(self, ds: str, track: str, start: int, end: int) -> TrackWindow:
        body = self.get_json(self.path("track", ds=ds, track=track), start=start, end=end)
        if not isinstance(body, dict):
            raise ServerError(f"unexpected track window for {track!r}")
        out = TrackWindow(
            name=str(body.get("name", track)),
            kind=str(body.get("kind", "")),
            start=int(body.get("start", start)),
            end=int(body.get("end", end)),
        )
        # the service: `labels` = the dictionary, `label` = per step, `value` = per step
        if "label" in body and body["label"] is not None:
            out["labels"] = body["label"]
            if body.get("labels") is not None:
                out["label_names"] = body["labels"]
        elif body.get("labels") is not None:
            out["labels"] = body["labels"]
        if body.get("label_names") is not None:
            out["label_names"] = body["label_names"]
        values = body.get("value", body.get("values"))
        if values is not None:
            out["values"] = values
        for key in ("ids", "texts", "scores"):
            if body.get(key) is not None:
                out[key] = body[key]  # type: ignore[literal-required,unused-ignore]
        if out.get("ids") and not out.get("texts"):
            # an API that does not send topk texts: look the predicted ids up in the vocabulary
            try:
                words = self.vocab(ds, sorted({i for row in out["ids"] for i in row}))
            except NotFound:  # no vocabulary: the UI shows #id
                words = {}
            if words:
                out["texts"] = [[words.get(i, f"#{i}") for i in row] for row in out["ids"]]
        return out

    def _summary_json(self, path: str, what: str, **params: Any) -> dict[str, Any]:
        """GET a summary endpoint; :class:`MissingEndpoint` if the API has none (a 404 that
        is not about an unknown dataset, layer or track; or a 405)."""
        try:
            body = self.get_json(path, **params)
        except NotFound as exc:
            low = exc.message.lower()
            if any(w in low for w in ("unknown track", "unknown layer", "no dataset")):
                raise
            raise MissingEndpoint(
                f"the API has no {what} endpoint ({path})", status=exc.status
            ) from None
        except BadRequest as exc:
            if exc.status == 405:
                raise MissingEndpoint(
                    f"the API has no {what} endpoint ({path})", status=405
                ) from None
            raise
        if not isinstance(body, dict) or "bin_starts" not in body:
            raise ServerError(f"unexpected {what} for {path}")
        return cast(dict[str, Any], body)

    def track_summary(self, ds: str, track: str, start: int, end: int, bins: int) -> TrackSummary:
        """A meta track per bin (``GET …/tracks/{track}/summary``); top-K mode ids get their
        texts from the vocabulary when the API sends none. Raises :class:`MissingEndpoint`
        against an API without the endpoint."""
        path = self.path("track_summary", ds=ds, track=track)
        body = self._summary_json(path, "track summary", start=start, end=end, bins=bins)
        out = TrackSummary(
            name=str(body.get("name", track)),
            kind=str(body.get("kind", "")),
            start=int(body.get("start", start)),
            end=int(body.get("end", end)),
            bin_starts=[int(x) for x in body["bin_starts"]],
        )
        if body.get("labels") is not None:
            out["label_names"] = [str(x) for x in body["labels"]]
        for key in ("label_counts", "unlabelled", "mins", "maxs", "means", "counts"):
            if body.get(key) is not None:
                out[key] = body[key]  # type: ignore[literal-required,unused-ignore]
        for key in ("mode_ids", "mode_counts", "mode_texts"):
            if body.get(key) is not None:
                out[key] = body[key]  # type: ignore[literal-required,unused-ignore]
        if out.get("mode_ids") and not out.get("mode_texts"):
            try:
                words = self.vocab(ds, sorted(set(out["mode_ids"])))
            except NotFound:  # no vocabulary: the UI shows #id
                words = {}
            if words:
                out["mode_texts"] = [words.get(i, f"#{i}") for i in out["mode_ids"]]
        return out

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
        """Per bin: min / max / mean of how many of ``cells`` are on at ``threshold``
        (``GET …/layers/{layer}/on-count/summary``). Raises :class:`MissingEndpoint` against
        an API without the endpoint."""
        path = self.path("on_count_summary", ds=ds, layer=layer)
        body = self._summary_json(
            path,
            "on-count summary",
            cells=",".join(str(int(c)) for c in cells),
            threshold=threshold,
            start=start,
            end=end,
            bins=bins,
        )
        return OnCountSummary(
            start=int(body["start"]),
            end=int(body["end"]),
            bin_starts=[int(x) for x in body["bin_starts"]],
            cells=[int(c) for c in body["cells"]],
            threshold=float(body["threshold"]),
            on_grid=bool(body.get("threshold_on_grid")),
            mins=[int(x) for x in body["mins"]],
            maxs=[int(x) for x in body["maxs"]],
            means=[float(x) for x in body["means"]],
        )

    def vocab(self, ds: str, ids: Sequence[int]) -> dict[int, str]:
        """Texts of vocabulary ids (``GET /vocab?ids=``, in pages of 1000 ids)."""
        out: dict[int, str] = {}
        wanted = list(ids)
        for lo in range(0, len(wanted), 1000):
            part = wanted[lo : lo + 1000]
            body = self.get_json(self.path("vocab", ds=ds), ids=",".join(map(str, part)))
            for i, text in zip(body.get("ids") or part, body.get("texts") or [], strict=False):
                out[int(i)] = str(text)
        return out

    def select(self, ds: str, query: dict[str, Any]) -> dict[str, Any]:
        resp = self.request("POST", self.path("select", ds=ds), json=query)
        return cast(dict[str, Any], resp.json())

    def search(self, ds: str, q: str, limit: int = 20) -> list[dict[str, Any]]:
        """Occurrences of a phrase: ``[{start, end}]`` (end = start + phrase tokens). While the
        dataset's search index is being built (503 + ``Retry-After``) this retries for up to
        ``search_wait_seconds``."""
        deadline = time.monotonic() + get_settings().search_wait_seconds
        while True:
            try:
                body = self.get_json(self.path("search", ds=ds), q=q, limit=limit)
                break
            except ApiUnavailable as exc:
                left = deadline - time.monotonic()
                if exc.retry_after is None or left <= 0:
                    raise
                time.sleep(min(max(exc.retry_after, 0.2), left))
        if isinstance(body, dict) and "positions" in body:
            n = max(1, len(body.get("query") or q.split()))
            return [{"start": int(p), "end": int(p) + n} for p in body["positions"]]
        hits = body.get("hits", body.get("results")) if isinstance(body, dict) else body
        return [h for h in hits or [] if isinstance(h, dict)]

    def start_match(self, ds: str, query: dict[str, Any], wait: float = 0) -> dict[str, Any]:
        """POST a match; returns the job (202 while it runs, 200 when it ended within ``wait``)."""
        params = {"wait": wait} if wait else None
        resp = self.request("POST", self.path("match", ds=ds), json=query, params=params)
        body = resp.json()
        self.remember_job(resp, body)
        return cast(dict[str, Any], body)


TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _float_matrix(rows: Any) -> npt.NDArray[np.float32]:
    """``[[x | None]]`` → a float32 matrix with NaN for ``None``."""
    if not rows:
        return np.empty((0, 0), np.float32)
    return np.asarray(
        [[np.nan if v is None else v for v in row] for row in rows], dtype=np.float32
    ).reshape(len(rows), -1)


def _local_path(location: str) -> str:
    """A job's ``Location`` as a path under the one base URL (an absolute URL keeps only its
    path and query: the UI talks to nothing but the base URL)."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def job_error(job: dict[str, Any]) -> str:
    err = job.get("error") or {}
    if isinstance(err, dict):
        return str(err.get("detail") or err.get("title") or job.get("status"))
    return str(err)


# ---------------------------------------------------------------------------------- cached


def base_url() -> str:
    return get_settings().api_url.rstrip("/")


@st.cache_resource(show_spinner=False)
def _client(url: str) -> HiddenScopeApi:
    s = get_settings()
    return HiddenScopeApi(url, connect_timeout=s.connect_timeout, read_timeout=s.read_timeout)


def client() -> HiddenScopeApi:
    return _client(base_url())


@st.cache_data(ttl=5, show_spinner=False, max_entries=64)
def list_datasets(url: str) -> list[dict[str, Any]]:
    return _client(url).list_datasets()


@st.cache_data(ttl=10, show_spinner=False, max_entries=256)
def dataset(url: str, ds: str) -> dict[str, Any]:
    return _client(url).dataset(ds)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def sequences(url: str, ds_id: str) -> list[SequenceDict]:
    return _client(url).sequences(ds_id)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def match_page(
    url: str, job: str, page_size: int, right: int, tracks: tuple[str, ...], left: int = 3
) -> dict[str, Any]:
    """A **finished** match job's hits with context (immutable, so cached)."""
    return _client(url).match_job(
        job,
        page_size=page_size,
        context_left=left,
        context_right=right,
        context_tracks=tracks,
        context_counts=True,
    )


@st.cache_data(ttl=3600, show_spinner=False, max_entries=512, max_size=None)
def states(
    url: str, ds_id: str, layer: str, start: int, end: int, cells: tuple[int, ...] | None = None
) -> StatesWindow:
    return _client(url).states(ds_id, layer, start, end, list(cells) if cells is not None else None)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=128)
def summary(
    url: str, ds_id: str, layer: str, start: int, end: int, bins: int, n_cells: int
) -> StatesSummary:
    return _client(url).summary(ds_id, layer, start, end, bins, n_cells)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=1024)
def tokens(url: str, ds_id: str, start: int, end: int) -> TokensWindow:
    return _client(url).tokens(ds_id, start, end)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=1024)
def track(url: str, ds_id: str, name: str, start: int, end: int) -> TrackWindow:
    return _client(url).track(ds_id, name, start, end)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def track_summary(url: str, ds_id: str, name: str, start: int, end: int, bins: int) -> TrackSummary:
    return _client(url).track_summary(ds_id, name, start, end, bins)


@st.cache_data(ttl=3600, show_spinner=False, max_entries=256)
def on_count_summary(
    url: str,
    ds_id: str,
    layer: str,
    cells: tuple[int, ...],
    threshold: float,
    start: int,
    end: int,
    bins: int,
) -> OnCountSummary:
    return _client(url).on_count_summary(ds_id, layer, cells, threshold, start, end, bins)


@st.cache_data(ttl=600, show_spinner=False, max_entries=128)
def search(url: str, ds_id: str, q: str, limit: int) -> list[dict[str, Any]]:
    return _client(url).search(ds_id, q, limit)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
