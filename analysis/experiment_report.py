"""One experiment's report: every metric's comparison, per day and segment, SRM, gates.

The database does the aggregation (analysis.metrics); this module turns sufficient
statistics into comparisons (analysis.stats) and a JSON-ready dict that the CLI table,
the dashboard and the gates all read.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from analysis import metrics as m
from analysis.gates import GatePolicy, evaluate, load_policy
from analysis.stats import (
    Comparison,
    compare,
    compare_stratified,
    pearson,
    sample_ratio,
    stratified,
)
from canary.settings import Settings
from gateway.experiments import Experiment, ExperimentConfig
from storage import golden
from storage.models import Arm, GoldenRunStatus

BASELINE, CANDIDATE = Arm.BASELINE.value, Arm.CANDIDATE.value


def _comparison_dict(comparison: Comparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    data = asdict(comparison)
    data["significant"] = comparison.significant
    return data


def _arm_totals(
    stats: dict[m.Key, m.Sufficient],
) -> tuple[m.Sufficient | None, m.Sufficient | None]:
    totals: dict[str, m.Sufficient] = {}
    for (arm, _, _), s in stats.items():
        totals[arm] = totals[arm] + s if arm in totals else s
    return totals.get(BASELINE), totals.get(CANDIDATE)


def _compare(b: m.Sufficient | None, c: m.Sufficient | None, **options: Any) -> Comparison | None:
    return compare(b, c, **options) if b is not None and c is not None else None


def _by_segment(
    stats: dict[m.Key, m.Sufficient], day: date | None = None
) -> dict[str, tuple[m.Sufficient, m.Sufficient]]:
    """Segments with both arms (on ``day``, or over the window)."""
    segments = sorted({segment for _, segment, d in stats if d == day})
    return {
        segment: (stats[(BASELINE, segment, day)], stats[(CANDIDATE, segment, day)])
        for segment in segments
        if (BASELINE, segment, day) in stats and (CANDIDATE, segment, day) in stats
    }


def metric_section(
    engine: Engine,
    metric: m.MetricDef,
    window: m.Window,
    *,
    use_cuped: bool,
    statistics: tuple[dict[m.Key, m.Sufficient], dict[m.Key, m.Sufficient]] | None = None,
) -> dict[str, Any]:
    """Overall and daily comparisons are stratified by segment: a segment's candidate share
    may differ from another's, and pooling would mix the arms' segment mix into the lift.

    ``statistics`` are the metric's overall and daily sufficient statistics when the caller
    has them already (else they are computed here, in one statement)."""
    overall_stats, daily_stats = statistics or m.overall_and_daily_statistics(
        engine, metric.units, window
    )
    by_segment = _by_segment(overall_stats)
    combined = stratified(by_segment)
    section: dict[str, Any] = {
        "label": metric.label,
        "layer": metric.layer,
        "higher_is_better": metric.higher_is_better,
        "overall": _comparison_dict(compare_stratified(by_segment)),
        "cuped": None,
        "segments": {
            segment: _comparison_dict(_compare(b, c)) for segment, (b, c) in by_segment.items()
        },
        "stratified": asdict(combined) if combined else None,
        "daily": [],
    }
    if use_cuped and metric.layer == m.VALUE:
        adjusted = compare_stratified(by_segment, use_cuped=True)
        if adjusted is not None and adjusted.cuped:
            section["cuped"] = _comparison_dict(adjusted)
    for day in sorted({d for _, _, d in daily_stats if d is not None}):
        b, c = _arm_totals({k: v for k, v in daily_stats.items() if k[2] == day})
        section["daily"].append(
            {
                "day": day.isoformat(),
                "baseline_users": b.n if b else 0,
                "candidate_users": c.n if c else 0,
                "comparison": _comparison_dict(compare_stratified(_by_segment(daily_stats, day))),
            }
        )
    return section


def srm_section(engine: Engine, experiment: Experiment) -> dict[str, Any]:
    """Users by arm at first exposure against the share their stage gave their segment."""
    if experiment.rolled_back:
        return {"overall": None, "segments": {}, "note": "rolled back: everyone gets the baseline"}
    allowlisted = set(experiment.allowlist)
    stages = {stage.name: stage for stage in experiment.stages}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for stage, segment, arm, n in m.exposures(engine, experiment.name, exclude=allowlisted):
        counts.setdefault((stage, segment), {}).setdefault(arm, 0)
        counts[(stage, segment)][arm] += n
    segments: dict[str, Any] = {}
    observed_b = observed_c = 0
    expected_c = 0.0
    for (stage, segment), by_arm in sorted(counts.items()):
        if stage not in stages:
            continue
        share = stages[stage].share(segment)
        b, c = by_arm.get(BASELINE, 0), by_arm.get(CANDIDATE, 0)
        result = sample_ratio(b, c, share)
        segments[f"{stage}/{segment}"] = (
            asdict(result) | {"mismatch": result.mismatch} if result else None
        )
        observed_b, observed_c = observed_b + b, observed_c + c
        expected_c += (b + c) * share
    total = observed_b + observed_c
    overall = sample_ratio(observed_b, observed_c, expected_c / total) if total else None
    return {
        "overall": asdict(overall) | {"mismatch": overall.mismatch} if overall else None,
        "segments": segments,
        "note": "users by stage at first exposure; allowlisted users left out",
    }


def golden_section(engine: Engine, experiment: Experiment) -> dict[str, Any] | None:
    """S-level images of the newest complete golden run of the same two versions."""
    from analysis.golden_report import report_for_run

    for run in golden.list_runs(engine, 50):
        if (
            run.status == GoldenRunStatus.COMPLETE
            and run.baseline == experiment.baseline
            and run.candidate == experiment.candidate
        ):
            report = report_for_run(engine, run.id)
            assert report is not None
            return {
                "run_id": run.id,
                "baseline_s": report["s_level"][run.baseline],
                "candidate_s": report["s_level"][run.candidate],
            }
    return None


def build_report(
    engine: Engine,
    experiment: Experiment,
    first: date,
    last: date,
    policy: GatePolicy,
    *,
    use_cuped: bool = True,
) -> dict[str, Any]:
    window = m.Window.days(experiment.name, first, last)
    statistics = {
        metric.name: m.overall_and_daily_statistics(engine, metric.units, window)
        for metric in m.METRICS
    }
    sections = {
        metric.name: metric_section(
            engine, metric, window, use_cuped=use_cuped, statistics=statistics[metric.name]
        )
        for metric in m.METRICS
    }
    p95_overall = m.percentile_by_arm(engine, window, 0.95, by_day=False)
    p95_daily = m.percentile_by_arm(engine, window, 0.95, by_day=True)
    dwell = m.sufficient_statistics(engine, m.dwell_vs_retention, window, by_day=False)
    correlation = {}
    for arm, s in zip((BASELINE, CANDIDATE), _arm_totals(dwell), strict=True):
        found = pearson(s) if s is not None else None
        correlation[arm] = asdict(found) if found else None
    users = {
        arm: s.n if s else 0
        for arm, s in zip(
            (BASELINE, CANDIDATE),
            _arm_totals(statistics["success_rate"][0]),  # users with a job in the window
            strict=True,
        )
    }
    report: dict[str, Any] = {
        "experiment": experiment.name,
        "baseline": experiment.baseline,
        "candidate": experiment.candidate,
        "stage": experiment.stage,
        "rolled_back": experiment.rolled_back,
        "window": {"first": first.isoformat(), "last": last.isoformat()},
        "users": users,
        "metrics": sections,
        "latency_p95": {
            "overall": {arm: p95_overall.get((arm, None)) for arm in (BASELINE, CANDIDATE)},
            "daily": [
                {
                    "day": day.isoformat(),
                    **{arm: p95_daily.get((arm, day)) for arm in (BASELINE, CANDIDATE)},
                }
                for day in sorted({d for _, d in p95_daily if d is not None})
            ],
        },
        "failures": m.failures_by_kind(engine, window),
        "dwell_retention_correlation": correlation,
        "srm": srm_section(engine, experiment),
        "golden": golden_section(engine, experiment),
    }
    report["gates"] = evaluate(report, policy).as_dict()
    return report


def report_for_experiment(
    settings: Settings, engine: Engine, config: ExperimentConfig, name: str, last: date
) -> dict[str, Any]:
    """The report of the days up to ``last`` (``settings.report_days`` of them)."""
    experiment = config.experiment(name)
    policy = load_policy(settings.gate_policy_file)
    first = last - timedelta(days=settings.report_days - 1)
    return build_report(engine, experiment, first, last, policy)
