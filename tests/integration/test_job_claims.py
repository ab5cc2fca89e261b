"""Who may claim a job (storage.jobs.claim_job), on SQLite and PostgreSQL: a queued job
anyone; a running job only its holder, anyone once recovery has taken it to send again,
or anyone once it is older than the stale cutoff; a finished job nobody."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from storage import jobs
from storage.db import get_engine
from storage.models import Job, JobStatus, utcnow
from tests.integration.conftest import fresh_database_url

pytestmark = pytest.mark.integration

NOW = utcnow()
STALE = NOW - timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, postgres_schema_url: str) -> Engine:
    return get_engine(fresh_database_url(request.param, tmp_path, postgres_schema_url))


def new_job(engine: Engine, job_id: str) -> str:
    jobs.insert_new_jobs(
        engine,
        [Job(id=job_id, model_version="v1", prompt="a fox", seed=1, steps=2, guidance=7.5,
             width=64, height=64)],
    )  # fmt: skip
    return job_id


def claim(engine: Engine, job_id: str, host: str, when=NOW):  # type: ignore[no-untyped-def]
    return jobs.claim_job(engine, job_id, started_at=when, stale_before=STALE, worker_host=host)


def test_a_running_job_stays_with_its_holder(engine: Engine) -> None:
    job_id = new_job(engine, "held")
    assert claim(engine, job_id, "a@h").attempt == 1
    assert claim(engine, job_id, "b@h") is None  # another worker leaves it
    assert claim(engine, job_id, "a@h").attempt == 2  # its holder takes it again
    row = jobs.get_job(engine, job_id)
    assert (row.status, row.worker_host, row.attempts) == (JobStatus.RUNNING, "a@h", 2)


def test_a_job_taken_to_be_sent_again_goes_to_whoever_receives_it(engine: Engine) -> None:
    job_id = new_job(engine, "stranded")
    claim(engine, job_id, "a@h")
    (taken,) = jobs.take_stranded(engine, model_version="v1", worker_host="a@h")
    assert taken.id == job_id and taken.worker_host is None
    assert claim(engine, job_id, "b@h").attempt == 2


def test_a_stale_running_job_goes_to_anyone(engine: Engine) -> None:
    job_id = new_job(engine, "stale")
    claim(engine, job_id, "a@h", when=STALE - timedelta(seconds=1))
    assert claim(engine, job_id, "b@h").attempt == 2


def test_without_a_cutoff_any_running_job_is_claimable(engine: Engine) -> None:
    job_id = new_job(engine, "legacy")
    claim(engine, job_id, "a@h")
    assert jobs.claim_job(engine, job_id, started_at=NOW, worker_host="b@h").attempt == 2


def test_released_and_finished_jobs(engine: Engine) -> None:
    released, finished = new_job(engine, "released"), new_job(engine, "finished")
    claim(engine, released, "a@h")
    (row,) = jobs.release(engine, [released])
    assert (row.status, row.attempts, row.worker_host) == (JobStatus.QUEUED, 0, None)
    assert claim(engine, released, "b@h").attempt == 1
    claim(engine, finished, "a@h")
    assert jobs.finish(engine, finished, JobStatus.SUCCEEDED)
    assert claim(engine, finished, "a@h") is None
