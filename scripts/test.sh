#!/usr/bin/env bash
# The test command of the README (and of CI): installs, lints, runs the whole suite.
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`) and Redis on 127.0.0.1:6379;
# the tests start their own SeaweedFS S3 server. A missing service fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python - <<'PY'
import socket, sys
for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError as exc:
        sys.exit(f"scripts/test.sh: {name} is not reachable on 127.0.0.1:{port} ({exc}); start it first")
PY
.venv/bin/ruff check .
# DGMSCAN_TEST_WORKERS=N (or `logical`: one per core; 0: one process) splits the suite over N pytest-xdist
# workers, each test file on one worker, the cores' threads shared among them (tests/conftest.py). Under
# xdist the controller first trains the whole test zoo on its fixed thread count (tests/zoo.py
# SUITE_ENTRIES), so the workers build the same models as one process and never train beside each other
# (a test asking a worker for an entry not in that list fails, naming the list).
# Default: `logical` for the whole suite (no arguments: the README's and CI's command); one process when
# any argument is given (they mostly pick a few tests, which need only their own zoo entries).
if [ $# -eq 0 ]; then workers="${DGMSCAN_TEST_WORKERS:-logical}"; else workers="${DGMSCAN_TEST_WORKERS:-0}"; fi
exec .venv/bin/pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
