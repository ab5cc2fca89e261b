"""Golden review and report over HTTP: blind sides, grading rules, roles (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.http.golden import baseline_side
from scheduler.golden_replay import GoldenReplay
from storage import golden, jobs
from storage.models import ApiKeyRole, JobStatus, utcnow
from storage.objects import store_from_settings
from tests.golden_fixtures import small_set
from tests.integration.conftest import Stack, fresh_database_url, make_stack

pytestmark = pytest.mark.integration
COLOURS = {"v1": (200, 30, 30), "v2": (30, 30, 200)}


@pytest.fixture(params=["sqlite", "postgresql"])
def review(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clean_redis: str,
    postgres_schema_url: str,
    model_dir: Path,
) -> Iterator[tuple[Stack, dict[str, str], TestClient]]:
    database_url = fresh_database_url(request.param, tmp_path, postgres_schema_url)
    stack = make_stack(
        tmp_path, clean_redis, database_url, f"file://{tmp_path / 'objects'}", model_dir
    )
    golden_set, text = small_set(stack.settings)
    GoldenReplay(stack.settings, stack.gateway()).start(
        "run-1", golden_set, text, trigger="manual", baseline="v1", candidate="v2"
    )
    tokens = {
        name: create_key(stack.engine, name, role)[1]
        for name, role in [
            ("alice", ApiKeyRole.GRADER),
            ("bob", ApiKeyRole.GRADER),
            ("client", ApiKeyRole.CLIENT),
            ("operator", ApiKeyRole.OPERATOR),
        ]
    }
    with TestClient(create_app(stack.settings)) as client:
        yield stack, tokens, client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def render_all(stack: Stack) -> None:
    """Stand in for the workers: each version's jobs succeed with a plain coloured image."""
    store = store_from_settings(stack.settings)
    for result, job in golden.results_with_jobs(stack.engine, "run-1"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), COLOURS[result.version]).save(buffer, "PNG")
        key = f"renders/{job.id}.png"
        store.put(key, buffer.getvalue(), "image/png")
        jobs.claim(stack.engine, job.id, utcnow(), worker_host="test")
        jobs.finish(stack.engine, job.id, JobStatus.SUCCEEDED, image_key=key)


def test_roles_and_missing_things(review: tuple[Stack, dict[str, str], TestClient]) -> None:
    _, tokens, client = review
    assert client.get("/v1/golden/runs/run-1/review").status_code == 401
    forbidden = client.get("/v1/golden/runs/run-1/review", headers=auth(tokens["client"]))
    assert forbidden.status_code == 403 and "grader" in forbidden.json()["detail"]
    assert client.get("/v1/golden/runs/run-1/review", headers=auth(tokens["operator"])).is_success
    missing = client.get("/v1/golden/runs/nope/review", headers=auth(tokens["alice"]))
    assert missing.status_code == 404 and missing.json()["detail"] == "no golden run nope"
    # graders review; they submit nothing
    job = {"prompt": "x", "user_id": "u"}
    assert client.post("/v1/jobs", json=job, headers=auth(tokens["alice"])).status_code == 403
    runs = client.get("/v1/golden/runs", headers=auth(tokens["alice"])).json()
    assert [r["id"] for r in runs] == ["run-1"]


