"""``python -m hiddenscope_stack.embedded_redis --port N``: a Redis-protocol server in Python
(fakeredis ``TcpFakeServer``), the runner's fallback when no ``redis-server`` binary exists.

Only for trying the product on a machine without Redis: everything is in memory (nothing
survives a restart) and it is slower. The job store's Lua scripts need fakeredis' ``lua`` extra
(``lupa``); both come with the project's ``stack`` extra (``uv sync --all-extras``). Install
Redis for real use (``apt-get install redis-server``; ``make setup`` does it).

What this module adds to fakeredis' own server (2.40): fakeredis' connection handler closes a
client's connection after *any* error reply, so redis-py's ``EVALSHA`` → ``NOSCRIPT`` →
``SCRIPT LOAD`` sequence (how every ``register_script`` runs for the first time on a
connection) fails with "Connection closed by server" (fakeredis-py issue #432; the prefix was
fixed upstream, the disconnect was not). :class:`_Handler` answers an error reply as a real
Redis does — an ``-ERR …`` line — and keeps the connection open; only a broken socket or a
protocol fault ends it. ``tests/deploy/test_stack.py::test_embedded_redis_runs_the_workers``
runs real Celery workers of both services against it.
"""

from __future__ import annotations

import argparse
import select
import socketserver

import redis


def _handler_class() -> type[socketserver.BaseRequestHandler]:
    """The request handler (built lazily: fakeredis is an optional dependency)."""
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler

    class _Handler(TCPFakeRequestHandler):
        def handle(self) -> None:
            client = self.current_client
            while not self.server._shutdown_event.is_set():
                try:
                    if client.can_read():
                        try:
                            reply = client.read_response()
                        except redis.ResponseError as err:  # an error reply, not a fault
                            reply = err
                        self.writer.dump(reply)
                        continue
                    data = self.rfile.readline()
                    if data == b"":  # non-blocking socket: nothing yet, or the peer closed
                        readable, _, _ = select.select([self.connection], [], [], 0.01)
                        if not readable:
                            continue
                        data = self.rfile.readline()
                        if data == b"":
                            break
                    client.get_socket().sendall(data)
                except (ConnectionError, redis.ConnectionError):
                    break
                except Exception as err:  # a protocol fault: say so and drop the client
                    self.writer.dump(err)
                    break

    return _Handler


def serve(host: str, port: int) -> None:
    """Serve on ``host:port`` until interrupted."""
    import fakeredis

    server = fakeredis.TcpFakeServer((host, port), server_type="redis")
    server.RequestHandlerClass = _handler_class()
    print(f"embedded fakeredis server on {host}:{port} (in memory)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379)
    args = p.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
