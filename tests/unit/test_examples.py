"""The example files shipped in examples/ stay valid."""

from __future__ import annotations

from pathlib import Path

from gateway.experiments import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_experiment_file_is_valid() -> None:
    config = load_config(EXAMPLES / "experiment.yaml", ["v1", "v2"])
    experiment = config.experiment("v2-canary")
    assert [s.name for s in experiment.stages] == ["internal", "5%", "15%", "50%", "100%"]
    assert experiment.current_stage.share("new_user") == 0.02
    assert experiment.current_stage.share("everyone_else") == 0.05
