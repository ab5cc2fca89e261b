"""The README's main job: `canary demo` on embedded defaults (private Valkey, SQLite, files)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

EMBEDDED_DEFAULTS_OFF = ("REDIS_URL", "DATABASE_URL", "STORAGE_URL", "S3_ENDPOINT_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_renders_a_batch_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_DEFAULTS_OFF}
    env.update(
        CANARY_HOME=str(tmp_path / "home"),
        CANARY_FLOWER_PORT=str(free_port()),
        CANARY_LOCAL_BROKER_PORT=str(free_port()),
        COLUMNS="200",
    )
    result = subprocess.run(
        [sys.executable, "-m", "canary.cli", "demo", "--jobs", "6"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    home = tmp_path / "home"
    stack_log = (home / "logs" / "stack.log").read_text(errors="replace")[-3000:]
    assert result.returncode == 0, result.stdout + result.stderr + stack_log
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ v")]
    assert len(rows) == 2, result.stdout  # the experiment sent users to both versions
    counts = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[2] == "100.0%" and cells[-1] == "none", row
        counts[cells[0]] = int(cells[1])
    assert sum(counts.values()) == 6 and min(counts.values()) >= 1, counts
    # one image per job, under a key that names no version (renders/<job id>.png)
    assert len(list((home / "objects" / "renders").glob("*.png"))) == 6
    for version in counts:
        assert (home / "logs" / f"worker-{version}.log").stat().st_size > 0
    # the demo's experiment stays where every later command finds it
    assert (home / "experiments.yaml").exists()
    assert (home / "canary.db").exists()
    assert not (home / "stack.json").exists()  # the stack cleaned up after itself
