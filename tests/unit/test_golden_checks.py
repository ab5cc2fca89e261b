"""Automatic golden checks on crafted images: black, NaN, noise against the previous night."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.golden.cases import Level, Tolerance
from analysis.golden.checks import (
    ElementScorer,
    check_image,
    drift_between,
    job_failure,
    pixel_failure,
)
from canary.settings import Settings
from storage.models import Job, JobStatus
from tasks.tiny_model import make_tiny_scorer
from tests.golden_fixtures import small_set

CASE = small_set(Settings())[0].cases[0]


def gradient(size: int = 64, tint: tuple[int, int, int] = (255, 120, 40)) -> Image.Image:
    ramp = np.linspace(0.1, 1.0, size, dtype=np.float32)
    pixels = ramp[None, :, None] * ramp[:, None, None] * np.array(tint, dtype=np.float32)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def noise(size: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_a_failed_job_is_level_s_with_its_failure_kind() -> None:
    job = Job(
        id="j", model_version="v1", prompt="p", seed=1, steps=1, guidance=1.0, width=64,
        height=64, status=JobStatus.FAILED, failure_kind="oom", failure_message="CUDA OOM",
    )  # fmt: skip
    outcome = job_failure(job)
    assert outcome is not None and outcome.level == Level.S
    assert outcome.reason == "oom: CUDA OOM"
    job.status = JobStatus.SUCCEEDED
    assert job_failure(job) is None


@pytest.mark.parametrize(
    ("pixels", "kind"),
    [
        (np.zeros((64, 64, 3), np.float32), "black_image"),
        (np.full((64, 64, 3), 0.5, np.float32), "blank_image"),
        (np.where(np.eye(64)[..., None] > 0, np.nan, 0.5).astype(np.float32), "nan_output"),
    ],
)
def test_black_flat_and_nan_pixels_are_level_s(pixels: np.ndarray, kind: str) -> None:
    outcome = pixel_failure(pixels)
    assert outcome is not None and outcome.level == Level.S
    assert outcome.reason is not None and outcome.reason.startswith(kind)


def test_a_black_render_is_s_even_when_the_worker_accepted_it() -> None:
    outcome = check_image(CASE, Image.new("RGB", (64, 64)), previous=None, scorer=None)
    assert outcome.level == Level.S and "black_image" in (outcome.reason or "")


def test_same_image_as_last_night_has_no_drift() -> None:
    outcome = check_image(CASE, gradient(), previous=gradient(), scorer=None)
    assert outcome.level is None
    assert outcome.drift is not None and outcome.drift.rmse == 0 and outcome.drift.phash_bits == 0
    assert outcome.drifted is False


def test_pure_noise_instead_of_last_nights_image_is_flagged() -> None:
    outcome = check_image(CASE, noise(), previous=gradient(), scorer=None)
    assert outcome.level is None  # drift is a flag for people, not a grade
    assert outcome.drift is not None and outcome.drift.rmse > 0.2
    assert outcome.drift.phash_bits > 10
    assert outcome.drifted is True


def test_drift_tolerance_is_per_case() -> None:
    slightly = Image.fromarray(
        np.clip(np.asarray(gradient(), np.int16) + 3, 0, 255).astype("uint8")
    )
    drift = drift_between(slightly, gradient())
    assert 0.005 < drift.rmse < 0.02
    strict = CASE.__class__(**{**CASE.__dict__, "tolerance": Tolerance(drift=0.001)})
    assert check_image(strict, slightly, gradient(), None).drifted is True
    assert check_image(CASE, slightly, gradient(), None).drifted is False


def test_images_of_another_size_are_compared_after_resizing() -> None:
    drift = drift_between(gradient(64), gradient(128))
    assert drift.rmse < 0.02


@pytest.fixture(scope="module")
def tiny_scorer(tmp_path_factory: pytest.TempPathFactory) -> ElementScorer:
    folder: Path = make_tiny_scorer(tmp_path_factory.mktemp("scorer"))
    return ElementScorer(folder)


@pytest.mark.slow
def test_the_scorer_scores_every_expected_element(tiny_scorer: ElementScorer) -> None:
    scores = tiny_scorer.score(gradient(), CASE.expected)
    assert set(scores) == set(CASE.expected)
    assert all(-1.0 <= s <= 1.0 for s in scores.values())
    assert tiny_scorer.score(gradient(), CASE.expected) == scores  # deterministic


def test_an_element_below_tolerance_makes_the_image_a(tiny_scorer: ElementScorer) -> None:
    scores = tiny_scorer.score(gradient(), CASE.expected)
    threshold = max(scores.values()) + 1e-3  # every element falls below it
    demanding = CASE.__class__(**{**CASE.__dict__, "tolerance": Tolerance(element_score=threshold)})
    outcome = check_image(demanding, gradient(), previous=None, scorer=tiny_scorer)
    assert outcome.level == Level.A
    assert outcome.element_scores == scores
    assert all(element in (outcome.reason or "") for element in CASE.expected)
    lenient = CASE.__class__(**{**CASE.__dict__, "tolerance": Tolerance(element_score=-1.0)})
    assert check_image(lenient, gradient(), None, tiny_scorer).level is None
