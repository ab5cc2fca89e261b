"""Migration 0008 (shadow jobs) on real SQLite and PostgreSQL: a database at 0007 with
jobs upgrades to the head keeping every row, the jobs get ``shadow_of`` empty and indexed,
a shadow job can be recorded and found, and it downgrades again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect, text

from storage import jobs
from storage.db import get_engine, init_db
from storage.migrate import alembic_config, current_revision, head_revision, schema_differences
from storage.migrate import upgrade_db as upgrade
from storage.models import Job
from storage.shadow import queued_shadow_jobs
from tests.integration.test_migrations import empty_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def engine(empty_url: str) -> Iterator:  # type: ignore[type-arg]  # noqa: F811
    yield get_engine(empty_url)


def job_columns(engine) -> set[str]:  # type: ignore[no-untyped-def]
    return {c["name"] for c in inspect(engine).get_columns("jobs")}


def job_indexes(engine) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("jobs")}


def test_upgrade_from_0007_adds_shadow_of_and_keeps_the_jobs(engine) -> None:  # type: ignore[no-untyped-def]
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0007")
    assert "shadow_of" not in job_columns(engine)
    with engine.begin() as conn:  # rows as the 0007 release wrote them
        conn.execute(
            text(
                "INSERT INTO jobs (id, source, model_version, prompt, negative_prompt, seed, "
                "steps, guidance, width, height, status, attempts, misroutes, created_at, "
                "priority_class) VALUES (:id, 'api', 'v1', 'p', '', 1, 4, 7.5, 64, 64, "
                ":status, 0, 0, :at, 'interactive')"
            ),
            [{"id": f"job-{status}", "status": status, "at": T0}
             for status in ("QUEUED", "RUNNING", "SUCCEEDED")],
        )  # fmt: skip

    assert upgrade(engine) == ("0007", head_revision())
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
    assert job_indexes(engine)["ix_jobs_shadow_of"] == ["shadow_of"]
    kept = jobs.get_jobs(engine, ["job-QUEUED", "job-RUNNING", "job-SUCCEEDED"])
    assert len(kept) == 3 and all(job.shadow_of is None for job in kept)
    assert queued_shadow_jobs(engine, "v1") == 0  # a live QUEUED job is not a shadow one
    jobs.insert_new_jobs(
        engine,
        [Job(id="shadow-1", source="shadow", shadow_of="job-QUEUED", model_version="v1",
             prompt="p", seed=1, steps=4, guidance=7.5, width=64, height=64)],
    )  # fmt: skip
    assert queued_shadow_jobs(engine, "v1") == 1

    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0007")
    assert "shadow_of" not in job_columns(engine)
    assert "ix_jobs_shadow_of" not in job_indexes(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 4


def test_a_bare_create_all_with_shadow_of_is_recognised(engine) -> None:  # type: ignore[no-untyped-def]
    """A ``create_all`` of these models without Alembic's stamp is taken for the head, not
    for 0007 (whose upgrade would add the column a second time)."""
    from sqlmodel import SQLModel

    SQLModel.metadata.create_all(engine)
    assert upgrade(engine) == (head_revision(), head_revision())
