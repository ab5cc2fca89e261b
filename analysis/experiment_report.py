"""One experiment's report: every metric's comparison, per day and segment, SRM, gates.

The database does the aggregation (storage.metrics' SQL, read as sufficient statistics
through analysis.metrics); this module turns sufficient statistics into comparisons
(analysis.stats) and a JSON-ready dict that the CLI table, the dashboard and the gates all
read. Every comparison's always-valid test is tuned to the policy's planned sample
(analysis.gates_policy.Planning); the exploratory rows (metric x scope) carry
Benjamini-Hochberg q-values next to their raw p-values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from analysis import metrics as m
from analysis import rollups
from analysis.gates import GatePolicy, evaluate, load_policy
from analysis.multiple_testing import benjamini_hochberg
from analysis.power import plan
from analysis.shadow import Margins, health, margins_from
from analysis.srm import srm_section
from analysis.stats import (
    DEFAULT_TUNING_USERS,
    Comparison,
    compare,
    compare_stratified,
    pearson,
    stratified,
)
from canary.contracts import CLASS_ORDER
from canary.settings import Settings
from gateway.experiments import Experiment, ExperimentConfig
from storage import golden
from storage import metrics as sql
from storage import shadow as shadow_jobs
from storage.metrics import Key, UnitQuery, Window
from storage.models import Arm, GoldenRunStatus

BASELINE, CANDIDATE = Arm.BASELINE.value, Arm.CANDIDATE.value
MIN_TESTED_USERS = 30  # per arm, for a row to enter the exploratory family


def _comparison_dict(comparison: Comparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    data = asdict(comparison)
    data["significant"] = comparison.significant
    return data


def _arm_totals(
    stats: dict[Key, m.Sufficient],
) -> tuple[m.Sufficient | None, m.Sufficient | None]:
    totals: dict[str, m.Sufficient] = {}
    for (arm, _, _), s in stats.items():
        totals[arm] = totals[arm] + s if arm in totals else s
    return totals.get(BASELINE), totals.get(CANDIDATE)


def _by_segment(
    stats: dict[Key, m.Sufficient], day: date | None = None
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
    window: Window,
    *,
    use_cuped: bool,
    statistics: tuple[dict[Key, m.Sufficient], dict[Key, m.Sufficient]] | None = None,
    tuning_users: int = DEFAULT_TUNING_USERS,
    trajectory: bool = False,
    last_days: int | None = None,
    units: UnitQuery | None = None,
    running_cumulative: bool = False,
) -> dict[str, Any]:
    """Overall and daily comparisons are stratified by segment: a segment's candidate share
    may differ from another's, and pooling would mix the arms' segment mix into the lift.

    ``statistics`` are the metric's overall and daily sufficient statistics when the caller
    has them already (else they are computed here, in one statement). ``trajectory`` adds
    the cumulative comparison at the end of each day (the lift-over-time chart);
    ``last_days`` the comparison of the window's last days pooled (the promotion rule).
    ``units`` replaces the metric's per-user query (the incremental report's), which also
    computes the trajectory in one pass over the rows (``running_cumulative``)."""
    units = units or metric.units
    overall_stats, daily_stats = statistics or m.overall_and_daily_statistics(engine, units, window)
    options: dict[str, Any] = {"tuning_users": tuning_users, "scale": metric.scale}
    by_segment = _by_segment(overall_stats)
    combined = stratified(by_segment)
    section: dict[str, Any] = {
        "label": metric.label,
        "layer": metric.layer,
        "higher_is_better": metric.higher_is_better,
        "scale": metric.scale.value,
        "overall": _comparison_dict(compare_stratified(by_segment, **options)),
        "cuped": None,
        "segments": {
            segment: _comparison_dict(compare(b, c, **options))
            for segment, (b, c) in by_segment.items()
        },
        "stratified": asdict(combined) if combined else None,
        "daily": [],
    }
    if use_cuped and metric.layer == m.VALUE:
        adjusted = compare_stratified(by_segment, use_cuped=True, **options)
        if adjusted is not None and adjusted.cuped:
            section["cuped"] = _comparison_dict(adjusted)
    for day in sorted({d for _, _, d in daily_stats if d is not None}):
        b, c = _arm_totals({k: v for k, v in daily_stats.items() if k[2] == day})
        section["daily"].append(
            {
                "day": day.isoformat(),
                "baseline_users": b.n if b else 0,
                "candidate_users": c.n if c else 0,
                "comparison": _comparison_dict(
                    compare_stratified(_by_segment(daily_stats, day), **options)
                ),
            }
        )
    if trajectory:
        cumulative = m.cumulative_statistics(engine, units, window, running=running_cumulative)
        section["cumulative"] = [
            {
                "day": day.isoformat(),
                "comparison": _comparison_dict(
                    compare_stratified(_by_segment(cumulative, day), **options)
                ),
            }
            for day in sorted({d for _, _, d in cumulative if d is not None})
        ]
    if last_days:
        start = max(window.start, window.end - timedelta(days=last_days))
        recent = m.sufficient_statistics(engine, units, replace(window, start=start), by_day=False)
        section["last_days"] = _comparison_dict(compare_stratified(_by_segment(recent), **options))
    return section


def adjust_exploratory(sections: dict[str, dict[str, Any]]) -> int:
    """Benjamini-Hochberg over every metric x scope row (overall, CUPED, each segment) with at
    least MIN_TESTED_USERS users per arm: each gets ``q_value`` (fixed horizon) and
    ``sequential_q_value`` (always valid), and ``significant`` then means sequential
    q < alpha. Smaller rows are shown but not tested (q None): there the normal
    approximation fails (an arm where every user converted has variance 0 and p = 0).
    Returns the family's size."""
    shown = [
        c
        for section in sections.values()
        for c in [section["overall"], section["cuped"], *section["segments"].values()]
        if c is not None
    ]
    rows = [c for c in shown if min(c["n_baseline"], c["n_candidate"]) >= MIN_TESTED_USERS]
    for c in shown:
        c["q_value"] = c["sequential_q_value"] = None
        c["significant"] = False
    for key in ("p_value", "sequential_p_value"):
        adjusted = benjamini_hochberg([c[key] for c in rows])
        for c, q in zip(rows, adjusted, strict=True):
            c[key.replace("p_value", "q_value")] = q
    for c in rows:
        c["significant"] = c["sequential_q_value"] < c["alpha"]
    return len(rows)


