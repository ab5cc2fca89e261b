"""Per-version post-processing configuration and steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.postprocess import PostProcessor
from tasks.version_config import (
    ColorCorrect,
    Resize,
    Step,
    VersionConfig,
    VersionConfigError,
    load_version_config,
)


def test_default_is_safety_filter_only(tmp_path: Path) -> None:
    config = load_version_config(tmp_path)
    assert config.safety_filter and config.render_size is None
    image = np.full((8, 16, 3), 0.5, dtype=np.float32)
    out = PostProcessor(config)(image, 16, 8)
    assert out.size == (16, 8) and out.getpixel((0, 0)) == (128, 128, 128)


def test_file_is_read_and_bad_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "canary.yaml").write_text(
        "postprocess:\n  - color_correct: {gamma: 2.0}\n  - resize: {method: bicubic}\n"
        "render_size: [64, 64]\n"
    )
    config = load_version_config(tmp_path)
    assert not config.safety_filter  # the file lists no safety filter
    assert config.render_size == (64, 64)
    (tmp_path / "canary.yaml").write_text("render_size: [64, 64]\n")
    with pytest.raises(VersionConfigError, match="render_size needs a resize step"):
        load_version_config(tmp_path)
    (tmp_path / "canary.yaml").write_text("postprocess:\n  - sharpen: {}\n")
    with pytest.raises(VersionConfigError, match="sharpen"):
        load_version_config(tmp_path)


def processor(*steps: Step, render_size: tuple[int, int] | None = None) -> PostProcessor:
    return PostProcessor(VersionConfig(postprocess=list(steps), render_size=render_size))


def test_steps_change_the_image_in_order() -> None:
    image = np.full((4, 4, 3), 0.25, dtype=np.float32)
    brighter = processor(Step(color_correct=ColorCorrect(gamma=2.0)))
    assert brighter(image, 4, 4).getpixel((0, 0))[0] == round(255 * (64 / 255) ** 0.5)
    resized = processor(Step(resize=Resize()), render_size=(4, 4))
    assert resized(image, 12, 8).size == (12, 8)
    grey = PostProcessor(
        VersionConfig(postprocess=[Step(color_correct=ColorCorrect(saturation=0))])
    )
    colourful = np.zeros((2, 2, 3), dtype=np.float32)
    colourful[..., 0] = 1.0
    r, g, b = grey(colourful, 2, 2).getpixel((0, 0))
    assert r == g == b
