"""Deterministic, sticky, stratified assignment of users to model versions.

The pure step (namespace, allowlist, segment share, hash) needs no I/O and matches a
GrowthBook SDK given the same seed: hash version 2, coverage 1, weights
``[1 - share, share]``, so the candidate owns the bucket range ``[1 - share, 1)``. As the
share grows that range only grows, which makes ramp-ups monotone.

Stickiness: a user's first assignment (arm and segment) is stored. Later requests use the
stored segment, so a user whose segment changes is not moved, and the stored arm is never
demoted when shares shrink. A ramp-up that reaches the user's bucket promotes them to the
candidate (otherwise configured and observed shares would drift apart, and the
sample-ratio check would fire). A rollback sends everyone to the baseline.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from gateway.experiments import Experiment, ExperimentConfig
from gateway.hashing import NUM_BUCKETS, bucket, bucket_ranges, growthbook_hash
from gateway.segments import SEGMENTS, SegmentRules, UserAttributes, segment_of
from storage import assignments
from storage import users as user_records
from storage.models import Arm, utcnow


@dataclass(frozen=True, slots=True)
class Decision:
    """Which version serves a user, and why."""

    variant: str
    experiment: str | None = None
    arm: str | None = None
    segment: str | None = None
    reason: str = "default"  # default | hash | sticky | promoted | allowlist | rollback


def in_namespace(user_id: str, namespace_id: str, start: float, end: float) -> bool:
    """GrowthBook's ``inNamespace``: hash v1 of the user under ``"__" + namespace id``."""
    n = growthbook_hash("__" + namespace_id, user_id, 1)
    return n is not None and start <= n < end


class CompiledExperiment:
    """An experiment with its per-segment bucket thresholds precomputed for the hot path."""

    __slots__ = ("allowlist", "baseline", "candidate", "experiment", "name", "seed", "stage",
                 "starts")  # fmt: skip

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.name = experiment.name
        self.seed = experiment.hash_seed
        self.baseline = experiment.baseline
        self.candidate = experiment.candidate
        self.stage = experiment.stage
        self.allowlist = frozenset(experiment.allowlist)
        stage = experiment.current_stage
        # GrowthBook's getBucketRanges(2, 1, [1 - share, share])[1][0]: where the candidate starts
        self.starts = {
            segment: bucket_ranges(2, 1.0, [1 - stage.share(segment), stage.share(segment)])[1][0]
            for segment in SEGMENTS
        }

    def contains(self, user_id: str) -> bool:
        ns = self.experiment.namespace
        return ns is None or in_namespace(user_id, ns.id, ns.start, ns.end)

    def hashed_arm(self, user_id: str, segment: str) -> str:
        n = bucket(self.seed, user_id) / NUM_BUCKETS
        return Arm.CANDIDATE if n >= self.starts[segment] else Arm.BASELINE

    def version(self, arm: str) -> str:
        return self.candidate if arm == Arm.CANDIDATE else self.baseline


