"""Migration 0004 (metric roll-ups) on real SQLite and PostgreSQL: a database at 0003 with
events upgrades to the head keeping every row, gets the roll-up tables and the
events.received_at index the models define, and downgrades again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect
from sqlmodel import Session, select

from storage.db import get_engine, init_db
from storage.migrate import (
    ROLLUP_TABLES,
    alembic_config,
    current_revision,
    head_revision,
    schema_differences,
    upgrade_db,
)
from storage.models import Event
from tests.integration.test_migrations import empty_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def engine(empty_url: str) -> Iterator:  # type: ignore[type-arg]  # noqa: F811
    yield get_engine(empty_url)


def test_upgrade_from_0003_adds_the_rollup_tables_and_keeps_the_events(engine) -> None:  # type: ignore[no-untyped-def]
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    inspector = inspect(engine)
    assert not set(ROLLUP_TABLES) & set(inspector.get_table_names())
    assert "ix_events_received" not in {i["name"] for i in inspector.get_indexes("events")}
    with Session(engine) as session:
        for n in range(3):
            session.add(Event(id=f"e{n}", type="login", user_id=f"u{n}", occurred_at=T0))
        session.commit()

    assert upgrade_db(engine) == ("0003", head_revision())
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
    inspector = inspect(engine)
    assert set(ROLLUP_TABLES) <= set(inspector.get_table_names())
    assert "ix_events_received" in {i["name"] for i in inspector.get_indexes("events")}
    with Session(engine) as session:
        assert sorted(e.id for e in session.exec(select(Event)).all()) == ["e0", "e1", "e2"]

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0003")
    assert not set(ROLLUP_TABLES) & set(inspect(engine).get_table_names())
