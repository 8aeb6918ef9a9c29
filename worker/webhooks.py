"""Completion webhooks, HMAC-SHA256 signed with the tenant's webhook secret.

Header `X-Dgmscan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (the
timestamp inside the MAC lets receivers refuse replays). Delivery is retried with exponential
backoff by the Celery task.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from persistence.db import session_scope
from persistence.models import Scan, Tenant

SIGNATURE_HEADER = "X-Dgmscan-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300, now: int | None = None) -> bool:
    """Receiver-side check (also used by the tests): constant-time MAC compare and a freshness window."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    now = int(time.time()) if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), header)


class WebhookFailed(RuntimeError):
    """The receiver did not answer 2xx; the task retries."""


def deliver(db: str, scan_id: str, payload: dict[str, Any], timeout_s: float) -> int | None:
    """POST the payload to the scan's callback URL. Returns the HTTP status, None if there is no callback."""
    with session_scope(db) as session:
        scan = session.get(Scan, scan_id)
        if scan is None or not scan.callback_url:
            return None
        tenant = session.get(Tenant, scan.tenant_id)
        url, secret = scan.callback_url, tenant.webhook_secret if tenant else ""
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body, int(time.time()))}
    try:
        # no redirects: a signed payload goes only where the tenant said
        resp = httpx.post(url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise WebhookFailed(f"webhook to {url} failed: {exc}") from exc
    if not 200 <= resp.status_code < 300:
        raise WebhookFailed(f"webhook to {url} answered {resp.status_code}")
    return resp.status_code
