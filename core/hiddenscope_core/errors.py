"""Typed errors of the core library.

Every error says what to fix. The services map them to RFC 9457 problem responses by the
``status`` attribute (an HTTP status code as a hint; the core itself knows nothing of HTTP).
"""

from __future__ import annotations


class HiddenScopeError(Exception):
    """Base class. ``status`` is the HTTP status a service should answer with."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidQuery(HiddenScopeError):
    """A select/match/window request that cannot be answered as asked (422)."""

    status = 422
    title = "Invalid query"


class NotFound(HiddenScopeError):
    """An unknown dataset, layer, track or sequence (404)."""

    status = 404
    title = "Not found"


class Conflict(HiddenScopeError):
    """A dataset name already taken, or a write to a published dataset (409)."""

    status = 409
    title = "Conflict"


class InvalidData(HiddenScopeError):
    """Input that does not fit the declared dataset: shape, dtype, size or values (422)."""

    status = 422
    title = "Invalid data"
