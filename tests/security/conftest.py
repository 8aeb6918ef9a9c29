"""Fixtures of the security tests: the service fixtures of tests/service (fresh Postgres database,
Redis db, SeaweedFS S3, uvicorn API, Celery worker) re-exported here, plus private servers the fault
tests may stop and restart (a redis-server and a Postgres cluster on free ports in temporary
directories; the machine's shared servers are never touched).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SERVICE_TESTS = Path(__file__).resolve().parents[1] / "service"
if str(_SERVICE_TESTS) not in sys.path:
    sys.path.insert(0, str(_SERVICE_TESTS))

# tests/service/conftest.py under a module name of its own (both files are called conftest.py)
_spec = importlib.util.spec_from_file_location("dgmscan_service_conftest", _SERVICE_TESTS / "conftest.py")
_svc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_svc)  # type: ignore[union-attr]

pg_url = _svc.pg_url
migrated_pg = _svc.migrated_pg
s3_server = _svc.s3_server
prod_env = _svc.prod_env
prod_api = _svc.prod_api
prod_worker = _svc.prod_worker
tenant_keys = _svc.tenant_keys

from sec_helpers import (  # noqa: E402
    PrivateServer,
    as_pg_user,
    pg_bin,
    start_private_postgres,
    start_private_redis,
    stop_private_postgres,
)
from svc_helpers import free_port, stop  # noqa: E402


# -- a private Redis ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    port = free_port()
    server = PrivateServer(f"redis://127.0.0.1:{port}/0", port, tmp_path_factory.mktemp("private-redis"))
    start_private_redis(server)
    yield server
    if server.proc is not None:
        stop(server.proc)


# -- a private Postgres cluster ----------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker of prod_api/prod_worker here: a private redis-server, because the shared one's db
    numbers are used by other test sessions running at the same time (their workers would take our
    tasks)."""
    port = free_port()
    server = PrivateServer(f"redis://127.0.0.1:{port}/0", port, tmp_path_factory.mktemp("broker-redis"))
    start_private_redis(server)
    yield server.url
    if server.proc is not None:
        stop(server.proc)


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """initdb + pg_ctl on a free port, trust auth, sockets in the temporary directory."""
    import os

    # not under pytest's basetemp: pytest keeps that 0700 (root-only), and the cluster runs as `postgres`
    workdir = Path(tempfile.mkdtemp(prefix="dgmscan-private-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    port = free_port()
    initdb = [pg_bin("initdb"), "-D", str(workdir / "data"), "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(as_pg_user(initdb), check=True, capture_output=True)
    with open(workdir / "data" / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{workdir}'\n")
        conf.write("fsync = off\nmax_connections = 50\n")
    server = PrivateServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", port, workdir)
    start_private_postgres(server)
    yield server
    stop_private_postgres(server, "fast")
    shutil.rmtree(workdir, ignore_errors=True)
