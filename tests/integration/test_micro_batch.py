"""Micro-batching (CANARY_MICRO_BATCH) with a real worker: compatible queued jobs share one
pipeline call, each keeps its own seed (its image equals its image rendered alone within
TOLERANCE_LEVELS), and a bad image fails only its own job."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.micro_batch import TOLERANCE_LEVELS
from canary.contracts import queues_for
from storage import jobs
from storage.models import FailureKind, JobStatus
from storage.objects import open_store
from tasks.pipelines import load_pipeline
from tasks.publish import render_spec
from tasks.queues import set_consuming
from tasks.render import render_image
from tests.integration.conftest import Stack, local_stack
from tests.integration.test_crash_safety import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path, clean_redis: str, model_dir: Path) -> Iterator[Stack]:
    stack = local_stack(
        tmp_path, clean_redis, model_dir, CANARY_MICRO_BATCH="4", CANARY_FAULT_INJECTION="true"
    )
    yield stack
    stack.stop_workers()


def test_batched_jobs_match_their_solo_renders_and_fail_alone(
    stack: Stack, model_dir: Path
) -> None:
    gateway = stack.gateway()
    prompts = [f"a harbour at night, take {i}" for i in range(8)]
    prompts[5] += " [[fault:nan]]"
    job_ids = [
        gateway.submit(
            {"prompt": p, "model_version": "v1", "seed": 100 + i, "steps": 3,
             "width": 64, "height": 64}
        ).job_id
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    other = gateway.submit(  # another size: never in the same call
        {"prompt": "a kite", "model_version": "v1", "seed": 7, "steps": 3, "width": 72,
         "height": 64}
    ).job_id  # fmt: skip
    stack.start_worker("v1")  # every job is queued before the worker looks
    rows = stack.wait_finished([*job_ids, other])

    bad = rows[job_ids[5]]
    assert (bad.status, bad.failure_kind) == (JobStatus.FAILED, FailureKind.NAN_OUTPUT)
    good = [rows[j] for j in job_ids if j != job_ids[5]] + [rows[other]]
    assert {r.status for r in good} == {JobStatus.SUCCEEDED}
    # batch mates are claimed together: fewer claim times than jobs
    assert len({rows[j].started_at for j in job_ids}) <= 4

    torch.set_num_threads(1)
    model = load_pipeline(model_dir, "v1", "cpu", torch_threads=1)
    store = open_store(stack.settings.resolved_storage_url)
    worst = 0
    for row in good:
        stored = np.asarray(Image.open(io.BytesIO(store.get(row.image_key or ""))), dtype=int)
        alone = render_image(model, render_spec(row))
        solo = np.asarray(Image.open(io.BytesIO(alone.png)), dtype=int)
        worst = max(worst, int(np.abs(stored - solo).max()))
    assert worst <= TOLERANCE_LEVELS


def test_a_mates_message_at_another_worker_is_left_to_the_batch(stack: Stack) -> None:
    first = stack.start_worker("v1", name="worker-a", node="v1-a")
    # The second worker is started (slow under load) and paused before the batch: it must
    # take its two messages while the first worker's batch still runs.
    second = stack.nodes[stack.start_worker("v1", name="worker-b", node="v1-b").pid]
    assert set_consuming(stack.app, second, queues_for("v1"), consume=False, timeout=10)
    gateway = stack.gateway()
    job_ids = [
        gateway.submit(
            {"prompt": f"a slow lighthouse {i} [[fault:slow=4]]", "model_version": "v1",
             "seed": i, "steps": 4, "width": 64, "height": 64}
        ).job_id
        for i in range(4)
    ]  # fmt: skip
    # one batch of 4 on the first worker (16 s), which holds two of the four messages
    wait_until(
        lambda: all(r.status == JobStatus.RUNNING for r in jobs.get_jobs(stack.engine, job_ids)),
        what="the batch to be claimed",
    )
    # it takes the other two
    assert set_consuming(stack.app, second, queues_for("v1"), consume=True, timeout=10)
    wait_until(
        lambda: stack.log("worker-b").count("is held by v1-a@") == 2,
        what="the second worker to leave both mates to the first",
    )
    rows = stack.wait_finished(job_ids)
    assert {r.status for r in rows.values()} == {JobStatus.SUCCEEDED}
    assert {r.attempts for r in rows.values()} == {1}  # each rendered once
    assert all((r.worker_host or "").startswith("v1-a@") for r in rows.values())
    assert first.poll() is None
