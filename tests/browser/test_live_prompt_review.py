"""Live prompts in the blind review page (/golden/review?shadow=EXPERIMENT), in headless
Chromium: an experiment's shadow pairs that differ most, graded blind like the golden set.

The state is built directly in SQLite and a local object directory (live jobs on the
baseline, their shadow copies on the candidate, with images), the real FastAPI app is
served by uvicorn on a free local port. No Redis or Celery worker runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlmodel import Session

from canary.settings import Settings
from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.http.golden import baseline_side
from gateway.http.shadow_review import review_id
from gateway.service import Gateway
from gateway.shadow import shadow_job_id
from storage import golden
from storage.db import get_engine, init_db
from storage.models import ApiKeyRole, Job, JobStatus, utcnow
from storage.objects import LocalStore
from tasks.app import make_app
from tests.browser.test_golden_review import gradient_png
from tests.http_server import serve

pytestmark = pytest.mark.timeout(120)

SCREENSHOT_COPY = Path("/tmp/live_prompt_review_screenshot.png")
EXPERIMENT = "v2-canary"
GRADER = "alice"
EXPERIMENTS = {
    "default_version": "v1",
    "experiments": [
        {
            "name": EXPERIMENT,
            "baseline": "v1",
            "candidate": "v2",
            "stages": [{"name": "internal", "shares": {"default": 0.0}, "shadow": 0.5}],
            "stage": "internal",
        }
    ],
}
PROMPTS = ["a harbour at dawn", "a red bicycle on a bridge", "a fox in the snow"]


def add_pairs(engine: object, store: LocalStore) -> list[str]:
    """Three finished pairs; the candidate's image of the second differs most."""
    at = utcnow() - timedelta(hours=2)
    rows, live_ids = [], []
    for i, prompt in enumerate(PROMPTS):
        live = Job(
            id=str(uuid.uuid4()), user_id=f"user-{i}", experiment=EXPERIMENT, arm="baseline",
            segment="everyone_else", model_version="v1", prompt=prompt, seed=i, steps=4,
            guidance=7.0, width=384, height=384, status=JobStatus.SUCCEEDED, created_at=at,
            inference_ms=900.0,
        )  # fmt: skip
        live.image_key = f"renders/{live.id}.png"
        copy = Job(
            id=shadow_job_id(live.id), source="shadow", shadow_of=live.id,
            priority_class="background", experiment=EXPERIMENT, segment=live.segment,
            model_version="v2", prompt=prompt, seed=i, steps=4, guidance=7.0, width=384,
            height=384, status=JobStatus.SUCCEEDED, created_at=at, inference_ms=950.0,
            image_key=f"shadow/{shadow_job_id(live.id)}.png",
        )  # fmt: skip
        store.put(live.image_key, gradient_png("v1", 0), "image/png")
        # the copy of pair 1 is another picture altogether; the others barely differ
        store.put(copy.image_key, gradient_png("v2" if i == 1 else "v1", 3 if i == 1 else 0))
        rows += [live, copy]
        live_ids.append(live.id)
    with Session(engine) as session:  # type: ignore[arg-type]
        session.add_all(rows)
        session.commit()
    return live_ids


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], list[str], object]]:
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps(EXPERIMENTS))
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'canary.db'}",
        storage_url=f"file://{tmp_path / 'objects'}",
        redis_url="redis://127.0.0.1:6379/15",  # never contacted: nothing is submitted
        home=tmp_path / "home",
        versions=["v1", "v2"],
        experiment_file=experiments,
    )
    engine = get_engine(settings.resolved_database_url)
    init_db(engine)
    store = LocalStore(tmp_path / "objects")
    live_ids = add_pairs(engine, store)
    tokens = {
        "grader": create_key(engine, GRADER, ApiKeyRole.GRADER)[1],
        "client": create_key(engine, "bob", ApiKeyRole.CLIENT)[1],
    }
    app = create_app(settings, gateway=Gateway(settings, engine, make_app(settings)), store=store)
    with serve(app) as url:
        yield url, tokens, live_ids, engine


def label_of(live_id: str, side: str) -> str:
    on_left = baseline_side(review_id(EXPERIMENT), live_id, GRADER) == "left"
    baseline = (side == "left") == on_left
    return "baseline (v1)" if baseline else "candidate (v2)"


