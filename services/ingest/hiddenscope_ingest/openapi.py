"""Export the ingest OpenAPI document: ``python -m hiddenscope_ingest.openapi [path]``
(default ``schemas/ingest.openapi.json``). ``--check`` exits 1 if the file differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiddenscope_service import openapi_export

from hiddenscope_ingest.settings import IngestSettings

DEFAULT_PATH = Path("schemas/ingest.openapi.json")


def _app() -> Any:
    from hiddenscope_ingest.app import create_app

    return create_app(IngestSettings(redis_url="redis://127.0.0.1:1/0"))  # never connected


def render() -> str:
    return openapi_export.render(_app)


def main(argv: list[str] | None = None) -> int:
    return openapi_export.main(_app, DEFAULT_PATH, "hiddenscope_ingest.openapi", argv)


if __name__ == "__main__":
    raise SystemExit(main())