def test_blind_grading_reveal_and_report(review: tuple[Stack, dict[str, str], TestClient]) -> None:
    stack, tokens, client = review
    alice = auth(tokens["alice"])
    page = client.get("/v1/golden/runs/run-1/review", headers=alice).json()
    assert page["grader"] == "alice" and page["progress"] == {"graded": 0, "total": 8}
    first = page["cases"][0]
    assert first["expected"] == ["a red cube", "soft light"]
    assert first["level_definitions"]["A"] == "the cube is missing"
    assert first["sides"]["left"]["status"] == JobStatus.QUEUED
    assert first["sides"]["left"]["image_url"] is None and first["revealed"] is None
    assert "v1" not in str(first["sides"])  # nothing says which version a side is

    case_id = first["case_id"]
    body = {"case_id": case_id, "side": "left", "level": "pass"}
    too_early = client.put("/v1/golden/runs/run-1/grades", json=body, headers=alice)
    assert too_early.status_code == 409 and "QUEUED" in too_early.json()["detail"]

    render_all(stack)
    left_is_baseline = baseline_side("run-1", case_id, "alice") == "left"
    left_version = "v1" if left_is_baseline else "v2"
    right_version = "v2" if left_is_baseline else "v1"
    image = client.get(f"/v1/golden/runs/run-1/cases/{case_id}/left/image", headers=alice)
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).getpixel((5, 5)) == COLOURS[left_version]

    graded = client.put("/v1/golden/runs/run-1/grades", json=body, headers=alice).json()
    assert graded["revealed"] is None and graded["progress"]["graded"] == 1
    body = {"case_id": case_id, "side": "right", "level": "A"}
    graded = client.put("/v1/golden/runs/run-1/grades", json=body, headers=alice).json()
    arm = {"v1": "baseline", "v2": "candidate"}
    assert graded["revealed"] == {
        "left": f"{arm[left_version]} ({left_version})",
        "right": f"{arm[right_version]} ({right_version})",
    }
    # a second grade of the same image replaces the first
    body = {"case_id": case_id, "side": "right", "level": "B"}
    client.put("/v1/golden/runs/run-1/grades", json=body, headers=alice)
    stored = {(g.version, g.grader): g.level for g in golden.grades(stack.engine, "run-1")}
    assert stored == {(left_version, "alice"): "pass", (right_version, "alice"): "B"}

    # bob's view is his own: nothing graded, and his sides may be swapped
    bob_page = client.get("/v1/golden/runs/run-1/review", headers=auth(tokens["bob"])).json()
    assert bob_page["progress"]["graded"] == 0 and bob_page["cases"][0]["revealed"] is None

    bad = {"case_id": case_id, "side": "middle", "level": "C"}
    invalid = client.put("/v1/golden/runs/run-1/grades", json=bad, headers=alice)
    assert invalid.status_code == 422 and len(invalid.json()["errors"]) == 2
    unknown = {"case_id": "nope", "side": "left", "level": "pass"}
    assert (
        client.put("/v1/golden/runs/run-1/grades", json=unknown, headers=alice).status_code == 404
    )

    # the report names versions per case: operators only, graders stay blind
    assert client.get("/v1/golden/runs/run-1/report", headers=alice).status_code == 403
    operator = auth(tokens["operator"])
    report = client.get("/v1/golden/runs/run-1/report", headers=operator).json()
    assert report["versions"][left_version]["overall"]["levels"]["pass"] == 1
    assert report["versions"][right_version]["overall"]["levels"]["B"] == 1
    assert report["graders"] == ["alice"]
    html = client.get("/v1/golden/runs/run-1/report.html", headers=operator)
    assert html.headers["content-type"].startswith("text/html") and "<svg" in html.text


def test_report_of_a_run_with_0_and_100_percent_categories(
    review: tuple[Stack, dict[str, str], TestClient],
) -> None:
    """Every baseline image A, every candidate image pass: the HTML report still renders."""
    stack, tokens, client = review
    render_all(stack)
    alice = auth(tokens["alice"])
    for case in client.get("/v1/golden/runs/run-1/review", headers=alice).json()["cases"]:
        left_is_baseline = baseline_side("run-1", case["case_id"], "alice") == "left"
        for side in ("left", "right"):
            level = "A" if (side == "left") == left_is_baseline else "pass"
            body = {"case_id": case["case_id"], "side": side, "level": level}
            assert client.put("/v1/golden/runs/run-1/grades", json=body, headers=alice).is_success
    operator = auth(tokens["operator"])
    report = client.get("/v1/golden/runs/run-1/report", headers=operator).json()
    assert report["versions"]["v1"]["overall"]["pass_rate_ci"][0] == 0.0
    assert report["versions"]["v2"]["overall"]["pass_rate_ci"][1] == 1.0
    html = client.get("/v1/golden/runs/run-1/report.html", headers=operator)
    assert html.status_code == 200, html.text
    assert html.headers["content-type"].startswith("text/html") and "<svg" in html.text
