"""Celery tasks: thin wrappers over worker.jobs (idempotent: safe to re-deliver).

Fan-out (when a result backend is configured): `run_scan` hands the shards of shardable checks
(BF-OI Closest-N) to a chord of `run_shard` tasks on the scan's queue; the chord's callback
`finish_fanout` merges the partials and runs the remaining checks; `fanout_failed` fails the scan
if a shard errors. Without a result backend (embedded mode) everything runs in one task.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, chord, shared_task
from sqlalchemy.exc import OperationalError

from persistence.db import session_scope
from persistence.models import Scan
from persistence.settings import get_settings
from worker.celery_app import FINISH_FANOUT_TASK, RUN_SCAN_TASK, RUN_SHARD_TASK, WEBHOOK_TASK

log = logging.getLogger("dgmscan.worker")
TERMINAL = ("succeeded", "failed", "canceled")
DB_RETRY_S = 5  # a scan that lost its database is tried again after this, up to DB_MAX_RETRIES times
DB_MAX_RETRIES = 60


def _dispatch_fanout(scan_id: str, fan: list[tuple[str, int, dict[str, Any]]]) -> None:
    settings = get_settings()
    with session_scope(settings.effective_database_url) as session:
        queue = session.get(Scan, scan_id).queue
    header = [run_shard.si(scan_id, name, index, shard).set(queue=queue) for name, index, shard in fan]
    callback = finish_fanout.s(scan_id).set(queue=queue)
    chord(header)(callback.on_error(fanout_failed.si(scan_id).set(queue=queue)))
    log.info("scan %s: %d shard(s) fanned out on queue %s", scan_id, len(fan), queue)


def _after(scan_id: str, status: str) -> str:
    if status in TERMINAL:
        deliver_webhook.apply_async(args=[scan_id], queue="cpu")
    return status


@shared_task(name=RUN_SCAN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_scan(self: Task, scan_id: str) -> str:
    """Run one scan to a terminal status (or fan its shardable checks out), then queue its webhook.

    If the database goes away mid-scan (a restart, a failover) the scan cannot even be marked failed,
    and an acked task would leave it `running` forever: retry the whole (idempotent) scan instead."""
    from worker.jobs import run_scan_job

    settings = get_settings()
    dispatcher = _dispatch_fanout if settings.fanout and settings.result_backend else None
    try:
        status = run_scan_job(scan_id, settings, dispatch_fanout=dispatcher)
    except OperationalError as exc:
        log.warning("scan %s: database unavailable (%s); retrying in %d s", scan_id, type(exc).__name__, DB_RETRY_S)
        raise self.retry(exc=exc, countdown=DB_RETRY_S, max_retries=DB_MAX_RETRIES) from exc
    return _after(scan_id, status)


@shared_task(name=RUN_SHARD_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def run_shard(scan_id: str, check_name: str, index: int, shard: dict[str, Any]) -> list[str | None]:
    """One shard of a fanned-out check; returns [check name, object key of the partial or None]."""
    from worker.jobs import run_shard_job

    return [check_name, run_shard_job(scan_id, check_name, index, shard)]


@shared_task(name=FINISH_FANOUT_TASK, acks_late=True, reject_on_worker_lost=True)
def finish_fanout(results: list[list[str | None]], scan_id: str) -> str:
    """Chord callback: merge the shard partials and run the rest of the scan."""
    from worker.jobs import run_scan_job

    shard_results: dict[str, list[str]] = {}
    for check_name, key in results:
        if key is None:  # the scan was canceled or finished meanwhile: the job decides
            shard_results = {}
            break
        shard_results.setdefault(str(check_name), []).append(key)
    return _after(scan_id, run_scan_job(scan_id, get_settings(), shard_results=shard_results))


@shared_task(name="dgmscan.fanout_failed", acks_late=True)
def fanout_failed(scan_id: str) -> None:
    from worker.jobs import fail_scan

    fail_scan(scan_id, "a shard of a fanned-out check failed")
    _after(scan_id, "failed")


@shared_task(name=WEBHOOK_TASK, bind=True, acks_late=True, max_retries=None, soft_time_limit=120, time_limit=150)
def deliver_webhook(self: Task, scan_id: str) -> int | None:
    """POST the signed completion payload; retry with exponential backoff (2, 4, 8, ... s, capped)."""
    from worker.jobs import scan_summary
    from worker.webhooks import WebhookFailed, WebhookRefused, deliver

    settings = get_settings()
    db = settings.effective_database_url
    payload = scan_summary(db, scan_id)
    if payload is None:
        return None
    try:
        return deliver(db, scan_id, payload, settings.webhook_timeout_s, settings.webhook_allow_private)
    except WebhookRefused as exc:
        log.warning("not delivering the webhook of scan %s: %s", scan_id, exc)
        return None
    except WebhookFailed as exc:
        if self.request.retries >= settings.webhook_max_retries:
            log.warning("giving up on webhook of scan %s: %s", scan_id, exc)
            return None
        raise self.retry(exc=exc, countdown=min(2 ** (self.request.retries + 1), 300)) from exc
