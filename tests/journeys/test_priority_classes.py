"""An API developer's job during a batch user's backlog: the batch goes to the bulk queue,
the single job over HTTP to the interactive one, and the worker takes it next instead of
after the whole batch. The operator sees the backlog by class in `canary status` and
/metrics. All on `canary up` with the embedded defaults."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.journeys.conftest import Checkout, free_port

pytestmark = pytest.mark.integration

BULK_LINES = 40
# each render sleeps 4 x 0.125 s (the documented fault-injection switch): a backlog of
# about 20 s on the one v1 worker
SLOW = "[[fault:slow=0.125]]"


@pytest.fixture(scope="module", autouse=True)
def fault_injection(checkout: Checkout) -> None:
    checkout.env["CANARY_FAULT_INJECTION"] = "true"


@pytest.fixture(scope="module")
def api(running_stack: Checkout) -> Iterator[tuple[Checkout, httpx.Client, str]]:
    port = free_port()
    process = running_stack.start(f"canary api --port {port}", "api")
    base = f"http://127.0.0.1:{port}"
    running_stack.wait_for_api(process, base)
    token = running_stack.run("canary keys create --name ops --role operator").stdout.strip()
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        yield running_stack, client, base


def _bulk_file(stack: Checkout, name: str, lines: int) -> None:
    rows = [
        json.dumps({"prompt": f"bulk scene {n} {SLOW}", "model_version": "v1", "seed": n,
                    "steps": 4})
        for n in range(lines)
    ]  # fmt: skip
    (stack.root / name).write_text("\n".join(rows) + "\n")


def _finished_after(stack: Checkout, batch_id: str, job_id: str) -> int:
    """Jobs of the batch that finished after the job did (from the stack's SQLite file:
    subprocess start-up times under load do not enter the count)."""
    with sqlite3.connect(stack.root / ".canary" / "canary.db") as db:
        (count,) = db.execute(
            "SELECT count(*) FROM jobs WHERE batch_id = ? AND (finished_at IS NULL OR "
            "finished_at > (SELECT finished_at FROM jobs WHERE id = ?))",
            (batch_id, job_id),
        ).fetchone()
    return int(count)


def _batch_counts(stack: Checkout, batch_id: str) -> dict[str, int]:
    status = stack.run(f"canary status {batch_id} --json", check=False)
    counts: dict[str, int] = json.loads(status.stdout)["counts"]
    return counts


def test_an_interactive_job_overtakes_a_bulk_backlog(
    api: tuple[Checkout, httpx.Client, str],
) -> None:
    stack, client, _base = api
    _bulk_file(stack, "bulk.jsonl", BULK_LINES)
    submitted = stack.run("canary submit bulk.jsonl")
    batch_id = submitted.stdout.split("(batch ")[1].split(")")[0]

    # an API developer's single job: interactive, so it waits for at most the job
    # rendering and the one already handed to the worker, not for the batch
    response = client.post(
        "/v1/jobs",
        json={"prompt": f"one scene {SLOW}", "model_version": "v1", "seed": 1, "steps": 4},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in {
        "SUCCEEDED",
        "FAILED",
    }:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "SUCCEEDED", job
    # most of the batch was still waiting when it finished
    assert _finished_after(stack, batch_id, job_id) >= BULK_LINES // 2

    # the operator sees the rest of the backlog on v1's bulk queue, none interactive
    overview = json.loads(stack.run("canary status --json").stdout)
    v1 = next(q for q in overview["queues"] if q["version"] == "v1")
    assert v1["waiting_by_class"]["bulk"] > 0 and v1["waiting_by_class"]["interactive"] == 0
    waiting = None
    for _ in range(10):  # a scrape leaves the broker out if it does not answer in time
        metrics = client.get("/metrics").text
        waiting = re.search(
            r'canary_queue_messages_by_class\{class="bulk",version="v1"\} (\S+)', metrics
        )
        if waiting:
            break
        time.sleep(1)
    assert waiting is not None and float(waiting.group(1)) > 0, metrics

    # and the batch is not starved: it finishes afterwards, every line once
    deadline = time.monotonic() + 120
    while (counts := _batch_counts(stack, batch_id))["SUCCEEDED"] < BULK_LINES:
        assert time.monotonic() < deadline and counts["FAILED"] == 0, counts
        time.sleep(0.5)


def test_canary_submit_interactive_queues_a_file_ahead_of_bulk(
    api: tuple[Checkout, httpx.Client, str],
) -> None:
    stack, _client, _base = api
    _bulk_file(stack, "backlog.jsonl", BULK_LINES)
    backlog = stack.run("canary submit backlog.jsonl").stdout
    backlog_id = backlog.split("(batch ")[1].split(")")[0]
    (stack.root / "urgent.jsonl").write_text(
        json.dumps({"prompt": f"urgent {SLOW}", "model_version": "v1", "seed": 3, "steps": 4})
        + "\n"
    )
    urgent = stack.run("canary submit --interactive urgent.jsonl --wait --timeout 60 --json")
    report = json.loads(urgent.stdout)
    assert report["counts"]["SUCCEEDED"] == 1, report
    urgent_id = report["images"][0]["job_id"]
    assert _finished_after(stack, backlog_id, urgent_id) >= BULK_LINES // 2
