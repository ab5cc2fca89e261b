"""Migration 0005 (limits per API key) on real SQLite and PostgreSQL: a database at 0004
with keys and jobs upgrades to the head keeping every row, its keys get the two limit
columns empty (the settings' defaults), the jobs' key index becomes (api_key_id, status),
and it downgrades again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect, text

from gateway.key_limits import set_key_limits
from storage import api_keys
from storage.db import get_engine, init_db
from storage.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    schema_differences,
    upgrade_db,
)
from tests.integration.test_migrations import empty_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
LIMIT_COLUMNS = {"rate_per_s", "max_queued"}


@pytest.fixture
def engine(empty_url: str) -> Iterator:  # type: ignore[type-arg]  # noqa: F811
    yield get_engine(empty_url)


def key_columns(engine) -> set[str]:  # type: ignore[no-untyped-def]
    return {c["name"] for c in inspect(engine).get_columns("api_keys")}


def job_indexes(engine) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("jobs")}


def test_upgrade_from_0004_adds_the_limits_and_keeps_keys_and_jobs(engine) -> None:  # type: ignore[no-untyped-def]
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert not LIMIT_COLUMNS & key_columns(engine)
    assert job_indexes(engine)["ix_jobs_api_key_id"] == ["api_key_id"]
    with engine.begin() as conn:  # rows as the 0004 release wrote them
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, role, key_hash, prefix, created_at) "
                "VALUES (:id, :name, 'client', :hash, 'cr_x', :at)"
            ),
            [{"id": f"key-{n}", "name": f"app-{n}", "hash": f"{n}" * 64, "at": T0}
             for n in range(2)],
        )  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO jobs (id, source, api_key_id, model_version, prompt, "
                "negative_prompt, seed, steps, guidance, width, height, status, attempts, "
                "misroutes, created_at) VALUES (:id, 'api', 'key-0', 'v1', 'p', '', 1, 4, "
                "7.5, 64, 64, :status, 0, 0, :at)"
            ),
            [{"id": f"job-{status}", "status": status, "at": T0}
             for status in ("QUEUED", "RUNNING", "SUCCEEDED")],
        )  # fmt: skip

    assert upgrade_db(engine) == ("0004", head_revision())
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
    assert key_columns(engine) >= LIMIT_COLUMNS
    indexes = job_indexes(engine)
    assert indexes["ix_jobs_api_key_status"] == ["api_key_id", "status"]
    assert "ix_jobs_api_key_id" not in indexes
    keys = {key.id: key for key in api_keys.list_keys(engine)}
    assert sorted(keys) == ["key-0", "key-1"]
    assert all(k.rate_per_s is None and k.max_queued is None for k in keys.values())
    assert api_keys.count_unfinished_of_key(engine, "key-0") == 2
    assert api_keys.unfinished_by_key(engine) == {"key-0": 2}
    changed = set_key_limits(engine, "key-1", rate_per_s=2.5, max_queued=10)
    assert (changed.rate_per_s, changed.max_queued) == (2.5, 10)

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert not LIMIT_COLUMNS & key_columns(engine)
    assert job_indexes(engine)["ix_jobs_api_key_id"] == ["api_key_id"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 2
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 3


def test_a_bare_create_all_with_the_limit_columns_is_recognised(engine) -> None:  # type: ignore[no-untyped-def]
    """A database made by ``create_all`` of these models without Alembic's stamp is taken
    for what it is, not for 0004 (whose upgrade would add the columns a second time)."""
    from sqlmodel import SQLModel

    SQLModel.metadata.create_all(engine)
    assert upgrade_db(engine) == (head_revision(), head_revision())
