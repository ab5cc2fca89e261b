"""Schema upgrades with Alembic, on real SQLite and PostgreSQL.

A database built by the previous release (frozen in tests/legacy_models_d71d983.py, rows in
every table, jobs in every status) is upgraded by `canary db upgrade` and keeps every row;
the migrations build exactly the schema storage/models.py defines (so a model change
without a migration fails here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from storage import jobs
from storage.db import get_engine, init_db, normalise_url
from storage.migrate import (
    BASELINE,
    SchemaError,
    alembic_config,
    current_revision,
    head_revision,
    schema_differences,
    upgrade_db,
)
from storage.models import Batch, BatchLine, JobStatus, ModelRevision
from tests import legacy_models_d71d983 as old
from tests.integration.conftest import PROJECT_ROOT, TEST_POSTGRES_URL

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL schema of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'canary.db'}"
        return
    schema = f"canary_migrate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{TEST_POSTGRES_URL}?options=-csearch_path%3D{schema}"
    yield url
    get_engine(url).dispose()
    with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def previous_release_rows() -> list[old.LegacyTable]:
    """A row in every table of the previous release; one job in every status."""
    jobs_ = [
        old.Job(
            id=f"job-{status.lower()}", model_version="v1" if i % 2 else "v2",
            prompt=f"a lighthouse at dusk {i}", seed=2**40 + i, steps=4, guidance=7.5,
            width=64, height=64, status=status, attempts=i, user_id=f"user-{i}",
            experiment="exp", arm="candidate" if i % 2 else "baseline", segment="new",
            source="bulk", batch_id="batch-1", idempotency_key=f"key-{i}",
            created_at=T0 + timedelta(seconds=i), enqueued_at=T0 + timedelta(seconds=i),
            started_at=T0 + timedelta(seconds=5) if status != JobStatus.QUEUED else None,
            finished_at=T0 + timedelta(seconds=9) if status in ("SUCCEEDED", "FAILED") else None,
            image_key=f"renders/v1/job-{i}.png" if status == "SUCCEEDED" else None,
            failure_kind="oom" if status == "FAILED" else None,
            failure_message="CUDA out of memory" if status == "FAILED" else None,
            inference_ms=812.5, peak_vram_bytes=21 * 2**30,
        )
        for i, status in enumerate(old.JobStatus)
    ]  # fmt: skip
    return [
        *jobs_,
        old.Assignment(
            experiment="exp", user_id="user-1", arm="candidate", variant="v2", segment="new",
            stage="5%", first_seen=T0, last_seen=T0, promoted_at=T0,
        ),
        old.UserProfile(user_id="user-1", signed_up_at=T0),
        old.ApiKey(
            id="key-1", name="ops", role="operator", key_hash="ab" * 32, prefix="ck_ab",
            created_at=T0,
        ),
        old.ModelRevision(version="v2", revision="r1", source="/models/v2", published_at=T0),
        old.WorkerRecord(node="render-v1-cpu@host", version="v1", device="cpu", updated_at=T0),
        old.VersionState(version="v0", retired_at=T0, rerouted_to="v1", retention_days=3.5),
        old.GoldenRun(
            id="run-1", trigger="nightly", set_name="golden", set_sha256="f" * 64,
            set_text="cases: []", case_count=1, baseline="v1", candidate="v2",
            status="COMPLETE", created_at=T0, completed_at=T0,
        ),
        old.GoldenResult(
            run_id="run-1", case_id="pose-001", version="v2", job_id="job-succeeded",
            category="pose", checked_at=T0, auto_level="A", drift_rmse=0.25, drifted=False,
        ),
        old.GoldenGrade(
            run_id="run-1", case_id="pose-001", version="v2", grader="ana", level="B",
            graded_at=T0,
        ),
        old.Event(
            id="evt-1", type="image_viewed", user_id="user-1", job_id="job-succeeded",
            occurred_at=T0, received_at=T0, dwell_ms=16_000,
        ),
        old.ExperimentState(experiment="exp", stage="5%", auto=True, stage_since=T0, updated_at=T0),
        old.RolloutEvent(
            experiment="exp", at=T0, actor="ops", action="advance", from_stage="internal",
            to_stage="5%", evaluation='{"ok": true}',
        ),
    ]  # fmt: skip


def build_previous_release(url: str) -> Engine:
    """A database as the previous release left it: its `create_all`, then its rows."""
    engine = create_engine(normalise_url(url))
    old.LegacyTable.metadata.create_all(engine)
    rows = previous_release_rows()
    assert {type(row).__table__.name for row in rows} == set(old.LegacyTable.metadata.tables)
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    return engine


def snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every previous-release table, in primary-key order."""
    with engine.connect() as conn:
        return {
            name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))]
            for name, table in old.LegacyTable.metadata.tables.items()
        }


def canary(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_upgrade_keeps_every_row_of_the_previous_release(empty_url: str) -> None:
    legacy = build_previous_release(empty_url)
    before = snapshot(legacy)
    legacy.dispose()

    result = canary("db", "upgrade", database_url=empty_url)
    assert result.returncode == 0, result.stderr
    assert f"{BASELINE} -> {head_revision()}" in result.stdout

    engine = get_engine(empty_url)
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
    states = {
        job.id: job.status for job in jobs.get_jobs(engine, [f"job-{s.lower()}" for s in JobStatus])
    }
    assert states == {f"job-{s.lower()}": s for s in JobStatus}
    with Session(engine) as session:  # the new tables and the old sequences work
        session.add_all([
            Batch(id="batch-2", source="bulk", created=1),
            BatchLine(batch_id="batch-2", line=1, job_id="job-queued"),
            ModelRevision(version="v2", revision="r2", source="/models/v2"),
        ])  # fmt: skip
        session.commit()

    again = canary("db", "upgrade", database_url=empty_url)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
    assert canary("db", "init", database_url=empty_url).returncode == 0


def test_migrations_build_exactly_the_models_schema(empty_url: str) -> None:
    """`alembic check`: a model change without a migration fails here."""
    engine = get_engine(empty_url)
    assert upgrade_db(engine) == (None, head_revision())
    with engine.connect() as conn:
        assert schema_differences(conn) == []


def test_init_db_creates_the_schema_at_head_and_is_idempotent(empty_url: str) -> None:
    engine = get_engine(empty_url)
    init_db(engine)
    init_db(engine)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert schema_differences(conn) == []
    assert upgrade_db(engine) == (head_revision(), head_revision())


def test_a_database_from_create_all_without_alembic_is_recognised(empty_url: str) -> None:
    engine = get_engine(empty_url)
    SQLModel.metadata.create_all(engine)  # `canary db init` before migrations existed
    assert upgrade_db(engine) == (head_revision(), head_revision())
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()


def test_downgrade_to_the_baseline_and_back(empty_url: str) -> None:
    engine = get_engine(empty_url)
    init_db(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), BASELINE)
    assert "batches" not in inspect(engine).get_table_names()
    assert upgrade_db(engine) == (BASELINE, head_revision())
    assert "batches" in inspect(engine).get_table_names()


def test_a_database_from_a_newer_release_is_refused(empty_url: str) -> None:
    engine = get_engine(empty_url)
    init_db(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="9999 is unknown"):
        init_db(engine)


def test_an_unrecognised_schema_is_refused(empty_url: str) -> None:
    engine = get_engine(empty_url)
    old.Job.__table__.create(engine)
    with pytest.raises(SchemaError, match="tables missing"):
        upgrade_db(engine)
    result = canary("db", "upgrade", database_url=empty_url)
    assert result.returncode == 1 and "unrecognised schema" in result.stderr
