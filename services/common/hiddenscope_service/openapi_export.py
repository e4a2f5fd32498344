"""Export a service's OpenAPI document and check it for drift (both services use this)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def render(build_app: Callable[[], Any]) -> str:
    """The OpenAPI JSON of the app ``build_app()`` returns (stable: sorted keys, newline)."""
    return json.dumps(build_app().openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(
    build_app: Callable[[], Any], default_path: Path, module: str, argv: list[str] | None = None
) -> int:
    """``python -m <module> [path] [--check]``: write the document, or with ``--check`` exit 1
    if the file differs from what the code gives."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else default_path
    text = render(build_app)
    if check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run python -m {module}", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0
