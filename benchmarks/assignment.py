"""Assignments per second in one process: ``python -m benchmarks.assignment [--quick]``.

The headline figure is the pure step a gateway runs per request - ``segment_of`` on the
user's attributes, then ``Assigner.decide`` (namespace, allowlist, per-segment share, hash)
- over pre-generated users with realistic attributes, against the 200,000/s target. For
context it also prints the raw ``bucket()`` rate and the sticky path (``StickyAssigner``
backed by an SQLite file in a temporary directory) with a warm cache.

Timings are the best of ``--repeat`` runs (least disturbed by other load). ``--quick`` uses
few users so CI can smoke-run the script; its figures are not meaningful.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.assignment import Assigner, Decision, StickyAssigner
from gateway.experiments import ExperimentConfig, parse_config
from gateway.hashing import bucket
from gateway.segments import UserAttributes, segment_of
from storage.db import get_engine, init_db

TARGET_PER_SECOND = 200_000
VERSIONS = ["v1", "v2"]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

# The module docstring's example of gateway.experiments, at its 15% stage.
CONFIG = {
    "default_version": "v1",
    "segments": {
        "new_user_days": 3,
        "high_frequency_min_generations": 10,
        "style_preference_min_uses": 5,
        "style_tags": ["film", "cinematic"],
    },
    "experiments": [
        {
            "name": "v2-canary",
            "seed": "v2-canary-2026-11",
            "baseline": "v1",
            "candidate": "v2",
            "namespace": {"id": "render-models", "start": 0.0, "end": 1.0},
            "allowlist": ["alice@example.com", "bob@example.com"],
            "stages": [
                {"name": "internal", "shares": {"default": 0.0}},
                {"name": "5%", "shares": {"default": 0.05}},
                {"name": "15%", "shares": {"default": 0.15, "new_user": 0.05}},
            ],
            "stage": "15%",
        }
    ],
}


def make_users(n: int, seed: int = 2026) -> list[tuple[str, UserAttributes]]:
    """Synthetic users: ~8% signed up in the last 3 days, a long-tailed weekly generation
    count (~13% of users at 10 or more), some regular users of style tags (~7% end up in
    that segment); 5% with an unknown sign-up time."""
    rng = random.Random(seed)
    users = []
    for i in range(n):
        user_id = f"u{i:07d}-{rng.getrandbits(32):08x}"
        recent = rng.random() < 0.08
        age_days = rng.uniform(0, 3) if recent else 3 + rng.expovariate(1 / 180)
        signed_up = None if rng.random() < 0.05 else NOW - timedelta(days=age_days)
        generations = int(rng.expovariate(1 / 5))
        styled = int(rng.expovariate(1 / 2.5)) if rng.random() < 0.6 else 0
        users.append((user_id, UserAttributes(signed_up, generations, styled)))
    return users


def best_rate(run: Callable[[], int], repeat: int) -> float:
    """Items per second of the fastest of ``repeat`` runs; ``run`` returns its item count."""
    best = float("inf")
    items = 0
    for _ in range(repeat):
        start = time.perf_counter()
        items = run()
        best = min(best, time.perf_counter() - start)
    return items / best


def bench_pure(
    config: ExperimentConfig, users: list[tuple[str, UserAttributes]], repeat: int
) -> tuple[float, list[Decision]]:
    assigner = Assigner(config)
    rules = assigner.rules
    decide = assigner.decide

    def run() -> int:
        now = NOW
        for user_id, attributes in users:
            decide(user_id, segment_of(attributes, rules, now))
        return len(users)

    rate = best_rate(run, repeat)
    decisions = [decide(u, segment_of(a, rules, NOW)) for u, a in users]
    return rate, decisions


def bench_bucket(users: list[tuple[str, UserAttributes]], repeat: int) -> float:
    ids = [user_id for user_id, _ in users]

    def run() -> int:
        for user_id in ids:
            bucket("v2-canary-2026-11", user_id)
        return len(ids)

    return best_rate(run, repeat)


def bench_sticky(
    config: ExperimentConfig, users: list[tuple[str, UserAttributes]], repeat: int
) -> tuple[float, float, float]:
    """On an SQLite file: first exposures/s (attribute look-up, insert, read-back),
    warm-cache assignments/s, and warm-cache assignments/s when the caller sends a sign-up
    time (recorded on first exposure only, so a warm cache writes nothing)."""
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        engine = get_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        init_db(engine)
        try:
            sticky = StickyAssigner(Assigner(config), engine, cache_size=len(users) + 10)
            # Attributes without a sign-up time first; the sign-up variant is measured below.
            known = [
                (u, UserAttributes(None, a.generations_7d, a.style_tag_uses)) for u, a in users
            ]
            start = time.perf_counter()
            for user_id, attributes in known:
                sticky.assign(user_id, attributes)
            cold = len(known) / (time.perf_counter() - start)

            def warm() -> int:
                for user_id, attributes in known:
                    sticky.assign(user_id, attributes)
                return len(known)

            with_signup = users[: max(1, len(users) // 10)]

            def warm_with_signup() -> int:
                for user_id, attributes in with_signup:
                    sticky.assign(user_id, attributes)
                return len(with_signup)

            return cold, best_rate(warm, repeat), best_rate(warm_with_signup, repeat)
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000, help="users in the pure step")
    parser.add_argument("--sticky-users", type=int, default=5_000, help="users, sticky path")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best counts)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.sticky_users, args.repeat = 2_000, 200, 1

    config = parse_config(CONFIG, VERSIONS)
    users = make_users(args.users)
    print(
        f"canary-render assignment benchmark: {args.users:,} users, best of {args.repeat}, "
        f"Python {platform.python_version()} on {platform.machine()}"
        + (" (--quick: figures not meaningful)" if args.quick else "")
    )

    rate, decisions = bench_pure(config, users, args.repeat)
    # CONFIG's namespace spans every user: every decision has a segment
    segments = Counter(d.segment for d in decisions if d.segment is not None)
    candidates = Counter(d.segment for d in decisions if d.variant == "v2")
    mix = ", ".join(
        f"{s} {segments[s] / len(decisions):.1%} (candidate {candidates[s] / segments[s]:.1%})"
        for s in sorted(segments)
    )
    print(f"  user mix: {mix}")
    print(
        f"pure assignment (segment_of + Assigner.decide): {rate:,.0f} assignments/s "
        f"| target {TARGET_PER_SECOND:,}/s | ratio {rate / TARGET_PER_SECOND:.2f}x"
    )
    print(f"  raw bucket(): {bench_bucket(users, args.repeat):,.0f} hashes/s")

    sticky_users = users[: args.sticky_users]
    cold, warm, warm_signup = bench_sticky(config, sticky_users, args.repeat)
    print(
        f"  sticky path, SQLite, {len(sticky_users):,} users: warm cache {warm:,.0f} "
        f"assignments/s; first exposure (attribute look-up + insert) {cold:,.0f}/s; warm "
        f"cache with signed_up_at sent {warm_signup:,.0f}/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
