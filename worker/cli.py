"""`dgmscan worker`: run a Celery worker for scans (a plugin of the `dgmscan` command).

The process is replaced (exec) by `python -m celery -A worker.celery_app worker ...`, so the
Celery parent never carries whatever the `dgmscan` command imported: torch is loaded only in
the pool's child processes, by the first scan they run.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("worker", help="run a Celery worker for scans (needs DGMSCAN_BROKER_URL)")
    p.add_argument("-Q", "--queues", default="cpu", help="comma-separated queues: cpu, gpu (default cpu)")
    p.add_argument("-c", "--concurrency", type=int, default=None, help="pool processes (GPU: 1 per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.set_defaults(handler=_worker)


def celery_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", args.queues]
    argv += ["--loglevel", args.loglevel, "--pool", args.pool, "--without-gossip", "--without-mingle"]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    return argv


def _worker(args: argparse.Namespace) -> int:
    if not os.environ.get("DGMSCAN_BROKER_URL"):
        print(
            "dgmscan worker: set DGMSCAN_BROKER_URL (e.g. redis://localhost:6379/0); "
            "`dgmscan serve` alone runs an embedded worker",
            file=sys.stderr,
        )
        return 2
    argv = celery_argv(args)
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 0  # not reached
