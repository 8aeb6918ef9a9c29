"""`dgmscan serve`: run the REST API (a plugin of the `dgmscan` command; heavy imports in the handler).

With no DGMSCAN_BROKER_URL the service runs on embedded defaults: SQLite and local objects
under DGMSCAN_DATA_DIR (default ./var) and a Celery worker inside the process. It prints the
URL and a fresh API key (tenant `local`) so a first request needs nothing else.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the REST API (embedded worker, SQLite, local disk by default)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--tenant", default="local", help="tenant of the key printed at start (embedded mode)")
    p.add_argument("--no-key", action="store_true", help="do not create and print an API key")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from api.main import create_app
    from persistence.cli import prepare_database
    from persistence.settings import get_settings

    settings = get_settings()
    prepare_database()
    key = None
    if settings.embedded and not args.no_key:
        from persistence.db import session_scope
        from persistence.keys import create_key

        with session_scope() as session:
            key = create_key(session, args.tenant).key
    # bind first so port 0 works and the printed URL is the real one; listen at once, so a client that
    # reads the URL and connects while the app is still starting waits in the backlog instead of
    # getting "connection refused"
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    mode = "embedded (SQLite, local disk, in-process worker)" if settings.embedded else "production"
    print(f"dgmscan API on http://{host}:{port}  docs: http://{host}:{port}/docs  mode: {mode}", flush=True)
    if key:
        print(f"API key (tenant {args.tenant}):", flush=True)
        print(key, flush=True)
    config = uvicorn.Config(create_app(settings), log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0
