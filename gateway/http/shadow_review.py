"""Live prompts in the blind review page: the shadow pairs that differ most, side by side.

The same page and the same blind protocol as the golden set (gateway/http/golden.py): a
hash of (experiment, live job, grader) puts the baseline's image left or right, and which
side was which is revealed once the grader has graded both. The cases are the
experiment's pairs (a live job and its shadow copy, same inputs) from the last days whose
images differ most by pHash; grades are kept with the golden grades under the review id
``shadow:<experiment>``, so a golden report never counts them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy.engine import Engine

from analysis.golden.cases import Level
from gateway.experiment_source import ExperimentSource
from gateway.experiments import Experiment
from gateway.http.dependencies import Database, Experiments, Store
from gateway.http.golden import GradeIn, Reviewer, Side, baseline_side
from storage import golden
from storage.models import utcnow
from storage.objects import ObjectNotFound, ObjectStore
from storage.shadow import Pair, pairs

REVIEW_DAYS = 7
SIDES: tuple[Side, Side] = ("left", "right")
LEVEL_DEFINITIONS = {  # live prompts have no case-specific definitions
    "S": "unusable: blank, broken or unrelated to the prompt",
    "A": "a clear defect: wrong subject, count, text or style",
    "B": "a minor flaw a user might accept",
}

router = APIRouter()


def review_id(experiment: str) -> str:
    return f"shadow:{experiment}"


def _side_version(experiment: str, live_id: str, grader: str, side: Side) -> str:
    baseline_left = baseline_side(review_id(experiment), live_id, grader) == "left"
    return "baseline" if (side == "left") == baseline_left else "candidate"


def _worst(engine: Engine, store: ObjectStore, experiment: str) -> list[Pair]:
    """The experiment's finished pairs of the last days with both images, most different
    first (at most WORST_PAIRS)."""
    from analysis.shadow import WORST_PAIRS, image_distances, most_different  # scipy: lazily

    found = {
        p.live_id: p for p in pairs(engine, experiment, start=utcnow() - timedelta(REVIEW_DAYS))
    }
    ranked = most_different(image_distances(store, found.values()).values())
    return [found[d.live_id] for d in ranked[:WORST_PAIRS]]


def _known(experiments: ExperimentSource, name: str) -> Experiment:
    for experiment in experiments.config.experiments:
        if experiment.name == name:
            return experiment
    raise HTTPException(404, f"no experiment {name}")


def _pair(engine: Engine, experiment: str, live_id: str) -> Pair:
    found = pairs(engine, experiment, live_id=live_id)
    if not found:
        raise HTTPException(404, f"experiment {experiment} has no finished shadow pair {live_id}")
    return found[0]


def _progress(engine: Engine, experiment: str, grader: str, cases: int) -> dict[str, int]:
    graded = len(golden.grades(engine, review_id(experiment), grader))
    return {"graded": min(graded, 2 * cases), "total": 2 * cases}


def _reveal(experiment: Experiment, live_id: str, grader: str) -> dict[str, str]:
    def label(side: Side) -> str:
        arm = _side_version(experiment.name, live_id, grader, side)
        version = experiment.baseline if arm == "baseline" else experiment.candidate
        return f"{arm} ({version})"

    return {"left": label("left"), "right": label("right")}


@router.get("/v1/shadow/experiments")
def list_experiments(
    caller: Reviewer, engine: Database, experiments: Experiments
) -> list[dict[str, Any]]:
    """Experiments with finished shadow pairs in the last days, for the review page."""
    start = utcnow() - timedelta(REVIEW_DAYS)
    listed = []
    for experiment in experiments.config.experiments:
        found = pairs(engine, experiment.name, start=start)
        if found:
            listed.append(
                {
                    "name": experiment.name,
                    "stage": experiment.stage,
                    "pairs": len(found),
                    "days": REVIEW_DAYS,
                }
            )
    return listed


@router.get("/v1/shadow/{experiment}/review")
def review(
    experiment: str, caller: Reviewer, engine: Database, store: Store, experiments: Experiments
) -> dict[str, Any]:
    """The pairs that differ most, as blind cases for the calling key's grader."""
    known = _known(experiments, experiment)
    worst = _worst(engine, store, experiment)
    mine = {
        (g.case_id, g.version): g.level
        for g in golden.grades(engine, review_id(experiment), caller.name)
    }
    items: list[dict[str, Any]] = []
    for pair in worst:
        sides: dict[str, Any] = {}
        for side in SIDES:
            arm = _side_version(experiment, pair.live_id, caller.name, side)
            sides[side] = {
                "status": pair.live_status if arm == "baseline" else pair.shadow_status,
                "image_url": f"/v1/shadow/{experiment}/pairs/{pair.live_id}/{side}/image",
                "auto": None,
                "grade": mine.get((pair.live_id, arm)),
            }
        both = all(sides[s]["grade"] for s in SIDES)
        items.append(
            {
                "case_id": pair.live_id,
                "category": f"live prompt, {pair.segment or 'unknown'} segment",
                "prompt": pair.prompt,
                "negative_prompt": None,
                "expected": [],
                "level_definitions": LEVEL_DEFINITIONS,
                "sides": sides,
                "revealed": _reveal(known, pair.live_id, caller.name) if both else None,
            }
        )
    return {
        "run": {"id": review_id(experiment), "status": f"stage {known.stage}", "cases": len(items)},
        "grader": caller.name,
        "levels": [level.value for level in Level],
        "progress": _progress(engine, experiment, caller.name, len(items)),
        "cases": items,
    }