def power_section(
    sections: dict[str, dict[str, Any]], policy: GatePolicy, days_with_data: int
) -> list[dict[str, Any]]:
    """Per promotion metric: MDE today and the days still needed for the rule's effect."""
    p = policy.promotion
    targets = [(p.metric, p.min_relative_lift)]
    if p.must_decrease:
        targets.append((p.must_decrease, -p.min_relative_lift))
    plans = []
    for name, target in targets:
        c = sections.get(name, {}).get("overall")
        if c is None or not c["log_ratio_variance"]:
            plans.append({"metric": name, "target": target, "note": "not enough data"})
            continue
        users = c["n_baseline"] + c["n_candidate"]
        found = plan(
            name, target, c["log_ratio_variance"], users, users / max(days_with_data, 1),
            c["tuning_users"], c["alpha"], policy.planning.power,
        )  # fmt: skip
        plans.append(asdict(found))
    return plans


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def health_scope(classes: tuple[str, ...]) -> dict[str, Any]:
    """Which priority classes the job metrics count, and a sentence saying so."""
    excluded = [c.value for c in CLASS_ORDER if c.value not in classes]
    note = f"health metrics count {_and(list(classes))} jobs"
    if excluded:
        note += (
            f"; {_and(excluded)} jobs (golden replays and other work nobody waits for) are excluded"
        )
    return {"classes": list(classes), "excluded": excluded, "note": note}


def queue_wait_section(engine: Engine, window: Window) -> list[dict[str, Any]]:
    """Queue wait P50/P95 per priority class and arm (every class, those the health metrics
    leave out marked): a backlog shows here as queue wait, not as model latency."""
    found = sql.queue_wait_by_class(engine, window)
    return [
        {
            "class": c.value,
            "in_health_metrics": c.value in window.classes,
            **{arm: found.get((c.value, arm)) for arm in (BASELINE, CANDIDATE)},
        }
        for c in CLASS_ORDER
    ]


def golden_section(engine: Engine, experiment: Experiment) -> dict[str, Any] | None:
    """S-level images of the newest complete golden run of the same two versions."""
    from analysis.golden.report import report_for_run

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


def shadow_section(
    engine: Engine, experiment: Experiment, first: date, last: date, margins: Margins
) -> dict[str, Any] | None:
    """The shadow-health verdict on the window's pairs (live job, its copy on the
    candidate) while the current stage copies live jobs; None when it copies none.
    ``required``: the stage is the ladder's first (internal), which the gate lets the
    candidate leave only on a passing verdict."""
    rule = experiment.current_stage.shadow
    if not rule.share:
        return None
    found = shadow_jobs.pairs(
        engine,
        experiment.name,
        start=datetime.combine(first, time.min, UTC),
        end=datetime.combine(last + timedelta(days=1), time.min, UTC),
    )
    return {
        "share": rule.share,
        "segments": rule.segments,
        "required": experiment.stage == experiment.stages[0].name,
        "health": health(found, margins),
    }


