"""Export the ingest OpenAPI document: ``python -m hiddenscope_ingest.openapi [path]``
(default ``schemas/ingest.openapi.json``). ``--check`` exits 1 if the file differs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hiddenscope_ingest.settings import IngestSettings

DEFAULT_PATH = Path("schemas/ingest.openapi.json")


def render() -> str:
    from hiddenscope_ingest.app import create_app

    app = create_app(IngestSettings(redis_url="redis://127.0.0.1:1/0"))  # never connected
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else DEFAULT_PATH
    text = render()
    if check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(
                f"{path} is out of date: run python -m hiddenscope_ingest.openapi", file=sys.stderr
            )
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
