"""Golden runs over HTTP: the blind side-by-side review page, grading, and the reports.

Blind review: for each (run, case, grader) a hash decides whether the baseline is shown on
the left or the right. The page only ever sees "left" and "right"; which version each
side was is revealed once the grader has graded both sides of that case.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Engine

from analysis.golden.cases import GoldenSet, Level, parse_golden_set
from canary.settings import Settings
from gateway.auth import Principal
from gateway.http.auth import require_role
from gateway.http.dependencies import AppSettings, Database, Store
from gateway.text import StorableStr
from storage import golden
from storage.models import TERMINAL_STATUSES, ApiKeyRole, GoldenResult, GoldenRun, Job, JobStatus
from storage.objects import ObjectNotFound

STATIC = Path(__file__).parent / "static"
Side = Literal["left", "right"]
# the page loads nothing from elsewhere and may not be framed by another site
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
    "script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-src 'self'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
Operator = Annotated[Principal, Depends(require_role(ApiKeyRole.OPERATOR))]
Reviewer = Annotated[Principal, Depends(require_role(ApiKeyRole.OPERATOR, ApiKeyRole.GRADER))]


def baseline_side(run_id: str, case_id: str, grader: str) -> Side:
    """Which side shows the baseline: random-looking, but stable across page reloads."""
    digest = hashlib.sha256(f"{run_id}\x1f{case_id}\x1f{grader}".encode()).digest()
    return "left" if digest[0] & 1 else "right"


def version_on(run: GoldenRun, case_id: str, grader: str, side: Side) -> str:
    on_left = baseline_side(run.id, case_id, grader) == "left"
    return run.baseline if (side == "left") == on_left else run.candidate


class GradeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case_id: StorableStr
    side: Side
    level: Level


router = APIRouter()


def load_run(engine: Engine, run_id: str) -> GoldenRun:
    run = golden.get_run(engine, run_id) if len(run_id) <= 100 else None
    if run is None:
        raise HTTPException(404, f"no golden run {run_id}")
    return run


def stored_set(settings: Settings, run: GoldenRun) -> GoldenSet:
    return parse_golden_set(run.set_text, settings, run.id, check_limits=False)


def load_job(
    settings: Settings, engine: Engine, run: GoldenRun, case_id: str, version: str, side: str
) -> Job:
    found = {
        result.version: job
        for result, job in golden.results_with_jobs(engine, run.id)
        if result.case_id == case_id
    }
    if not found and case_id not in {case.id for case in stored_set(settings, run).cases}:
        raise HTTPException(404, f"golden run {run.id} has no case {case_id}")
    if version not in found:
        raise HTTPException(409, f"case {case_id} ({side}) is not submitted yet")
    return found[version]


def reveal(run: GoldenRun, case_id: str, grader: str) -> dict[str, str]:
    left = version_on(run, case_id, grader, "left")
    right = version_on(run, case_id, grader, "right")

    def label(version: str) -> str:
        arm = "baseline" if version == run.baseline else "candidate"
        return f"{arm} ({version})"

    return {"left": label(left), "right": label(right)}


def progress(engine: Engine, run: GoldenRun, grader: str) -> dict[str, int]:
    graded = len(golden.grades(engine, run.id, grader))
    return {"graded": graded, "total": 2 * run.case_count}


@router.get("/golden/review", include_in_schema=False)
def review_page() -> FileResponse:
    return FileResponse(STATIC / "golden_review.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/v1/golden/runs")
def list_runs(caller: Reviewer, engine: Database, limit: int = 20) -> list[dict[str, Any]]:
    """Recent golden runs, newest first."""
    return [
        {
            "id": run.id,
            "trigger": run.trigger,
            "status": run.status,
            "created_at": run.created_at.isoformat(),
            "cases": run.case_count,
            "set_sha256": run.set_sha256,
        }
        for run in golden.list_runs(engine, max(1, min(limit, 200)))
    ]


@router.get("/v1/golden/runs/{run_id}/review")
def review(
    run_id: str, caller: Reviewer, settings: AppSettings, engine: Database
) -> dict[str, Any]:
    """Every case of a run for blind grading by the calling key's grader."""
    run = load_run(engine, run_id)
    cases = {c.id: c for c in stored_set(settings, run).cases}
    mine = {(g.case_id, g.version): g.level for g in golden.grades(engine, run.id, caller.name)}
    rows: dict[str, dict[str, tuple[GoldenResult, Job]]] = {}
    for stored_result, stored_job in golden.results_with_jobs(engine, run.id):
        rows.setdefault(stored_result.case_id, {})[stored_result.version] = (
            stored_result,
            stored_job,
        )
    items = []
    for case_id, case in cases.items():
        sides: dict[str, Any] = {}
        for side in ("left", "right"):
            version = version_on(run, case_id, caller.name, side)
            result, job = rows.get(case_id, {}).get(version, (None, None))
            has_image = job is not None and job.status == JobStatus.SUCCEEDED
            sides[side] = {
                "status": job.status if job else "NOT_SUBMITTED",
                "image_url": (
                    f"/v1/golden/runs/{run.id}/cases/{case_id}/{side}/image" if has_image else None
                ),
                "auto": (
                    {"level": result.auto_level, "reason": result.auto_reason}
                    if result is not None and result.auto_level
                    else None
                ),
                "grade": mine.get((case_id, version)),
            }
        both_graded = all(sides[s]["grade"] for s in ("left", "right"))
        items.append(
            {
                "case_id": case_id,
                "category": case.category.value,
                "prompt": case.prompt,
                "negative_prompt": case.negative_prompt,
                "expected": list(case.expected),
                "level_definitions": case.levels,
                "sides": sides,
                "revealed": reveal(run, case_id, caller.name) if both_graded else None,
            }
        )
    return {
        "run": {"id": run.id, "status": run.status, "cases": run.case_count},
        "grader": caller.name,
        "levels": [level.value for level in Level],
        "progress": progress(engine, run, caller.name),
        "cases": items,
    }


