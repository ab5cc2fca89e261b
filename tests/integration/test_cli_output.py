"""What scripts rely on: `--json` documents, exit codes, and one-line errors of `canary`.

Every command runs as a subprocess, as a script would run it: SQLite in a temporary
directory, the session's Redis database, no experiment file unless a test writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from benchmarks.harness import FIGURE_LINE
from canary.cli.demo import DEMO_EXPERIMENT
from storage import golden, revisions
from storage.models import ApiKeyRole, GoldenRun, Job, JobStatus
from tests.golden_fixtures import small_set_text
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str) -> Stack:
    """No workers, no models, and no experiment file (whatever the developer's shell has)."""
    made = local_stack(tmp_path, clean_redis, tmp_path / "models")
    made.env.pop("CANARY_EXPERIMENT_FILE", None)
    made.env["COLUMNS"] = "200"
    return made


def canary(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args],
        env={**stack.env, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document on stdout (json.loads fails on anything around it)."""
    return json.loads(result.stdout)


def with_experiment(stack: Stack) -> Stack:
    path = stack.settings.home / "experiments.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_EXPERIMENT.format(baseline="v1", candidate="v2"))
    stack.env["CANARY_EXPERIMENT_FILE"] = str(path)
    return stack


def add_job(stack: Stack, job_id: str, status: JobStatus, **fields: Any) -> None:
    job = Job(
        id=job_id, model_version="v1", prompt="a kite", seed=1, steps=2, guidance=7.5,
        width=64, height=64, status=status, **fields,
    )  # fmt: skip
    with Session(stack.engine) as session:
        session.add(job)
        session.commit()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- the overview
def test_overview_without_experiments_says_so_in_words(stack: Stack) -> None:
    result = canary(stack, "status")
    assert result.returncode == 0, result.stderr
    assert "no experiments configured (set CANARY_EXPERIMENT_FILE" in result.stdout
    assert "Experiments" not in result.stdout  # no empty table
    assert "render.v1" in result.stdout and "render.v2" in result.stdout


def test_overview_json_counts_waiting_jobs_and_skips_silent_workers(stack: Stack) -> None:
    stack.gateway().submit({"prompt": "a kite", "model_version": "v1", "seed": 3})
    # a worker that loaded its model once but does not answer any more (stopped, crashed)
    revisions.report(stack.engine, "render-v1-gone@nowhere", "v1", "cpu", "abc123")
    result = canary(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    overview = json_of(result)
    assert set(overview) == {
        "experiment_file", "experiments", "queues", "golden", "waiting_by_tenant"
    }  # fmt: skip
    assert overview["experiments"] == [] and overview["golden"] is None
    assert overview["waiting_by_tenant"] == []  # an interactive job is never held
    queues = {q["version"]: q for q in overview["queues"]}
    assert queues["v1"].pop("lifecycle")["state"] == "active"
    assert queues["v1"] == {
        "version": "v1",
        "queue": "render.v1",
        "queues": ["render.v1.interactive", "render.v1", "render.v1.background"],
        "waiting": 1,
        "waiting_by_class": {"interactive": 1, "bulk": 0, "background": 0},
        "workers": [],
        "storage": [],
    }
    assert queues["v2"]["waiting"] == 0


def test_overview_names_the_unreachable_broker_in_one_line(stack: Stack) -> None:
    url = f"redis://canary:s3cret@127.0.0.1:{closed_port()}/0"
    result = canary(stack, "status", REDIS_URL=url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert url.replace("s3cret", "***") in result.stderr


def test_overview_json_lists_experiments_and_the_last_golden_run(stack: Stack) -> None:
    with_experiment(stack)
    text = small_set_text()
    golden.create_run(
        stack.engine,
        GoldenRun(
            id="manual-1", trigger="manual", set_name="test-golden", set_text=text,
            set_sha256=hashlib.sha256(text.encode()).hexdigest(), case_count=4,
            baseline="v1", candidate="v2",
        ),
    )  # fmt: skip
    overview = json_of(canary(stack, "status", "--json"))
    (experiment,) = overview["experiments"]
    assert experiment["name"] == "demo-canary" and experiment["stage"] == "50%"
    assert experiment["candidate_shares"] == {"default": 0.5} and experiment["gates"] is None
    assert overview["golden"]["id"] == "manual-1"
    assert (overview["golden"]["checked"], overview["golden"]["images"]) == (0, 8)

    runs = json_of(canary(stack, "golden", "list", "--json"))["runs"]
    assert [(r["id"], r["status"], r["cases"]) for r in runs] == [("manual-1", "SUBMITTING", 4)]

    report = canary(stack, "golden", "report", "manual-1", "--json")
    assert report.returncode == 0, report.stderr
    assert {"run", "versions", "difference", "hard_failures"} <= set(json_of(report))
    out = stack.settings.home / "golden.json"
    written = canary(stack, "golden", "report", "manual-1", "--json-out", str(out))
    assert written.returncode == 0 and "Pass rate" in written.stdout
    assert json.loads(out.read_text())["run"]["id"] == "manual-1"


# ---------------------------------------------------------------- one job
def test_job_status_json_and_exit_codes(stack: Stack) -> None:
    add_job(stack, "ok-1", JobStatus.SUCCEEDED, queue_wait_ms=900.0, inference_ms=500.0)
    add_job(stack, "bad-1", JobStatus.FAILED, failure_kind="black_image")
    add_job(stack, "slow-1", JobStatus.QUEUED)

    done = canary(stack, "status", "ok-1", "--json")
    assert done.returncode == 0, done.stderr
    job = json_of(done)
    assert {"id", "status", "model_version", "queue_wait_ms", "inference_ms"} <= set(job)
    assert (job["id"], job["status"], job["queue_wait_ms"]) == ("ok-1", "SUCCEEDED", 900.0)
    assert "image_url" in job

    failed = canary(stack, "status", "bad-1", "--json")
    assert failed.returncode == 1
    assert json_of(failed)["failure_kind"] == "black_image"

    timed_out = canary(stack, "status", "slow-1", "--wait", "--timeout", "0.5")
    assert timed_out.returncode == 1
    assert "still QUEUED" in timed_out.stderr

    unknown = canary(stack, "status", "no-such-id", "--json")
    assert unknown.returncode == 1
    assert unknown.stdout == "" and "no job or batch no-such-id" in unknown.stderr


# ---------------------------------------------------------------- reports and rollout
def test_report_json_on_stdout_and_files_with_their_own_flags(stack: Stack) -> None:
    with_experiment(stack)
    printed = canary(stack, "report", "demo-canary", "--json")
    assert printed.returncode == 0, printed.stderr
    report = json_of(printed)
    assert {"experiment", "baseline", "candidate", "metrics", "srm", "gates"} <= set(report)
    assert report["gates"]["verdict"] in {"advance", "hold", "rollback"}

    out, html = stack.settings.home / "report.json", stack.settings.home / "report.html"
    written = canary(stack, "report", "demo-canary", "--json-out", str(out), "--html", str(html))
    assert written.returncode == 0, written.stderr
    assert json.loads(out.read_text())["experiment"] == "demo-canary"
    assert html.read_text().lstrip().lower().startswith("<!doctype html")
    assert f"JSON report: {out}" in written.stderr  # stdout keeps the tables only

    old_style = canary(stack, "report", "demo-canary", "--json", str(out))
    assert old_style.returncode == 2  # `--json FILE` is now a usage error, not a silent write


def test_rollout_status_json(stack: Stack) -> None:
    with_experiment(stack)
    result = canary(stack, "rollout", "status", "demo-canary", "--json")
    assert result.returncode == 0, result.stderr
    status = json_of(result)
    assert status["stage"] == "50%" and status["stages"][-1] == "100%"
    assert (status["rolled_back"], status["auto"], status["audit"]) == (False, False, [])
    assert {"baseline", "candidate", "candidate_shares", "stage_since"} <= set(status)


def test_failures_exit_1_and_bad_usage_exits_2(stack: Stack) -> None:
    with_experiment(stack)
    failures = {
        "unknown experiment": ("report", "nope"),
        "unknown rollout experiment": ("rollout", "status", "nope"),
        "unknown golden run": ("golden", "report", "nope"),
        "refused rollout": ("rollout", "advance", "demo-canary", "--reason", "try"),
    }
    usage = {
        "bad date": ("report", "demo-canary", "--date", "25/11/2026"),
        "bad option value": ("golden", "list", "--limit", "0"),
        "unknown option": ("status", "--colour"),
        "unknown role": ("keys", "create", "--name", "ci", "--role", "admin"),
        "unconfigured version": ("hotfix", "--model-version", "v9", "--weights", "/nowhere"),
        "bad --queued": ("rollout", "rollback", "demo-canary", "--reason", "x", "--queued", "?"),
    }
    codes = {name: canary(stack, *args).returncode for name, args in failures.items()}
    codes |= {name: canary(stack, *args).returncode for name, args in usage.items()}
    assert codes == {**dict.fromkeys(failures, 1), **dict.fromkeys(usage, 2)}


# ---------------------------------------------------------------- keys
def test_keys_create_help_lists_every_role(stack: Stack) -> None:
    result = canary(stack, "keys", "create", "--help")
    assert result.returncode == 0
    for role in ApiKeyRole:
        assert role.value in result.stdout, role
    created = canary(stack, "keys", "create", "--name", "collector", "--role", "events")
    assert created.returncode == 0, created.stderr
    assert "created events key" in created.stderr and len(created.stdout.strip()) > 20


# ---------------------------------------------------------------- the benchmark
def test_status_benchmark_quick_run_prints_its_figures(clean_redis: str) -> None:
    """A smoke run: it starts, finishes and prints every figure (no timing is asserted)."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.status_overview", "--quick"],
        env={**os.environ, "REDIS_URL": clean_redis},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = {m["key"]: m for m in FIGURE_LINE.finditer(result.stdout)}
    assert set(figures) == {
        "status_overview_command_s",
        "status_overview_json_command_s",
        "workers_broadcast_s",
        "workers_recorded_s",
        "workers_recorded_one_gone_s",
        "import_scheduler_dashboards_s",
    }
    assert figures["status_overview_command_s"]["op"] == "<="
