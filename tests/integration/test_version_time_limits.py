"""A version's own time limits (its canary.yaml) bound its renders on a real worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from storage.models import FailureKind, JobStatus
from tasks.tiny_model import TINY_VERSION_CONFIG
from tests.integration.conftest import local_stack

pytestmark = pytest.mark.integration


def test_a_worker_uses_its_versions_time_limits(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    config = TINY_VERSION_CONFIG.format(seed=1).replace(
        "soft_time_limit_s: 60\n  time_limit_s: 90", "soft_time_limit_s: 2\n  time_limit_s: 5"
    )
    assert "soft_time_limit_s: 2" in config
    (models / "v1" / "canary.yaml").write_text(config)
    stack = local_stack(tmp_path, clean_redis, models, CANARY_FAULT_INJECTION="true")
    try:
        stack.start_worker("v1")
        gateway = stack.gateway()
        slow = gateway.submit(
            {"prompt": "a slow kite [[fault:slow=1]]", "model_version": "v1", "steps": 8,
             "seed": 1, "width": 64, "height": 64}
        ).job_id  # fmt: skip
        quick = gateway.submit(
            {"prompt": "a kite", "model_version": "v1", "steps": 2, "seed": 2}
        ).job_id
        rows = stack.wait_finished([slow, quick], timeout=120)
    finally:
        stack.stop_workers()
    assert rows[slow].status == JobStatus.FAILED, rows[slow]
    assert rows[slow].failure_kind == FailureKind.TIMEOUT
    # 8 steps of 1 s would take 8 s; the version's soft limit of 2 s stopped it
    assert rows[slow].finished_at is not None and rows[slow].started_at is not None
    assert (rows[slow].finished_at - rows[slow].started_at).total_seconds() < 6
    assert rows[quick].status == JobStatus.SUCCEEDED
