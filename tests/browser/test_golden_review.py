"""The blind side-by-side review page (/golden/review) in headless Chromium.

The state is built directly in a SQLite database and a local object directory (a golden
run with its jobs, results and images), the real FastAPI app is served by uvicorn on a
free local port, and Playwright drives Debian's chromium. No Redis or Celery worker runs:
the page never submits jobs.
"""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageStat
from playwright.sync_api import Locator, Page, expect
from sqlalchemy.engine import Engine
from sqlmodel import Session

from analysis.golden.cases import parse_golden_set
from canary.settings import Settings
from gateway.auth import create_key
from gateway.http.app import create_app
from gateway.http.golden import baseline_side
from gateway.service import Gateway
from storage import golden
from storage.db import get_engine, init_db
from storage.models import (
    ApiKeyRole,
    GoldenResult,
    GoldenRun,
    GoldenRunStatus,
    Job,
    JobStatus,
)
from storage.objects import LocalStore
from tasks.app import make_app
from tests.http_server import serve

pytestmark = pytest.mark.timeout(120)

SCREENSHOT_COPY = Path("/tmp/golden_review_screenshot.png")
RUN_ID = "golden-browser-test"
BASELINE, CANDIDATE = "v1", "v2"
GRADER = "alice"

SET_TEXT = """\
name: browser-test
format: 1
defaults:
  negative_prompt: "lowres, watermark"
  steps: 4
  width: 512
  height: 512
  levels:
    S: "severe distortion or NSFW content"
cases:
  - id: pose-001
    category: pose_control
    prompt: "a ballet dancer mid leap, arms raised <b>above</b> the head"
    seed: 1001
    expected: ["ballet dancer", "arms raised", "feet off the ground"]
    levels:
      A: "the dancer stands on the floor"
      B: "hands or feet are smeared"
  - id: light-001
    category: lighting_narrative
    prompt: "a lighthouse at dusk, its beam cutting through fog"
    seed: 2001
    expected: ["lighthouse", "light beam", "fog"]
    levels:
      A: "no visible beam"
      B: "the beam is there but the fog is missing"
  - id: material-001
    category: material_detail
    prompt: "a brushed copper kettle on a slate counter"
    negative_prompt: "plastic, cartoon"
    seed: 3001
    expected: ["copper kettle", "brushed metal texture"]
    levels:
      A: "the kettle is not metallic"
      B: "the brushing pattern is smeared"
  - id: style-001
    category: style_transfer
    prompt: "a city street in the style of a woodcut print"
    seed: 4001
    expected: ["city street", "woodcut lines"]
    levels:
      A: "no woodcut look"
      B: "the woodcut lines are uneven"
"""
OOM_REASON = "oom: CUDA out of memory while decoding"
# material-001's candidate ran out of memory; style-001's candidate has not run yet
FAILED = ("material-001", CANDIDATE)
QUEUED = ("style-001", CANDIDATE)
COLOURS = {BASELINE: ((20, 60, 160), (120, 200, 255)), CANDIDATE: ((170, 60, 20), (255, 210, 90))}


def gradient_png(version: str, index: int, size: int = 384) -> bytes:
    """A two-colour diagonal gradient with a white disc whose place depends on the case."""
    start, end = COLOURS[version]
    ramp = Image.linear_gradient("L").rotate(45 + 30 * index, expand=False).resize((size, size))
    image = Image.composite(
        Image.new("RGB", (size, size), end), Image.new("RGB", (size, size), start), ramp
    )
    x = 60 + 70 * index
    ImageDraw.Draw(image).ellipse((x, 120, x + 110, 230), fill=(250, 250, 245))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ReviewServer:
    base_url: str
    engine: Engine
    run_id: str
    tokens: dict[str, str]  # grader / client


