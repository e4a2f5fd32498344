"""``python -m hiddenscope_stack.probe URL [--timeout S]``: exit 0 when ``GET URL`` answers 2xx,
else 1. The containers' healthcheck (the slim image has no curl); stdlib only, so it starts fast.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def probe(url: str, timeout: float = 5.0) -> bool:
    """Whether ``GET url`` answers with a 2xx status within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    return 0 if probe(args.url, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
