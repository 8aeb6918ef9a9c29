"""Persistence: the status map, migrations (Postgres and SQLite, up and down), keys, upserts, storage."""

from __future__ import annotations

import io
import secrets
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from svc_helpers import PG_ADMIN_URL, S3Server

from persistence.keys import authenticate, create_key, hash_key, revoke_key
from persistence.models import ApiKey, CheckRow, Scan
from persistence.repo import transition, upsert_check
from persistence.settings import Settings
from persistence.status import TRANSITIONS, IllegalTransition, ScanStatus, check_transition, is_terminal
from persistence.storage import LocalObjectStore, S3ObjectStore, StorageError, UploadPipe, validate_key


def test_status_map_is_explicit_and_terminal_states_are_final() -> None:
    assert check_transition("queued", "running") is ScanStatus.running
    for terminal in ("succeeded", "failed", "canceled"):
        assert is_terminal(terminal)
        assert TRANSITIONS[ScanStatus(terminal)] == frozenset()
        for new in ScanStatus:
            with pytest.raises(IllegalTransition):
                check_transition(terminal, new)
    with pytest.raises(IllegalTransition):
        check_transition("queued", "succeeded")  # must run first


def _alembic_round_trip(url: str) -> None:
    from alembic import command

    from persistence.migrate import alembic_config

    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"tenants", "api_keys", "scans", "checks", "artifacts", "alembic_version"} <= tables
    command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) <= {"alembic_version"}
    command.upgrade(cfg, "head")  # and up again from the downgraded state
    engine.dispose()


def test_migrations_upgrade_and_downgrade_on_a_fresh_postgres_database() -> None:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"dgmscan_mig_{secrets.token_hex(5)}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required: {exc}")
    try:
        _alembic_round_trip(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrations_upgrade_and_downgrade_on_sqlite(tmp_path: Path) -> None:
    _alembic_round_trip(f"sqlite:///{tmp_path / 'embedded.db'}")


def test_keys_are_stored_hashed_scoped_and_revocable(migrated_pg: str) -> None:
    from persistence.db import session_scope

    with session_scope(migrated_pg) as s:
        created = create_key(s, "keys-tenant", ("scans:read",))
    with session_scope(migrated_pg) as s:
        row = s.get(ApiKey, created.key_id)
        assert row.key_hash == hash_key(created.key) and created.key not in (row.key_hash, row.prefix, row.scopes)
        principal = authenticate(s, created.key)
        assert principal is not None and principal.scopes == frozenset({"scans:read"})
        assert authenticate(s, created.key + "x") is None
        assert authenticate(s, "not-a-key") is None
        assert revoke_key(s, created.key_id)
    with session_scope(migrated_pg) as s:
        assert authenticate(s, created.key) is None


def test_check_rows_are_upserted_and_transitions_are_compare_and_set(migrated_pg: str) -> None:
    from persistence.db import session_scope

    with session_scope(migrated_pg) as s:
        tenant_id = create_key(s, "upsert-tenant").tenant_id
        scan = Scan(
            tenant_id=tenant_id,
            model_key="k",
            model_sha256="0" * 64,
            model_size=1,
            model_filename="m",
            model_suffix=".bin",
        )
        s.add(scan)
    with session_scope(migrated_pg) as s:
        upsert_check(s, scan.id, "static.x", position=0, status="running")
        upsert_check(s, scan.id, "static.x", position=0, status="pass", score=1.5, summary="ok")  # a re-delivery
    with session_scope(migrated_pg) as s:
        rows = s.scalars(sa.select(CheckRow).where(CheckRow.scan_id == scan.id)).all()
        assert [(r.name, r.status, r.score) for r in rows] == [("static.x", "pass", 1.5)]
        assert transition(s, scan.id, ScanStatus.running)
        assert not transition(s, scan.id, ScanStatus.queued.running)  # running -> running is not a transition
        assert transition(s, scan.id, ScanStatus.succeeded, verdict="clean")
        assert not transition(s, scan.id, ScanStatus.running)  # terminal stays terminal
        assert s.get(Scan, scan.id, populate_existing=True).status == "succeeded"


def _exercise_store(store, tmp_path: Path) -> None:  # noqa: ANN001 - either backend
    import threading

    payload = secrets.token_bytes(3 * 1024 * 1024 + 17)
    pipe = UploadPipe(max_chunks=2)
    t = threading.Thread(target=lambda: (store.put_stream("t/a/blob", pipe), pipe.reader_gone()))
    t.start()
    for i in range(0, len(payload), 100_000):
        pipe.feed(payload[i : i + 100_000])
    pipe.finish()
    t.join(30)
    assert store.exists("t/a/blob") and store.size("t/a/blob") == len(payload)
    assert b"".join(store.iter_chunks("t/a/blob")) == payload
    store.copy("t/a/blob", "t/b/blob")
    store.download("t/b/blob", tmp_path / "dl")
    assert (tmp_path / "dl").read_bytes() == payload
    store.put_bytes("t/c/x.json", b"{}", "application/json")
    assert store.list_keys("t/") == ["t/a/blob", "t/b/blob", "t/c/x.json"]
    store.delete_prefix("t/")
    assert store.list_keys("t/") == [] and not store.exists("t/a/blob")
    for bad in ("../etc/passwd", "/abs", "a//b", "a/../b", ".hidden", ""):
        with pytest.raises(StorageError):
            store.exists(bad)


def test_local_store_round_trip_and_refuses_traversal(tmp_path: Path) -> None:
    _exercise_store(LocalObjectStore(tmp_path / "objects"), tmp_path)
    with pytest.raises(StorageError):
        validate_key("a/../../b")


def test_s3_store_round_trip_presigned_url_and_aborted_upload_leaves_nothing(s3_server: S3Server, tmp_path: Path):
    settings = Settings(
        storage="s3",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_server.bucket,
    )
    store = S3ObjectStore(settings)
    _exercise_store(store, tmp_path)
    store.put_bytes("p/q.txt", b"hello", "text/plain")
    url = store.presigned_get_url("p/q.txt", filename="q.txt", expiry_s=60)
    assert url is not None and urllib.request.urlopen(url, timeout=10).read() == b"hello"
    store.delete("p/q.txt")

    # a failing reader aborts the multipart upload: no object appears
    class Failing(io.RawIOBase):
        sent = 0

        def read(self, n: int = -1) -> bytes:
            self.sent += 1
            if self.sent > 2:
                raise RuntimeError("client went away")
            return b"x" * 6 * 1024 * 1024

    with pytest.raises(RuntimeError):
        store.put_stream("p/partial", Failing())
    assert not store.exists("p/partial")


def test_keys_cli_prints_the_key_last_and_it_authenticates(tmp_path: Path, migrated_pg: str) -> None:
    import subprocess
    import sys

    from svc_helpers import REPO, service_env

    from persistence.db import session_scope

    for env in (service_env(DGMSCAN_DATA_DIR=str(tmp_path / "var")), service_env(DGMSCAN_DATABASE_URL=migrated_pg)):
        cmd = [sys.executable, "-m", "api", "keys", "create", "--tenant", "cli-tenant", "--scope", "scans:read"]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        key = r.stdout.strip().splitlines()[-1]
        db_url = env.get("DGMSCAN_DATABASE_URL") or f"sqlite:///{(tmp_path / 'var' / 'dgmscan.db').resolve()}"
        with session_scope(db_url) as s:
            principal = authenticate(s, key)
            assert principal is not None and principal.scopes == frozenset({"scans:read"})
