"""Two API clients' batches on one version: tenant A sends a big batch, tenant B a small one
a moment later. Fair share keeps most of A's batch in the database and releases it a few
jobs at a time, round-robin with B's, so B's batch finishes while most of A's still waits,
and the operator sees A's held jobs in `canary status` and /metrics. In the end every job
of both has rendered exactly once. All on `canary up` with the embedded defaults; only
the per-tenant share is set small, so that the effect shows with few jobs."""

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

A_JOBS = 30
B_JOBS = 6
SHARE = 3  # CANARY_FAIR_SHARE_QUEUED: each tenant has at most 3 bulk jobs in the broker
# each render sleeps 4 x 0.125 s (the documented fault-injection switch): A's batch keeps
# the one v1 worker busy for 15 s or more
SLOW = "[[fault:slow=0.125]]"


@pytest.fixture(scope="module", autouse=True)
def environment(checkout: Checkout) -> None:
    checkout.env["CANARY_FAULT_INJECTION"] = "true"
    checkout.env["CANARY_FAIR_SHARE_QUEUED"] = str(SHARE)


@pytest.fixture(scope="module")
def api(running_stack: Checkout) -> Iterator[tuple[Checkout, str, str]]:
    port = free_port()
    process = running_stack.start(f"canary api --port {port}", "api")
    base = f"http://127.0.0.1:{port}"
    running_stack.wait_for_api(process, base)
    operator = running_stack.run("canary keys create --name ops --role operator").stdout.strip()
    yield running_stack, base, operator
    running_stack.stop(process)


def _client(base: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _batch(tag: str, n: int) -> dict[str, object]:
    """Client keys do not choose the version: with no experiment file, every user gets the
    default version, v1."""
    return {
        "jobs": [
            {"user_id": f"{tag}-{i}", "prompt": f"{tag} scene {i} {SLOW}", "seed": i, "steps": 4}
            for i in range(n)
        ]
    }


def _jobs_of(stack: Checkout, batch_id: str) -> list[tuple[str, str, int, str | None]]:
    """(id, status, attempts, finished_at) of the batch's jobs, from the stack's SQLite file
    (finish times as the workers recorded them: a CLI's start-up under load does not count)."""
    with sqlite3.connect(stack.root / ".canary" / "canary.db") as db:
        rows = db.execute(
            "SELECT id, status, attempts, finished_at FROM jobs WHERE batch_id = ?", (batch_id,)
        ).fetchall()
    return [(str(i), str(s), int(a), f) for i, s, a, f in rows]


def _wait_done(client: httpx.Client, batch_id: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while not (report := client.get(f"/v1/batches/{batch_id}").json())["done"]:
        assert time.monotonic() < deadline, report["counts"]
        time.sleep(0.25)
    return report  # type: ignore[no-any-return]


@pytest.mark.timeout(900)  # `canary up` from a fresh checkout, two batches, the stack's stop
def test_a_small_batch_is_not_stuck_behind_another_tenants_big_one(
    api: tuple[Checkout, str, str],
) -> None:
    stack, base, operator = api
    token_a = stack.run("canary keys create --name tenant-a").stdout.strip()
    token_b = stack.run("canary keys create --name tenant-b").stdout.strip()
    with _client(base, token_a) as a, _client(base, token_b) as b, _client(base, operator) as ops:
        accepted_a = a.post("/v1/jobs:batch", json=_batch("a", A_JOBS))
        assert accepted_a.status_code == 202, accepted_a.text
        accepted_b = b.post("/v1/jobs:batch", json=_batch("b", B_JOBS))
        assert accepted_b.status_code == 202, accepted_b.text
        batch_a, batch_b = accepted_a.json()["batch_id"], accepted_b.json()["batch_id"]

        # the operator sees A's batch mostly held in the database, a few jobs in the broker
        overview = json.loads(stack.run("canary status --json").stdout)
        waiting = {(w["version"], w["tenant"]): w for w in overview["waiting_by_tenant"]}
        a_waiting = waiting[("v1", "key:tenant-a")]
        assert a_waiting["held"] > 0 and a_waiting["queued"] <= SHARE, overview
        assert a_waiting["share_cap"] == SHARE
        text = stack.run("canary status").stdout
        assert "Waiting per tenant" in text and "key:tenant-a" in text, text
        held = None
        for _ in range(10):  # a scrape is answered from the database: no broker needed
            held = re.search(
                r'canary_jobs_waiting\{state="held",tenant="key:tenant-a",version="v1"\} (\S+)',
                ops.get("/metrics").text,
            )
            if held:
                break
            time.sleep(0.5)
        assert held is not None and float(held.group(1)) > 0

        # B's batch finishes while at least half of A's has not
        report_b = _wait_done(b, batch_b, timeout=120)
        assert report_b["counts"]["SUCCEEDED"] == B_JOBS, report_b  # type: ignore[index]
        b_last = max(f for _, _, _, f in _jobs_of(stack, batch_b) if f)
        a_rows = _jobs_of(stack, batch_a)
        unfinished_then = [r for r in a_rows if r[3] is None or r[3] > b_last]
        assert len(unfinished_then) >= A_JOBS // 2, (len(unfinished_then), b_last)

        # and A's batch is not starved either: it finishes too, every job rendered once
        report_a = _wait_done(a, batch_a, timeout=300)
        assert report_a["counts"]["SUCCEEDED"] == A_JOBS, report_a  # type: ignore[index]
    for batch_id, n in ((batch_a, A_JOBS), (batch_b, B_JOBS)):
        rows = _jobs_of(stack, batch_id)
        assert len(rows) == n and len({r[0] for r in rows}) == n
        assert {(status, attempts) for _, status, attempts, _ in rows} == {("SUCCEEDED", 1)}
    # nothing waits any more: the table is gone from `canary status`
    assert json.loads(stack.run("canary status --json").stdout)["waiting_by_tenant"] == []
