"""Shadow copies on real Redis and SQLite/PostgreSQL: the gateway records a sampled live
baseline job's copy for the candidate at background priority, exactly once; the backlog is
bounded and the skips counted; a pause stops the copies; the candidate's worker renders a
copy under ``shadow/``; no A/B metric counts it; client keys never see it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from canary.contracts import PriorityClass, queue_for
from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.service import Gateway
from gateway.shadow import ShadowControls, shadow_job_id
from storage import jobs, metrics
from storage.models import ApiKeyRole, Job, JobStatus, utcnow
from tests.integration.conftest import Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration

EXPERIMENT = "v2-canary"


def experiment_file(path: Path, shadow: Any) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "default_version": "v1",
                "experiments": [
                    {
                        "name": EXPERIMENT,
                        "seed": "shadow-test",
                        "baseline": "v1",
                        "candidate": "v2",
                        "stages": [
                            {"name": "internal", "shares": {"default": 0.0}, "shadow": shadow}
                        ],
                        "stage": "internal",
                    }
                ],
            }
        )
    )
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Iterator[Stack]:
    path = experiment_file(tmp_path / "experiments.yaml", 1.0)
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    built = make_stack(
        tmp_path, clean_redis, database_url, f"file://{tmp_path / 'objects'}", model_dir,
        CANARY_EXPERIMENT_FILE=str(path),
    )  # fmt: skip
    built.settings = built.settings.model_copy(update={"experiment_file": path})
    yield built
    built.stop_workers()


def gateway(stack: Stack, **settings: Any) -> Gateway:
    stack.settings = stack.settings.model_copy(update=settings)
    return stack.gateway()


def submit(gw: Gateway, n: int, *, start: int = 0, **extra: Any) -> list[str]:
    items = [
        {"user_id": f"user-{i}", "prompt": f"a lighthouse {i}", "negative_prompt": "blurry",
         "seed": 1000 + i, "steps": 2, "guidance": 6.0, "width": 64, "height": 64, **extra}
        for i in range(start, start + n)
    ]  # fmt: skip
    return [s.job_id for s in gw.submit_many(gw.prepare_all(items), source="bulk")]


def shadow_jobs(stack: Stack) -> dict[str, Job]:
    with Session(stack.engine) as session:
        rows = session.exec(select(Job).where(col(Job.shadow_of).is_not(None)))
        return {row.shadow_of: row for row in rows if row.shadow_of}


def waiting(stack: Stack, queue: str) -> int:
    return int(redis.Redis.from_url(stack.settings.broker_url).llen(queue))


def test_a_sampled_live_job_is_copied_once_to_the_candidate(stack: Stack) -> None:
    gw = gateway(stack)
    live_ids = submit(gw, 4)
    pinned = gw.submit(
        {"prompt": "pinned", "model_version": "v1", "seed": 1, "steps": 2}, source="api"
    )

    copies = shadow_jobs(stack)
    assert sorted(copies) == sorted(live_ids)  # the pinned job has no experiment: no copy
    assert pinned.job_id not in copies
    for live in jobs.get_jobs(stack.engine, live_ids):
        copy = copies[live.id]
        assert live.model_version == "v1" and live.arm == "baseline"
        assert copy.id == shadow_job_id(live.id)
        assert (copy.source, copy.model_version, copy.priority_class) == (
            "shadow", "v2", PriorityClass.BACKGROUND.value,
        )  # fmt: skip
        same = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height")
        assert {f: getattr(copy, f) for f in same} == {f: getattr(live, f) for f in same}
        assert (copy.experiment, copy.segment) == (EXPERIMENT, live.segment)
        # nobody's job: no user, key, batch or arm (so no A/B metric or key limit counts it)
        assert (copy.user_id, copy.api_key_id, copy.batch_id, copy.arm) == (None,) * 4
        assert copy.status == JobStatus.QUEUED and copy.enqueued_at is not None
    assert waiting(stack, queue_for("v2", PriorityClass.BACKGROUND)) == 4
    assert waiting(stack, queue_for("v2", PriorityClass.BULK)) == 0
    assert ShadowControls(stack.settings.broker_url).counts(EXPERIMENT) == {
        "sampled": 4, "skipped_full": 0,
    }  # fmt: skip


def test_a_replayed_submission_makes_no_second_copy(stack: Stack) -> None:
    gw = gateway(stack)
    items = [{"user_id": f"u-{i}", "prompt": f"p {i}", "steps": 2, "idempotency_key": f"k-{i}"}
             for i in range(3)]  # fmt: skip
    ids = [s.job_id for s in gw.submit_many(gw.prepare_all(items))]
    again = gw.submit_many(gw.prepare_all(items))
    assert [s.job_id for s in again] == ids and not any(s.created for s in again)
    assert sorted(shadow_jobs(stack)) == sorted(ids)
    assert waiting(stack, queue_for("v2", PriorityClass.BACKGROUND)) == 3
    # the copy of a replay has the first submission's inputs (the seed it drew)
    stored = {job.id: job.seed for job in jobs.get_jobs(stack.engine, ids)}
    assert {live: copy.seed for live, copy in shadow_jobs(stack).items()} == stored


def test_a_full_backlog_skips_and_counts_new_samples(stack: Stack) -> None:
    gw = gateway(stack, shadow_max_queued=3)
    submit(gw, 8)
    assert len(shadow_jobs(stack)) == 3
    submit(gw, 2, start=8)
    assert len(shadow_jobs(stack)) == 3
    assert waiting(stack, queue_for("v2", PriorityClass.BACKGROUND)) == 3
    assert ShadowControls(stack.settings.broker_url).counts(EXPERIMENT) == {
        "sampled": 10, "skipped_full": 7,
    }  # fmt: skip
    # the live jobs were all accepted and sent
    assert waiting(stack, queue_for("v1", PriorityClass.BULK)) == 10


def test_a_paused_experiment_copies_nothing_until_resumed(stack: Stack) -> None:
    gw = gateway(stack)
    other_gateway = ShadowControls(stack.settings.broker_url)
    other_gateway.set_paused(EXPERIMENT, True)
    assert other_gateway.is_paused(EXPERIMENT)
    submit(gw, 3)
    assert shadow_jobs(stack) == {}
    other_gateway.set_paused(EXPERIMENT, False)
    gw.shadower.controls.set_paused(EXPERIMENT, False)  # its cached view, at once
    submit(gw, 2, start=3)
    assert len(shadow_jobs(stack)) == 2


def test_segments_limit_the_copies(stack: Stack) -> None:
    experiment_file(stack.settings.experiment_file, {"share": 1.0, "segments": ["new_user"]})  # type: ignore[arg-type]
    gw = gateway(stack)
    new_user = {"signed_up_at": utcnow().isoformat()}
    old_user = {"signed_up_at": (utcnow() - timedelta(days=300)).isoformat()}
    fresh = submit(gw, 2, user_attributes=new_user)
    submit(gw, 2, start=2, user_attributes=old_user)
    assert sorted(shadow_jobs(stack)) == sorted(fresh)


def test_the_candidate_renders_the_copy_under_shadow_and_no_metric_counts_it(
    stack: Stack,
) -> None:
    gw = gateway(stack)
    live_ids = submit(gw, 2)
    copies = shadow_jobs(stack)
    stack.start_worker("v1")
    stack.start_worker("v2")
    done = stack.wait_finished([*live_ids, *(c.id for c in copies.values())])
    objects = Path(stack.settings.resolved_storage_url.removeprefix("file://"))
    for live_id in live_ids:
        live, copy = done[live_id], done[copies[live_id].id]
        assert live.status == copy.status == JobStatus.SUCCEEDED
        assert live.image_key == f"renders/{live_id}.png"
        assert copy.image_key == f"shadow/{copy.id}.png"
        assert (objects / copy.image_key).is_file()
        assert copy.worker_version == "v2"

    window = metrics.Window(EXPERIMENT, utcnow() - timedelta(hours=1), utcnow())
    latency = metrics.percentile_by_arm(stack.engine, window, 0.5, by_day=False)
    assert {arm: v["n"] for (arm, _), v in latency.items()} == {"baseline": 2}
    waits = metrics.queue_wait_by_class(stack.engine, window)
    assert {key: v["n"] for key, v in waits.items()} == {("bulk", "baseline"): 2}
    assert metrics.exposures(stack.engine, EXPERIMENT) == [
        ("internal", "everyone_else", "baseline", 2)
    ]


def test_client_keys_get_404_for_a_shadow_job_and_operators_see_it(stack: Stack) -> None:
    client_token = create_key(stack.engine, "app", ApiKeyRole.CLIENT)[1]
    operator_token = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)[1]
    events_token = create_key(stack.engine, "web", ApiKeyRole.EVENTS)[1]
    with TestClient(create_app(stack.settings)) as http:
        answer = http.post(
            "/v1/jobs",
            json={"user_id": "user-1", "prompt": "a fox", "steps": 2},
            headers={"Authorization": f"Bearer {client_token}"},
        )
        assert answer.status_code == 202, answer.text
        live_id = answer.json()["job_id"]
        copy_id = shadow_job_id(live_id)
        assert shadow_jobs(stack)[live_id].id == copy_id
        as_client = {"Authorization": f"Bearer {client_token}"}
        assert http.get(f"/v1/jobs/{live_id}", headers=as_client).status_code == 200
        assert http.get(f"/v1/jobs/{copy_id}", headers=as_client).status_code == 404
        assert http.get(f"/v1/jobs/{copy_id}/image", headers=as_client).status_code == 404
        as_operator = {"Authorization": f"Bearer {operator_token}"}
        seen = http.get(f"/v1/jobs/{copy_id}", headers=as_operator)
        assert seen.status_code == 200 and seen.json()["model_version"] == "v2"
        # an event naming the copy (its id can be derived from the live one's) is refused
        event = {"event_id": "e-1", "type": "image_viewed", "user_id": "user-1",
                 "occurred_at": utcnow().isoformat(), "dwell_ms": 20_000}  # fmt: skip
        posted = http.post(
            "/v1/events",
            json={"events": [{**event, "job_id": copy_id}, {**event, "event_id": "e-2",
                                                             "job_id": live_id}]},
            headers={"Authorization": f"Bearer {events_token}"},
        )  # fmt: skip
        body = posted.json()
        assert [r["event_id"] for r in body["rejected"]] == ["e-1"], body
        assert body["accepted"] == 1, body
