"""`canary up` supervises its processes: a killed worker comes back under a new node name
while the other worker runs on, a killed broker comes back with its queue, jobs still
complete, Flower asks for the generated login and shows no prompt, SIGTERM stops all."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from canary.settings import Settings
from gateway.service import Gateway
from storage import jobs
from storage.db import get_engine, init_db
from tasks.app import make_app
from tests.integration.conftest import PROJECT_ROOT, VERSIONS
from tests.integration.test_flower import free_port, wait_for

pytestmark = pytest.mark.integration
PROMPT = "a private lighthouse prompt"
UNSET = {"REDIS_URL", "CANARY_FLOWER_BASIC_AUTH", "CANARY_FLOWER_HIDE_PROMPTS"}


def started_pid(output: Path, name: str, after: int = 0) -> int | None:
    found = re.findall(rf"\| {re.escape(name)} started \(pid=(\d+)\)", output.read_text())
    pids = [int(p) for p in found]
    return pids[-1] if len(pids) > after else None


def children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append((int(entry.name), (entry / "comm").read_text().strip()))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_canary_up_restarts_a_killed_worker_and_broker_and_stops_on_sigterm(
    tmp_path: Path, model_dir: Path
) -> None:
    home = tmp_path / "home"
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    broker_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(
        DATABASE_URL=database_url, STORAGE_URL=f"file://{tmp_path / 'objects'}",
        CANARY_MODEL_DIR=str(model_dir), CANARY_HOME=str(home),
        CANARY_VERSIONS=",".join(VERSIONS), CANARY_TORCH_THREADS="1",
        CANARY_LOCAL_BROKER_PORT=str(broker_port), CANARY_FLOWER_PORT=str(flower_port),
        CANARY_STACK_RESTART_BACKOFF_S="0.5", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    settings = Settings(
        database_url=database_url, storage_url=f"file://{tmp_path / 'objects'}",
        model_dir=model_dir, home=home, versions=list(VERSIONS), local_broker_port=broker_port,
    )  # fmt: skip
    app = make_app(settings)
    engine = get_engine(database_url)
    gateway = Gateway(settings, engine, app)
    output = tmp_path / "up.out"
    with output.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "canary.cli", "up"], env=env, cwd=PROJECT_ROOT,
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def nodes() -> set[str]:
        return {n for reply in app.control.ping(timeout=0.5) or [] for n in reply}

    def render_nodes() -> dict[str, str] | None:
        online = {n.split("-")[1]: n for n in nodes() if n.startswith("render-")}
        return online if set(online) == set(VERSIONS) else None

    def run_job(version: str) -> None:
        job = gateway.prepare({"prompt": PROMPT, "negative_prompt": "blurry",
                               "model_version": version, "seed": 5, "steps": 2,
                               "width": 64, "height": 64})  # fmt: skip
        [sent] = gateway.submit_many([job])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = gateway_job(sent.job_id)
            if row is not None and row.status in {"SUCCEEDED", "FAILED"}:
                assert row.status == "SUCCEEDED", row.failure_message
                return
            time.sleep(0.3)
        pytest.fail(f"job did not finish:\n{output.read_text()[-6000:]}")

    def gateway_job(job_id: str):  # type: ignore[no-untyped-def]
        return jobs.get_job(engine, job_id)

    try:
        before = wait_for(render_nodes, timeout=150)
        v1_pid, v2_pid = started_pid(output, "worker-v1"), started_pid(output, "worker-v2")
        assert v1_pid and v2_pid

        # a worker killed outright comes back under a new node name; v2 is untouched
        os.kill(v1_pid, signal.SIGKILL)
        after = wait_for(
            lambda: (n := render_nodes()) and n["v1"] != before["v1"] and n, timeout=150
        )
        assert after["v2"] == before["v2"] and started_pid(output, "worker-v2") == v2_pid
        text = output.read_text()
        assert "worker-v1 exited with code -9; restarting in 0.5 s (restart 1)" in text
        assert "worker-v2 exited" not in text
        assert "worker-v1 exited with code -9" in (home / "logs" / "worker-v1.log").read_text()
        run_job("v1")

        # Flower: a login generated for the stack, prompts hidden
        password_file = home / "flower-password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert f"log in as canary with the password in {password_file}" in output.read_text()
        base = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200)
        assert httpx.get(f"{base}/api/tasks", timeout=5).status_code == 401
        assert httpx.get(f"{base}/", timeout=5).status_code == 401
        auth = ("canary", password)

        def render_tasks() -> list[dict] | None:
            tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=5).json()
            found = [t for t in tasks.values() if t["name"] == "canary.render"]
            return found or None

        for task in wait_for(render_tasks):
            assert "<hidden>" in task["args"] and PROMPT not in task["args"]
            assert "blurry" not in task["args"] and task["uuid"] in task["args"]

        # the embedded broker killed outright comes back on its port; jobs still run
        [valkey] = [pid for pid, name in children(up.pid) if "valkey" in name]
        os.kill(valkey, signal.SIGKILL)
        wait_for(lambda: "broker stopped answering; restarting in" in output.read_text())
        wait_for(lambda: "broker started" in output.read_text())
        run_job("v2")
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    text = output.read_text()
    assert code == 143, text[-4000:]
    assert "SIGTERM received; stopping everything" in text
    assert "sending SIGTERM to worker-v1" in text and "sending SIGKILL" not in text
    assert not children(up.pid)
    for log in [output, *sorted((home / "logs").glob("*.log"))]:
        assert password not in log.read_text(errors="replace"), log.name
