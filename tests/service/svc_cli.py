"""Run only the service verbs of `dgmscan` (serve, worker, keys): `python -m api` as a script path,
so test subprocesses do not depend on the library verbs' imports."""

from __future__ import annotations

import sys

from api.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
