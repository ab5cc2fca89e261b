"""The three metric layers, on SQLite and PostgreSQL alike.

Every metric is a ratio of per-user sums, num/den (a mean metric has den = 1 per user).
The database reduces a metric to sufficient statistics per (arm, segment[, day]):
users, sums, sums of squares and the cross product of num and den, so the statistics
(delta method, clustered by user) never need the rows themselves. The SQL (per-user metric
rows, the reductions, attribution and days) is storage.metrics'; this module names the
metrics and turns the database's sums into :class:`Sufficient`.

Attribution: job and job-event metrics use the arm and segment the job was assigned
(``jobs.arm``/``jobs.segment``); user metrics (retention, generations per week,
conversion) use the arm at first exposure (a user promoted by a ramp counts where they
started) and the segment stored with the assignment. Golden and pinned-version jobs have
no experiment and are never counted. Days are UTC dates.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from analysis.intervals import Scale
from storage import metrics as sql
from storage.metrics import (
    Key,
    UnitQuery,
    Window,
    download_rate,
    generations_per_week,
    long_dwell_share,
    mean_peak_vram_gb,
    negative_feedback_rate,
    quick_retry_share,
    retention_7d,
    success_rate,
    trial_to_paid,
)

# Only what this module defines: the SQL's names (Key, Window, UnitQuery, the per-user
# queries, percentile_by_arm, failures_by_kind, exposures, ...) are storage.metrics'.
__all__ = [
    "HEALTH", "INTERACTION", "METRICS", "VALUE", "MetricDef", "Sufficient",
    "cumulative_statistics", "overall_and_daily_statistics", "sufficient_statistics",
]  # fmt: skip


@dataclass(frozen=True)
class Sufficient:
    """Per-user sufficient statistics of num/den (and a pre-period covariate z for CUPED)."""

    n: int
    sum_num: float
    sum_den: float
    sum_num2: float
    sum_den2: float
    sum_num_den: float
    sum_z: float = 0.0
    sum_z2: float = 0.0
    sum_num_z: float = 0.0

    def __add__(self, other: Sufficient) -> Sufficient:
        sums = zip(self.astuple()[1:], other.astuple()[1:], strict=True)
        return Sufficient(self.n + other.n, *(a + b for a, b in sums))

    def astuple(self) -> tuple[float, ...]:
        return (
            self.n, self.sum_num, self.sum_den, self.sum_num2, self.sum_den2, self.sum_num_den,
            self.sum_z, self.sum_z2, self.sum_num_z,
        )  # fmt: skip


def _sufficient(found: dict[Key, sql.Sums]) -> dict[Key, Sufficient]:
    return {key: Sufficient(*sums) for key, sums in found.items()}  # type: ignore[arg-type]  # Sums types n as float


def sufficient_statistics(
    engine: Engine, units: UnitQuery, window: Window, *, by_day: bool
) -> dict[Key, Sufficient]:
    """Reduce a per-user metric query to sufficient statistics in the database."""
    return _sufficient(sql.sufficient_sums(engine, units, window, by_day=by_day))


def overall_and_daily_statistics(
    engine: Engine, units: UnitQuery, window: Window
) -> tuple[dict[Key, Sufficient], dict[Key, Sufficient]]:
    """``sufficient_statistics`` over the whole window and by day, in one statement (see
    storage.metrics.overall_and_daily_sums)."""
    overall, daily = sql.overall_and_daily_sums(engine, units, window)
    return _sufficient(overall), _sufficient(daily)


def cumulative_statistics(
    engine: Engine, units: UnitQuery, window: Window, *, running: bool = False
) -> dict[Key, Sufficient]:
    """What a look at the end of each day saw: per (arm, segment, day D) the sufficient
    statistics of the window's first day up to D, one unit per user (their days summed).
    ``running``: computed in one pass over the rows (storage.metrics.cumulative_sums_running,
    what the incremental report uses)."""
    if running:
        return _sufficient(sql.cumulative_sums_running(engine, units, window))
    return _sufficient(sql.cumulative_sums(engine, units, window))


@dataclass(frozen=True)
class MetricDef:
    name: str
    label: str
    layer: str  # health | interaction | value
    units: UnitQuery
    higher_is_better: bool
    daily: bool = True  # value metrics are by exposure cohort day
    scale: Scale = Scale.NONNEGATIVE  # a RATE's intervals stay in [0, 1]


HEALTH, INTERACTION, VALUE = "health", "interaction", "value"
METRICS: tuple[MetricDef, ...] = (
    MetricDef("success_rate", "success rate", HEALTH, success_rate, True, scale=Scale.RATE),
    MetricDef("mean_peak_vram_gb", "mean peak VRAM (GB)", HEALTH, mean_peak_vram_gb, False),
    MetricDef(
        "long_dwell_share", "views with dwell >= 15 s", INTERACTION, long_dwell_share, True,
        scale=Scale.RATE,
    ),
    MetricDef(
        "download_rate", "downloads per generation", INTERACTION, download_rate, True,
        scale=Scale.RATE,
    ),
    MetricDef(
        "quick_retry_share", "quick retries", INTERACTION, quick_retry_share, False,
        scale=Scale.RATE,
    ),
    MetricDef(
        "negative_feedback_rate", "negative feedback", INTERACTION, negative_feedback_rate, False
    ),
    MetricDef(
        "retention_7d", "7-day retention", VALUE, retention_7d, True, daily=False,
        scale=Scale.RATE,
    ),
    MetricDef(
        "generations_per_week", "generations in week 1", VALUE, generations_per_week, True,
        daily=False,
    ),
    MetricDef(
        "trial_to_paid", "trial-to-paid conversion", VALUE, trial_to_paid, True, daily=False,
        scale=Scale.RATE,
    ),
)  # fmt: skip