def build_report(
    engine: Engine,
    experiment: Experiment,
    first: date,
    last: date,
    policy: GatePolicy,
    *,
    use_cuped: bool = True,
    incremental: bool = False,
    health_classes: Iterable[str] = sql.HEALTH_CLASSES,
    shadow_margins: Margins = Margins(),  # noqa: B008 (frozen)
) -> dict[str, Any]:
    """The report of days [first, last]. ``incremental`` reads the rolled-up days'
    per-user rows (analysis.rollups) and computes only the rest: the same numbers as the
    full recomputation (the default), which reads every day's jobs and events.

    ``health_classes``: the priority classes the job metrics count (storage.metrics.
    HEALTH_CLASSES by default; background is refused with ValueError). Roll-ups hold the
    default classes' rows, so a report of other classes is recomputed in full."""
    window = Window.days(experiment.name, first, last, health_classes)
    units = {name: query for name, query in rollups.rolled_metrics()}
    rollup: dict[str, Any] = {"mode": "full"}
    if incremental and window.classes != sql.HEALTH_CLASSES:
        incremental = False
        rollup["reason"] = "roll-ups hold the default priority classes' rows"
    if incremental:
        plan = rollups.plan(engine, experiment.name, first, last)
        units = {name: rollups.incremental_units(name, q, plan) for name, q in units.items()}
        rollup = plan.as_dict()
    tuning_per_arm = policy.planning.tuning_users_per_arm_for(experiment.name, experiment.stage)
    charted = {policy.promotion.metric, policy.promotion.must_decrease}
    charted |= set(policy.worsening_family())
    statistics = {
        metric.name: m.overall_and_daily_statistics(engine, units[metric.name], window)
        for metric in m.METRICS
    }
    sections = {
        metric.name: metric_section(
            engine,
            metric,
            window,
            use_cuped=use_cuped,
            statistics=statistics[metric.name],
            tuning_users=2 * tuning_per_arm,
            trajectory=metric.name in charted,
            last_days=policy.promotion.days if metric.name == policy.promotion.metric else None,
            units=units[metric.name],
            running_cumulative=incremental,
        )
        for metric in m.METRICS
    }
    family_size = adjust_exploratory(sections)
    days_with_data = len({d for _, _, d in statistics["success_rate"][1]})
    p95_overall = sql.percentile_by_arm(engine, window, 0.95, by_day=False)
    p95_daily = sql.percentile_by_arm(engine, window, 0.95, by_day=True)
    dwell = m.sufficient_statistics(engine, units["dwell_vs_retention"], window, by_day=False)
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
        "health_scope": health_scope(window.classes),
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
        "failures": sql.failures_by_kind(engine, window),
        "queue_wait": queue_wait_section(engine, window),
        "dwell_retention_correlation": correlation,
        "srm": srm_section(engine, experiment, policy.guardrails.srm_alpha),
        "golden": golden_section(engine, experiment),
        "shadow": shadow_section(engine, experiment, first, last, shadow_margins),
        "statistics": {
            "tuning_users_per_arm": tuning_per_arm,
            "exploratory_family": family_size,
            "guardrail_family": policy.worsening_family(),
            "guardrail_alpha": policy.guardrails.alpha,
            "srm_alpha": policy.guardrails.srm_alpha,
        },
        "power": power_section(sections, policy, days_with_data),
        "rollup": rollup,
    }
    report["gates"] = evaluate(report, policy).as_dict()
    return report


def report_window(settings: Settings, last: date) -> tuple[date, date]:
    """The days a report ending with ``last`` covers (``settings.report_days`` of them)."""
    return last - timedelta(days=settings.report_days - 1), last


def report_for_experiment(
    settings: Settings,
    engine: Engine,
    config: ExperimentConfig,
    name: str,
    last: date,
    *,
    incremental: bool = True,
    health_classes: Iterable[str] = sql.HEALTH_CLASSES,
) -> dict[str, Any]:
    """The report of the days up to ``last`` (``settings.report_days`` of them): from the
    rolled-up days plus the rest (``incremental``), or recomputed from every row.
    ``health_classes``: the priority classes the job metrics count (see build_report)."""
    experiment = config.experiment(name)
    policy = load_policy(settings.gate_policy_file)
    first, last = report_window(settings, last)
    return build_report(
        engine, experiment, first, last, policy, incremental=incremental,
        health_classes=health_classes, shadow_margins=margins_from(settings),
    )  # fmt: skip
