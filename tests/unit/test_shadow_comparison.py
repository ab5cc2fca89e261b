"""The paired comparison of shadow traffic and the shadow-health verdict, on made-up pairs
(analysis/shadow.py); image distances on a real local object store."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from analysis.shadow import Margins, health, image_distances, report, summarize
from storage.objects import LocalStore
from storage.shadow import Pair

DAY = datetime(2026, 11, 20, 10, tzinfo=UTC)
OK, FAILED = "SUCCEEDED", "FAILED"


def pair(n: int, **fields: Any) -> Pair:
    values: dict[str, Any] = {
        "live_id": f"live-{n}", "shadow_id": f"shadow-{n}", "segment": "everyone_else",
        "created_at": DAY, "live_status": OK, "shadow_status": OK, "live_failure": None,
        "shadow_failure": None, "live_ms": 1000.0 + n % 50, "shadow_ms": 1000.0 + n % 50,
        "live_vram": 1000, "shadow_vram": 1200, "live_image": None, "shadow_image": None,
        "prompt": f"prompt {n}", "seed": n,
    }  # fmt: skip
    values.update(fields)
    return Pair(**values)


def failing(n: int, side: str, kind: str) -> Pair:
    return pair(n, **{f"{side}_status": FAILED, f"{side}_failure": kind, f"{side}_ms": None})


def test_too_few_pairs_give_no_verdict() -> None:
    found = health([pair(n) for n in range(10)], Margins(min_pairs=30))
    assert found["verdict"] == "insufficient"
    assert found["reasons"] == ["10 finished pairs, 30 needed"]


def test_the_same_behaviour_on_the_same_jobs_passes_once_the_interval_shows_it() -> None:
    # 200 clean pairs: a failure increase up to ~1.9% is not excluded yet (margin 1%)
    few = health([pair(n) for n in range(200)], Margins())
    assert few["verdict"] == "insufficient"
    assert few["reasons"][0].startswith("failure rate up to +1.8")
    found = health([pair(n) for n in range(1000)], Margins())
    assert found["verdict"] == "pass", found["reasons"]
    assert found["failure_rate_increase"]["estimate"] == 0
    assert found["p95_ratio"]["estimate"] == 1.0
    assert found["new_failure_kinds"] == []


def test_more_candidate_failures_fail_with_the_interval() -> None:
    pairs = [failing(n, "shadow", "oom") if n < 10 else pair(n) for n in range(200)]
    found = health(pairs, Margins())
    assert found["verdict"] == "fail"
    increase = found["failure_rate_increase"]
    assert increase["estimate"] == pytest.approx(10 / 200)
    assert increase["low"] > 0.01  # clearly above the margin, not just the estimate
    assert any(r.startswith("failure rate at least") for r in found["reasons"])
    assert found["new_failure_kinds"] == ["oom"]


def test_a_new_failure_kind_fails_even_at_an_equal_rate() -> None:
    pairs = [pair(n) for n in range(1000)]
    pairs[0] = failing(0, "live", "nsfw_filtered")
    pairs[1] = failing(1, "shadow", "timeout")
    found = health(pairs, Margins(max_failure_increase=0.05))
    assert found["failure_rate_increase"]["estimate"] == 0
    assert found["reasons"] == ["new failure kinds: timeout"]
    assert found["verdict"] == "fail"


def test_a_slower_candidate_fails_on_p95() -> None:
    pairs = [pair(n, shadow_ms=(1000.0 + n % 50) * 1.5) for n in range(1000)]
    found = health(pairs, Margins())
    assert found["verdict"] == "fail"
    ratio = found["p95_ratio"]
    assert abs(ratio["estimate"] - 1.5) < 1e-9 and ratio["low"] > 1.1
    assert any(r.startswith("P95 render time at least") for r in found["reasons"])
    # within a generous margin it passes
    assert health(pairs, Margins(max_p95_ratio=2.0))["verdict"] == "pass"


def test_summary_counts_kinds_and_latency_deltas() -> None:
    pairs = [
        pair(0, live_ms=100.0, shadow_ms=150.0),
        pair(1, live_ms=200.0, shadow_ms=260.0),
        failing(2, "shadow", "oom"),
        failing(3, "live", "timeout"),
    ]
    found = summarize(pairs, {})
    assert found["pairs"] == 4
    assert found["failure_rate"] == {"baseline": 0.25, "candidate": 0.25}
    assert found["failures_by_kind"] == {
        "oom": {"baseline": 0, "candidate": 1},
        "timeout": {"baseline": 1, "candidate": 0},
    }
    assert found["render_latency"]["p50"] == {
        "baseline_ms": 100.0, "candidate_ms": 150.0, "delta_ms": 50.0,
    }  # fmt: skip
    assert found["render_latency"]["p95"]["delta_ms"] == 60.0
    assert found["peak_vram_delta_bytes_mean"] == 200


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_distances_and_the_worst_pairs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (64, 64, 3))
    store.put("renders/a.png", png(base))
    store.put("shadow/a.png", png(base))  # identical
    store.put("renders/b.png", png(base))
    store.put("shadow/b.png", png(255 - base))  # inverted: far apart
    pairs = [
        pair(0, live_id="a", live_image="renders/a.png", shadow_image="shadow/a.png"),
        pair(1, live_id="b", live_image="renders/b.png", shadow_image="shadow/b.png"),
        pair(2, live_id="c", live_image="renders/c.png", shadow_image="shadow/c.png"),  # gone
        failing(3, "shadow", "oom"),
    ]
    distances = image_distances(store, pairs)
    assert sorted(distances) == ["a", "b"]
    assert distances["a"].phash_bits == 0 and distances["a"].rmse == 0
    assert distances["b"].phash_bits > 10
    found = report(pairs, store, Margins(min_pairs=1), worst=1)
    assert [w["live_id"] for w in found["worst_pairs"]] == ["b"]
    assert found["overall"]["image_distance"]["pairs"] == 2


def test_report_groups_by_day_and_segment() -> None:
    pairs = [
        pair(0, segment="new_user"),
        pair(1, segment="everyone_else"),
        pair(2, segment="new_user", created_at=DAY + timedelta(days=1)),
    ]
    found = report(pairs, None, Margins())["groups"]
    groups = {(g["day"], g["segment"]): g["pairs"] for g in found}
    assert groups == {
        ("2026-11-20", "new_user"): 1,
        ("2026-11-20", "everyone_else"): 1,
        ("2026-11-20", "all"): 2,
        ("2026-11-21", "new_user"): 1,
        ("2026-11-21", "all"): 1,
        ("all", "new_user"): 2,
        ("all", "everyone_else"): 1,
    }
