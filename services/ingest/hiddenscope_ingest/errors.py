"""Errors of the ingest service. All are 4xx :class:`HiddenScopeError` subclasses, so the problem
handlers answer them by their ``status`` and a failed job stores them as its ``error``."""

from __future__ import annotations

from hiddenscope_core.errors import HiddenScopeError, InvalidData


class UnsupportedFormat(HiddenScopeError):
    """A file whose format is not one of the accepted ones (415)."""

    status = 415
    title = "Unsupported format"


class TooLarge(HiddenScopeError):
    """An upload, a file, an archive or a declared array beyond the configured limits (413)."""

    status = 413
    title = "Content too large"


class PathForbidden(HiddenScopeError):
    """A server-side path outside the configured allowed roots (403)."""

    status = 403
    title = "Forbidden path"


class InvalidManifest(HiddenScopeError):
    """The ingest manifest cannot be parsed or names something that is not there (422)."""

    status = 422
    title = "Invalid manifest"


class UnsafeContent(HiddenScopeError):
    """Content the safe loaders refuse: pickled objects, external links or storage, virtual
    datasets, unknown filters, archive members escaping their directory (422)."""

    status = 422
    title = "Unsafe content"


__all__ = [
    "InvalidData",
    "InvalidManifest",
    "PathForbidden",
    "TooLarge",
    "UnsafeContent",
    "UnsupportedFormat",
]
