"""Celery tasks: thin wrappers over worker.jobs (idempotent: safe to re-deliver)."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from persistence.settings import get_settings
from worker.celery_app import RUN_SCAN_TASK, WEBHOOK_TASK

log = logging.getLogger("dgmscan.worker")


@shared_task(name=RUN_SCAN_TASK, acks_late=True, reject_on_worker_lost=True)
def run_scan(scan_id: str) -> str:
    """Run one scan to a terminal status, then queue its webhook if it has a callback URL."""
    from worker.jobs import run_scan_job

    status = run_scan_job(scan_id)
    if status in ("succeeded", "failed", "canceled"):
        deliver_webhook.apply_async(args=[scan_id], queue="cpu")
    return status


@shared_task(name=WEBHOOK_TASK, bind=True, acks_late=True, max_retries=None, soft_time_limit=120, time_limit=150)
def deliver_webhook(self: Task, scan_id: str) -> int | None:
    """POST the signed completion payload; retry with exponential backoff (2, 4, 8, ... s, capped)."""
    from worker.jobs import scan_summary
    from worker.webhooks import WebhookFailed, deliver

    settings = get_settings()
    db = settings.effective_database_url
    payload = scan_summary(db, scan_id)
    if payload is None:
        return None
    try:
        return deliver(db, scan_id, payload, settings.webhook_timeout_s)
    except WebhookFailed as exc:
        if self.request.retries >= settings.webhook_max_retries:
            log.warning("giving up on webhook of scan %s: %s", scan_id, exc)
            return None
        raise self.retry(exc=exc, countdown=min(2 ** (self.request.retries + 1), 300)) from exc
