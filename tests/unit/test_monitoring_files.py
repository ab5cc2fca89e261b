"""The shipped alert rules and Grafana dashboard are valid; the alerts fire when they should
(`promtool test rules` on monitoring/alerts.test.yaml). Whether every query names an
exported metric is checked against a real scrape in tests/integration/test_operations.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.prometheus_checks import MONITORING, queries


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing (scripts/test_tools.sh installs Debian's prometheus)")
        pytest.skip("promtool missing (scripts/test_tools.sh installs it)")
    return found


@pytest.mark.parametrize("command", [["check", "rules", "alerts.yaml"],
                                     ["test", "rules", "alerts.test.yaml"]])  # fmt: skip
def test_promtool_accepts_and_exercises_the_alert_rules(command: list[str]) -> None:
    result = subprocess.run(
        [_promtool(), *command], cwd=MONITORING, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_json_with_a_query_per_panel() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["schemaVersion"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"].strip("${}") in variables, panel["title"]
    found = queries()
    assert any("canary_queue_messages" in q for q in found.values())
    assert {"alert CanaryNoWorkerOnline", "alert CanaryGateVerdictRollback"} <= set(found)