def build_state(settings: Settings, engine: Engine, store: LocalStore) -> None:
    golden_set = parse_golden_set(SET_TEXT, settings, RUN_ID)
    golden.create_run(
        engine,
        GoldenRun(
            id=RUN_ID,
            trigger="manual",
            set_name=golden_set.name,
            set_sha256=golden_set.sha256,
            set_text=SET_TEXT,
            case_count=len(golden_set.cases),
            baseline=BASELINE,
            candidate=CANDIDATE,
            status=GoldenRunStatus.RUNNING,
        ),
    )
    rows, results = [], []
    for index, case in enumerate(golden_set.cases):
        for version in (BASELINE, CANDIDATE):
            request = case.request(version, f"golden:{RUN_ID}:{case.id}:{version}")
            job = Job(
                id=str(uuid.uuid4()),
                source="golden",
                batch_id=RUN_ID,
                **request,
            )
            result = GoldenResult(
                run_id=RUN_ID,
                case_id=case.id,
                version=version,
                job_id=job.id,
                category=case.category.value,
            )
            if (case.id, version) == FAILED:
                job.status = JobStatus.FAILED
                job.failure_kind = "oom"
                job.failure_message = "CUDA out of memory while decoding"
                result.auto_level = "S"
                result.auto_reason = OOM_REASON
            elif (case.id, version) == QUEUED:
                job.status = JobStatus.QUEUED
            else:
                job.status = JobStatus.SUCCEEDED
                job.image_key = f"renders/{job.id}.png"
                store.put(job.image_key, gradient_png(version, index), "image/png")
            rows.append(job)
            results.append(result)
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    golden.add_results(engine, results)


@pytest.fixture
def review_server(tmp_path: Path) -> Iterator[ReviewServer]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'canary.db'}",
        storage_url=f"file://{tmp_path / 'objects'}",
        redis_url="redis://127.0.0.1:6379/15",  # never contacted: nothing is submitted
        home=tmp_path / "home",
        versions=[BASELINE, CANDIDATE],
        experiment_file=None,
    )
    engine = get_engine(settings.resolved_database_url)
    init_db(engine)
    store = LocalStore(tmp_path / "objects")
    build_state(settings, engine, store)
    tokens = {
        "grader": create_key(engine, GRADER, ApiKeyRole.GRADER)[1],
        "client": create_key(engine, "bob", ApiKeyRole.CLIENT)[1],
        "operator": create_key(engine, "olga", ApiKeyRole.OPERATOR)[1],
    }
    app = create_app(settings, gateway=Gateway(settings, engine, make_app(settings)), store=store)
    with serve(app) as url:
        yield ReviewServer(url, engine, RUN_ID, tokens)


def version_of(case_id: str, side: str) -> str:
    return BASELINE if baseline_side(RUN_ID, case_id, GRADER) == side else CANDIDATE


def label_of(case_id: str, side: str) -> str:
    version = version_of(case_id, side)
    return f"{'baseline' if version == BASELINE else 'candidate'} ({version})"


def side_of(case_id: str, version: str) -> str:
    return next(side for side in ("left", "right") if version_of(case_id, side) == version)


GRADE_KEYS = {
    "left": {"pass": "1", "B": "2", "A": "3", "S": "4"},
    "right": {"pass": "7", "B": "8", "A": "9", "S": "0"},
}


