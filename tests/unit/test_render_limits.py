"""A version's declared render limits and defaults, applied at submission."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gateway.job_requests import InvalidJob, JobRequest
from gateway.render_limits import VersionLimits
from tasks.tiny_model import TINY_VERSION_CONFIG
from tasks.version_config import RenderLimits, VersionConfigError, load_version_config

GPU_CONFIG = """\
limits:
  default_width: 1024
  default_height: 768
  default_steps: 30
  max_width: 1536
  max_height: 1536
  max_steps: 60
  soft_time_limit_s: 120
  time_limit_s: 150
"""


@pytest.fixture
def limits(tmp_path: Path) -> VersionLimits:
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "canary.yaml").write_text(GPU_CONFIG)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "canary.yaml").write_text(TINY_VERSION_CONFIG.format(seed=1))
    return VersionLimits(tmp_path)


def test_left_out_size_and_steps_take_the_versions_defaults(limits: VersionLimits) -> None:
    request = limits.apply(JobRequest(prompt="a cat"), "gpu", name_version=True)
    assert (request.width, request.height, request.steps) == (1024, 768, 30)
    assert request.seed is not None and 0 <= request.seed < 2**31
    given = JobRequest(prompt="a cat", width=64, height=64, steps=2, seed=7)
    assert limits.apply(given, "gpu", name_version=True) == given


def test_a_version_without_a_file_has_the_global_defaults(limits: VersionLimits) -> None:
    request = limits.apply(JobRequest(prompt="a cat"), "absent", name_version=True)
    assert (request.width, request.height, request.steps) == (512, 512, 25)


def test_beyond_the_versions_limits_is_refused_naming_each_limit(limits: VersionLimits) -> None:
    big = JobRequest(prompt="a cat", width=2048, height=1024, steps=80)
    with pytest.raises(InvalidJob) as caught:
        limits.apply(big, "tiny", name_version=True)
    assert caught.value.errors == [
        "width: at most 1024 on model version tiny, got 2048",
        "steps: at most 50 on model version tiny, got 80",
    ]
    fits = big.model_copy(update={"steps": 40, "width": 1536})
    assert limits.apply(fits, "gpu", name_version=False).width == 1536
    with pytest.raises(InvalidJob, match="on the version serving this user"):
        limits.apply(big, "gpu", name_version=False)


def test_an_edited_file_is_read_again(limits: VersionLimits, tmp_path: Path) -> None:
    assert limits.of("gpu").max_steps == 60
    path = tmp_path / "gpu" / "canary.yaml"
    path.write_text(GPU_CONFIG.replace("max_steps: 60", "max_steps: 40"))
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    assert limits.of("gpu").max_steps == 40


def test_tiny_models_declare_limits_their_time_limits_cover(tmp_path: Path) -> None:
    (tmp_path / "canary.yaml").write_text(TINY_VERSION_CONFIG.format(seed=3))
    config = load_version_config(tmp_path)
    assert config.render_size == (64, 64)
    assert config.limits.max_width == 1024 and config.limits.time_limit_s == 90


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"default_steps": 70, "max_steps": 60}, "default_steps 70 exceeds max_steps 60"),
        ({"soft_time_limit_s": 10}, "set both soft_time_limit_s and time_limit_s"),
        ({"soft_time_limit_s": 10, "time_limit_s": 10}, "must be below time_limit_s"),
        ({"max_width": "wide"}, "valid integer"),
    ],
)
def test_inconsistent_limits_are_refused(
    tmp_path: Path, limits: dict[str, object], message: str
) -> None:
    (tmp_path / "canary.yaml").write_text(yaml.safe_dump({"limits": limits}))
    with pytest.raises(VersionConfigError, match=message):
        load_version_config(tmp_path)
    assert RenderLimits().default_width == 512
