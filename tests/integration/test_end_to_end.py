"""Jobs through the real path: producer -> Redis -> per-version worker processes -> S3 -> DB."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from storage.models import JobStatus
from storage.objects import open_store
from tests.integration.conftest import VERSIONS, Stack, fresh_database_url, make_stack
from tests.s3server import SeaweedS3Server

pytestmark = pytest.mark.integration

SIZES = [(64, 64), (96, 64), (64, 128)]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def s3_stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    postgres_schema_url: str,
    model_dir: Path,
    s3_server: SeaweedS3Server,
) -> Iterator[Stack]:
    """One stack per backend, shared by this module's tests: they only submit jobs of
    their own and read those jobs' rows and objects (two workers fewer to start per test)."""
    redis.Redis.from_url(redis_url).flushdb()
    tmp_path = tmp_path_factory.mktemp(f"e2e-{request.param}")
    bucket = s3_server.create_bucket()
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    stack = make_stack(
        tmp_path,
        redis_url,
        database_url,
        f"s3://{bucket}",
        model_dir,
        S3_ENDPOINT_URL=s3_server.endpoint_url,
    )
    for version in VERSIONS:
        stack.start_worker(version)
    yield stack
    stack.stop_workers()
    s3_server.delete_bucket(bucket)


def test_twenty_jobs_split_across_two_versions(s3_stack: Stack) -> None:
    gateway = s3_stack.gateway()
    requests = [
        gateway.prepare(
            {
                "prompt": f"test scene number {i}",
                "seed": 500 + i,
                "steps": 4,
                "width": SIZES[i % len(SIZES)][0],
                "height": SIZES[i % len(SIZES)][1],
                "model_version": VERSIONS[i % 2],
                "user_id": f"user-{i}",
            }
        )
        for i in range(20)
    ]
    submitted = gateway.submit_many(requests, source="test")
    assert all(s.created for s in submitted)
    rows = s3_stack.wait_finished([s.job_id for s in submitted], timeout=180)

    store = open_store(
        s3_stack.settings.resolved_storage_url, endpoint_url=s3_stack.settings.s3_endpoint_url
    )
    for prepared, sub in zip(requests, submitted, strict=True):
        request = prepared.request
        row = rows[sub.job_id]
        assert row.status == JobStatus.SUCCEEDED, (row.failure_kind, row.failure_message)
        # routed to, and served by, the version it was tagged with
        assert row.model_version == request.model_version
        assert row.worker_version == request.model_version
        assert row.model_revision and len(row.model_revision) == 16
        assert row.image_key == f"renders/{row.id}.png"  # names no version (issue 17)
        assert row.attempts == 1
        for timing in ("queue_wait_ms", "inference_ms", "upload_ms", "end_to_end_ms"):
            assert getattr(row, timing) is not None and getattr(row, timing) >= 0, timing
        assert row.end_to_end_ms >= row.inference_ms
        assert row.peak_vram_bytes is None  # CPU workers have no VRAM to report
        image = Image.open(io.BytesIO(store.get(row.image_key)))
        assert image.format == "PNG"
        assert image.size == (request.width, request.height)
    revisions = {row.worker_version: row.model_revision for row in rows.values()}
    assert revisions["v1"] != revisions["v2"]
    # one object per job, named after it (the other test's objects share the bucket)
    ours = [k for k in store.list("renders/") if k[len("renders/") : -len(".png")] in rows]
    assert sorted(ours) == sorted(r.image_key for r in rows.values())


def test_same_seed_same_version_same_bytes_and_versions_differ(s3_stack: Stack) -> None:
    gateway = s3_stack.gateway()
    spec = {"prompt": "a red bicycle", "seed": 1234, "steps": 5, "width": 64, "height": 64}
    submitted = [
        gateway.submit({**spec, "model_version": version}) for version in ("v1", "v1", "v2")
    ]
    rows = s3_stack.wait_finished([s.job_id for s in submitted], timeout=180)
    store = open_store(
        s3_stack.settings.resolved_storage_url, endpoint_url=s3_stack.settings.s3_endpoint_url
    )
    first, again, other = (store.get(rows[s.job_id].image_key) for s in submitted)
    assert first == again
    assert first != other
