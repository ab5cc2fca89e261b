"""`canary status` without an id: rendering of the overview data, and its cheap parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from canary.cli import overview
from canary.settings import Settings
from scheduler.dashboards import dashboard_paths
from tasks.queues import consumers

ACTIVE = {"state": "active", "retired_since": None, "purge_after": None, "purged_at": None,
          "rerouted_to": None}  # fmt: skip


def data(**changes: Any) -> dict[str, Any]:
    queue = {"version": "v1", "queue": "render.v1", "waiting": 3, "workers": [],
             "lifecycle": ACTIVE}  # fmt: skip
    return {"experiment_file": None, "experiments": [], "queues": [queue], "golden": None,
            **changes}  # fmt: skip


def rendered(monkeypatch: pytest.MonkeyPatch, settings: Settings, document: dict) -> str:
    console = Console(record=True, width=200)
    monkeypatch.setattr(overview, "console", console)
    overview.print_overview(settings, document)
    return console.export_text()


def test_no_experiments_is_a_sentence_naming_where_to_configure_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path)
    text = rendered(monkeypatch, settings, data())
    assert f"no experiments configured (set CANARY_EXPERIMENT_FILE, or write {tmp_path}" in text
    assert "Experiments" not in text
    assert "none" in text and "golden set: no run yet" in text
    empty_file = rendered(monkeypatch, settings, data(experiment_file="/etc/canary/exp.yaml"))
    assert "no experiments configured in /etc/canary/exp.yaml" in empty_file


def test_experiments_workers_and_golden_run_are_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    experiment = {
        "name": "v2-canary", "baseline": "v1", "candidate": "v2", "stage": "15%",
        "rolled_back": True, "candidate_shares": {"default": 0.15, "new_user": 0.05},
        "gates": {"verdict": "hold", "day": "2026-11-24"},
    }  # fmt: skip
    worker = {"node": "render-v1-cpu@host", "device": "cpu", "revision": "abc123"}
    queue = {"version": "v1", "queue": "render.v1", "waiting": 0, "workers": [worker],
             "lifecycle": ACTIVE}  # fmt: skip
    run = {"id": "nightly-2026-11-25", "status": "RUNNING", "baseline": "v1",
           "candidate": "v2", "checked": 3, "images": 8,
           "created_at": "2026-11-25T02:00:00+00:00"}  # fmt: skip
    text = rendered(
        monkeypatch,
        Settings(home=tmp_path),
        data(experiments=[experiment], queues=[queue], golden=run),
    )
    assert "default 15%, new_user 5%" in text and "(rolled back)" in text
    assert "hold (2026-11-24)" in text
    assert "render-v1-cpu@host (cpu, abc123)" in text
    assert "last run nightly-2026-11-25 (RUNNING, v1 vs v2, 3/8 images checked" in text
    assert "2026-11-25 02:00 UTC" in text


def test_latest_dashboard_is_where_the_daily_job_writes_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert (
        overview.latest_dashboard(settings, "v2-canary")
        == dashboard_paths(settings, "v2-canary", None)[1]
    )


def test_no_recorded_worker_means_no_broadcast() -> None:
    class NoBroker:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the broker was asked ({name})")

    assert consumers(NoBroker(), nodes=[]) == {}  # type: ignore[arg-type]


def test_each_version_shows_its_lifecycle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    retired = {"state": "retired", "retired_since": "2026-12-01T09:30:00+00:00",
               "purge_after": "2026-12-08T09:30:00+00:00", "purged_at": None,
               "rerouted_to": "v2"}  # fmt: skip
    queues = [
        {"version": "v1", "queue": "render.v1", "waiting": 0, "workers": [], "lifecycle": retired},
        {"version": "v2", "queue": "render.v2", "waiting": 0, "workers": [], "lifecycle": ACTIVE},
    ]
    text = rendered(monkeypatch, Settings(home=tmp_path), data(queues=queues))
    assert (
        "retired since 2026-12-01 09:30 UTC, queue re-routed to v2, images and logs purged "
        "after 2026-12-08 09:30"
    ) in " ".join(text.split())
    assert "active" in text
