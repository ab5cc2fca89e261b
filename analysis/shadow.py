"""The paired comparison of shadow traffic: each live baseline job against its shadow copy
on the candidate (same prompt, seed, size, steps, guidance), and the shadow-health check.

Per day and segment (and overall): failure rate by kind on both sides of the same jobs,
render-time P50/P95 and their deltas (render time: a shadow job waits behind live work by
design, so queue and end-to-end times would compare queues, not models), mean peak VRAM
delta, and the perceptual distance of each pair's images (pHash bits and RMSE, as the
golden set's drift check) with its distribution and the pairs that differ most.

Shadow health (a gate input before leaving ``internal``) is a non-inferiority check on
at least ``min_pairs`` finished pairs. It passes when
- the candidate's failure rate exceeds the baseline's by no more than ``max_failure_increase``
  at the upper end of Newcombe's paired 95% interval (analysis/proportions.py),
- the candidate's P95 render time over the baseline's is at most ``max_p95_ratio`` at the
  upper end of a paired bootstrap 95% interval, and
- the candidate fails in no kind the baseline did not fail in on the same jobs.
It fails when a new failure kind appears or an interval lies wholly beyond its margin;
otherwise it is ``insufficient``: not yet shown either way (more pairs are needed).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from PIL import Image
from scipy.stats import bootstrap

from analysis.golden.checks import drift_between
from analysis.proportions import paired_difference
from canary.settings import Settings
from storage.models import JobStatus
from storage.objects import ObjectNotFound, ObjectStore
from storage.shadow import Pair

WORST_PAIRS = 10
BOOTSTRAP_RESAMPLES = 2000
ALL = "all"


@dataclass(frozen=True)
class Margins:
    max_failure_increase: float = 0.01
    max_p95_ratio: float = 1.10
    min_pairs: int = 30


def margins_from(settings: Settings) -> Margins:
    """The configured margins (CANARY_SHADOW_MAX_FAILURE_INCREASE, ..._MAX_P95_RATIO,
    ..._MIN_PAIRS)."""
    return Margins(
        max_failure_increase=settings.shadow_max_failure_increase,
        max_p95_ratio=settings.shadow_max_p95_ratio,
        min_pairs=settings.shadow_min_pairs,
    )


@dataclass(frozen=True)
class Distance:
    live_id: str
    shadow_id: str
    prompt: str
    seed: int
    phash_bits: int
    rmse: float


def _failed(status: str) -> bool:
    return status == JobStatus.FAILED


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (as the A/B report's latency), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, int(np.ceil(q * len(ordered))) - 1)]


def _delta(candidate: float | None, baseline: float | None) -> float | None:
    return None if candidate is None or baseline is None else candidate - baseline


def summarize(pairs: Sequence[Pair], distances: dict[str, Distance]) -> dict[str, Any]:
    """One group's comparison (``distances`` by live job id, for pairs with both images)."""
    n = len(pairs)
    live_kinds = Counter(p.live_failure or "unknown" for p in pairs if _failed(p.live_status))
    cand_kinds = Counter(p.shadow_failure or "unknown" for p in pairs if _failed(p.shadow_status))
    both_ok = [p for p in pairs if p.live_status == p.shadow_status == JobStatus.SUCCEEDED]
    live_ms = [p.live_ms for p in both_ok if p.live_ms is not None]
    cand_ms = [p.shadow_ms for p in both_ok if p.shadow_ms is not None]
    vram = [
        p.shadow_vram - p.live_vram
        for p in both_ok
        if p.shadow_vram is not None and p.live_vram is not None
    ]
    found = [distances[p.live_id] for p in pairs if p.live_id in distances]
    bits = [d.phash_bits for d in found]
    latency: dict[str, Any] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        base, cand = _quantile(live_ms, q), _quantile(cand_ms, q)
        latency[name] = {"baseline_ms": base, "candidate_ms": cand, "delta_ms": _delta(cand, base)}
    return {
        "pairs": n,
        "failure_rate": {
            "baseline": sum(live_kinds.values()) / n if n else None,
            "candidate": sum(cand_kinds.values()) / n if n else None,
        },
        "failures_by_kind": {
            kind: {"baseline": live_kinds.get(kind, 0), "candidate": cand_kinds.get(kind, 0)}
            for kind in sorted(live_kinds | cand_kinds)
        },
        "render_latency": latency,
        "peak_vram_delta_bytes_mean": float(np.mean(vram)) if vram else None,
        "image_distance": {
            "pairs": len(bits),
            "phash_bits_mean": float(np.mean(bits)) if bits else None,
            "phash_bits_p50": _quantile(bits, 0.5),
            "phash_bits_p95": _quantile(bits, 0.95),
            "phash_bits_max": max(bits) if bits else None,
            "rmse_mean": float(np.mean([d.rmse for d in found])) if found else None,
        },
    }


def image_distances(store: ObjectStore, pairs: Iterable[Pair]) -> dict[str, Distance]:
    """The perceptual distance of every pair whose two images exist, by live job id."""
    found = {}
    for pair in pairs:
        if not (pair.live_image and pair.shadow_image):
            continue
        try:
            live = Image.open(io.BytesIO(store.get(pair.live_image))).convert("RGB")
            cand = Image.open(io.BytesIO(store.get(pair.shadow_image))).convert("RGB")
        except ObjectNotFound:  # purged by retention
            continue
        drift = drift_between(cand, live)
        found[pair.live_id] = Distance(
            pair.live_id, pair.shadow_id, pair.prompt, pair.seed, drift.phash_bits, drift.rmse
        )
    return found


