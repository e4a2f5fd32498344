"""``python -m hiddenscope_stack.embedded_redis --port N``: a Redis-protocol server in Python
(fakeredis ``TcpFakeServer``), the runner's fallback when no ``redis-server`` binary exists.

Only for trying the product on a machine without Redis: everything is in memory (nothing
survives a restart), it is slower, and the job store's Lua scripts need fakeredis' ``lua``
extra (``pip install 'fakeredis[lua]'``). Install Redis for real use (``apt-get install
redis-server``; ``make setup`` does it).
"""

from __future__ import annotations

import argparse
from typing import Any


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379)
    args = p.parse_args(argv)
    import fakeredis  # type: ignore[import-not-found, unused-ignore]

    server_cls: Any = fakeredis.TcpFakeServer
    server = server_cls((args.host, args.port), server_type="redis")
    print(f"embedded fakeredis server on {args.host}:{args.port} (in memory)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
