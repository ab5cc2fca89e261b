"""Bulk sticky assignment (``StickyAssigner.prefetch``, used by ``canary submit``) decides and
records exactly what one ``assign`` call per request would, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway.assignment import Decision
from gateway.segments import UserAttributes
from storage import jobs
from storage.db import get_engine
from storage.models import Job
from tests.integration.conftest import fresh_database_url
from tests.integration.test_sticky_assignment import (
    NOW,
    config,
    mixed_attributes,
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
