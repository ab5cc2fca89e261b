"""Check the finished images of open golden runs; complete a run when all are checked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from sqlalchemy.engine import Engine

from analysis.golden.cases import GoldenCase, Level, parse_golden_set
from analysis.golden.checks import CheckOutcome, ElementScorer, check_image, decode_png, job_failure
from canary.settings import Settings
from storage import golden
from storage.models import GoldenRun, GoldenRunStatus
from storage.objects import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def load_scorer(folder: Path) -> ElementScorer:
    return ElementScorer(folder)


def scorer_from_settings(settings: Settings) -> ElementScorer | None:
    return load_scorer(settings.golden_scorer_dir) if settings.golden_scorer_dir else None


def check_run(
    settings: Settings,
    engine: Engine,
    store: ObjectStore,
    run: GoldenRun,
    scorer: ElementScorer | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Check every finished, unchecked image of a run; returns how many were checked."""
    pending = golden.unchecked_finished(engine, run.id)
    if not pending:
        return 0
    cases = {
        c.id: c
        for c in parse_golden_set(run.set_text, settings, f"run {run.id}", check_limits=False).cases
    }
    previous = golden.previous_images(engine, run, [(r.case_id, r.version) for r, _ in pending])
    for result, job in pending:
        case = cases[result.case_id]
        before = previous.get((result.case_id, result.version))
        outcome = job_failure(job)
        if outcome is None:
            outcome = _check_rendered(store, job.image_key, case, before, scorer)
        golden.save_check(engine, result, **outcome.as_fields(before[0] if before else None))
        if progress is not None:
            progress(1)
    return len(pending)


def _check_rendered(
    store: ObjectStore,
    image_key: str | None,
    case: GoldenCase,
    before: tuple[str, str] | None,
    scorer: ElementScorer | None,
) -> CheckOutcome:
    if image_key is None:
        return CheckOutcome(Level.S, "the job succeeded without an image key")
    try:
        image = decode_png(store.get(image_key))
    except ObjectNotFound:
        return CheckOutcome(Level.S, f"image {image_key} is missing from storage")
    previous_image = None
    if before is not None:
        try:
            previous_image = decode_png(store.get(before[1]))
        except ObjectNotFound:
            log.warning("previous night's image %s is gone; no drift check", before[1])
    return check_image(case, image, previous_image, scorer)


def check_open_runs(
    settings: Settings, engine: Engine, store: ObjectStore, scorer: ElementScorer | None
) -> dict[str, int]:
    """One pass over every run not yet complete; returns images checked per run."""
    checked: dict[str, int] = {}
    for status in (GoldenRunStatus.SUBMITTING, GoldenRunStatus.RUNNING):
        for run in golden.runs_with_status(engine, status):
            checked[run.id] = check_run(settings, engine, store, run, scorer)
            if golden.complete_if_checked(engine, run.id):
                log.info("golden run %s complete", run.id)
    return checked
