"""Tests for gateway.experiments: the experiment file parses, and bad files name the bad field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.experiments import ExperimentConfig, ExperimentFileError, load_config, parse_config

VERSIONS = ["v1", "v2", "v3"]

EXAMPLE_YAML = """\
default_version: v1
segments:
  new_user_days: 3
  high_frequency_min_generations: 10
  style_preference_min_uses: 5
  style_tags: [film, cinematic]
experiments:
  - name: v2-canary
    seed: v2-canary-2026-11
    baseline: v1
    candidate: v2
    namespace: {id: render-models, start: 0.0, end: 1.0}
    allowlist: [alice@example.com]
    stages:
      - {name: internal, shares: {default: 0.0}}
      - {name: 5%, shares: {default: 0.05}}
      - {name: 15%, shares: {default: 0.15, new_user: 0.05}}
    stage: 5%
    rolled_back: false
"""


def valid() -> dict[str, Any]:
    return {
        "default_version": "v1",
        "experiments": [
            {
                "name": "v2-canary",
                "baseline": "v1",
                "candidate": "v2",
                "stages": [
                    {"name": "internal", "shares": {"default": 0.0}},
                    {"name": "5%", "shares": {"default": 0.05}},
                    {"name": "15%", "shares": {"default": 0.15, "new_user": 0.05}},
                ],
                "stage": "5%",
            }
        ],
    }


def second_experiment(namespace: dict[str, Any] | None) -> Callable[[dict[str, Any]], None]:
    """Adds a v3 experiment; the first one gets namespace ``render`` [0, 0.6)."""

    def mutate(data: dict[str, Any]) -> None:
        data["experiments"][0]["namespace"] = {"id": "render", "start": 0.0, "end": 0.6}
        other = copy.deepcopy(data["experiments"][0])
        other.update(name="v3-test", candidate="v3")
        other.pop("namespace")
        if namespace is not None:
            other["namespace"] = namespace
        data["experiments"].append(other)

    return mutate


def experiment(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["experiments"][0].update(fields)


def share(stage: int, **shares: float) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["experiments"][0]["stages"][stage]["shares"].update(shares)


def errors_for(mutate: Callable[[dict[str, Any]], None]) -> list[str]:
    data = valid()
    mutate(data)
    with pytest.raises(ExperimentFileError) as info:
        parse_config(data, VERSIONS)
    return info.value.errors


# --- valid files ----------------------------------------------------------------------------


def test_example_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(EXAMPLE_YAML, encoding="utf-8")
    config = load_config(path, VERSIONS)
    assert config.default_version == "v1"
    assert config.segments.style_tags == ["film", "cinematic"]
    (exp,) = config.experiments
    assert (exp.name, exp.baseline, exp.candidate, exp.stage) == ("v2-canary", "v1", "v2", "5%")
    assert exp.hash_seed == "v2-canary-2026-11"
    assert exp.namespace is not None and exp.namespace.id == "render-models"
    assert exp.allowlist == ["alice@example.com"]
    assert exp.current_stage.name == "5%"
    # unlisted segments take the stage's default share
    assert exp.stages[2].share("new_user") == 0.05
    assert exp.stages[2].share("high_frequency") == 0.15
    assert config.experiment("v2-canary") is exp


def test_module_docstring_example_is_the_tested_example() -> None:
    import gateway.experiments as module

    assert module.__doc__ is not None
    for line in ("stage: 5%", "{name: 15%, shares: {default: 0.15, new_user: 0.05}}"):
        assert line in module.__doc__


def test_minimal_file_and_defaults() -> None:
    config = parse_config({"default_version": "v2"}, VERSIONS)
    assert config.experiments == []
    assert config.segments.new_user_days == 3
    assert config.segments.high_frequency_min_generations == 10
    assert config.segments.style_preference_min_uses == 5


def test_seed_defaults_to_the_experiment_name() -> None:
    assert parse_config(valid(), VERSIONS).experiments[0].hash_seed == "v2-canary"


def test_disjoint_ranges_in_one_namespace_and_separate_namespaces_are_fine() -> None:
    for namespace in (
        {"id": "render", "start": 0.6, "end": 1.0},  # touching ranges do not overlap
        {"id": "other", "start": 0.0, "end": 1.0},  # another namespace id: independent
    ):
        data = valid()
        second_experiment(namespace)(data)
        config = parse_config(data, VERSIONS)
        assert [e.name for e in config.experiments] == ["v2-canary", "v3-test"]


def test_equal_shares_across_stages_are_allowed() -> None:
    data = valid()
    data["experiments"][0]["stages"][2]["shares"] = {"default": 0.05, "new_user": 0.05}
    parse_config(data, VERSIONS)


# --- invalid files: each is refused with a message naming the bad field -----------------------

INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "share above 1",
        share(2, default=1.5),
        "experiments.0.stages.2.shares.default: Input should be less than or equal to 1",
    ),
    (
        "negative share",
        share(1, new_user=-0.1),
        "experiments.0.stages.1.shares.new_user: Input should be greater than or equal to 0",
    ),
    (
        "share not a number",
        share(1, default=float("nan")),
        "experiments.0.stages.1.shares.default: Input should be a finite number",
    ),
    (
        "unknown segment in shares",
        share(1, power_users=0.2),
        "experiments.0.stages.1.shares: unknown segment(s) power_users (known: default, "
        "new_user, high_frequency, style_preference, everyone_else)",
    ),
    (
        "shares without default",
        lambda d: d["experiments"][0]["stages"][1].update(shares={"new_user": 0.1}),
        "experiments.0.stages.1.shares: a 'default' share is required",
    ),
    (
        "current stage is not a stage",
        experiment(stage="50%"),
        "experiments.0.stage: '50%' is not one of the stages (internal, 5%, 15%)",
    ),
    (
        "default share falls between stages",
        share(2, default=0.01),
        "experiments.0.stages.2.shares.default: the default share falls from 0.05 at '5%' "
        "to 0.01 at '15%'; a ramp may only grow",
    ),
    (
        "segment share falls between stages",
        lambda d: d["experiments"][0]["stages"].append(
            {"name": "50%", "shares": {"default": 0.5, "high_frequency": 0.1}}
        ),
        "experiments.0.stages.3.shares.high_frequency: the high_frequency share falls from "
        "0.15 at '15%' to 0.1 at '50%'",
    ),
    (
        "inherited segment share falls between stages",
        lambda d: d["experiments"][0]["stages"][1].update(
            shares={"default": 0.05, "style_preference": 0.3}
        ),
        "experiments.0.stages.2.shares.style_preference: the style_preference share falls "
        "from 0.3 at '5%' to 0.15 (its default share) at '15%'",
    ),
    (
        "baseline equals candidate",
        experiment(candidate="v1"),
        "experiments.0.candidate: must differ from the baseline (both are 'v1')",
    ),
    (
        "duplicate stage names",
        lambda d: d["experiments"][0]["stages"][2].update(name="5%"),
        "experiments.0.stages.2.name: duplicate stage name '5%'",
    ),
    (
        "no stages",
        experiment(stages=[]),
        "experiments.0.stages: List should have at least 1 item",
    ),
    (
        "missing candidate",
        lambda d: d["experiments"][0].pop("candidate"),
        "experiments.0.candidate: Field required",
    ),
    (
        "bad experiment name",
        experiment(name="has space"),
        "experiments.0.name: String should match pattern",
    ),
    (
        "unknown experiment field",
        experiment(weight=0.5),
        "experiments.0.weight: unknown field",
    ),
    (
        "unknown top-level field",
        lambda d: d.update(experiment=[]),
        "experiment: unknown field",
    ),
    (
        "unknown segment rule",
        lambda d: d.update(segments={"new_user_hours": 72}),
        "segments.new_user_hours: unknown field",
    ),
    (
        "missing default_version",
        lambda d: d.pop("default_version"),
        "default_version: Field required",
    ),
    (
        "namespace start not below end",
        experiment(namespace={"id": "render", "start": 0.5, "end": 0.5}),
        "experiments.0.namespace: start (0.5) must be below end (0.5)",
    ),
    (
        "namespace end above 1",
        experiment(namespace={"id": "render", "start": 0.5, "end": 1.5}),
        "experiments.0.namespace.end: Input should be less than or equal to 1",
    ),
    (
        "overlapping ranges in one namespace",
        second_experiment({"id": "render", "start": 0.5, "end": 1.0}),
        "experiments.1.namespace: range of v3-test overlaps the range of v2-canary in "
        "namespace 'render'",
    ),
    (
        "one of two experiments without a namespace",
        second_experiment(None),
        "experiments.1.namespace: required when there are several experiments",
    ),
    (
        "duplicate experiment names",
        lambda d: d["experiments"].append(
            {**copy.deepcopy(d["experiments"][0]), "namespace": {"id": "a"}}
        ),
        "experiments.1.name: duplicate experiment 'v2-canary'",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_file_is_refused_naming_the_field(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    errors = errors_for(mutate)
    assert any(error.startswith(message) for error in errors), errors


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("candidate", "v9", "experiments.0.candidate: unknown version 'v9'"),
        ("baseline", "v0", "experiments.0.baseline: unknown version 'v0'"),
    ],
)
def test_unknown_version_is_refused(field: str, value: str, message: str) -> None:
    assert errors_for(experiment(**{field: value})) == [message]


def test_unknown_default_version_is_refused() -> None:
    data = valid()
    data["default_version"] = "v7"
    with pytest.raises(ExperimentFileError) as info:
        parse_config(data, VERSIONS)
    assert info.value.errors == ["default_version: unknown version 'v7'"]
    # versions only count when the deployment knows them
    with pytest.raises(ExperimentFileError) as info:
        parse_config(valid(), ["v1"])
    assert info.value.errors == ["experiments.0.candidate: unknown version 'v2'"]


def test_every_problem_is_reported_and_the_source_leads_the_message() -> None:
    data = valid()
    data["experiments"][0]["stages"][1]["shares"]["default"] = 2
    data["experiments"][0]["seed"] = ""
    data["bogus"] = True
    with pytest.raises(ExperimentFileError) as info:
        parse_config(data, VERSIONS, source="exp.yaml")
    assert sorted(e.split(":")[0] for e in info.value.errors) == [
        "bogus",
        "experiments.0.seed",
        "experiments.0.stages.1.shares.default",
    ]
    assert str(info.value).startswith("exp.yaml: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("data", [None, [], ["default_version: v1"], "v1", 3])
def test_non_mapping_top_level_is_refused(data: Any) -> None:
    with pytest.raises(ExperimentFileError) as info:
        parse_config(data, VERSIONS)
    assert info.value.errors == ["the file must hold a mapping at the top level"]


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text("default_version: v1\nexperiments: [\n  - name: x\n", encoding="utf-8")
    with pytest.raises(ExperimentFileError) as info:
        load_config(path, VERSIONS)
    (error,) = info.value.errors
    assert error.startswith("not valid YAML: ")
    assert str(info.value).startswith(f"{path}: not valid YAML")


def test_empty_and_list_yaml_files_are_refused(tmp_path: Path) -> None:
    for name, text in (("empty.yaml", ""), ("list.yaml", "- default_version: v1\n")):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ExperimentFileError, match="mapping at the top level"):
            load_config(path, VERSIONS)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExperimentFileError) as info:
        load_config(tmp_path / "nope.yaml", VERSIONS)
    assert info.value.errors == ["cannot read: No such file or directory"]


def test_invalid_file_is_refused_by_load_config_with_field_and_path(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(EXAMPLE_YAML.replace("stage: 5%", "stage: 50%"), encoding="utf-8")
    with pytest.raises(ExperimentFileError) as info:
        load_config(path, VERSIONS)
    assert info.value.errors == [
        "experiments.0.stage: '50%' is not one of the stages (internal, 5%, 15%)"
    ]
    assert str(info.value).startswith(str(path))


def test_config_model_can_be_built_directly() -> None:
    config = ExperimentConfig.model_validate(valid())
    with pytest.raises(KeyError):
        config.experiment("nope")
