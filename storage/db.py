"""Engine and sessions. The schema is created by `canary db init` (and upgraded by
`canary db upgrade`, storage.migrate), never on import."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import create_engine

from storage import models  # noqa: F401  (registers the tables on the metadata)


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the API read while workers write; busy_timeout waits for the lock
    # instead of failing when several worker processes commit at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def normalise_url(url: str) -> str:
    """Use psycopg 3 for bare ``postgresql://`` URLs (psycopg2 is not a dependency)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _forget_inherited_connections() -> None:
    """In a forked child (a worker's replacement pool process): never use the parent's
    pooled connections, whose sockets the parent keeps using (SQLAlchemy's pattern for
    multiprocessing: dispose without closing them)."""
    for engine in _engines:
        engine.dispose(close=False)


_engines: list[Engine] = []
os.register_at_fork(after_in_child=_forget_inherited_connections)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    engine = _make_engine(normalise_url(url))
    _engines.append(engine)
    return engine


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def init_db(engine: Engine) -> None:
    """Create the schema, or upgrade an existing database to it (idempotent)."""
    from storage.migrate import create_or_upgrade  # Alembic only where the schema is made

    create_or_upgrade(engine)


def dialect_insert(engine: Engine) -> Any:
    """The backend's INSERT construct, which has ``on_conflict_do_nothing/update``."""
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
