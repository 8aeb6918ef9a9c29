"""Row operations shared by the API and the worker: status transitions and idempotent upserts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from persistence.models import ArtifactRow, CheckRow, Scan, utcnow
from persistence.status import ScanStatus, check_transition, is_terminal


def _insert_for(session: Session, table: Any) -> Any:
    """INSERT ... ON CONFLICT support of the session's dialect (Postgres in production, SQLite embedded)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts are implemented for postgresql and sqlite, not {name}")


def upsert_check(session: Session, scan_id: str, name: str, **values: Any) -> None:
    """Insert or update the (scan_id, name) check row: a re-delivered task never duplicates it."""
    stmt = _insert_for(session, CheckRow.__table__).values(scan_id=scan_id, name=name, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=["scan_id", "name"], set_=values))


def upsert_artifact(session: Session, scan_id: str, name: str, **values: Any) -> None:
    """Insert or update the (scan_id, name) artifact row."""
    stmt = _insert_for(session, ArtifactRow.__table__).values(scan_id=scan_id, name=name, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=["scan_id", "name"], set_=values))


def transition(session: Session, scan_id: str, new: ScanStatus, **values: Any) -> bool:
    """Move a scan to `new` if the lifecycle allows it from its current status (compare-and-set,
    so two workers or a worker and a cancel request cannot both win). Returns whether it moved."""
    scan = session.get(Scan, scan_id, populate_existing=True)
    if scan is None:
        return False
    try:
        check_transition(scan.status, new)
    except ValueError:
        return False
    now = utcnow()
    extra: dict[str, Any] = {"updated_at": now}
    if new == ScanStatus.running:
        extra["started_at"] = now
    if is_terminal(new):
        extra["finished_at"] = now
    result = session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.status == scan.status)
        .values(status=new.value, **extra, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
