"""`canary flower`: authentication on, per-version queues, readable task arguments, history kept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from canary.contracts import queues_for
from gateway.service import Gateway
from tasks.app import make_app
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack

pytestmark = pytest.mark.integration
AUTH = ("ops", "s3cret-pass")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_flower(stack: Stack, port: int) -> subprocess.Popen:
    env = {
        **stack.env,
        "CANARY_FLOWER_PORT": str(port),
        "CANARY_FLOWER_BASIC_AUTH": ":".join(AUTH),
    }
    log = (stack.log_dir / "flower.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "canary.cli", "flower"], env=env, cwd=PROJECT_ROOT, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.3)
    pytest.fail(f"flower did not start: {stack.log('flower')}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def wait_for(condition, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail("condition not met in time")


def test_flower_with_auth_queues_arguments_and_persistence(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = start_flower(stack, port)
    try:
        assert httpx.get(f"{base}/api/tasks").status_code == 401
        assert httpx.get(f"{base}/api/tasks", auth=("ops", "wrong")).status_code == 401
        stack.start_worker("v1")
        # prompts are hidden from Flower by default; CANARY_FLOWER_HIDE_PROMPTS=false shows them
        shown = stack.settings.model_copy(update={"flower_hide_prompts": False})
        gateways = {
            "hidden": stack.gateway(),
            "shown": Gateway(shown, stack.engine, make_app(shown)),
        }
        submitted = {}
        for how, gateway in gateways.items():
            job = gateway.prepare(
                {"prompt": f"a red lighthouse at dusk ({how})", "negative_prompt": "fog",
                 "model_version": "v1", "seed": 7, "steps": 2, "width": 64, "height": 64}
            )  # fmt: skip
            [submitted[how]] = gateway.submit_many([job])
        stack.wait_finished([s.job_id for s in submitted.values()])

        def task_of(how: str) -> dict | None:
            tasks = httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json()
            found = tasks.get(submitted[how].job_id)
            return found if found and found["state"] == "SUCCESS" else None

        task = wait_for(lambda: task_of("shown"))
        assert task["name"] == "canary.render" and task["state"] == "SUCCESS"
        assert "a red lighthouse at dusk (shown)" in task["args"] and "'v1'" in task["args"]
        assert submitted["shown"].job_id in task["args"] and "fog" in task["args"]
        task = wait_for(lambda: task_of("hidden"))
        assert "lighthouse" not in task["args"] and "fog" not in task["args"]
        assert "'prompt': '<hidden>'" in task["args"] and "'v1'" in task["args"]
        assert submitted["hidden"].job_id in task["args"]
        queues = httpx.get(f"{base}/api/queues/length", auth=AUTH, timeout=10).json()
        names = {q["name"] for q in queues["active_queues"]}
        # every priority class's queue, so the operator sees a backlog by class
        assert {*queues_for("v1"), *queues_for("v2")} <= names
    finally:
        stop(flower)
        stack.stop_workers()

    # the task history survives a restart (persistent state in CANARY_HOME/flower.db)
    flower = start_flower(stack, port)
    try:
        tasks = httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=5).json()
        assert submitted["hidden"].job_id in tasks
    finally:
        stop(flower)


def test_flower_refuses_to_listen_off_loopback_without_auth(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    env = {**stack.env, "CANARY_FLOWER_ADDRESS": "0.0.0.0"}
    env.pop("CANARY_FLOWER_BASIC_AUTH", None)
    result = subprocess.run(
        [sys.executable, "-m", "canary.cli", "flower"], env=env, cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "needs CANARY_FLOWER_BASIC_AUTH" in result.stderr
