"""API keys: one tenant, many keys, each with scopes. Only the sha256 of a key is stored.

A key is `dgm_` + 32 random bytes (urlsafe base64), so a fast hash is enough (no password
stretching needed for 256 bits of entropy); lookup is by hash and the final comparison is
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from persistence.models import ApiKey, Tenant

KEY_PREFIX = "dgm_"
SCOPES: frozenset[str] = frozenset({"scans:read", "scans:write"})
DEFAULT_SCOPES: tuple[str, ...] = ("scans:read", "scans:write")


class KeyManagementError(ValueError):
    """Invalid key-management request (unknown scope, bad tenant name)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and the scopes of the presented key."""

    tenant_id: str
    key_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class CreatedKey:
    key: str  # shown once
    key_id: str
    tenant_id: str
    tenant_created: bool
    webhook_secret: str | None  # shown once, when the tenant is created


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, tenant_name: str, scopes: tuple[str, ...] = DEFAULT_SCOPES) -> CreatedKey:
    """Create a key for `tenant_name` (creating the tenant if new). The caller commits."""
    tenant_name = tenant_name.strip()
    if not tenant_name or len(tenant_name) > 128:
        raise KeyManagementError("tenant name must be 1-128 characters")
    unknown = set(scopes) - SCOPES
    if unknown or not scopes:
        raise KeyManagementError(f"unknown or empty scopes {sorted(unknown)}; valid: {sorted(SCOPES)}")
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    created = tenant is None
    if tenant is None:
        tenant = Tenant(name=tenant_name, webhook_secret=secrets.token_urlsafe(32))
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10], scopes=" ".join(sorted(set(scopes))))
    session.add(row)
    session.flush()
    return CreatedKey(
        key=key,
        key_id=row.id,
        tenant_id=tenant.id,
        tenant_created=created,
        webhook_secret=tenant.webhook_secret if created else None,
    )


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal of a presented key, or None (unknown, revoked or malformed)."""
    if not presented.startswith(KEY_PREFIX) or len(presented) > 200:
        return None
    digest = hash_key(presented)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Principal(tenant_id=row.tenant_id, key_id=row.id, scopes=row.scope_set)


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = datetime.now(timezone.utc)
    return True
