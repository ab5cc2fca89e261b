"""Sticky assignment against real databases (an SQLite file and PostgreSQL).

The first assignment of a user (arm and segment) is stored in ``assignments`` and survives
process restarts, segment changes and shrinking shares; ramp-ups promote; rollbacks
override without rewriting; attributes come from the job records; racing assigners agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from gateway.assignment import Assigner, AttributeSource, Decision, StickyAssigner
from gateway.experiments import ExperimentConfig, parse_config
from gateway.segments import (
    EVERYONE_ELSE,
    HIGH_FREQUENCY,
    NEW_USER,
    STYLE_PREFERENCE,
    SegmentRules,
    UserAttributes,
)
from storage.db import get_engine
from storage.models import Arm, Assignment, Job, UserProfile
from tests.integration.conftest import PROJECT_ROOT, fresh_database_url

pytestmark = pytest.mark.integration

VERSIONS = ["v1", "v2"]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
RAMP = {"internal": 0.0, "5%": 0.05, "15%": 0.15, "50%": 0.5, "100%": 1.0}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_schema_url: str) -> str:
    return fresh_database_url(request.param, tmp_path, postgres_schema_url)


@pytest.fixture
def engine(database_url: str) -> Engine:
    return get_engine(database_url)


def config_data(
    stage: str = "15%",
    stages: dict[str, dict[str, float]] | None = None,
    **experiment: Any,
) -> dict[str, Any]:
    stages = stages or {name: {"default": share} for name, share in RAMP.items()}
    return {
        "default_version": "v1",
        "experiments": [
            {
                "name": "exp",
                "seed": "sticky-seed",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [{"name": n, "shares": s} for n, s in stages.items()],
                "stage": stage,
                **experiment,
            }
        ],
    }


def config(**kwargs: Any) -> ExperimentConfig:
    return parse_config(config_data(**kwargs), VERSIONS)


def sticky(engine: Engine, cfg: ExperimentConfig, **kwargs: Any) -> StickyAssigner:
    """A fresh assigner, as a restarted process or a reloaded config would build it."""
    return StickyAssigner(Assigner(cfg), engine, **kwargs)


def stored(engine: Engine) -> dict[str, Assignment]:
    with Session(engine) as session:
        rows = session.execute(select(Assignment)).scalars().all()
        return {row.user_id: row for row in rows}


def row_snapshot(engine: Engine) -> dict[str, tuple[Any, ...]]:
    """Everything about each stored assignment except ``last_seen`` (touches may move it)."""
    return {
        user: (r.arm, r.variant, r.segment, r.stage, as_utc(r.first_seen), as_utc(r.promoted_at))
        for user, r in stored(engine).items()
    }


def row_count(engine: Engine, table: type) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def as_utc(moment: datetime | None) -> datetime | None:
    """Stored times are UTC; SQLite returns them naive, PostgreSQL aware."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def mixed_attributes(i: int) -> UserAttributes:
    """Complete attributes that spread users over all four segments."""
    kind = i % 4
    if kind == 0:
        return UserAttributes(NOW - timedelta(hours=5), 0, 0)
    if kind == 1:
        return UserAttributes(NOW - timedelta(days=90), 25, 0)
    if kind == 2:
        return UserAttributes(NOW - timedelta(days=90), 1, 8)
    return UserAttributes(NOW - timedelta(days=90), 1, 0)


# --- stickiness across restarts -------------------------------------------------------------


