"""Producer side against real Redis and databases: bad input, bulk files, idempotency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from sqlmodel import Session, func, select

from canary.contracts import queues_for
from gateway.job_requests import InvalidJob
from storage.models import Job, JobStatus
from tests.integration.conftest import PROJECT_ROOT, Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Stack:
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    return make_stack(
        tmp_path, clean_redis, database_url, f"file://{tmp_path / 'objects'}", model_dir
    )


def queue_lengths(stack: Stack) -> dict[str, int]:
    client = redis.Redis.from_url(stack.settings.broker_url)
    return {v: sum(client.llen(q) for q in queues_for(v)) for v in stack.settings.versions}


def job_count(stack: Stack) -> int:
    with Session(stack.engine) as session:
        return session.exec(select(func.count()).select_from(Job)).one()


BAD_REQUESTS = [
    ({"prompt": "", "model_version": "v1"}, "prompt"),
    ({"prompt": "x", "model_version": "v1", "width": 65}, "width: must be a multiple of 8"),
    ({"prompt": "x", "model_version": "v1", "height": 8192}, "height: must be between"),
    ({"prompt": "x", "model_version": "nope"}, "unknown version 'nope'"),
    ({"prompt": "x", "model_version": "v1", "steps": -3}, "steps"),
    ({"prompt": "x"}, "user_id: required when model_version is not given"),
]


@pytest.mark.parametrize(("request_data", "message"), BAD_REQUESTS)
def test_invalid_request_is_rejected_and_nothing_enqueued(
    stack: Stack, request_data: dict, message: str
) -> None:
    with pytest.raises(InvalidJob, match=message):
        stack.gateway().submit(request_data)
    assert queue_lengths(stack) == {"v1": 0, "v2": 0}
    assert job_count(stack) == 0


def test_same_idempotency_key_gives_one_job_and_one_message(stack: Stack) -> None:
    gateway = stack.gateway()
    spec = {"prompt": "a boat", "model_version": "v2", "idempotency_key": "client-42"}
    first = gateway.submit(spec)
    second = gateway.submit(spec)
    assert first.job_id == second.job_id
    assert (first.created, second.created) == (True, False)
    assert queue_lengths(stack) == {"v1": 0, "v2": 1}
    assert job_count(stack) == 1


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args],
        env=stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bulk_file_reports_bad_lines_and_submits_good_ones_once(
    stack: Stack, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"prompt": f"scene {i}", "model_version": f"v{1 + i % 2}"}) for i in range(6)
    ]
    lines.insert(2, '{"prompt": "broken"')
    lines.insert(5, json.dumps({"prompt": "too wide", "model_version": "v1", "width": 99}))
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert (
        subprocess.run(
            [sys.executable, "-m", "canary.cli", "db", "init"], env=stack.env, cwd=PROJECT_ROOT
        ).returncode
        == 0
    )

    result = run_cli(stack, "submit", str(path))
    assert result.returncode == 1, result.stderr  # bad lines make the exit code non-zero
    assert "jobs.jsonl:3:" in result.stderr and "invalid JSON" in result.stderr
    assert "jobs.jsonl:6:" in result.stderr and "width: must be a multiple of 8" in result.stderr
    assert "6 jobs queued, 0 already submitted, 2 lines rejected" in result.stdout
    assert queue_lengths(stack) == {"v1": 3, "v2": 3}

    again = run_cli(stack, "submit", str(path))
    assert "0 jobs queued, 6 already submitted" in again.stdout
    assert queue_lengths(stack) == {"v1": 3, "v2": 3}
    with Session(stack.engine) as session:
        rows = session.exec(select(Job)).all()
    assert len(rows) == 6
    assert {r.status for r in rows} == {JobStatus.QUEUED}
    assert all(r.enqueued_at is not None and r.source == "bulk" for r in rows)


def test_status_command_shows_a_job(stack: Stack) -> None:
    submitted = stack.gateway().submit({"prompt": "a kite", "model_version": "v1", "seed": 3})
    result = run_cli(stack, "status", submitted.job_id)
    assert result.returncode == 0, result.stderr
    assert submitted.job_id in result.stdout and "QUEUED" in result.stdout
    missing = run_cli(stack, "status", "no-such-job")
    assert missing.returncode == 1 and "no job or batch no-such-job" in missing.stderr


def test_bulk_cli_assigns_versions_like_the_api(stack: Stack, tmp_path: Path) -> None:
    """Lines without a model_version go through the same experiment assignment."""
    from gateway.assignment import Assigner
    from gateway.experiments import parse_config

    experiment = {
        "default_version": "v1",
        "experiments": [
            {
                "name": "bulk-canary",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [{"name": "50%", "shares": {"default": 0.5}}],
                "stage": "50%",
            }
        ],
    }
    experiment_file = tmp_path / "experiment.json"  # JSON is YAML too
    experiment_file.write_text(json.dumps(experiment))
    stack.env["CANARY_EXPERIMENT_FILE"] = str(experiment_file)
    users = [f"bulk-user-{i}" for i in range(20)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "p", "user_id": u}) for u in users) + "\n")
    assert run_cli(stack, "db", "init").returncode == 0
    result = run_cli(stack, "submit", str(path))
    assert result.returncode == 0, result.stderr

    expected = Assigner(parse_config(experiment, ["v1", "v2"]))
    with Session(stack.engine) as session:
        rows = {r.user_id: r for r in session.exec(select(Job)).all()}
    assert set(rows) == set(users)
    for user in users:
        decision = expected.decide(user, "everyone_else")
        assert rows[user].model_version == decision.variant
        assert (rows[user].experiment, rows[user].arm) == ("bulk-canary", decision.arm)
    assert {r.model_version for r in rows.values()} == {"v1", "v2"}


def test_jobs_recorded_but_never_sent_are_republished(stack: Stack) -> None:
    """A producer that died between the insert and the publish leaves a QUEUED row behind."""
    from datetime import timedelta

    from scheduler.maintenance import republish_unsent
    from storage.models import utcnow

    old, fresh = (
        Job(
            id=f"orphan-{i}",
            model_version="v2",
            prompt="lost",
            seed=1,
            steps=2,
            guidance=7.5,
            width=64,
            height=64,
            created_at=utcnow() - age,
        )
        for i, age in enumerate((timedelta(minutes=5), timedelta(seconds=5)))
    )
    with Session(stack.engine) as session:
        session.add_all([old, fresh])
        session.commit()
    producer = stack.gateway().producer
    assert republish_unsent(producer, timedelta(seconds=60)) == 1
    assert queue_lengths(stack) == {"v1": 0, "v2": 1}
    with Session(stack.engine) as session:
        assert session.get(Job, "orphan-0").enqueued_at is not None
        assert session.get(Job, "orphan-1").enqueued_at is None  # too young: maybe in flight
    assert republish_unsent(producer, timedelta(seconds=60)) == 0
