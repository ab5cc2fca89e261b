"""Each version loads its own pipeline objects and applies its own post-processing."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.pipelines import load_pipeline
from tasks.render import render_image

pytestmark = pytest.mark.integration

SPEC = {
    "job_id": "x",
    "model_version": "v1",
    "prompt": "a red door",
    "negative_prompt": "",
    "seed": 5,
    "steps": 3,
    "guidance": 7.5,
    "width": 96,
    "height": 80,
}


def test_versions_share_nothing_and_use_their_own_steps(model_dir: Path, tmp_path: Path) -> None:
    registry = tmp_path / "models"
    shutil.copytree(model_dir / "v1", registry / "v1")
    shutil.copytree(model_dir / "v1", registry / "v1-graded")  # same weights, own steps
    (registry / "v1-graded" / "canary.yaml").write_text(
        "postprocess:\n  - color_correct: {gamma: 1.8}\n  - resize: {}\nrender_size: [64, 64]\n"
    )
    plain = load_pipeline(registry, "v1", "cpu", torch_threads=1)
    graded = load_pipeline(registry, "v1-graded", "cpu", torch_threads=1)
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(plain.pipeline, component) is not getattr(graded.pipeline, component)
    assert plain.revision == graded.revision  # same weights, yet separate objects

    plain_image = Image.open(io.BytesIO(render_image(plain, SPEC).png))
    graded_image = Image.open(io.BytesIO(render_image(graded, SPEC).png))
    assert plain_image.size == graded_image.size == (96, 80)  # rendered at 64, resized

    def mean(image: Image.Image) -> float:
        return float(np.asarray(image.convert("L")).mean())

    assert mean(graded_image) > mean(plain_image)  # gamma 1.8 brightens
