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
# One pytest-xdist worker per core (PYTEST_XDIST_AUTO_NUM_WORKERS=N to choose; `-n0` in the arguments
# runs in one process); tests/conftest.py keeps each test file on one worker and splits the threads.
exec .venv/bin/pytest -n logical --dist loadfile --no-loadscope-reorder "$@"
