"""Migration 0003 (job_attempts) on real SQLite and PostgreSQL: a database at 0002 with
jobs upgrades to the head keeping every row, and gets the table the models define."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, inspect
from sqlmodel import Session, select

from storage import jobs
from storage.db import get_engine, init_db
from storage.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    schema_differences,
    upgrade_db,
)
from storage.models import Job, JobAttempt, JobStatus, utcnow
from tests.integration.test_migrations import empty_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(empty_url: str) -> Iterator:  # type: ignore[type-arg]  # noqa: F811
    yield get_engine(empty_url)


def test_upgrade_from_0002_adds_job_attempts_and_keeps_the_jobs(engine) -> None:  # type: ignore[no-untyped-def]
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert "job_attempts" not in inspect(engine).get_table_names()
    # rows as a 0002 release wrote them: the columns its jobs table has (read from it)
    table_0002 = Table("jobs", MetaData(), autoload_with=engine)
    rows_0002 = [
        {name: value for name, value in Job(
            id=f"job-{n}", model_version="v1", prompt="a fox", seed=n, steps=2, guidance=7.5,
            width=64, height=64).model_dump().items() if name in table_0002.c}
        for n in range(3)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(table_0002.insert(), rows_0002)
    jobs.claim_job(engine, "job-1", started_at=utcnow(), worker_host="a@h")

    assert upgrade_db(engine) == ("0002", head_revision())
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
    rows = {row.id: row for row in jobs.get_jobs(engine, [f"job-{n}" for n in range(3)])}
    assert {job_id: row.status for job_id, row in rows.items()} == {
        "job-0": JobStatus.QUEUED, "job-1": JobStatus.RUNNING, "job-2": JobStatus.QUEUED,
    }  # fmt: skip
    # the new table works: recovery records the lost attempt it re-sends
    (taken,) = jobs.take_stranded(engine, model_version="v1", worker_host="a@h", cause="gone")
    assert taken.id == "job-1"
    with Session(engine) as session:
        (attempt,) = session.exec(select(JobAttempt)).all()
    assert (attempt.job_id, attempt.attempt, attempt.node, attempt.cause) == (
        "job-1", 1, "a@h", "gone",
    )  # fmt: skip