@router.get("/v1/shadow/{experiment}/pairs/{live_id}/{side}/image")
def side_image(
    experiment: str,
    live_id: str,
    side: Side,
    caller: Reviewer,
    engine: Database,
    store: Store,
    experiments: Experiments,
) -> Response:
    """One side's PNG: the baseline's live image or the candidate's shadow image."""
    _known(experiments, experiment)
    pair = _pair(engine, experiment, live_id)
    arm = _side_version(experiment, live_id, caller.name, side)
    key = pair.live_image if arm == "baseline" else pair.shadow_image
    if key is None:
        raise HTTPException(409, f"pair {live_id} ({side}) has no image")
    try:
        data = store.get(key)
    except ObjectNotFound:
        raise HTTPException(404, f"the {side} image of pair {live_id} is gone") from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.put("/v1/shadow/{experiment}/grades")
def grade(
    experiment: str,
    body: GradeIn,
    caller: Reviewer,
    engine: Database,
    experiments: Experiments,
) -> dict[str, Any]:
    """Grade one side of one pair (a later grade by the same grader replaces it)."""
    known = _known(experiments, experiment)
    _pair(engine, experiment, body.case_id)
    arm = _side_version(experiment, body.case_id, caller.name, body.side)
    golden.save_grade(
        engine, review_id(experiment), body.case_id, arm, caller.name, body.level.value
    )
    mine = {
        g.version
        for g in golden.grades(engine, review_id(experiment), caller.name)
        if g.case_id == body.case_id
    }
    from analysis.shadow import WORST_PAIRS

    # the review's cases are at most WORST_PAIRS pairs with both images (no image is
    # loaded again here: a pair purged since is still counted until the page reloads)
    recent = pairs(engine, experiment, start=utcnow() - timedelta(REVIEW_DAYS))
    cases = min(WORST_PAIRS, sum(bool(p.live_image and p.shadow_image) for p in recent))
    return {
        "case_id": body.case_id,
        "side": body.side,
        "level": body.level.value,
        "revealed": _reveal(known, body.case_id, caller.name)
        if {"baseline", "candidate"} <= mine
        else None,
        "progress": _progress(engine, experiment, caller.name, cases),
    }
