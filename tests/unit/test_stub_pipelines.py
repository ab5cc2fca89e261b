"""Benchmark stub pipelines load only from a marked folder and only when allowed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tasks.faults import NO_FAULTS
from tasks.pipelines import load_pipeline
from tasks.render import render_batch
from tasks.stub_pipelines import make_stub_model

SPEC = {
    "job_id": "j",
    "model_version": "stub",
    "prompt": "a lamp",
    "negative_prompt": "",
    "seed": 1,
    "steps": 25,
    "guidance": 7.5,
    "width": 96,
    "height": 80,
}


@pytest.mark.slow
def test_a_stub_folder_does_not_load_unless_stubs_are_allowed(tmp_path: Path) -> None:
    make_stub_model(tmp_path / "stub", "fixed_image")
    with pytest.raises(ValueError, match="benchmark stub"):
        load_pipeline(tmp_path, "stub", "cpu")
    model = load_pipeline(tmp_path, "stub", "cpu", allow_stub=True)
    assert model.attention == "benchmark-stub"
    assert len(model.revision) == 16  # the pattern file is hashed like weights


def test_the_fixed_image_stub_returns_the_requested_size_per_job(tmp_path: Path) -> None:
    make_stub_model(tmp_path / "stub", "fixed_image", seed=3)
    model = load_pipeline(tmp_path, "stub", "cpu", allow_stub=True)
    outputs = render_batch(model, [SPEC, {**SPEC, "seed": 2}], [NO_FAULTS, NO_FAULTS])  # type: ignore[list-item]
    assert [o.image.shape for o in outputs] == [(80, 96, 3), (80, 96, 3)]
    assert np.array_equal(outputs[0].image, outputs[1].image)  # a fixed image
    assert outputs[0].image.std() > 0.1  # passes the blank/black checks


def test_the_sleep_stub_takes_its_time_per_image(tmp_path: Path) -> None:
    make_stub_model(tmp_path / "stub", "sleep", seconds_per_image=0.05)
    model = load_pipeline(tmp_path, "stub", "cpu", allow_stub=True)
    started = time.perf_counter()
    render_batch(model, [SPEC] * 3, [NO_FAULTS] * 3)  # type: ignore[list-item]
    assert time.perf_counter() - started >= 0.15