def test_blind_review_page(review_server: ReviewServer, page: Page, tmp_path: Path) -> None:
    base, token = review_server.base_url, review_server.tokens["grader"]
    api_calls: list[tuple[str, str | None]] = []
    page.on(
        "request",
        lambda r: (
            api_calls.append((r.url, r.headers.get("authorization"))) if "/v1/" in r.url else None
        ),
    )
    case_panel = page.locator("#case-panel")
    message = page.locator("#message")

    def button(side: str, level: str) -> Locator:
        return page.locator(f'button[data-side="{side}"][data-level="{level}"]')

    def images_loaded() -> None:
        page.wait_for_function(
            """() => {
                const images = [...document.querySelectorAll('img[data-side-image]')];
                return images.length === 2
                    && images.every(i => i.complete && i.naturalWidth > 0);
            }"""
        )

    # 1. the key is asked for, then case 1 shows with both images and nothing revealed
    page.goto(f"{base}/golden/review?run={RUN_ID}")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator("#key-input")).to_have_attribute("type", "password")
    page.fill("#key-input", token)
    page.click("#key-submit")
    expect(case_panel).to_be_visible()
    expect(case_panel).to_have_attribute("data-case", "pose-001")
    expect(page.locator("#case-prompt")).to_have_text(
        "a ballet dancer mid leap, arms raised <b>above</b> the head"  # shown as text
    )
    expect(page.locator("#case-negative")).to_have_text("lowres, watermark")
    expect(page.locator("#case-expected li")).to_have_text(
        ["ballet dancer", "arms raised", "feet off the ground"]
    )
    expect(page.locator("#case-levels")).to_contain_text("the dancer stands on the floor")
    expect(page.locator("#progress-text")).to_have_text("graded 0 of 8 images")
    images_loaded()
    body = page.inner_text("body")
    assert "baseline" not in body and "candidate" not in body
    expect(page.locator("[data-reveal]:visible")).to_have_count(0)
    assert page.evaluate("() => localStorage.length") == 0
    assert token not in page.url

    # 2a. grade case 1 with the mouse: the reveal appears, then the next case
    button("left", "pass").click()
    expect(button("left", "pass")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#reveal-left")).to_be_hidden()
    button("right", "B").click()
    expect(page.locator("#reveal-left")).to_have_text(label_of("pose-001", "left"))
    expect(page.locator("#reveal-right")).to_have_text(label_of("pose-001", "right"))
    expect(case_panel).to_have_attribute("data-case", "light-001")
    expect(page.locator("#progress-text")).to_have_text("graded 2 of 8 images")
    expect(page.locator("[data-reveal]:visible")).to_have_count(0)
    images_loaded()

    # 2b. grade case 2 with the keyboard (left B = 2, right S = 0)
    page.keyboard.press("2")
    expect(button("left", "B")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("0")
    expect(page.locator("#reveal-left")).to_have_text(label_of("light-001", "left"))
    expect(page.locator("#reveal-right")).to_have_text(label_of("light-001", "right"))
    expect(case_panel).to_have_attribute("data-case", "material-001")

    # 2c. the failed candidate shows its status and the automatic check, no image
    failed_side = side_of(*FAILED)
    image_side = "left" if failed_side == "right" else "right"
    expect(page.locator(f'[data-side-status="{failed_side}"]')).to_contain_text("FAILED")
    expect(page.locator(f'[data-side-auto="{failed_side}"]')).to_have_text(
        f"automatic: S - {OOM_REASON}"
    )
    expect(page.locator("img[data-side-image]")).to_have_count(1)
    page.wait_for_function("() => document.querySelector('img[data-side-image]').naturalWidth > 0")
    page.keyboard.press(GRADE_KEYS[image_side]["A"])  # grade only the image: half done
    expect(button(image_side, "A")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#progress-text")).to_have_text("graded 5 of 8 images")

    # 3. a reload resumes at the first case not fully graded, without asking for the key
    page.reload()
    expect(case_panel).to_have_attribute("data-case", "material-001")
    expect(page.locator("#key-panel")).to_be_hidden()
    expect(page.locator("#progress-text")).to_have_text("graded 5 of 8 images")
    expect(button(image_side, "A")).to_have_attribute("aria-pressed", "true")
    expect(button(failed_side, "S")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("[data-reveal]:visible")).to_have_count(0)

    # the reveals of graded cases survive the reload; navigate back with the keyboard
    page.keyboard.press("p")
    expect(case_panel).to_have_attribute("data-case", "light-001")
    page.keyboard.press("ArrowLeft")
    expect(case_panel).to_have_attribute("data-case", "pose-001")
    expect(page.locator("#reveal-left")).to_have_text(label_of("pose-001", "left"))
    expect(page.locator("#reveal-right")).to_have_text(label_of("pose-001", "right"))
    expect(button("right", "B")).to_have_attribute("aria-pressed", "true")
    images_loaded()

    # 6. the screenshot (taken here: a revealed case with both images and its grades)
    shot = tmp_path / "review.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    with Image.open(shot) as image:
        assert image.width > 600 and image.height > 400, image.size
        extrema = ImageStat.Stat(image.convert("L")).extrema[0]
        assert extrema[1] - extrema[0] > 64, f"a flat screenshot: {extrema}"
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50

    # API errors show in the message area: the candidate of style-001 is still QUEUED
    page.keyboard.press("n")
    page.keyboard.press("n")
    page.keyboard.press("ArrowRight")
    expect(case_panel).to_have_attribute("data-case", "style-001")
    queued_side = side_of(*QUEUED)
    expect(page.locator(f'[data-side-status="{queued_side}"]')).to_contain_text("QUEUED")
    button(queued_side, "pass").click()
    expect(message).to_be_visible()
    expect(message).to_contain_text("409")
    expect(message).to_contain_text("still QUEUED")
    expect(button(queued_side, "pass")).to_have_attribute("aria-pressed", "false")

    # the report names versions per case: a grader is told so and keeps grading
    page.click("#report-button")
    expect(message).to_contain_text("operator keys")
    expect(page.locator("#report-panel")).to_be_hidden()
    expect(case_panel).to_be_visible()

    # every API call carried the grader's key in the header, never in the URL
    assert api_calls
    for url, authorization in api_calls:
        assert authorization == f"Bearer {token}", url
        assert token not in url

    # 4. the database holds alice's grades for the right versions
    stored = {
        (g.case_id, g.version): g.level
        for g in golden.grades(review_server.engine, RUN_ID)
        if g.grader == GRADER
    }
    assert {g.grader for g in golden.grades(review_server.engine, RUN_ID)} == {GRADER}
    assert stored == {
        ("pose-001", version_of("pose-001", "left")): "pass",
        ("pose-001", version_of("pose-001", "right")): "B",
        ("light-001", version_of("light-001", "left")): "B",
        ("light-001", version_of("light-001", "right")): "S",
        ("material-001", BASELINE): "A",
    }

    # 5. a wrong key asks again with a clear message; a client key gets the 403 message
    page.click("#change-key")
    expect(page.locator("#key-panel")).to_be_visible()
    page.fill("#key-input", "cr_not-a-real-key")
    page.click("#key-submit")
    expect(message).to_contain_text("401")
    expect(message).to_contain_text("not accepted")
    expect(page.locator("#key-panel")).to_be_visible()
    page.fill("#key-input", review_server.tokens["client"])
    page.click("#key-submit")
    expect(message).to_contain_text("403")
    expect(message).to_contain_text("may not review")
    expect(page.locator("#key-panel")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0  # a rejected key is dropped
    page.fill("#key-input", token)
    page.click("#key-submit")
    expect(case_panel).to_be_visible()
    expect(message).to_be_hidden()


def test_run_list_links_to_the_review(review_server: ReviewServer, page: Page) -> None:
    page.goto(f"{review_server.base_url}/golden/review")
    page.fill("#key-input", review_server.tokens["grader"])
    page.click("#key-submit")
    link = page.locator(f'#runs-table a[data-run="{RUN_ID}"]')
    expect(link).to_be_visible()
    expect(page.locator("#runs-body tr")).to_have_count(1)
    expect(page.locator("#runs-body")).to_contain_text("RUNNING")
    link.click()
    expect(page.locator("#case-panel")).to_have_attribute("data-case", "pose-001")
    assert f"run={RUN_ID}" in page.url


def test_an_operator_opens_the_report_in_a_sandboxed_frame(
    review_server: ReviewServer, page: Page
) -> None:
    page.goto(f"{review_server.base_url}/golden/review?run={RUN_ID}")
    page.fill("#key-input", review_server.tokens["operator"])
    page.click("#key-submit")
    expect(page.locator("#case-panel")).to_be_visible()
    page.click("#report-button")
    expect(page.locator("#report-panel")).to_be_visible()
    report = page.frame_locator("#report-frame")
    expect(report.locator("h1")).to_contain_text(f"Golden run {RUN_ID}")
    expect(report.locator("svg").first).to_be_visible()
    page.click("#report-close")
    expect(page.locator("#case-panel")).to_be_visible()
