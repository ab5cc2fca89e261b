"""A version whose weights do not load fails its jobs as model_load (a real worker).

Apart from test_failures.py, whose workers serve v2 for the whole module and would take
this test's job.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from storage.models import FailureKind, JobStatus
from tests.integration.conftest import local_stack

pytestmark = pytest.mark.integration


def test_a_version_whose_weights_do_not_load_fails_its_jobs_as_model_load(
    tmp_path: Path, clean_redis: str, model_dir: Path
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(model_dir, registry)
    weights = registry / "v2" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not safetensors")
    stack = local_stack(tmp_path, clean_redis, registry)
    stack.start_worker("v2")
    try:
        request = {"prompt": "a tree", "model_version": "v2", "steps": 3, "seed": 9}
        job_id = stack.gateway().submit({**request, "width": 64, "height": 64}).job_id
        row = stack.wait_finished([job_id])[job_id]
        assert (row.status, row.failure_kind) == (JobStatus.FAILED, FailureKind.MODEL_LOAD)
        assert "safetensors" in (row.failure_message or "").lower()
    finally:
        stack.stop_workers()
