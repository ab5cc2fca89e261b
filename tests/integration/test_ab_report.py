"""The A/B report through its three doors: `canary report`, the daily job, the HTTP app."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlmodel import Session

from gateway.auth import create_key
from gateway.http.app import create_app
from scheduler.dashboards import dashboard_paths, write_dashboards
from storage.db import get_engine, init_db
from storage.models import ApiKeyRole, Assignment, Event, Job
from tests.integration.conftest import PROJECT_ROOT, make_stack

pytestmark = pytest.mark.integration
FIRST_DAY = date(2026, 11, 10)
LAST_DAY = date(2026, 11, 16)
EXPERIMENT = {
    "default_version": "v1",
    "experiments": [
        {
            "name": "v2-canary",
            "seed": "report-test",
            "baseline": "v1",
            "candidate": "v2",
            "stages": [{"name": "50%", "shares": {"default": 0.5}}],
            "stage": "50%",
        }
    ],
}


def fill(engine, users: int = 400, seed: int = 3) -> None:  # type: ignore[no-untyped-def]
    """Users split 50/50; the candidate's views are long far more often (dwell effect)."""
    rng = random.Random(seed)
    start = datetime.combine(FIRST_DAY, datetime.min.time(), UTC)
    with Session(engine) as session:
        for n in range(users):
            arm = "candidate" if n % 2 else "baseline"
            user = f"user-{n}"
            first = start + timedelta(hours=rng.random() * 24)
            session.add(
                Assignment(
                    experiment="v2-canary", user_id=user, arm=arm,
                    variant="v2" if arm == "candidate" else "v1", segment="everyone_else",
                    stage="50%", first_seen=first, last_seen=first,
                )
            )  # fmt: skip
            for day in range(7):
                created = first + timedelta(days=day, minutes=rng.random() * 60)
                job_id = str(uuid.uuid4())
                prompt = f"prompt {rng.randrange(3)}"
                session.add(
                    Job(
                        id=job_id, user_id=user, experiment="v2-canary", arm=arm,
                        segment="everyone_else", model_version="v2" if arm == "candidate" else "v1",
                        prompt=prompt, seed=1, steps=1, guidance=1.0,
                        width=64, height=64, status="SUCCEEDED", created_at=created,
                        end_to_end_ms=1000 + rng.random() * 2000,
                    )
                )  # fmt: skip
                if rng.random() < (0.1 if arm == "candidate" else 0.3):  # a quick retry
                    session.add(
                        Job(
                            id=str(uuid.uuid4()), user_id=user, experiment="v2-canary", arm=arm,
                            segment="everyone_else", model_version="v1", prompt=prompt,
                            seed=1, steps=1, guidance=1.0, width=64, height=64,
                            status="SUCCEEDED", created_at=created - timedelta(seconds=20),
                            end_to_end_ms=1000,
                        )
                    )  # fmt: skip
                long_view = rng.random() < (0.6 if arm == "candidate" else 0.3)
                session.add(
                    Event(
                        id=str(uuid.uuid4()), type="image_viewed", user_id=user, job_id=job_id,
                        occurred_at=created + timedelta(seconds=5),
                        dwell_ms=20_000 if long_view else 4_000,
                    )
                )  # fmt: skip
        session.commit()


@pytest.fixture
def reporting(tmp_path: Path, clean_redis: str, model_dir: Path):  # type: ignore[no-untyped-def]
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(EXPERIMENT))
    policy_file = tmp_path / "gates.yaml"
    guardrails = {"min_users_per_arm": 50, "golden_s_not_worse": False}
    policy_file.write_text(yaml.safe_dump({"guardrails": guardrails}))
    database_url = f"sqlite:///{tmp_path / 'canary.db'}"
    init_db(get_engine(database_url))
    stack = make_stack(
        tmp_path, clean_redis, database_url, f"file://{tmp_path / 'objects'}", model_dir,
        CANARY_EXPERIMENT_FILE=str(experiment_file), CANARY_GATE_POLICY_FILE=str(policy_file),
        CANARY_REPORT_DAYS="7",
    )  # fmt: skip
    stack.settings = stack.settings.model_copy(
        update={
            "experiment_file": experiment_file,
            "gate_policy_file": policy_file,
            "report_days": 7,
        }
    )
    fill(stack.engine)
    return stack


def test_cli_report_prints_the_table_and_writes_json_and_html(reporting, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    result = subprocess.run(
        [sys.executable, "-m", "canary.cli", "report", "v2-canary", "--date", LAST_DAY.isoformat(),
         "--json-out", str(out_json), "--html", str(out_html)],
        env={**reporting.env, "COLUMNS": "200"}, cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "views with dwell >= 15 s" in result.stdout
    assert "gate verdict: ADVANCE" in result.stdout, result.stdout
    report = json.loads(out_json.read_text())
    dwell = report["metrics"]["long_dwell_share"]
    assert dwell["overall"]["significant"] and dwell["overall"]["relative_lift"] > 0.5
    assert len(dwell["daily"]) == 7
    assert report["users"] == {"baseline": 200, "candidate": 200}
    html = out_html.read_text()
    assert "Gate verdict" in html and html.count("<svg") >= 3

    unknown = subprocess.run(
        [sys.executable, "-m", "canary.cli", "report", "nope"], env=reporting.env,
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unknown.returncode == 1 and "no experiment 'nope'" in unknown.stderr
    bad_date = subprocess.run(
        [sys.executable, "-m", "canary.cli", "report", "v2-canary", "--date", "25/11/2026"],
        env=reporting.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert bad_date.returncode == 2 and "YYYY-MM-DD" in bad_date.stderr


def test_daily_job_writes_dashboards_the_api_serves(reporting) -> None:  # type: ignore[no-untyped-def]
    written = write_dashboards(reporting.settings, reporting.engine, LAST_DAY)
    html_path, json_path = dashboard_paths(reporting.settings, "v2-canary", LAST_DAY)
    assert written == [html_path] and json_path.exists()
    assert dashboard_paths(reporting.settings, "v2-canary", None)[0].exists()
    operator = create_key(reporting.engine, "ops", ApiKeyRole.OPERATOR)[1]
    client_key = create_key(reporting.engine, "app", ApiKeyRole.CLIENT)[1]
    headers = {"Authorization": f"Bearer {operator}"}
    with TestClient(create_app(reporting.settings)) as client:
        page = client.get(
            "/v1/experiments/v2-canary/dashboard.html", params={"date": "2026-11-16"},
            headers=headers,
        )  # fmt: skip
        assert page.status_code == 200 and page.text == html_path.read_text()
        report = client.get(
            "/v1/experiments/v2-canary/report", params={"date": "2026-11-16"}, headers=headers
        ).json()
        assert report["gates"]["verdict"] == "advance"
        forbidden = client.get(
            "/v1/experiments/v2-canary/report",
            headers={"Authorization": f"Bearer {client_key}"},
        )
        assert forbidden.status_code == 403
        missing = client.get("/v1/experiments/nope/report", headers=headers)
        assert missing.status_code == 404 and missing.json()["detail"] == "no experiment nope"
        live = client.get(
            "/v1/experiments/v2-canary/dashboard.html", params={"date": "2026-11-15"},
            headers=headers,
        )  # fmt: skip
        assert live.status_code == 200 and "Gate verdict" in live.text
