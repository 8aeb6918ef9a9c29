"""`dgmscan keys`: create and revoke API keys (a plugin of the `dgmscan` command).

Kept light: the database stack is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="create or revoke API keys of the REST service", description=__doc__)
    sub = p.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="create a key for a tenant (created if new); prints the key last")
    c.add_argument("--tenant", required=True, help="tenant name")
    c.add_argument(
        "--scope",
        action="append",
        choices=["scans:read", "scans:write"],
        help="scope to grant (repeatable; default both)",
    )
    c.set_defaults(handler=_create)
    r = sub.add_parser("revoke", help="revoke a key by its id")
    r.add_argument("key_id")
    r.set_defaults(handler=_revoke)


def prepare_database() -> None:
    """The embedded SQLite database migrates itself; Postgres is migrated by the `migrate` job."""
    from persistence.db import upgrade_to_head
    from persistence.settings import get_settings

    settings = get_settings()
    if settings.effective_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade_to_head()


def _create(args: argparse.Namespace) -> int:
    from persistence.db import session_scope
    from persistence.keys import DEFAULT_SCOPES, KeyManagementError, create_key

    prepare_database()
    try:
        with session_scope() as session:
            created = create_key(session, args.tenant, tuple(args.scope or DEFAULT_SCOPES))
    except KeyManagementError as exc:
        print(f"dgmscan keys: {exc}", file=sys.stderr)
        return 2
    print(f"tenant: {args.tenant} ({created.tenant_id}){' (new)' if created.tenant_created else ''}")
    if created.webhook_secret:
        print(f"webhook signing secret (shown once): {created.webhook_secret}")
    print(f"key id: {created.key_id}")
    print(created.key)  # the key, alone on the last line, for scripts
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from persistence.db import session_scope
    from persistence.keys import revoke_key

    prepare_database()
    with session_scope() as session:
        ok = revoke_key(session, args.key_id)
    print("revoked" if ok else "no such active key")
    return 0 if ok else 1