def most_different(distances: Iterable[Distance]) -> list[Distance]:
    """Pairs by image distance, the most different first (pHash bits, then RMSE)."""
    return sorted(distances, key=lambda d: (-d.phash_bits, -d.rmse, d.live_id))


def health(pairs: Sequence[Pair], margins: Margins) -> dict[str, Any]:
    """The shadow-health verdict: ``pass``, ``fail`` (with reasons) or ``insufficient``."""
    n = len(pairs)
    out: dict[str, Any] = {"pairs": n, "min_pairs": margins.min_pairs, "reasons": []}
    live_kinds = {p.live_failure or "unknown" for p in pairs if _failed(p.live_status)}
    cand_kinds = {p.shadow_failure or "unknown" for p in pairs if _failed(p.shadow_status)}
    out["new_failure_kinds"] = sorted(cand_kinds - live_kinds)
    if n:
        both_pass = sum(not _failed(p.live_status) and not _failed(p.shadow_status) for p in pairs)
        only_cand = sum(not _failed(p.shadow_status) and _failed(p.live_status) for p in pairs)
        only_base = sum(not _failed(p.live_status) and _failed(p.shadow_status) for p in pairs)
        both_fail = n - both_pass - only_cand - only_base
        # pass-rate difference (candidate - baseline) -> failure-rate difference: negate
        diff = paired_difference(both_pass, only_cand, only_base, both_fail).interval
        out["failure_rate_increase"] = {
            "estimate": -diff.estimate, "low": -diff.high, "high": -diff.low,
            "margin": margins.max_failure_increase,
        }  # fmt: skip
    out["p95_ratio"] = _p95_ratio(pairs, margins.max_p95_ratio)
    if n < margins.min_pairs:
        out["verdict"] = "insufficient"
        out["reasons"].append(f"{n} finished pairs, {margins.min_pairs} needed")
        return out
    increase, ratio = out["failure_rate_increase"], out["p95_ratio"]
    unsure = []  # within the margin at the estimate, not yet at the interval's upper end
    if increase["low"] > margins.max_failure_increase:
        out["reasons"].append(
            f"failure rate at least {increase['low']:+.2%} above the baseline's on the same "
            f"jobs (margin {margins.max_failure_increase:.2%})"
        )
    elif increase["high"] > margins.max_failure_increase:
        unsure.append(
            f"failure rate up to {increase['high']:+.2%} above the baseline's: not yet shown "
            f"within {margins.max_failure_increase:.2%}"
        )
    if ratio is not None and ratio["low"] > margins.max_p95_ratio:
        out["reasons"].append(
            f"P95 render time at least {ratio['low']:.2f}x the baseline's "
            f"(margin {margins.max_p95_ratio:.2f}x)"
        )
    elif ratio is not None and ratio["high"] > margins.max_p95_ratio:
        unsure.append(
            f"P95 render time up to {ratio['high']:.2f}x the baseline's: not yet shown "
            f"within {margins.max_p95_ratio:.2f}x"
        )
    if out["new_failure_kinds"]:
        out["reasons"].append(f"new failure kinds: {', '.join(out['new_failure_kinds'])}")
    if out["reasons"]:
        out["verdict"] = "fail"
    elif unsure:
        out["verdict"], out["reasons"] = "insufficient", unsure
    else:
        out["verdict"] = "pass"
    return out


def _p95_ratio(pairs: Sequence[Pair], margin: float) -> dict[str, float] | None:
    """Candidate P95 / baseline P95 render time over pairs both rendered, with a paired
    percentile-bootstrap 95% interval (fixed seed: the same pairs give the same verdict)."""
    times = [
        (p.shadow_ms, p.live_ms)
        for p in pairs
        if p.shadow_ms and p.live_ms and p.live_status == p.shadow_status == JobStatus.SUCCEEDED
    ]
    if len(times) < 2:
        return None
    cand = np.array([t[0] for t in times], dtype=float)
    base = np.array([t[1] for t in times], dtype=float)

    def ratio(c: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        result: np.ndarray = np.percentile(c, 95, axis=axis) / np.percentile(b, 95, axis=axis)
        return result

    found = bootstrap(
        (cand, base), ratio, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile", random_state=np.random.default_rng(0),
    )  # fmt: skip
    low, high = found.confidence_interval
    return {
        "estimate": float(ratio(cand, base)),
        "low": float(low),
        "high": float(high),
        "margin": margin,
    }


def report(
    pairs: Sequence[Pair], store: ObjectStore | None, margins: Margins, worst: int = WORST_PAIRS
) -> dict[str, Any]:
    """The whole comparison: overall, per day, per segment, per (day, segment), the worst
    pairs by pHash distance and the health verdict (on every pair given)."""
    distances = image_distances(store, pairs) if store is not None else {}
    groups: dict[tuple[date | str, str], list[Pair]] = {}
    for pair in pairs:
        day = _day(pair)
        segment = pair.segment or "unknown"
        for key in ((day, segment), (day, ALL), (ALL, segment)):
            groups.setdefault(key, []).append(pair)
    ordered = most_different(distances.values())
    return {
        "overall": summarize(pairs, distances),
        "groups": [
            {"day": str(day), "segment": segment, **summarize(members, distances)}
            for (day, segment), members in sorted(groups.items(), key=lambda kv: str(kv[0]))
        ],
        "worst_pairs": [d.__dict__ for d in ordered[:worst]],
        "health": health(pairs, margins),
    }


def _day(pair: Pair) -> date:
    return pair.created_at.date()
