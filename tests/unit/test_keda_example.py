"""The operator's guide's autoscaling example names the queues the workers really use."""

from __future__ import annotations

from pathlib import Path

import yaml

from canary.contracts import PriorityClass, queue_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keda-scaledobject.yaml"


def test_the_keda_example_reads_the_versions_interactive_and_bulk_lists() -> None:
    scaled = yaml.safe_load(EXAMPLE.read_text())
    version = scaled["metadata"]["name"].removeprefix("canary-worker-")
    lists = [trigger["metadata"]["listName"] for trigger in scaled["spec"]["triggers"]]
    assert lists == [
        queue_for(version, PriorityClass.INTERACTIVE),
        queue_for(version, PriorityClass.BULK),
    ]


def test_the_operators_guide_names_every_class_queue() -> None:
    guide = (EXAMPLE.parents[1] / "docs" / "operators-guide.md").read_text()
    for priority in PriorityClass:
        assert f"`{queue_for('<version>', priority)}`" in guide
    assert "examples/keda-scaledobject.yaml" in guide
