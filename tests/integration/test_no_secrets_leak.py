"""No secret shows up anywhere an operator looks: a run with known secret values (a broker
password, a database password, Flower's basic-auth password, an API token), then every
log, Flower's task list, `/metrics`, error bodies and a configuration error are searched."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.auth import create_key
from gateway.http.app import create_app
from storage.db import get_engine, init_db
from storage.models import ApiKeyRole
from tests.golden_fixtures import small_set_text
from tests.integration.conftest import PROJECT_ROOT, local_stack, make_stack
from tests.integration.test_flower import AUTH, free_port, start_flower, stop, wait_for

pytestmark = pytest.mark.integration
BROKER_PASSWORD = "brokerpw-7f3a9c"
DB_PASSWORD = "dbpw-51c2e8"


@pytest.fixture
def broker_with_password(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", BROKER_PASSWORD, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://:{BROKER_PASSWORD}@127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def test_no_secret_in_logs_flower_metrics_errors_or_config_errors(
    tmp_path: Path, broker_with_password: str, postgres_schema_url: str, model_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    database_url = postgres_schema_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    assert DB_PASSWORD in database_url  # PostgreSQL here trusts local users: any password
    init_db(get_engine(database_url))
    stack = make_stack(
        tmp_path, broker_with_password, database_url, f"file://{tmp_path / 'objects'}",
        model_dir, CANARY_FAULT_INJECTION="true",
    )  # fmt: skip
    token = create_key(stack.engine, "ops", ApiKeyRole.OPERATOR)[1]
    secrets = [BROKER_PASSWORD, DB_PASSWORD, AUTH[1], token]
    seen: dict[str, str] = {}

    port = free_port()
    flower = start_flower(stack, port)
    try:
        stack.start_worker("v1")
        headers = {"Authorization": f"Bearer {token}"}
        with TestClient(create_app(stack.settings), raise_server_exceptions=False) as client:
            job = {"model_version": "v1", "steps": 2, "width": 64, "height": 64}
            ids = [
                client.post("/v1/jobs", json={**job, "prompt": p}, headers=headers).json()["job_id"]
                for p in ("a kite", "a storm [[fault:nan]]")
            ]
            stack.wait_finished(ids)
            seen["metrics"] = client.get("/metrics", headers=headers).text
            seen["401"] = client.get("/metrics", headers={"Authorization": "Bearer x"}).text
            seen["422"] = client.post("/v1/jobs", json={"prompt": ""}, headers=headers).text
            seen["404"] = client.get("/v1/jobs/nope", headers=headers).text
        base = f"http://127.0.0.1:{port}"

        def flower_saw_both() -> str | None:
            tasks = httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=5)
            return tasks.text if all(i in tasks.json() for i in ids) else None

        seen["flower tasks"] = wait_for(flower_saw_both)
        assert "a storm" not in seen["flower tasks"]  # prompts are hidden by default
        seen["flower workers"] = httpx.get(f"{base}/workers?json=1", auth=AUTH).text
    finally:
        stop(flower)
        stack.stop_workers()
    assert "canary_broker_up 1.0" in seen["metrics"]
    assert f"Flower: http://127.0.0.1:{port} (log in as ops" in stack.log("flower")

    bad = subprocess.run(
        [sys.executable, "-m", "canary.cli", "status"],
        env={**stack.env, "CANARY_FLOWER_BASIC_AUTH": ":".join(AUTH), "CANARY_FLOWER_PORT": "x",
             "CANARY_TASK_SOFT_TIME_LIMIT_S": "900"},
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "configuration error: CANARY_FLOWER_PORT: Input should be a valid integer, unable to "
        "parse string as an integer"
    ]
    seen["config error"] = bad.stdout + bad.stderr
    for log in sorted(stack.log_dir.glob("*.log")):
        seen[log.name] = log.read_text(errors="replace")
    seen["api log records"] = caplog.text
    assert "render-v1" in seen["worker-v1-0.log"]  # the logs are really there
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:4]}...) appears in {where}"


def test_generated_flower_password_is_private_reused_and_never_printed(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    """Without CANARY_FLOWER_BASIC_AUTH, `canary flower` makes a password once (0600 in
    CANARY_HOME), asks for it on its pages and API, reuses it, and prints only its path."""
    stack = local_stack(tmp_path, clean_redis, model_dir)
    env = {k: v for k, v in stack.env.items() if k != "CANARY_FLOWER_BASIC_AUTH"}
    port = free_port()
    env["CANARY_FLOWER_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    password_file = stack.settings.home / "flower-password"
    passwords = []
    for _ in range(2):  # a restart reuses the password
        log = (stack.log_dir / "flower.log").open("ab")
        flower = subprocess.Popen(
            [sys.executable, "-m", "canary.cli", "flower"], env=env, cwd=PROJECT_ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: _answers(f"{base}/healthcheck"))
            assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
            passwords.append(password_file.read_text().strip())
            assert httpx.get(f"{base}/", timeout=5).status_code == 401
            assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401
            auth = ("canary", passwords[-1])
            assert httpx.get(f"{base}/api/workers", auth=auth, timeout=10).status_code == 200
        finally:
            stop(flower)
    assert passwords[0] == passwords[1] and len(passwords[0]) >= 20
    text = (stack.log_dir / "flower.log").read_text()
    assert f"log in as canary with the password in {password_file}" in text
    assert passwords[0] not in text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("command", [["submit", "jobs.jsonl"], ["golden", "run"]])
def test_broker_password_not_printed_when_the_broker_is_down(
    command: list[str], tmp_path: Path, model_dir: Path
) -> None:
    """`canary submit` and `canary golden run` against a closed port say so, masked."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{port}/0"
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    stack = make_stack(tmp_path, url, database_url, f"file://{tmp_path / 'objects'}", model_dir)
    (tmp_path / "jobs.jsonl").write_text('{"prompt": "a kite", "user_id": "u-1"}\n')
    (tmp_path / "golden.yaml").write_text(small_set_text())
    env = {**stack.env, "CANARY_GOLDEN_SET_FILE": str(tmp_path / "golden.yaml")}
    result = subprocess.run(
        [sys.executable, "-m", "canary.cli", *command], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert f"127.0.0.1:{port}" in output, output  # it did name the broker it tried
    assert BROKER_PASSWORD not in output, output
