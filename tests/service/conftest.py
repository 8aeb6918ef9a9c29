"""Fixtures of the service tests: the machine's Postgres (a fresh database per session) and Redis
(a dedicated db number), a SeaweedFS S3 server started here, the API (uvicorn) and a Celery worker
as real processes. A missing Postgres, Redis or `weed` binary FAILS the tests (never skips).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from svc_helpers import (
    PG_ADMIN_URL,
    REDIS_BASE,
    REDIS_DB,
    REPO,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    WORKER_LOGS,
    RunningApi,
    S3Server,
    create_key,
    free_port,
    service_env,
    start_api,
    stop,
    wait_for,
    weed_binary,
)


# -- external services -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this test session, dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"dgmscan_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required for the service tests ({PG_ADMIN_URL}): {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        from persistence.db import get_engine

        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def migrated_pg(pg_url: str) -> str:
    from persistence.db import upgrade_to_head

    upgrade_to_head(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A dedicated Redis db number, flushed before and after."""
    import redis

    url = f"{REDIS_BASE}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis is required for the service tests ({url}): {exc}")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS `weed mini` on free loopback ports, credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in ("s3", "master", "volume", "filer", "webdav", "admin", "iceberg", "lance")}
    cmd = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={ports['s3']}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-webdav.port={ports['webdav']}",
        f"-admin.port={ports['admin']}",
        f"-s3.port.iceberg={ports['iceberg']}",
        f"-s3.port.lance={ports['lance']}",
        "-admin.ui=false",
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"127.0.0.1:{ports['s3']}", S3_ACCESS_KEY, S3_SECRET_KEY, "dgmscan-test")

    def ready() -> bool:
        client = server.client()
        if not client.bucket_exists(server.bucket):
            client.make_bucket(server.bucket)
        return True

    try:
        wait_for(ready, 60, "SeaweedFS S3", proc)
    except Exception as exc:
        stop(proc)
        log.close()
        pytest.fail(f"could not start SeaweedFS ({exc}); log: {(data / 'weed.log').read_text()[-2000:]}")
    try:
        yield server
    finally:
        stop(proc)
        log.close()


# -- service processes -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prod_env(migrated_pg: str, redis_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Environment of a production-like deployment: Postgres, Redis, S3."""
    return service_env(
        DGMSCAN_DATABASE_URL=migrated_pg,
        DGMSCAN_BROKER_URL=redis_url,
        DGMSCAN_RESULT_BACKEND=redis_url,  # enables chords: BF-OI fan-out
        DGMSCAN_STORAGE="s3",
        DGMSCAN_S3_ENDPOINT=s3_server.endpoint,
        DGMSCAN_S3_ACCESS_KEY=s3_server.access_key,
        DGMSCAN_S3_SECRET_KEY=s3_server.secret_key,
        DGMSCAN_S3_BUCKET=s3_server.bucket,
        DGMSCAN_DATA_DIR=str(tmp_path_factory.mktemp("prod-var")),
        DGMSCAN_MAX_MODEL_BYTES=str(8 * 1024 * 1024),
        DGMSCAN_WEBHOOK_ALLOW_PRIVATE="true",  # the test's receiver listens on loopback
    )


@pytest.fixture(scope="session")
def prod_api(prod_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    api = start_api(prod_env, tmp_path_factory.mktemp("logs") / "api.log")
    yield api
    stop(api.proc)


@pytest.fixture(scope="session")
def prod_worker(prod_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    """A real Celery worker process (prefork, 1 child) on the cpu and gpu queues, over Redis."""
    log_path = tmp_path_factory.mktemp("logs") / "worker.log"
    WORKER_LOGS.append(log_path)
    log = open(log_path, "wb")  # noqa: SIM115 - the process owns it
    cmd = [sys.executable, str(REPO / "tests/service/svc_cli.py"), "worker", "-Q", "cpu,gpu", "-c", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=prod_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.fail(f"worker exited: {log_path.read_text()[-3000:]}")
    yield proc
    stop(proc, timeout_s=30)


@pytest.fixture(scope="session")
def tenant_keys(migrated_pg: str) -> dict[str, str]:
    return {
        "alice": create_key(migrated_pg, "alice"),
        "bob": create_key(migrated_pg, "bob"),
        "alice_ro": create_key(migrated_pg, "alice", ("scans:read",)),
        "fuzz": create_key(migrated_pg, "fuzz"),
    }


@pytest.fixture(scope="session")
def detection_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A benign DCGAN and a ReD-backdoored copy (devil-face target, the paper's z_trigger), built once."""
    from svc_models import make_benign, make_red_backdoor, tardis

    d = tmp_path_factory.mktemp("detection-models")
    benign = make_benign(d / "benign.safetensors")
    red = make_red_backdoor(benign, d / "red-backdoored.safetensors")
    assert tardis(red) < 0.01 < tardis(benign), "the backdoor must be embedded for the test to mean anything"
    return {"benign": benign, "red": red}
