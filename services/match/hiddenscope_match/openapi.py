"""Export the match OpenAPI document: ``python -m hiddenscope_match.openapi [path]``
(default ``schemas/match.openapi.json``). ``--check`` exits 1 if the file differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiddenscope_service import openapi_export

from hiddenscope_match.settings import MatchSettings

DEFAULT_PATH = Path("schemas/match.openapi.json")


def _app() -> Any:
    from hiddenscope_match.app import create_app

    return create_app(MatchSettings(redis_url="redis://127.0.0.1:1/0"))  # never connected


def render() -> str:
    return openapi_export.render(_app)


def main(argv: list[str] | None = None) -> int:
    return openapi_export.main(_app, DEFAULT_PATH, "hiddenscope_match.openapi", argv)


if __name__ == "__main__":
    raise SystemExit(main())
