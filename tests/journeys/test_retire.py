"""An operator retires v1 on the running local stack: its jobs are re-routed and finish on
v2, only v1's worker stops, status shows v1 retired with its purge date, the log export
is in the object store, and `canary up` afterwards starts no v1 worker."""

from __future__ import annotations

import json
import time

import pytest

from tests.journeys.conftest import Checkout

pytestmark = pytest.mark.integration
JOBS = 30


@pytest.fixture(scope="module")
def retired(running_stack: Checkout) -> tuple[Checkout, str, str]:
    stack = running_stack
    lines = [
        json.dumps({"prompt": f"a lighthouse, take {n}", "model_version": "v1", "seed": n})
        for n in range(JOBS)
    ]
    (stack.root / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    batch_id = json.loads(stack.run("canary submit jobs.jsonl --json").stdout)["batch_id"]
    retire = stack.run("canary retire --model-version v1 --reroute-to v2 --timeout 300")
    return stack, batch_id, retire.stdout


def batch_report(stack: Checkout, batch_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = json.loads(stack.run(f"canary status {batch_id} --json", check=False).stdout)
        if report["done"] or time.monotonic() > deadline:
            return report
        time.sleep(1)


def test_rerouted_jobs_finish_and_the_rest_of_the_stack_keeps_running(
    retired: tuple[Checkout, str, str],
) -> None:
    stack, batch_id, output = retired
    moved = int(output.split("re-routed ")[1].split(" ")[0])
    assert moved > 0, output  # some jobs were still waiting for v1
    assert "stopped render-v1-cpu-" in output
    report = batch_report(stack, batch_id)
    assert report["counts"]["SUCCEEDED"] == JOBS, report
    [up] = stack.background
    assert up.poll() is None, stack.logs()  # `canary up` is still running
    log = (stack.root / "stack.out").read_text()
    assert "worker-v1 stopped: its version is retired; the rest runs on" in log
    assert "sending SIGTERM" not in log  # nothing else was stopped
    ping = stack.run(
        "celery -b redis://127.0.0.1:$CANARY_LOCAL_BROKER_PORT/0 inspect ping --timeout 3",
        check=False,
    )
    assert "render-v2-cpu-" in ping.stdout and "scheduler@" in ping.stdout


def test_status_shows_v1_retired_with_its_purge_date(retired: tuple[Checkout, str, str]) -> None:
    stack, _, _ = retired
    document = json.loads(stack.run("canary status --json").stdout)
    lifecycle = {q["version"]: q["lifecycle"] for q in document["queues"]}
    assert lifecycle["v2"]["state"] == "active"
    v1 = lifecycle["v1"]
    assert (v1["state"], v1["rerouted_to"]) == ("retired", "v2")
    from datetime import datetime, timedelta

    since = datetime.fromisoformat(v1["retired_since"])
    assert datetime.fromisoformat(v1["purge_after"]) - since == timedelta(days=7)
    text = " ".join(stack.run("canary status").stdout.split())
    assert "retired since" in text and "images and logs purged after" in text


def test_the_log_export_keeps_v1s_record(retired: tuple[Checkout, str, str]) -> None:
    stack, _, output = retired
    assert "logs/v1/jobs.jsonl" in output
    export = stack.root / ".canary" / "objects" / "logs" / "v1"
    rows = [json.loads(line) for line in (export / "jobs.jsonl").read_text().splitlines()]
    assert len(rows) >= JOBS - int(output.split("re-routed ")[1].split(" ")[0])
    assert all(row["worker_version"] in {"v1", "v2", None} for row in rows)
    assert any(row["worker_version"] == "v1" and row["status"] == "SUCCEEDED" for row in rows)
    assert (export / "worker-v1.log").stat().st_size > 0


def test_canary_up_afterwards_starts_no_v1_worker(retired: tuple[Checkout, str, str]) -> None:
    stack, _, _ = retired
    stack.stop_background()
    stack.start("canary up", "stack-again")
    deadline = time.monotonic() + 180
    ping = ""
    while "render-v2-cpu-" not in ping and time.monotonic() < deadline:
        ping = stack.run(
            "celery -b redis://127.0.0.1:$CANARY_LOCAL_BROKER_PORT/0 inspect ping --timeout 2",
            check=False,
        ).stdout
    assert "render-v2-cpu-" in ping, stack.logs()
    assert "render-v1-cpu-" not in ping
    log = (stack.root / "stack-again.out").read_text()
    assert "v1 is retired: no worker started for it" in log
    assert "worker-v1 started" not in log
