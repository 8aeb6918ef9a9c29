"""Database engine and sessions (SQLAlchemy 2). Postgres in production and tests, SQLite embedded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from persistence.settings import get_settings


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process (pooled connections)."""
    url = url or get_settings().effective_database_url
    if url.startswith("sqlite"):
        # the embedded worker thread and the API share the file: wait on locks instead of failing
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return _session_factory(url or get_settings().effective_database_url)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str | None = None) -> None:
    """Raise if the database cannot answer `SELECT 1`."""
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))


def upgrade_to_head(url: str | None = None) -> None:
    """Apply the Alembic migrations (used by `dgmscan serve` on the embedded SQLite file)."""
    from alembic import command

    from persistence.migrate import alembic_config

    command.upgrade(alembic_config(url or get_settings().effective_database_url), "head")
