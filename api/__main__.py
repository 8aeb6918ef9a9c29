"""`python -m api VERB`: the service verbs of `dgmscan` (serve, worker, keys) on their own.

Same handlers as `dgmscan serve|worker|keys`; useful in slim images and when the library verbs'
imports are unwanted.
"""

from __future__ import annotations

import argparse
import sys

from api.cli import register as register_serve
from persistence.cli import register as register_keys
from worker.cli import register as register_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dgmscan", description="dgmscan service verbs")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for register in (register_serve, register_worker, register_keys):
        register(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