@router.put("/v1/golden/runs/{run_id}/grades")
def grade(
    run_id: str, body: GradeIn, caller: Reviewer, settings: AppSettings, engine: Database
) -> dict[str, Any]:
    """Grade one side of one case (a later grade by the same grader replaces it)."""
    run = load_run(engine, run_id)
    version = version_on(run, body.case_id, caller.name, body.side)
    job = load_job(settings, engine, run, body.case_id, version, body.side)
    if job.status not in TERMINAL_STATUSES:
        raise HTTPException(409, f"case {body.case_id} ({body.side}) is still {job.status}")
    golden.save_grade(engine, run.id, body.case_id, version, caller.name, body.level.value)
    mine = {
        g.version for g in golden.grades(engine, run.id, caller.name) if g.case_id == body.case_id
    }
    both = {run.baseline, run.candidate} <= mine
    return {
        "case_id": body.case_id,
        "side": body.side,
        "level": body.level.value,
        "revealed": reveal(run, body.case_id, caller.name) if both else None,
        "progress": progress(engine, run, caller.name),
    }


@router.get(
    "/v1/golden/runs/{run_id}/cases/{case_id}/{side}/image",
    responses={200: {"content": {"image/png": {}}}},
)
def side_image(
    run_id: str,
    case_id: str,
    side: Side,
    caller: Reviewer,
    settings: AppSettings,
    engine: Database,
    store: Store,
) -> Response:
    run = load_run(engine, run_id)
    version = version_on(run, case_id, caller.name, side)
    job = load_job(settings, engine, run, case_id, version, side)
    if job.status != JobStatus.SUCCEEDED or not job.image_key:
        raise HTTPException(409, f"case {case_id} ({side}) has no image: {job.status}")
    # Streamed, never redirected: a presigned URL would need CORS on the bucket for the
    # page's fetch, and its host could tell the grader which version it serves.
    try:
        return Response(store.get(job.image_key), media_type="image/png")
    except ObjectNotFound:
        raise HTTPException(404, f"the image of case {case_id} ({side}) is gone") from None


def run_report(engine: Engine, run_id: str) -> dict[str, Any]:
    from analysis.golden.report import report_for_run  # statsmodels: on the first report

    found = report_for_run(engine, run_id) if len(run_id) <= 100 else None
    if found is None:
        raise HTTPException(404, f"no golden run {run_id}")
    return found


@router.get("/v1/golden/runs/{run_id}/report")
def report(run_id: str, caller: Operator, engine: Database) -> dict[str, Any]:
    """The run's structured report (what the gates read); operators only, since it
    names the version of every case and would unblind graders."""
    return run_report(engine, run_id)


@router.get("/v1/golden/runs/{run_id}/report.html", response_class=HTMLResponse)
def report_html(run_id: str, caller: Operator, engine: Database) -> HTMLResponse:
    from analysis.golden.html import render_report_html  # matplotlib: on the first page

    return HTMLResponse(render_report_html(run_report(engine, run_id)))
