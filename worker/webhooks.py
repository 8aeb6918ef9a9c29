"""Completion webhooks, HMAC-SHA256 signed with the tenant's webhook secret.

Header `X-Dgmscan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (the
timestamp inside the MAC lets receivers refuse replays). Delivery is retried with exponential
backoff by the Celery task.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

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


class WebhookRefused(ValueError):
    """The callback URL points somewhere the service must not call (not retried)."""


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse callbacks to loopback, private, link-local (cloud metadata) or reserved addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"callback URL {url!r} is not http(s)")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise WebhookFailed(f"cannot resolve {parts.hostname}: {exc}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global or addr.is_multicast:
            raise WebhookRefused(f"callback host {parts.hostname} resolves to non-public address {addr}")


def deliver(
    db: str, scan_id: str, payload: dict[str, Any], timeout_s: float, allow_private: bool = False
) -> int | None:
    """POST the payload to the scan's callback URL. Returns the HTTP status, None if there is no callback."""
    with session_scope(db) as session:
        scan = session.get(Scan, scan_id)
        if scan is None or not scan.callback_url:
            return None
        tenant = session.get(Tenant, scan.tenant_id)
        url, secret = scan.callback_url, tenant.webhook_secret if tenant else ""
    check_destination(url, allow_private)
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
