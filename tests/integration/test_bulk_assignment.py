"""Bulk sticky assignment (``StickyAssigner.prefetch``, used by ``canary submit``) decides and
records exactly what one ``assign`` call per request would, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.assignment import Decision
from gateway.experiment_source import ExperimentSource
from gateway.job_requests import InvalidJob
from gateway.segments import NEW_USER, UserAttributes
from gateway.service import Gateway
from storage import jobs
from storage.db import get_engine
from storage.models import Job
from tasks.app import make_app
from tests.integration.conftest import fresh_database_url
from tests.integration.test_sticky_assignment import (
    NOW,
    VERSIONS,
    config,
    config_data,
    mixed_attributes,
    race_for_new_users,
    row_snapshot,
    sticky,
)

pytestmark = pytest.mark.integration


def requests() -> list[tuple[str, UserAttributes | None]]:
    """Users with full, partial or no attributes, some repeated, some already enrolled."""
    out: list[tuple[str, UserAttributes | None]] = []
    for i in range(120):
        user = f"user-{i % 90}"  # 30 repeats
        if i % 3 == 0:
            out.append((user, mixed_attributes(i)))
        elif i % 3 == 1:
            out.append((user, UserAttributes(NOW - timedelta(days=1), None, None)))
        else:
            out.append((user, None))  # everything from the database
    return out


def seed(engine: Engine) -> None:
    """Job history that makes some users high-frequency or style-preferring."""
    rows = [
        Job(
            id=f"h{u}-{k}",
            user_id=f"user-{u}",
            model_version="v1",
            steps=1,
            guidance=1.0,
            width=64,
            height=64,
            seed=k,
            prompt="cinematic film still" if u % 2 else "a cat",
            created_at=NOW - timedelta(days=1),
        )
        for u in range(0, 90, 5)
        for k in range(12)
    ]
    jobs.insert_new_jobs(engine, rows)


def decide(engine: Engine, bulk: bool, stage: str = "50%") -> list[Decision]:
    cfg = config(stage=stage)
    assigner = sticky(engine, cfg)
    already = sticky(engine, cfg)
    for user, given in requests()[:10]:  # enrolled earlier by another process
        already.assign(user, given, NOW)
    if bulk:
        assigner.prefetch(requests(), NOW)
    return [assigner.assign(user, given, NOW) for user, given in requests()]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_prefetch_then_assign_equals_assign_alone(
    kind: str, tmp_path: Path, postgres_schema_url: str
) -> None:
    results = {}
    for bulk in (False, True):
        directory = tmp_path / str(bulk)
        directory.mkdir()
        engine = get_engine(fresh_database_url(kind, directory, postgres_schema_url))
        seed(engine)
        decisions = decide(engine, bulk)
        results[bulk] = (
            [(d.variant, d.experiment, d.arm, d.segment) for d in decisions],
            row_snapshot(engine),
        )
    assert results[True] == results[False]
    decisions, rows = results[True]
    assert len(rows) == 90
    assert len({d[3] for d in decisions}) >= 3  # several segments were involved


def test_prefetch_enrolls_nobody_while_rolled_back(tmp_path: Path) -> None:
    engine = get_engine(fresh_database_url("sqlite", tmp_path, ""))
    assigner = sticky(engine, config(stage="50%", rolled_back=True))
    assigner.prefetch(requests(), NOW)
    assert row_snapshot(engine) == {}
    assert {assigner.assign(u, g, NOW).variant for u, g in requests()} == {"v1"}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_batches_enrolling_the_same_users_agree(
    kind: str, tmp_path: Path, postgres_schema_url: str
) -> None:
    """Batches in several processes (threads with their own assigners) enroll the same new
    users at once, in different orders and with attributes that give different arms: one
    insert per user wins, the others learn it from RETURNING, read the stored row and use
    it; no deadlock although the batches list the users in opposite orders."""
    engine = get_engine(fresh_database_url(kind, tmp_path, postgres_schema_url))
    # new users always get the candidate and everyone else never: whoever stores first decides
    cfg = config(stage="only", stages={"only": {"default": 0.0, NEW_USER: 1.0}})
    users = [f"racer-{i:03d}" for i in range(300)]
    workers = 4

    def prepare(index: int) -> Callable[[], dict[str, Decision]]:
        assigner = sticky(engine, cfg)
        attributes = UserAttributes(NOW if index % 2 else NOW - timedelta(days=60), 0, 0)
        order = users if index % 2 else users[::-1]

        def decide() -> dict[str, Decision]:
            assigner.prefetch([(u, attributes) for u in order], NOW)
            assert len(assigner.cache) == len(users)  # every decision comes from the cache
            return {u: assigner.assign(u, attributes, NOW) for u in users}

        return decide

    race_for_new_users(engine, users, workers, prepare)


def test_api_batch_assigns_as_single_requests_do(tmp_path: Path) -> None:
    """``Gateway.prepare_all`` (``POST /v1/jobs:batch``) reads and records the batch's
    assignments at once, and decides, stores and refuses exactly as one ``prepare`` per item
    would (errors by item index; users of invalid items are not enrolled)."""
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(config_data(stage="50%")))
    items: list[dict[str, Any]] = []
    for i, (user, given) in enumerate(requests()):
        item: dict[str, Any] = {"prompt": f"p{i}", "user_id": user, "seed": i}
        if given is not None:
            sent = {
                "signed_up_at": given.signed_up_at.isoformat() if given.signed_up_at else None,
                "generations_7d": given.generations_7d,
                "style_tag_uses": given.style_tag_uses,
            }
            item["user_attributes"] = {k: v for k, v in sent.items() if v is not None}
        items.append(item)
    items[5] = {**items[5], "model_version": "v2"}  # pinned: no assignment
    results = {}
    for batched in (False, True):
        directory = tmp_path / str(batched)
        directory.mkdir()
        url = fresh_database_url("sqlite", directory, "")
        engine = get_engine(url)
        seed(engine)
        settings = Settings(
            database_url=url, versions=VERSIONS, model_dir=directory / "models",
            home=directory / "home",
        )  # fmt: skip
        gateway = Gateway(
            settings, engine, make_app(settings), ExperimentSource(experiment_file, VERSIONS)
        )
        with pytest.raises(InvalidJob) as refused:  # item 1 has no prompt, item 2 pins
            bad = [items[0], {**items[1], "prompt": ""}, {**items[2], "model_version": "v1"}]
            gateway.prepare_all(bad, may_pin_version=False)
        errors = refused.value.errors
        assert set(row_snapshot(engine)) == {"user-0"}  # refused items' users: not enrolled
        if batched:
            prepared = gateway.prepare_all(items)
        else:
            prepared = [gateway.prepare(item) for item in items]
        results[batched] = (
            errors,
            [(p.model_version, p.experiment, p.arm, p.segment) for p in prepared],
            # (arm, variant, segment, stage): first_seen is the wall clock here
            {user: row[:4] for user, row in row_snapshot(engine).items()},
        )
    assert results[True] == results[False]
    errors, decisions, rows = results[True]
    assert [e.split(":")[0] for e in errors] == ["jobs.1.prompt", "jobs.2.model_version"]
    assert decisions[5] == ("v2", None, None, None)
    assert len({d[3] for d in decisions}) >= 3
    assert len(rows) == 90
