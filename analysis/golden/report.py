"""The report of one golden run: levels per image, pass rates, the paired difference.

An image's final level:
- S when the automatic checks found a hard failure (nothing a grader says changes that);
- else the graders' grade: the most common one, ties going to the more severe level;
- else the scorer's A (an expected element scored below tolerance), when there is one;
- else ungraded (left out of pass rates and counted as such).

Pass rates are over graded images; the candidate - baseline difference is over cases
graded for both versions (paired), with Newcombe's interval and McNemar's p-value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from statsmodels.stats.proportion import proportion_confint

from analysis.golden.cases import FAILURE_LEVELS, Category, Level
from analysis.proportions import PairedDifference, paired_difference
from storage import golden
from storage.models import GoldenGrade, GoldenResult, GoldenRun, Job

UNGRADED = "ungraded"


def consensus(levels: Iterable[str]) -> Level | None:
    """The most common grade; a tie goes to the more severe level."""
    counts = Counter(Level(level) for level in levels)
    if not counts:
        return None
    return max(counts, key=lambda level: (counts[level], level.severity))


def final_level(result: GoldenResult, grades: list[GoldenGrade]) -> Level | None:
    if result.auto_level == Level.S:
        return Level.S
    graded = consensus(grade.level for grade in grades)
    if graded is not None:
        return graded
    return Level(result.auto_level) if result.auto_level else None


@dataclass(frozen=True)
class ImageOutcome:
    case_id: str
    category: str
    version: str
    job_id: str
    level: Level | None
    auto_level: str | None
    auto_reason: str | None
    graders: int
    drift_rmse: float | None
    drifted: bool | None
    previous_run_id: str | None
    failure_kind: str | None


def image_outcomes(
    rows: list[tuple[GoldenResult, Job]], grades: list[GoldenGrade]
) -> list[ImageOutcome]:
    by_image: dict[tuple[str, str], list[GoldenGrade]] = {}
    for grade in grades:
        by_image.setdefault((grade.case_id, grade.version), []).append(grade)
    outcomes = []
    for result, job in rows:
        image_grades = by_image.get((result.case_id, result.version), [])
        outcomes.append(
            ImageOutcome(
                case_id=result.case_id,
                category=result.category,
                version=result.version,
                job_id=result.job_id,
                level=final_level(result, image_grades),
                auto_level=result.auto_level,
                auto_reason=result.auto_reason,
                graders=len(image_grades),
                drift_rmse=result.drift_rmse,
                drifted=result.drifted,
                previous_run_id=result.previous_run_id,
                failure_kind=job.failure_kind,
            )
        )
    return outcomes


def _rate_block(outcomes: list[ImageOutcome]) -> dict[str, Any]:
    levels = Counter(o.level.value if o.level else UNGRADED for o in outcomes)
    graded = sum(n for level, n in levels.items() if level != UNGRADED)
    passed = levels.get(Level.PASS.value, 0)
    block: dict[str, Any] = {
        "images": len(outcomes),
        "graded": graded,
        "levels": {level.value: levels.get(level.value, 0) for level in Level}
        | {UNGRADED: levels.get(UNGRADED, 0)},
        "pass_rate": None,
        "pass_rate_ci": None,
    }
    if graded:
        block["pass_rate"] = passed / graded
        block["pass_rate_ci"] = pass_rate_interval(passed, graded)
    return block


def pass_rate_interval(passed: int, graded: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval from statsmodels: exactly 0 (1) at a 0% (100%) pass rate,
    where the textbook formula in floating point lands a hair inside and puts the
    estimate outside its own interval."""
    low, high = proportion_confint(passed, graded, alpha=1 - confidence, method="wilson")
    return [float(low), float(high)]


def _difference(pairs: list[tuple[ImageOutcome, ImageOutcome]]) -> dict[str, Any] | None:
    """Candidate - baseline pass rate over cases with a level for both."""
    table = Counter(
        (baseline.level == Level.PASS, candidate.level == Level.PASS)
        for baseline, candidate in pairs
        if baseline.level is not None and candidate.level is not None
    )
    if not sum(table.values()):
        return None
    result: PairedDifference = paired_difference(
        both_pass=table[(True, True)],
        only_candidate=table[(False, True)],
        only_baseline=table[(True, False)],
        both_fail=table[(False, False)],
    )
    return {
        "pairs": result.n,
        "estimate": result.interval.estimate,
        "ci": [result.interval.low, result.interval.high],
        "p_value": result.p_value,
        "improved": result.only_candidate,
        "regressed": result.only_baseline,
    }


def build_report(
    run: GoldenRun, rows: list[tuple[GoldenResult, Job]], grades: list[GoldenGrade]
) -> dict[str, Any]:
    outcomes = image_outcomes(rows, grades)
    versions = (run.baseline, run.candidate)
    categories = [c.value for c in Category if any(o.category == c for o in outcomes)]
    by_key = {(o.case_id, o.version): o for o in outcomes}
    pairs = [
        (by_key[(case, run.baseline)], by_key[(case, run.candidate)])
        for case in sorted({o.case_id for o in outcomes})
        if (case, run.baseline) in by_key and (case, run.candidate) in by_key
    ]
    per_version = {
        version: {
            "overall": _rate_block([o for o in outcomes if o.version == version]),
            "categories": {
                category: _rate_block(
                    [o for o in outcomes if o.version == version and o.category == category]
                )
                for category in categories
            },
        }
        for version in versions
    }
    changed = [
        {
            "case_id": baseline.case_id,
            "category": baseline.category,
            "baseline": baseline.level.value,
            "candidate": candidate.level.value,
            "direction": "worse"
            if candidate.level.severity > baseline.level.severity
            else "better",
        }
        for baseline, candidate in pairs
        if baseline.level is not None
        and candidate.level is not None
        and baseline.level != candidate.level
    ]
    return {
        "run": {
            "id": run.id,
            "trigger": run.trigger,
            "status": run.status,
            "created_at": run.created_at.isoformat(),
            "completed_at": run.completed_at.isoformat() if run.completed_at else None,
            "set_name": run.set_name,
            "set_sha256": run.set_sha256,
            "cases": run.case_count,
            "baseline": run.baseline,
            "candidate": run.candidate,
        },
        "graders": sorted({grade.grader for grade in grades}),
        "versions": per_version,
        "difference": {
            "overall": _difference(pairs),
            "categories": {
                category: _difference([p for p in pairs if p[0].category == category])
                for category in categories
            },
        },
        "s_level": {
            version: per_version[version]["overall"]["levels"][Level.S.value]
            for version in versions
        },
        "changed": changed,
        "hard_failures": [
            {
                "case_id": o.case_id,
                "category": o.category,
                "version": o.version,
                "job_id": o.job_id,
                "reason": o.auto_reason,
            }
            for o in outcomes
            if o.auto_level == Level.S
        ],
        "drift": [
            {
                "case_id": o.case_id,
                "version": o.version,
                "rmse": o.drift_rmse,
                "previous_run_id": o.previous_run_id,
            }
            for o in outcomes
            if o.drifted
        ],
        "failure_levels": [level.value for level in FAILURE_LEVELS],
    }


def report_for_run(engine: Engine, run_id: str) -> dict[str, Any] | None:
    run = golden.get_run(engine, run_id)
    if run is None:
        return None
    return build_report(
        run, golden.results_with_jobs(engine, run_id), golden.grades(engine, run_id)
    )