def run_in_subprocess(
    database_url: str, cfg: dict[str, Any], users: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    request = {
        "database_url": database_url,
        "config": cfg,
        "known_versions": VERSIONS,
        "now": now.isoformat(),
        "users": users,
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.sticky_helper"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_assignment_survives_a_restart_in_another_process(database_url: str) -> None:
    engine = get_engine(database_url)
    stages = {"ramp": {"default": 0.3, NEW_USER: 0.6, HIGH_FREQUENCY: 0.1}}
    data = config_data(stage="ramp", stages=stages)
    first = sticky(engine, parse_config(data, VERSIONS))
    users = [f"user-{i}" for i in range(300)]
    before = {u: first.assign(u, mixed_attributes(i), now=NOW) for i, u in enumerate(users)}
    assert {d.reason for d in before.values()} == {"hash"}
    assert {d.segment for d in before.values()} == {
        NEW_USER,
        HIGH_FREQUENCY,
        STYLE_PREFERENCE,
        EVERYONE_ELSE,
    }
    assert {d.arm for d in before.values()} == {Arm.BASELINE, Arm.CANDIDATE}

    # Another process, a month later, with attributes that now put everyone elsewhere.
    later = NOW + timedelta(days=30)
    other_attributes = [
        {"user_id": u, "signed_up_at": None, "generations_7d": 0, "style_tag_uses": 0}
        for u in users
    ]
    after = run_in_subprocess(database_url, data, other_attributes, later)
    for user, decision in zip(users, after, strict=True):
        expected = before[user]
        assert (decision["arm"], decision["segment"], decision["variant"]) == (
            expected.arm,
            expected.segment,
            expected.variant,
        ), user
        assert decision["reason"] == "sticky"

    # And a fresh assigner in this process (empty cache) agrees too.
    again = sticky(engine, parse_config(data, VERSIONS))
    for user in users:
        decision = again.assign(user, UserAttributes(None, 0, 0), now=later)
        assert (decision.arm, decision.segment) == (before[user].arm, before[user].segment)
    assert row_count(engine, Assignment) == len(users)


def test_a_changed_segment_keeps_the_stored_segment_and_arm(engine: Engine) -> None:
    # New users always get the candidate, everyone else never: a re-segmented user would flip.
    cfg = config(stage="only", stages={"only": {"default": 0.0, NEW_USER: 1.0}})
    new_then = UserAttributes(NOW, 0, 0)
    old_then = UserAttributes(NOW - timedelta(days=60), 0, 0)
    first = sticky(engine, cfg)
    assert first.assign("was-new", new_then, now=NOW) == Decision(
        "v2", "exp", Arm.CANDIDATE, NEW_USER, "hash"
    )
    assert first.assign("was-old", old_then, now=NOW) == Decision(
        "v1", "exp", Arm.BASELINE, EVERYONE_ELSE, "hash"
    )

    later = NOW + timedelta(days=30)
    for assigner in (first, sticky(engine, cfg)):  # warm cache and a restart
        # "was-new" is no longer new; "was-old" now claims a fresh sign-up
        assert assigner.assign("was-new", UserAttributes(NOW, 0, 0), now=later) == Decision(
            "v2", "exp", Arm.CANDIDATE, NEW_USER, "sticky"
        )
        assert assigner.assign("was-old", UserAttributes(later, 0, 0), now=later) == Decision(
            "v1", "exp", Arm.BASELINE, EVERYONE_ELSE, "sticky"
        )
    rows = stored(engine)
    assert (rows["was-new"].arm, rows["was-new"].segment) == (Arm.CANDIDATE, NEW_USER)
    assert (rows["was-old"].arm, rows["was-old"].segment) == (Arm.BASELINE, EVERYONE_ELSE)
    assert rows["was-new"].promoted_at is None and rows["was-old"].promoted_at is None


# --- shares shrinking and growing, rollback -------------------------------------------------


def test_shrinking_shares_never_demote_a_stored_candidate(engine: Engine) -> None:
    users = [f"user-{i}" for i in range(200)]
    at_half = sticky(engine, config(stage="50%"))
    first = {u: at_half.assign(u, UserAttributes(None, 0, 0), now=NOW) for u in users}
    candidates = {u for u, d in first.items() if d.arm == Arm.CANDIDATE}
    assert 70 < len(candidates) < 130
    snapshot = row_snapshot(engine)

    for stage in ("15%", "5%", "internal"):  # moving the ramp back
        shrunk = sticky(engine, config(stage=stage))
        for user in users:
            decision = shrunk.assign(user, now=NOW + timedelta(minutes=5))
            expected_arm = Arm.CANDIDATE if user in candidates else Arm.BASELINE
            assert (decision.arm, decision.reason) == (expected_arm, "sticky"), (stage, user)
            assert decision.variant == ("v2" if user in candidates else "v1")
    assert row_snapshot(engine) == snapshot


def test_growing_shares_promote_baseline_users_whose_bucket_is_reached(engine: Engine) -> None:
    users = [f"user-{i}" for i in range(200)]
    early = sticky(engine, config(stage="5%"))
    first = {u: early.assign(u, UserAttributes(None, 0, 0), now=NOW) for u in users}
    early_candidates = {u for u, d in first.items() if d.arm == Arm.CANDIDATE}

    # What the pure step says at 50% tells who must be promoted.
    pure = Assigner(config(stage="50%"))
    half = {u for u in users if pure.decide(u, EVERYONE_ELSE).arm == Arm.CANDIDATE}
    assert early_candidates < half  # monotone, and the ramp adds users

    promoted_at = NOW + timedelta(days=2)
    grown = sticky(engine, config(stage="50%"))
    decisions = {u: grown.assign(u, now=promoted_at) for u in users}
    for user, decision in decisions.items():
        if user in early_candidates:
            assert (decision.arm, decision.reason) == (Arm.CANDIDATE, "sticky")
        elif user in half:
            assert decision == Decision("v2", "exp", Arm.CANDIDATE, EVERYONE_ELSE, "promoted")
        else:
            assert (decision.arm, decision.reason) == (Arm.BASELINE, "sticky")

    rows = stored(engine)
    for user, row in rows.items():
        if user in half - early_candidates:
            assert (row.arm, row.variant, row.stage) == (Arm.CANDIDATE, "v2", "50%")
            assert as_utc(row.promoted_at) == promoted_at
            assert as_utc(row.first_seen) == NOW  # still the first exposure
        else:
            assert row.promoted_at is None
            assert row.stage == "5%"
            assert row.arm == (Arm.CANDIDATE if user in early_candidates else Arm.BASELINE)

    # A promotion happens once: later requests (same or another process) are sticky.
    for assigner in (grown, sticky(engine, config(stage="50%"))):
        for user in half - early_candidates:
            assert assigner.assign(user, now=promoted_at + timedelta(hours=2)).reason == "sticky"


def test_rollback_serves_the_baseline_without_rewriting_rows(engine: Engine) -> None:
    users = [f"user-{i}" for i in range(200)]
    live = sticky(engine, config(stage="50%", allowlist=["vip"]))
    first = {u: live.assign(u, UserAttributes(None, 0, 0), now=NOW) for u in [*users, "vip"]}
    assert first["vip"].reason == "allowlist" and first["vip"].arm == Arm.CANDIDATE
    snapshot = row_snapshot(engine)

    rolled_back = config(stage="100%", allowlist=["vip"], rolled_back=True)
    for assigner in (sticky(engine, rolled_back), sticky(engine, rolled_back)):
        for user in [*users, "vip"]:
            decision = assigner.assign(user, now=NOW + timedelta(hours=1))
            assert decision == Decision("v1", "exp", Arm.BASELINE, EVERYONE_ELSE, "rollback")
        # nobody is newly enrolled while rolled back
        newcomer = assigner.assign("newcomer", UserAttributes(None, 0, 0), now=NOW)
        assert (newcomer.variant, newcomer.reason) == ("v1", "rollback")
    assert row_snapshot(engine) == snapshot

    # Lifting the rollback brings the stored arms back (at the same 50% stage: no promotions).
    resumed = sticky(engine, config(stage="50%", allowlist=["vip"]))
    for user in users:
        decision = resumed.assign(user, now=NOW + timedelta(hours=2))
        assert (decision.arm, decision.reason) == (first[user].arm, "sticky")


# --- exposure records -----------------------------------------------------------------------


def test_one_exposure_row_per_user_however_often_assigned(engine: Engine) -> None:
    cfg = config(stage="50%")
    assigners = [sticky(engine, cfg) for _ in range(3)]
    users = [f"user-{i}" for i in range(60)]
    for round_ in range(10):
        for assigner in assigners:
            for i, user in enumerate(users):
                assigner.assign(user, mixed_attributes(i), now=NOW + timedelta(minutes=round_))
    with engine.connect() as connection:
        counts = connection.execute(
            select(Assignment.experiment, Assignment.user_id, func.count()).group_by(
                Assignment.experiment, Assignment.user_id
            )
        ).all()
    assert len(counts) == len(users)
    assert {count for _, _, count in counts} == {1}


def test_last_seen_is_written_at_most_once_per_touch_interval(engine: Engine) -> None:
    cfg = config(stage="50%")
    assigner = sticky(engine, cfg, touch_interval=timedelta(minutes=10))

    def last_seen() -> datetime | None:
        return as_utc(stored(engine)["u"].last_seen)

    assigner.assign("u", UserAttributes(None, 0, 0), now=NOW)
    assert last_seen() == NOW
    expected = NOW
    # minutes after the first exposure -> whether last_seen is written (interval: 10 min)
    schedule = {5: False, 9: False, 11: True, 15: False, 20: False, 21: True, 22: False, 40: True}
    for minutes, written in schedule.items():
        at = NOW + timedelta(minutes=minutes)
        decision = assigner.assign("u", now=at)
        assert decision.reason == "sticky"
        if written:
            expected = at
        assert last_seen() == expected, minutes
    assert as_utc(stored(engine)["u"].first_seen) == NOW

    # A restarted process starts from the stored last_seen: no write within the interval.
    restarted = sticky(engine, cfg, touch_interval=timedelta(minutes=10))
    restarted.assign("u", now=expected + timedelta(minutes=3))
    assert last_seen() == expected
    restarted.assign("u", now=expected + timedelta(minutes=10))
    assert last_seen() == expected + timedelta(minutes=10)


# --- attributes from the database ---------------------------------------------------------


def add_jobs(
    engine: Engine,
    user_id: str,
    count: int,
    *,
    days_ago: float = 1,
    prompt: str = "a red boat on a lake",
    source: str = "api",
) -> None:
    with Session(engine) as session:
        for _ in range(count):
            session.add(
                Job(
                    id=str(uuid.uuid4()),
                    user_id=user_id,
                    source=source,
                    model_version="v1",
                    prompt=prompt,
                    seed=1,
                    steps=4,
                    guidance=7.5,
                    width=64,
                    height=64,
                    created_at=NOW - timedelta(days=days_ago),
                )
            )
        session.commit()


def add_profile(engine: Engine, user_id: str, signed_up_at: datetime) -> None:
    with Session(engine) as session:
        session.add(UserProfile(user_id=user_id, signed_up_at=signed_up_at))
        session.commit()


def test_segments_come_from_jobs_and_profiles(engine: Engine) -> None:
    styled = "portrait of a sailor, CINEMATIC lighting"
    # high frequency: >= 10 live jobs in the last 7 days
    add_jobs(engine, "prolific", 10, days_ago=6.9)
    # 9 recent + 6 older than the window: not high frequency
    add_jobs(engine, "steady", 9, days_ago=1)
    add_jobs(engine, "steady", 6, days_ago=7.1)
    # golden replays do not count, neither for frequency nor for style
    add_jobs(engine, "replayed", 9, days_ago=1)
    add_jobs(engine, "replayed", 5, days_ago=1, source="golden", prompt=styled)
    # style preference: >= 5 prompts with style tags, any time (case-insensitive)
    add_jobs(engine, "stylist", 3, days_ago=1, prompt=styled)
    add_jobs(engine, "stylist", 2, days_ago=40, prompt="grainy 35mm photo of a dog")
    add_jobs(engine, "almost-stylist", 4, days_ago=1, prompt=styled)
    # a profile's sign-up time: new user, which wins over high frequency
    add_profile(engine, "newbie", NOW - timedelta(days=1))
    add_jobs(engine, "newbie", 12, days_ago=1, prompt=styled)
    add_profile(engine, "veteran", NOW - timedelta(days=400))

    source = AttributeSource(engine, SegmentRules())
    assert source.load("prolific", NOW) == UserAttributes(None, 10, 0)
    assert source.load("steady", NOW) == UserAttributes(None, 9, 0)
    assert source.load("replayed", NOW) == UserAttributes(None, 9, 0)
    assert source.load("stylist", NOW) == UserAttributes(None, 3, 5)
    newbie = source.load("newbie", NOW)
    assert as_utc(newbie.signed_up_at) == NOW - timedelta(days=1)
    assert (newbie.generations_7d, newbie.style_tag_uses) == (12, 12)
    assert source.load("nobody", NOW) == UserAttributes(None, 0, 0)

    expected = {
        "prolific": HIGH_FREQUENCY,
        "steady": EVERYONE_ELSE,
        "replayed": EVERYONE_ELSE,
        "stylist": STYLE_PREFERENCE,
        "almost-stylist": EVERYONE_ELSE,
        "newbie": NEW_USER,
        "veteran": EVERYONE_ELSE,
        "nobody": EVERYONE_ELSE,
    }
    assigner = sticky(engine, config(stage="50%"))
    for user, segment in expected.items():
        assert assigner.assign(user, now=NOW).segment == segment, user
    assert {u: r.segment for u, r in stored(engine).items()} == expected


def test_given_attributes_are_completed_from_the_database(engine: Engine) -> None:
    add_jobs(engine, "partial", 10, days_ago=2)
    assigner = sticky(engine, config(stage="50%"))
    # the caller knows only the sign-up time (old): the job count makes them high frequency
    decision = assigner.assign(
        "partial", UserAttributes(signed_up_at=NOW - timedelta(days=30)), now=NOW
    )
    assert decision.segment == HIGH_FREQUENCY
    # a reported sign-up time is remembered; the first report wins
    assigner.assign("reporter", UserAttributes(signed_up_at=NOW - timedelta(hours=1)), now=NOW)
    assigner.assign("reporter", UserAttributes(signed_up_at=NOW - timedelta(days=99)), now=NOW)
    with Session(engine) as session:
        profile = session.get(UserProfile, "reporter")
        assert profile is not None and as_utc(profile.signed_up_at) == NOW - timedelta(hours=1)
    # caller-given counts are used as they are (no job rows needed)
    given = UserAttributes(NOW - timedelta(days=30), 0, 7)
    assert assigner.assign("told", given, now=NOW).segment == STYLE_PREFERENCE


# --- concurrency --------------------------------------------------------------------------


def test_two_assigners_racing_for_a_new_user_agree_on_one_row(engine: Engine) -> None:
    # new users always get the candidate and everyone else never, so the two attribute sets
    # would give different arms: whoever writes first decides for both.
    cfg = config(stage="only", stages={"only": {"default": 0.0, NEW_USER: 1.0}})
    first, second = sticky(engine, cfg), sticky(engine, cfg)
    as_new = UserAttributes(NOW, 0, 0)
    as_old = UserAttributes(NOW - timedelta(days=60), 0, 0)

    winner = first.assign("racer", as_new, now=NOW)
    assert winner == Decision("v2", "exp", Arm.CANDIDATE, NEW_USER, "hash")
    # ``second`` has no cache entry: it computes baseline, loses the insert, adopts the row
    loser = second.assign("racer", as_old, now=NOW)
    assert loser == Decision("v2", "exp", Arm.CANDIDATE, NEW_USER, "sticky")
    assert row_count(engine, Assignment) == 1
    for assigner in (first, second):
        assert assigner.assign("racer", as_old, now=NOW).arm == Arm.CANDIDATE


def race_for_new_users(
    engine: Engine,
    users: list[str],
    workers: int,
    prepare: Callable[[int], Callable[[], dict[str, Decision]]],
) -> None:
    """In each of ``workers`` threads, ``prepare(index)`` (its own assigner, as another
    process would have) and then, all threads at once, the call it returned; every user
    ends with one stored row, and every thread answered each user with its arm and segment."""
    barrier = threading.Barrier(workers)
    results: dict[int, dict[str, Decision]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        decide = prepare(index)
        try:
            barrier.wait(timeout=30)
            results[index] = decide()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    rows = stored(engine)
    assert set(rows) == set(users)
    for user in users:
        row = rows[user]
        assert {(results[i][user].arm, results[i][user].segment) for i in range(workers)} == {
            (row.arm, row.segment)
        }, user


def test_threads_racing_for_the_same_new_users_agree(engine: Engine) -> None:
    cfg = config(stage="only", stages={"only": {"default": 0.0, NEW_USER: 1.0}})
    workers = 6
    users = [f"racer-{i}" for i in range(20)]

    def prepare(index: int) -> Callable[[], dict[str, Decision]]:
        assigner = sticky(engine, cfg)  # its own cache, as in another process
        attributes = UserAttributes(NOW if index % 2 else NOW - timedelta(days=60), 0, 0)
        return lambda: {u: assigner.assign(u, attributes, now=NOW) for u in users}

    race_for_new_users(engine, users, workers, prepare)
