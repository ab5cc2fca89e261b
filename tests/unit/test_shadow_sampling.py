"""Shadow traffic's pure parts: the experiment file's ``shadow`` field, the deterministic
sample of live jobs, the copy's id and its image key."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from canary.contracts import image_key, shadow_image_key
from gateway.experiments import Experiment, ExperimentFileError, parse_config
from gateway.shadow import is_sampled, shadow_job_id

VERSIONS = ["v1", "v2"]
BASE: dict[str, Any] = {
    "default_version": "v1",
    "experiments": [
        {
            "name": "v2-canary",
            "baseline": "v1",
            "candidate": "v2",
            "stages": [
                {"name": "internal", "shares": {"default": 0.0}},
                {"name": "5%", "shares": {"default": 0.05}},
            ],
            "stage": "internal",
        }
    ],
}


def experiment_with(shadow: Any, *, stage: str = "internal", **extra: Any) -> Experiment:
    data = copy.deepcopy(BASE)
    data["experiments"][0]["stages"][0]["shadow"] = shadow
    data["experiments"][0].update(stage=stage, **extra)
    return parse_config(data, VERSIONS).experiments[0]


def errors_for(shadow: Any) -> list[str]:
    with pytest.raises(ExperimentFileError) as caught:
        experiment_with(shadow)
    return caught.value.errors


def test_shadow_is_off_unless_a_stage_says_so() -> None:
    experiment = parse_config(BASE, VERSIONS).experiments[0]
    assert all(stage.shadow.share == 0 for stage in experiment.stages)
    assert not any(is_sampled(experiment, str(uuid.uuid4()), None) for _ in range(500))


def test_a_bare_number_and_a_mapping_both_set_the_share() -> None:
    assert experiment_with(0.05).current_stage.shadow.share == 0.05
    rule = experiment_with({"share": 0.2, "segments": ["new_user"]}).current_stage.shadow
    assert (rule.share, rule.segments) == (0.2, ["new_user"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "stages.0.shadow.share: Input should be less than or equal to 1"),
        (-0.1, "stages.0.shadow.share: Input should be greater than or equal to 0"),
        (float("nan"), "stages.0.shadow.share: Input should be a finite number"),
        (True, "stages.0.shadow: a share from 0 to 1 (e.g. 0.05) or {share: ..., segments:"),
        ("5%", "stages.0.shadow: a share from 0 to 1 (e.g. 0.05) or {share: ..., segments:"),
        ({"share": 0.1, "segments": ["vip"]}, "stages.0.shadow.segments: unknown segment(s) vip"),
        ({"share": 0.1, "segments": []}, "stages.0.shadow.segments: List should have at least"),
        ({"shares": 0.1}, "stages.0.shadow.shares: unknown field"),
    ],
)
def test_a_bad_shadow_value_names_the_field(value: Any, message: str) -> None:
    [error] = errors_for(value)
    assert error.startswith(f"experiments.0.{message}"), error


def test_the_sample_is_deterministic_and_close_to_the_share() -> None:
    experiment = experiment_with(0.05)
    ids = [str(uuid.UUID(int=n * 7919 + 12345)) for n in range(20_000)]
    first = [job_id for job_id in ids if is_sampled(experiment, job_id, "everyone_else")]
    again = [job_id for job_id in ids if is_sampled(experiment, job_id, "everyone_else")]
    assert first == again
    # binomial(20000, 0.05): mean 1000, sd ~31; 5 sd either side
    assert 845 < len(first) < 1155


def test_a_larger_share_keeps_every_job_a_smaller_one_sampled() -> None:
    ids = [str(uuid.uuid4()) for _ in range(5000)]
    small = {i for i in ids if is_sampled(experiment_with(0.05), i, None)}
    large = {i for i in ids if is_sampled(experiment_with(0.2), i, None)}
    assert small and small < large


def test_the_sample_depends_on_the_experiment_seed() -> None:
    ids = [str(uuid.uuid4()) for _ in range(5000)]
    one = {i for i in ids if is_sampled(experiment_with(0.1, seed="one"), i, None)}
    two = {i for i in ids if is_sampled(experiment_with(0.1, seed="two"), i, None)}
    assert one != two


def test_segments_limit_the_sample() -> None:
    experiment = experiment_with({"share": 1.0, "segments": ["new_user", "high_frequency"]})
    assert is_sampled(experiment, "job-1", "new_user")
    assert is_sampled(experiment, "job-1", "high_frequency")
    assert not is_sampled(experiment, "job-1", "everyone_else")
    assert not is_sampled(experiment, "job-1", None)


def test_only_the_current_stage_and_never_after_a_rollback() -> None:
    at_5 = experiment_with(1.0, stage="5%")  # shadow only set on internal
    assert not is_sampled(at_5, "job-1", None)
    assert is_sampled(experiment_with(1.0), "job-1", None)
    assert not is_sampled(experiment_with(1.0, rolled_back=True), "job-1", None)


def test_the_copy_id_is_fixed_per_live_job() -> None:
    live = str(uuid.uuid4())
    assert shadow_job_id(live) == shadow_job_id(live)
    assert uuid.UUID(shadow_job_id(live)).version == 5
    assert shadow_job_id(live) != shadow_job_id(str(uuid.uuid4()))
    assert shadow_job_id(live) != live


def test_shadow_images_have_their_own_prefix() -> None:
    assert shadow_image_key("job-1") == "shadow/job-1.png"
    assert not shadow_image_key("job-1").startswith(image_key("job-1").split("/")[0])