class Assigner:
    """The pure step: experiment config in, a decision per (user, segment) out."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.experiments = [CompiledExperiment(e) for e in config.experiments]

    @property
    def rules(self) -> SegmentRules:
        return self.config.segments

    def experiment_for(self, user_id: str) -> CompiledExperiment | None:
        for experiment in self.experiments:
            if experiment.contains(user_id):
                return experiment
        return None

    def decide(self, user_id: str, segment: str) -> Decision:
        """Assignment without stickiness (used for first exposures and by benchmarks)."""
        experiment = self.experiment_for(user_id)
        if experiment is None:
            return Decision(self.config.default_version)
        return self.decide_in(experiment, user_id, segment)

    def decide_in(self, experiment: CompiledExperiment, user_id: str, segment: str) -> Decision:
        override = self.override(experiment, user_id, segment)
        if override is not None:
            return override
        arm = experiment.hashed_arm(user_id, segment)
        return Decision(experiment.version(arm), experiment.name, arm, segment, "hash")

    @staticmethod
    def override(experiment: CompiledExperiment, user_id: str, segment: str) -> Decision | None:
        if experiment.experiment.rolled_back:
            return Decision(experiment.baseline, experiment.name, Arm.BASELINE, segment, "rollback")
        if user_id in experiment.allowlist:
            return Decision(
                experiment.candidate, experiment.name, Arm.CANDIDATE, segment, "allowlist"
            )
        return None


class AttributeSource:
    """User attributes from the database: sign-up time and counts from the job records."""

    def __init__(self, engine: Engine, rules: SegmentRules) -> None:
        self.engine = engine
        self.rules = rules

    def load(self, user_id: str, now: datetime) -> UserAttributes:
        return self.load_many([user_id], now)[user_id]

    def load_many(self, user_ids: Sequence[str], now: datetime) -> dict[str, UserAttributes]:
        """:meth:`load` for many users: two queries per chunk of users."""
        since = now - timedelta(days=self.rules.high_frequency_window_days)
        found = user_records.activity(self.engine, user_ids, since, self.rules.style_tags)
        signed, recent, styled = found.signed_up_at, found.recent_jobs, found.styled_jobs
        return {
            user: UserAttributes(signed.get(user), recent.get(user, 0), styled.get(user, 0))
            for user in user_ids
        }

    def remember_signups(self, signups: dict[str, datetime]) -> None:
        user_records.remember_signups(self.engine, signups)

    def remember_signup(self, user_id: str, signed_up_at: datetime) -> None:
        self.remember_signups({user_id: signed_up_at})


@dataclass(slots=True)
class _Sticky:
    arm: str
    segment: str
    touched: datetime


class StickyAssigner:
    """Assignment with stored first assignments and cheap exposure records.

    A bounded per-process cache keeps repeat requests free of database reads; ``last_seen``
    is written at most once per ``touch_interval`` per user and process.
    """

    def __init__(
        self,
        assigner: Assigner,
        engine: Engine,
        *,
        cache_size: int = 100_000,
        touch_interval: timedelta = timedelta(hours=1),
    ) -> None:
        self.assigner = assigner
        self.engine = engine
        self.attributes = AttributeSource(engine, assigner.rules)
        self.cache: OrderedDict[tuple[str, str], _Sticky] = OrderedDict()
        self.cache_size = cache_size
        self.touch_interval = touch_interval

    def assign(
        self, user_id: str, given: UserAttributes | None = None, now: datetime | None = None
    ) -> Decision:
        now = now or utcnow()
        experiment = self.assigner.experiment_for(user_id)
        if experiment is None:
            return Decision(self.assigner.config.default_version)
        sticky = self._stored(experiment.name, user_id)
        if sticky is None:
            if given is not None and given.signed_up_at is not None:
                self.attributes.remember_signup(user_id, given.signed_up_at)
            attributes = given or UserAttributes()
            if attributes.missing():
                attributes = attributes.merged(self.attributes.load(user_id, now))
            segment = segment_of(attributes, self.assigner.rules, now)
            decision = self.assigner.decide_in(experiment, user_id, segment)
            if decision.reason == "rollback":
                return decision  # nobody is newly enrolled while rolled back
            return self._record_first(experiment, user_id, decision, now)
        override = self.assigner.override(experiment, user_id, sticky.segment)
        if override is not None:
            self._touch(experiment.name, user_id, sticky, now)
            return override
        if (
            sticky.arm == Arm.BASELINE
            and experiment.hashed_arm(user_id, sticky.segment) == Arm.CANDIDATE
        ):
            self._promote(experiment, user_id, sticky, now)
            return Decision(
                experiment.candidate, experiment.name, Arm.CANDIDATE, sticky.segment, "promoted"
            )
        self._touch(experiment.name, user_id, sticky, now)
        return Decision(
            experiment.version(sticky.arm), experiment.name, sticky.arm, sticky.segment, "sticky"
        )

    def prefetch(
        self, requests: Sequence[tuple[str, UserAttributes | None]], now: datetime | None = None
    ) -> None:
        """Prepare :meth:`assign` for many users with a few queries per chunk of users
        (bulk submission): read their stored assignments into the cache, and enroll those
        seen for the first time exactly as :meth:`assign` would (attributes given or looked
        up, segment, decision, first-assignment record; a concurrent enrollment wins).
        Afterwards ``assign`` answers these users from the cache.

        Per chunk of users that is one read of the stored assignments, two attribute
        queries, then one transaction with an insert of the reported sign-up times and one
        insert of the first assignments whose ``RETURNING`` says which were stored; only
        users enrolled concurrently by another process are read again.
        """
        now = now or utcnow()
        by_experiment: dict[str, dict[str, UserAttributes | None]] = {}
        compiled: dict[str, CompiledExperiment] = {}
        for user_id, given in requests:
            experiment = self.assigner.experiment_for(user_id)
            if experiment is not None and (experiment.name, user_id) not in self.cache:
                compiled[experiment.name] = experiment
                by_experiment.setdefault(experiment.name, {}).setdefault(user_id, given)
        for name, users in by_experiment.items():
            self._load_stored(name, list(users))
            new = {u: g for u, g in users.items() if (name, u) not in self.cache}
            if new:
                self._enroll(compiled[name], new, now)

    def _load_stored(self, experiment: str, user_ids: Sequence[str]) -> None:
        for user_id, arm, segment, last_seen in assignments.stored_many(
            self.engine, experiment, user_ids
        ):
            self._cache((experiment, user_id), _Sticky(arm, segment, last_seen))

    def _enroll(
        self,
        experiment: CompiledExperiment,
        users: dict[str, UserAttributes | None],
        now: datetime,
    ) -> None:
        # Reported sign-up times are stored with the first assignments (one transaction);
        # until then they count as given, and given attributes win over stored ones.
        signups = {u: g.signed_up_at for u, g in users.items() if g is not None and g.signed_up_at}
        attributes = {u: g or UserAttributes() for u, g in users.items()}
        lookup = [u for u, a in attributes.items() if a.missing()]
        if lookup:
            loaded = self.attributes.load_many(lookup, now)
            for user in lookup:
                attributes[user] = attributes[user].merged(loaded[user])
        choices: list[tuple[str, str, str, str]] = []  # (user, arm, variant, segment)
        for user, attrs in attributes.items():
            segment = segment_of(attrs, self.assigner.rules, now)
            decision = self.assigner.decide_in(experiment, user, segment)
            if decision.reason == "rollback":
                continue  # nobody is newly enrolled while rolled back
            assert decision.arm is not None and decision.segment is not None
            choices.append((user, decision.arm, decision.variant, decision.segment))
        if not choices:
            self.attributes.remember_signups(signups)
            return
        stored_now = assignments.record_first_many(
            self.engine, experiment=experiment.name, stage=experiment.stage, now=now,
            choices=choices, signups=signups,
        )  # fmt: skip
        for user, arm, _, segment in choices:
            if user in stored_now:
                self._cache((experiment.name, user), _Sticky(arm, segment, now))
        # Users another process enrolled first: their stored records win.
        lost = [user for user, *_ in choices if user not in stored_now]
        if lost:
            self._load_stored(experiment.name, lost)

    # --- storage ---------------------------------------------------------------------
    def _stored(self, experiment: str, user_id: str) -> _Sticky | None:
        key = (experiment, user_id)
        cached = self.cache.get(key)
        if cached is not None:
            self.cache.move_to_end(key)
            return cached
        row = assignments.stored(self.engine, experiment, user_id)
        if row is None:
            return None
        return self._cache(key, _Sticky(row.arm, row.segment, row.last_seen))

    def _cache(self, key: tuple[str, str], sticky: _Sticky) -> _Sticky:
        self.cache[key] = sticky
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return sticky

    def _record_first(
        self, experiment: CompiledExperiment, user_id: str, decision: Decision, now: datetime
    ) -> Decision:
        assert decision.arm is not None and decision.segment is not None
        stored_now = assignments.record_first(
            self.engine,
            experiment=experiment.name,
            user_id=user_id,
            arm=decision.arm,
            variant=decision.variant,
            segment=decision.segment,
            stage=experiment.stage,
            now=now,
        )
        if stored_now:
            self._cache((experiment.name, user_id), _Sticky(decision.arm, decision.segment, now))
            return decision
        # Another process enrolled the user first: its record wins.
        self.cache.pop((experiment.name, user_id), None)
        stored = self._stored(experiment.name, user_id)
        if stored is None or (stored.arm, stored.segment) == (decision.arm, decision.segment):
            return decision
        return Decision(
            experiment.version(stored.arm), experiment.name, stored.arm, stored.segment, "sticky"
        )

    def _touch(self, experiment: str, user_id: str, sticky: _Sticky, now: datetime) -> None:
        last = (
            sticky.touched if sticky.touched.tzinfo else sticky.touched.replace(tzinfo=now.tzinfo)
        )
        if now - last < self.touch_interval:
            return
        sticky.touched = now
        assignments.touch(self.engine, experiment, user_id, now)

    def _promote(
        self, experiment: CompiledExperiment, user_id: str, sticky: _Sticky, now: datetime
    ) -> None:
        assignments.promote(
            self.engine,
            experiment.name,
            user_id,
            variant=experiment.candidate,
            stage=experiment.stage,
            now=now,
        )
        sticky.arm = Arm.CANDIDATE
        sticky.touched = now
