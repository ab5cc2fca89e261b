"""Rollout control: live stages seen by a running gateway, audit log, rollback, auto mode."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml
from pydantic import SecretStr

from gateway.experiment_source import ExperimentSource
from scheduler.rollout import Rollout, RolloutError
from storage import jobs
from storage import rollout_state as rollout
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.integration
STAGES = ["internal", "5%", "15%", "50%", "100%"]
SHARES = {"internal": 0.0, "5%": 0.05, "15%": 0.15, "50%": 0.5, "100%": 1.0}
EXPERIMENT = {
    "default_version": "v1",
    "experiments": [
        {
            "name": "v2-canary",
            "seed": "rollout-test",
            "baseline": "v1",
            "candidate": "v2",
            "allowlist": ["dogfood"],
            "stages": [{"name": s, "shares": {"default": SHARES[s]}} for s in STAGES],
            "stage": "internal",
        }
    ],
}
PASS = {"verdict": "advance", "reasons": ["every gate passes"], "checks": []}
BREACH = {"verdict": "rollback", "reasons": ["success rate: candidate 97%"], "checks": []}
UNSURE = {"verdict": "hold", "reasons": ["promotion rule: not yet"], "checks": []}


@pytest.fixture
def rollout_stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Stack:
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(EXPERIMENT))
    policy = tmp_path / "gates.yaml"
    policy.write_text(yaml.safe_dump({"guardrails": {"golden_s_not_worse": False}}))
    stack = local_stack(
        tmp_path, clean_redis, model_dir,
        CANARY_EXPERIMENT_FILE=str(experiment_file), CANARY_GATE_POLICY_FILE=str(policy),
    )  # fmt: skip
    stack.settings = stack.settings.model_copy(
        update={"experiment_file": experiment_file, "gate_policy_file": policy}
    )
    return stack


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def canary(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", "rollout", *args],
        env={**stack.env, "COLUMNS": "200"}, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def control(stack: Stack) -> Rollout:
    config = ExperimentSource.from_settings(stack.settings, stack.engine).config
    return Rollout(stack.settings, stack.engine, config, stack.app)


def test_a_running_gateway_follows_stage_changes_within_5_seconds(rollout_stack: Stack) -> None:
    gateway = rollout_stack.gateway()

    def arm_of(user: str) -> str | None:
        return gateway.prepare({"prompt": "x", "user_id": user}).arm

    assert arm_of("early-user") == "baseline"  # internal: the candidate only for the allowlist
    assert arm_of("dogfood") == "candidate"

    def seconds_until(condition) -> float:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        while time.monotonic() - started < 10:
            if condition():
                return time.monotonic() - started
            time.sleep(0.1)
        pytest.fail("the gateway did not follow the change within 10 s")

    # another process (the CLI) moves the stage; this gateway keeps running
    result = canary(
        rollout_stack, "set-stage", "v2-canary", "100%", "--reason", "test", "--actor", "ops",
        "--force",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fresh = iter(f"new-user-{n}" for n in range(10_000))
    waited = seconds_until(lambda: arm_of(next(fresh)) == "candidate")
    assert waited < 5
    result = canary(
        rollout_stack, "rollback", "v2-canary", "--reason", "bad images", "--actor", "ops"
    )
    assert result.returncode == 0, result.stderr
    waited = seconds_until(
        lambda: arm_of("early-user") == "baseline" and arm_of("dogfood") == "baseline"
    )
    assert waited < 5


def test_audit_log_records_who_when_from_to_why_and_the_evidence(rollout_stack: Stack) -> None:
    # without traffic the gates cannot say advance: refused, nothing recorded
    refused = canary(
        rollout_stack, "advance", "v2-canary", "--reason", "looks fine", "--actor", "ann"
    )
    assert refused.returncode == 1 and "the gates say HOLD" in refused.stderr
    assert rollout.audit_log(rollout_stack.engine, "v2-canary") == []

    forced = canary(
        rollout_stack, "advance", "v2-canary", "--reason", "dogfood ok", "--actor", "ann", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    held = canary(rollout_stack, "hold", "v2-canary", "--reason", "weekend", "--actor", "ben")
    assert held.returncode == 0, held.stderr
    back = canary(
        rollout_stack, "rollback", "v2-canary", "--reason", "NSFW spike", "--actor", "cat"
    )
    assert back.returncode == 0, back.stderr
    again = canary(
        rollout_stack, "advance", "v2-canary", "--reason", "x", "--actor", "ann", "--force"
    )
    assert again.returncode == 1 and "rolled back" in again.stderr
    # resuming after a rollback raises exposure: the gates apply, as for advance
    refused = canary(
        rollout_stack, "set-stage", "v2-canary", "5%", "--reason", "fixed", "--actor", "cat"
    )
    assert refused.returncode == 1 and "the gates say HOLD" in refused.stderr
    resumed = canary(
        rollout_stack, "set-stage", "v2-canary", "5%", "--reason", "fixed", "--actor", "cat",
        "--force",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "FORCED over the gates' hold" in resumed.stdout
    unknown = canary(rollout_stack, "set-stage", "v2-canary", "7%", "--reason", "x")
    assert unknown.returncode == 1 and "no stage '7%'" in unknown.stderr

    log = list(reversed(rollout.audit_log(rollout_stack.engine, "v2-canary")))
    assert [(e.actor, e.action, e.from_stage, e.to_stage) for e in log] == [
        ("ann", "advance", "internal", "5%"),
        ("ben", "hold", "5%", "5%"),
        ("cat", "rollback", "5%", "5% (rolled back)"),
        ("cat", "set-stage", "5% (rolled back)", "5%"),
    ]
    assert log[0].reason == "dogfood ok" and "NSFW spike" in log[2].reason
    assert all(e.at.tzinfo is not None or e.at.year >= 2026 for e in log)
    evidence = json.loads(log[0].evaluation or "{}")
    assert evidence["verdict"] == "hold" and evidence["checks"]
    status = canary(rollout_stack, "status", "v2-canary")
    assert status.returncode == 0 and "stage 5%" in status.stdout and "NSFW spike" in status.stdout


def test_rollback_can_reroute_queued_candidate_jobs(rollout_stack: Stack) -> None:
    gateway = rollout_stack.gateway()
    prepared = [
        gateway.prepare({"prompt": f"p{n}", "model_version": "v2", "seed": n}) for n in range(5)
    ]
    submitted = gateway.submit_many(prepared)
    broker = redis.Redis.from_url(rollout_stack.settings.broker_url)
    assert broker.llen("render.v2") == 5
    result = canary(
        rollout_stack, "rollback", "v2-canary", "--reason", "bad", "--queued", "reroute"
    )
    assert result.returncode == 0, result.stderr
    assert "5 queued jobs moved" in result.stdout
    assert broker.llen("render.v2") == 0 and broker.llen("render.v1") == 5
    rows = jobs.get_jobs(rollout_stack.engine, [s.job_id for s in submitted])
    assert {row.model_version for row in rows} == {"v1"}


def test_automatic_mode_on_simulated_days(rollout_stack: Stack) -> None:
    control_ = control(rollout_stack)
    day0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    clock = {"now": day0}
    control_.clock = lambda: clock["now"]
    control_.set_auto("v2-canary", True, "ops")

    def on_day(n: int, evaluation: dict, dry_run: bool = False):  # type: ignore[no-untyped-def]
        clock["now"] = day0 + timedelta(days=n)
        return control_.auto_step("v2-canary", evaluation, dry_run=dry_run)

    assert on_day(1, PASS).action == "hold"  # internal has run 1 of 2 days
    preview = on_day(2, PASS, dry_run=True)
    assert (preview.action, preview.to_stage, preview.applied) == ("advance", "5%", False)
    assert control_.state("v2-canary").stage == "internal"  # a dry run changes nothing
    assert on_day(2, PASS).to_stage == "5%"
    assert on_day(3, PASS).action == "hold"  # 5% has run 1 day
    assert on_day(4, UNSURE).action == "hold"  # the gates do not say advance
    assert on_day(5, PASS).to_stage == "15%"  # one stage at a time, never 50%
    assert on_day(6, BREACH).action == "rollback"  # at once, whatever the time in stage
    state = control_.state("v2-canary")
    assert state.rolled_back and state.stage == "15%"
    assert on_day(9, PASS).action == "hold"  # after a rollback an operator decides

    log = list(reversed(rollout.audit_log(rollout_stack.engine, "v2-canary")))
    changes = [(e.action, e.from_stage, e.to_stage) for e in log if e.action != "hold"]
    assert changes == [
        ("auto-on", "internal", "internal"),
        ("advance", "internal", "5%"),
        ("advance", "5%", "15%"),
        ("rollback", "15%", "15% (rolled back)"),
    ]
    assert all(e.actor == "auto" for e in log if e.action in {"advance", "rollback"})
    assert sum(e.action == "hold" for e in log) == 4  # days 1, 3, 4 and 9; the dry run: none
    assert "success rate" in log[-2].reason


def test_advancing_past_the_last_stage_points_to_retirement(rollout_stack: Stack) -> None:
    control_ = control(rollout_stack)
    control_.set_stage("v2-canary", "100%", "ops", "full rollout", PASS)
    with pytest.raises(RolloutError, match="canary retire --model-version v1"):
        control_.advance("v2-canary", "ops", "more")


def test_set_stage_applies_the_gates_and_a_forced_change_is_marked(rollout_stack: Stack) -> None:
    engine = rollout_stack.engine
    # 15% -> 100% in one step with no traffic: the gates say hold, nothing changes
    refused = canary(rollout_stack, "set-stage", "v2-canary", "100%", "--reason", "yolo")
    assert refused.returncode == 1 and "the gates say HOLD" in refused.stderr
    assert "--force --reason" in refused.stderr
    assert rollout.audit_log(engine, "v2-canary") == []
    no_reason = canary(rollout_stack, "set-stage", "v2-canary", "100%", "--force")
    assert no_reason.returncode == 2  # an override always says why
    forced = canary(
        rollout_stack, "set-stage", "v2-canary", "100%", "--reason", "exec demo", "--force",
        "--actor", "dan",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert control(rollout_stack).state("v2-canary").stage == "100%"
    # lowering exposure needs no gate, and its evaluation is stored all the same
    lowered = canary(rollout_stack, "set-stage", "v2-canary", "15%", "--reason", "too fast")
    assert lowered.returncode == 0, lowered.stderr
    lowered_row, forced_row = rollout.audit_log(engine, "v2-canary")
    forced_evidence = json.loads(forced_row.evaluation or "{}")
    assert forced_row.action == "set-stage" and forced_evidence["forced"] is True
    assert forced_evidence["verdict"] == "hold" and forced_evidence["checks"]
    lowered_evidence = json.loads(lowered_row.evaluation or "{}")
    assert lowered_evidence["verdict"] == "hold" and "forced" not in lowered_evidence
    status = canary(rollout_stack, "status", "v2-canary", "--json")
    audit = json.loads(status.stdout)["audit"]
    assert [(e["action"], e["forced"], e["gates"]) for e in audit] == [
        ("set-stage", False, "hold"),
        ("set-stage", True, "hold"),
    ]
    text = canary(rollout_stack, "status", "v2-canary").stdout
    assert "set-stage (FORCED)" in text
    # the library refuses the same way, whoever calls it
    with pytest.raises(RolloutError, match="the gates say HOLD"):
        control(rollout_stack).set_stage("v2-canary", "50%", "ops", "x", UNSURE)
    with pytest.raises(RolloutError, match="the gates say NOTHING"):
        control(rollout_stack).advance("v2-canary", "ops", "x")


def test_every_action_is_announced_to_the_webhooks(rollout_stack: Stack) -> None:
    with (
        webhook_receiver(fail_first=2) as slack,
        webhook_receiver() as plain,
    ):
        dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
        env = {
            "CANARY_NOTIFY_WEBHOOKS": f"slack={slack.url},json={plain.url},json={dead}",
            "CANARY_NOTIFY_BACKOFF_S": "0.1",
        }
        rollout_stack.env.update(env)
        started = time.monotonic()
        held = canary(rollout_stack, "hold", "v2-canary", "--reason", "weekend", "--actor", "ben")
        assert held.returncode == 0, held.stderr  # a dead webhook does not stop a rollout
        assert time.monotonic() - started < 30
        assert "nobody-listens" in held.stderr  # ... but it is reported
        # the Slack receiver answered 503 twice: retried with backoff until delivered
        [message] = slack.wait_for(1)
        assert len(slack.requests) == 3 and slack.requests[0] == message
        assert message["text"].startswith("canary v2-canary: holding at internal")
        assert "by ben: weekend" in message["text"]
        assert message["attachments"][0]["fields"]
        [notice] = plain.wait_for(1)
        assert (notice["kind"], notice["subject"], notice["from_stage"]) == (
            "hold", "v2-canary", "internal",
        )  # fmt: skip
        assert notice["verdict"] == "hold" and notice["forced"] is False

        forced = canary(
            rollout_stack, "set-stage", "v2-canary", "50%", "--reason", "demo", "--force"
        )
        assert forced.returncode == 0, forced.stderr
        back = canary(rollout_stack, "rollback", "v2-canary", "--reason", "NSFW spike")
        assert back.returncode == 0, back.stderr
        notices = plain.wait_for(3)
        assert [(n["kind"], n["to_stage"], n["forced"]) for n in notices] == [
            ("hold", "internal", False),
            ("set-stage", "50%", True),
            ("rollback", "50% (rolled back)", False),
        ]
        assert "FORCED" in notices[1]["text"] and "NSFW spike" in notices[2]["text"]

        # automatic mode: a hold is no longer silent
        settings = rollout_stack.settings.model_copy(
            update={"notify_webhooks": SecretStr(f"json={plain.url}")}
        )
        config = ExperimentSource.from_settings(settings, rollout_stack.engine).config
        auto = Rollout(settings, rollout_stack.engine, config, rollout_stack.app)
        assert auto.auto_step("v2-canary", UNSURE).action == "hold"
        last = plain.wait_for(4)[-1]
        assert (last["kind"], last["actor"]) == ("hold", "auto")

        # the daily report announces a change of verdict, once
        from scheduler.dashboards import write_dashboards

        day = datetime.now(UTC).date()
        write_dashboards(settings, rollout_stack.engine, day)
        write_dashboards(settings, rollout_stack.engine, day)
        verdicts = [n for n in plain.wait_for(5) if n["kind"] == "verdict"]
        assert [(n["previous_verdict"], n["verdict"]) for n in verdicts] == [(None, "hold")]
