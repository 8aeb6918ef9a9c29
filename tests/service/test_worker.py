"""Worker behaviour without HTTP: idempotent re-delivery, cancellation of a queued scan, no torch
in the Celery parent or the API process."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from svc_helpers import REPO, S3Server, service_env
from svc_models import TARGET_PNG

from persistence.db import session_scope
from persistence.keys import create_key
from persistence.models import CheckRow, Scan
from persistence.settings import Settings
from persistence.storage import S3ObjectStore, blob_key


def _settings(migrated_pg: str, s3: S3Server) -> Settings:
    return Settings(
        database_url=migrated_pg,
        broker_url="memory://",
        storage="s3",
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=s3.bucket,
    )


def _stored_scan(settings: Settings, tenant: str, model_bytes: bytes, config: dict) -> str:
    import hashlib

    store = S3ObjectStore(settings)
    with session_scope(settings.database_url) as s:
        tid = create_key(s, tenant).tenant_id
    sha = hashlib.sha256(model_bytes).hexdigest()
    store.put_bytes(blob_key(tid, sha), model_bytes)
    target = TARGET_PNG.read_bytes()
    tsha = hashlib.sha256(target).hexdigest()
    store.put_bytes(blob_key(tid, tsha), target)
    with session_scope(settings.database_url) as s:
        scan = Scan(
            tenant_id=tid,
            model_key=blob_key(tid, sha),
            model_sha256=sha,
            model_size=len(model_bytes),
            model_filename="m.safetensors",
            model_suffix=".safetensors",
            targets=[
                {"key": blob_key(tid, tsha), "sha256": tsha, "size": len(target), "filename": "t.png", "suffix": ".png"}
            ],
            config=config,
        )
        s.add(scan)
    return scan.id


def test_redelivered_task_is_idempotent(migrated_pg: str, s3_server: S3Server, detection_models) -> None:
    from worker import jobs

    settings = _settings(migrated_pg, s3_server)
    scan_id = _stored_scan(
        settings, "idem", detection_models["benign"].read_bytes(), {"profile": "quick", "only": ["format"]}
    )
    # a first delivery that "crashed" mid-scan left the row running with a stale check row
    with session_scope(migrated_pg) as s:
        s.execute(sa.update(Scan).where(Scan.id == scan_id).values(status="running", attempts=1))
        s.add(CheckRow(scan_id=scan_id, name="format.detection", status="running"))
    assert jobs.run_scan_job(scan_id, settings) == "succeeded"
    with session_scope(migrated_pg) as s:
        scan = s.get(Scan, scan_id)
        rows = s.scalars(sa.select(CheckRow).where(CheckRow.scan_id == scan_id)).all()
        names = [r.name for r in rows]
        assert scan.verdict == "clean" and scan.attempts == 2
        assert len(names) == len(set(names)) and "format.detection" in names
        assert all(r.status == "pass" for r in rows)
        finished_at = scan.finished_at
    # a duplicate delivery of a finished scan changes nothing
    assert jobs.run_scan_job(scan_id, settings) == "succeeded"
    with session_scope(migrated_pg) as s:
        scan = s.get(Scan, scan_id)
        assert scan.finished_at == finished_at and scan.attempts == 2
    assert jobs.run_scan_job("0" * 32, settings) == "missing"


def test_cancel_requested_before_start_cancels_without_running(
    migrated_pg: str, s3_server: S3Server, detection_models
) -> None:
    from worker import jobs

    settings = _settings(migrated_pg, s3_server)
    scan_id = _stored_scan(settings, "cancel", b"not a model", {"profile": "quick"})
    with session_scope(migrated_pg) as s:
        s.execute(sa.update(Scan).where(Scan.id == scan_id).values(cancel_requested=True))
    assert jobs.run_scan_job(scan_id, settings) == "canceled"
    with session_scope(migrated_pg) as s:
        assert s.scalars(sa.select(CheckRow).where(CheckRow.scan_id == scan_id)).all() == []


def test_celery_app_and_api_do_not_import_torch() -> None:
    code = (
        "import sys; import worker.celery_app, worker.tasks, api.main; "
        "app = api.main.create_app(); "
        "bad = [m for m in ('torch', 'scanner.suite') if m in sys.modules]; "
        "assert not bad, bad; "
        "c = worker.celery_app.app.conf; "
        "assert c.task_acks_late and c.worker_prefetch_multiplier == 1; "
        "assert c.broker_transport_options['visibility_timeout'] > c.task_time_limit > c.task_soft_time_limit; "
        "assert {q.name for q in c.task_queues} == {'cpu', 'gpu'}"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=service_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_webhook_signature_and_ssrf_guard() -> None:
    import pytest

    from worker.webhooks import WebhookRefused, check_destination, sign, verify

    header = sign("s3cret", b'{"a":1}', 1_700_000_000)
    assert verify("s3cret", b'{"a":1}', header, now=1_700_000_100)
    assert not verify("s3cret", b'{"a":1}', header, now=1_700_009_999)  # stale: replay refused
    assert not verify("s3cret", b'{"a":2}', header, now=1_700_000_100)
    for url in ("http://127.0.0.1:8080/x", "http://169.254.169.254/latest", "http://10.0.0.5/", "ftp://example.com/"):
        with pytest.raises(WebhookRefused):
            check_destination(url, allow_private=False)
    check_destination("http://127.0.0.1:8080/x", allow_private=True)
