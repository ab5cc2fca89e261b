"""Deterministic user-assignment hashing, compatible with GrowthBook's SDK hashing.

The same (seed, user id) always lands in the same bucket, on every process and every
machine, and - for ASCII input - exactly where GrowthBook's SDKs would put it, so an
experiment can be cross-checked against GrowthBook or moved to it without reshuffling
users. Reference: ``hash``, ``getBucketRanges``, ``chooseVariation`` and ``inRange`` in
growthbook/growthbook ``packages/sdk-js/src/util.ts`` and ``gbhash``/``fnv1a32`` in
growthbook/growthbook-python ``growthbook/core.py``; their published cross-SDK cases are
checked in ``tests/unit/test_hashing.py``.

Non-ASCII text: we hash the UTF-8 bytes (canonical FNV-1a, as GrowthBook's Go SDK does).
GrowthBook's SDKs disagree with each other here: the JS SDK XORs in UTF-16 code units
(``charCodeAt``) and the Python SDK whole code points (``ord``). All agree on ASCII, which
is what user ids and experiment seeds should be.
"""

from __future__ import annotations

from collections.abc import Sequence

from fnv_hash_fast import fnv1a_32

__all__ = [
    "FNV32_OFFSET_BASIS",
    "FNV32_PRIME",
    "NUM_BUCKETS",
    "bucket",
    "bucket_ranges",
    "choose_variation",
    "fnv1a32",
    "growthbook_hash",
    "in_range",
]

FNV32_OFFSET_BASIS = 0x811C9DC5
FNV32_PRIME = 0x01000193
NUM_BUCKETS = 10_000


def _encode(text: str) -> bytes:
    # surrogatepass: a lone surrogate (e.g. from JSON "\ud800") hashes instead of raising.
    return text.encode("utf-8", "surrogatepass")


def fnv1a32(data: str) -> int:
    """32-bit FNV-1a of ``data``'s UTF-8 bytes (GrowthBook's ``hashFnv32a`` for ASCII)."""
    return fnv1a_32(_encode(data))


def growthbook_hash(seed: str, value: str, version: int = 2) -> float | None:
    """GrowthBook's ``hash(seed, value, version)``: a float in [0, 1), or None.

    Version 2 (current): ``(fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000``.
    Version 1 (legacy, biased): ``(fnv1a32(value + seed) % 1000) / 1000`` - note the
    reversed concatenation. Any other version gives None, as in the SDKs.
    """
    if version == 2:
        return bucket(seed, value) / NUM_BUCKETS
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def bucket(seed: str, user_id: str) -> int:
    """Bucket of ``user_id`` under ``seed``: an int in [0, 10000), GrowthBook hash v2.

    Equals ``fnv1a32(str(fnv1a32(seed + user_id))) % 10000``, i.e. exactly
    ``growthbook_hash(seed, user_id, 2) * 10000`` computed in integers (no float rounding).

    Bias: a digest taken modulo a number that does not divide its range favours the low
    residues. ``md5[:2] % 100`` (one byte, 256 values) is badly biased: 256 = 2*100 + 56,
    so buckets 0-55 each get 3/256 of users and buckets 56-99 only 2/256 (1.5x less). Here
    2**32 = 429_496 * 10_000 + 7_296, so buckets 0-7295 each have 429_497 of the 2**32
    hash values and buckets 7296-9999 have 429_496: the most and least likely buckets differ
    by 1 part in 429,496 (2.3e-6 relative), and no bucket is off the ideal 1/10000 by more
    than 0.7296/429_496.7296 = 1.7e-6 relative (1 part in ~588,700), assuming the 32-bit
    hash is uniform. That is far below what any experiment can detect.
    """
    inner = fnv1a_32(_encode(seed + user_id))
    return fnv1a_32(str(inner).encode("ascii")) % NUM_BUCKETS


def bucket_ranges(
    num_variations: int,
    coverage: float | None = 1.0,
    weights: Sequence[float] | None = None,
) -> list[tuple[float, float]]:
    """GrowthBook's ``getBucketRanges``: one [start, end) range in [0, 1] per variation.

    ``coverage`` (None means 1) is clamped to [0, 1]. ``weights`` fall back to equal weights
    when missing, of the wrong length, or not summing to 1 within 0.99..1.01. Variation i
    owns [sum(w[:i]), sum(w[:i]) + coverage * w[i]); the rest of each slot is excluded
    traffic, so lowering coverage never moves an included user to another variation.
    """
    cov = 1.0 if coverage is None else coverage
    if cov < 0:
        cov = 0.0
    elif cov > 1:
        cov = 1.0

    equal = [1 / num_variations] * num_variations if num_variations > 0 else []
    chosen: Sequence[float] = equal if weights is None else weights
    if len(chosen) != num_variations:
        chosen = equal
    total = 0.0
    for w in chosen:  # left-to-right like the JS reduce (3.12's sum() compensates)
        total += w
    if total < 0.99 or total > 1.01:
        chosen = equal

    ranges: list[tuple[float, float]] = []
    cumulative = 0.0
    for w in chosen:
        start = cumulative
        cumulative += w
        ranges.append((start, start + cov * w))
    return ranges


def in_range(n: float, bucket_range: Sequence[float]) -> bool:
    """GrowthBook's ``inRange``: ``start <= n < end``."""
    return bucket_range[0] <= n < bucket_range[1]


def choose_variation(n: float, ranges: Sequence[Sequence[float]]) -> int:
    """GrowthBook's ``chooseVariation``: index of the first range holding ``n``, else -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1