def test_the_most_different_pairs_are_graded_blind(
    server: tuple[str, dict[str, str], list[str], object], page: Page
) -> None:
    base, tokens, live_ids, engine = server
    page.goto(f"{base}/golden/review")
    page.fill("#key-input", tokens["grader"])
    page.click("#key-submit")
    expect(page.locator("#runs-empty")).to_be_visible()  # no golden run here
    link = page.locator(f'#live-table a[data-shadow="{EXPERIMENT}"]')
    expect(link).to_be_visible()
    expect(page.locator("#live-body tr")).to_contain_text([f"{EXPERIMENT}internal3"])
    link.click()

    case_panel = page.locator("#case-panel")
    expect(case_panel).to_have_attribute("data-case", live_ids[1])  # the most different first
    expect(page.locator("#case-prompt")).to_have_text(PROMPTS[1])
    expect(page.locator("#run-meta")).to_have_text(f"live prompts of {EXPERIMENT} · stage internal")
    expect(page.locator("#report-button")).to_be_hidden()
    expect(page.locator("#progress-text")).to_have_text("graded 0 of 6 images")
    page.wait_for_function(
        """() => [...document.querySelectorAll('img[data-side-image]')]
            .filter(i => i.complete && i.naturalWidth > 0).length === 2"""
    )
    body = page.inner_text("body")
    assert "baseline" not in body and "candidate" not in body
    page.screenshot(path=str(SCREENSHOT_COPY), full_page=True)

    page.locator('button[data-side="left"][data-level="pass"]').click()
    expect(page.locator("#reveal-left")).to_be_hidden()
    page.locator('button[data-side="right"][data-level="A"]').click()
    expect(page.locator("#reveal-left")).to_have_text(label_of(live_ids[1], "left"))
    expect(page.locator("#reveal-right")).to_have_text(label_of(live_ids[1], "right"))
    expect(page.locator("#progress-text")).to_have_text("graded 2 of 6 images")

    # the grades are kept by arm under the review's own id: no golden run counts them
    stored = {(g.case_id, g.version): g.level for g in golden.grades(engine, review_id(EXPERIMENT))}  # type: ignore[arg-type]
    right_arm = label_of(live_ids[1], "right").split()[0]
    left_arm = label_of(live_ids[1], "left").split()[0]
    assert stored == {(live_ids[1], left_arm): "pass", (live_ids[1], right_arm): "A"}


def test_only_reviewers_see_live_prompts_and_bad_requests_are_named(
    server: tuple[str, dict[str, str], list[str], object],
) -> None:
    base, tokens, live_ids, _ = server
    grader = {"Authorization": f"Bearer {tokens['grader']}"}
    client = {"Authorization": f"Bearer {tokens['client']}"}
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/v1/shadow/experiments", headers=client).status_code == 403
        assert http.get(f"/v1/shadow/{EXPERIMENT}/review", headers=client).status_code == 403
        image = f"/v1/shadow/{EXPERIMENT}/pairs/{live_ids[0]}/left/image"
        assert http.get(image, headers=client).status_code == 403
        shown = http.get(image, headers=grader)
        assert shown.status_code == 200 and shown.content.startswith(b"\x89PNG")

        missing = http.get("/v1/shadow/nope/review", headers=grader)
        assert missing.status_code == 404 and "no experiment nope" in missing.text
        unknown = http.put(
            f"/v1/shadow/{EXPERIMENT}/grades",
            json={"case_id": "not-a-job", "side": "left", "level": "pass"},
            headers=grader,
        )
        assert unknown.status_code == 404 and "no finished shadow pair not-a-job" in unknown.text
        bad = http.put(
            f"/v1/shadow/{EXPERIMENT}/grades",
            json={"case_id": live_ids[0], "side": "middle", "level": "pass"},
            headers=grader,
        )
        assert bad.status_code == 422


def test_the_run_list_offers_the_live_prompts(
    server: tuple[str, dict[str, str], list[str], object], page: Page
) -> None:
    base, tokens, _, _ = server
    page.goto(f"{base}/golden/review")
    page.fill("#key-input", tokens["grader"])
    page.click("#key-submit")
    expect(page.locator("#live-table")).to_be_visible()
    expect(page.locator("#runs-panel")).to_contain_text("No golden runs yet.")
    page.screenshot(path="/tmp/live_prompt_runs_screenshot.png", full_page=True)
