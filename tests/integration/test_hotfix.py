"""Hot weight reload across live workers, without restarting them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import revisions
from storage.models import JobStatus
from storage.objects import open_store
from tasks.registry import weights_revision
from tasks.revisions import fetch
from tasks.tiny_model import make_tiny_model
from tests.integration.conftest import PROJECT_ROOT, Stack, local_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = local_stack(tmp_path, clean_redis, model_dir)
    stack.start_worker("v1", node="render-v1-a")
    stack.start_worker("v1", node="render-v1-b")
    stack.start_worker("v2")
    yield stack
    stack.stop_workers()


def render_revisions(stack: Stack, version: str, n: int) -> set[str]:
    gateway = stack.gateway()
    ids = [
        gateway.submit(
            {"prompt": f"p{i}", "model_version": version, "steps": 2, "width": 64, "height": 64}
        ).job_id
        for i in range(n)
    ]
    rows = stack.wait_finished(ids).values()
    assert {r.status for r in rows} == {JobStatus.SUCCEEDED}
    return {r.model_revision for r in rows if r.model_revision}


def hotfix(stack: Stack, weights: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", "hotfix", "--model-version", "v1",
         "--weights", str(weights), "--timeout", "60"],
        env={**stack.env, "COLUMNS": "200"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_hotfix_reaches_every_worker_of_the_version_and_only_those(
    stack: Stack, tmp_path: Path, model_dir: Path
) -> None:
    old = weights_revision(model_dir / "v1")
    untouched = weights_revision(model_dir / "v2")
    assert render_revisions(stack, "v1", 4) == {old}

    fixed = make_tiny_model(tmp_path / "v1-fix", seed=42)
    new = weights_revision(fixed)
    result = hotfix(stack, fixed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"published v1 revision {new}" in result.stdout
    assert "all workers on the new revision in" in result.stdout
    records = revisions.worker_records(stack.engine, "v1")
    assert {n.split("@")[0]: r.revision for n, r in records.items()} == {
        "render-v1-a": new,
        "render-v1-b": new,
    }
    assert {r.revision for r in revisions.worker_records(stack.engine, "v2").values()} == {
        untouched
    }
    assert render_revisions(stack, "v1", 4) == {new}  # jobs record what produced them
    assert render_revisions(stack, "v2", 2) == {untouched}
    for process in stack.workers:
        assert process.poll() is None  # no restart


def test_a_revision_that_fails_to_load_leaves_workers_on_the_old_one(
    stack: Stack, tmp_path: Path, model_dir: Path
) -> None:
    import shutil

    broken = tmp_path / "v1-broken"
    shutil.copytree(model_dir / "v1", broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated upload
    result = hotfix(stack, broken)
    assert result.returncode == 1
    assert "failed to load" in result.stdout and "still on the old revision" in result.stdout
    old = weights_revision(model_dir / "v1")
    records = revisions.worker_records(stack.engine, "v1")
    assert {r.revision for r in records.values()} == {old}
    assert render_revisions(stack, "v1", 2) == {old}


@pytest.mark.usefixtures("s3_server")
def test_revision_fetched_from_s3_matches_the_folder(
    tmp_path: Path, model_dir: Path, s3_bucket_url: tuple[str, str]
) -> None:
    from canary.settings import Settings

    bucket_url, endpoint = s3_bucket_url
    store = open_store(f"{bucket_url}/weights/v1-fix", endpoint_url=endpoint)
    source = model_dir / "v1"
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        store.put(path.relative_to(source).as_posix(), path.read_bytes())
    settings = Settings(s3_endpoint_url=endpoint, model_dir=tmp_path / "registry")
    folder = fetch(f"{bucket_url}/weights/v1-fix", settings, "v1")
    assert weights_revision(folder) == weights_revision(source)
    assert folder.parent == tmp_path / "registry" / ".revisions" / "v1"
    again = fetch(f"{bucket_url}/weights/v1-fix", settings, "v1")
    assert again == folder  # cached by revision, downloaded atomically once
