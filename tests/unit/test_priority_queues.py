"""Priority classes: one queue per version and class, consumed highest class first."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import celeryconfig
from canary.contracts import CLASS_ORDER, PriorityClass, class_of_queue, queue_for, queues_for
from canary.settings import Settings


def test_each_version_has_three_queues_highest_class_first() -> None:
    assert queues_for("v1") == ("render.v1.interactive", "render.v1", "render.v1.background")
    assert CLASS_ORDER[0] is PriorityClass.INTERACTIVE
    # bulk keeps the name every job used before classes: an upgrade strands nothing
    assert queue_for("v1") == queue_for("v1", PriorityClass.BULK) == "render.v1"


def test_a_queue_name_gives_back_its_class_for_its_own_version_only() -> None:
    for priority in PriorityClass:
        assert class_of_queue("v1", queue_for("v1", priority)) is priority
    assert class_of_queue("v1", "render.v2.interactive") is None
    assert class_of_queue("v1", "canary.default") is None


def test_a_version_may_not_take_another_versions_class_queue() -> None:
    with pytest.raises(ValidationError, match="share its queue"):
        Settings(versions=["v1", "v1.interactive"])
    Settings(versions=["v1", "v1.5"])  # dots are fine otherwise


def test_the_celery_config_declares_every_class_queue_and_strict_order() -> None:
    config = celeryconfig.build(Settings(versions=["v1", "v2"]))
    names = [queue.name for queue in config["task_queues"]]
    assert names[:6] == [*queues_for("v1"), *queues_for("v2")]
    assert config["broker_transport_options"]["queue_order_strategy"] == "priority"
