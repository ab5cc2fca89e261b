"""The worker image's HEALTHCHECK script against a real worker (worker_images/healthcheck.sh).

The script runs `celery -A tasks.app inspect ping` as the container does; a worker of the
image's version answering on this host is healthy, a version with no worker is not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import PROJECT_ROOT, local_stack

pytestmark = pytest.mark.integration
SCRIPT = PROJECT_ROOT / "worker_images" / "healthcheck.sh"


def healthcheck(env: dict[str, str], version: str) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(SCRIPT)],
        env={**env, "MODEL_VERSION": version, "DEVICE": "cpu", "PATH": path},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_image_healthcheck_passes_for_its_worker_and_fails_without_one(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    stack.start_worker("v1")
    try:
        healthy = healthcheck(stack.env, "v1")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        missing = healthcheck(stack.env, "v2")
        assert missing.returncode == 1, missing.stdout + missing.stderr
    finally:
        stack.stop_workers()
