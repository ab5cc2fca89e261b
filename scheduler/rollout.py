"""Rollout control: advance, hold, roll back or set a stage, by hand or automatically.

Every action is one guarded write of the live state plus its audit row (who, when,
from, to, why, and the gate evaluation behind it). The automatic mode, when switched
on for an experiment, runs daily: it rolls back at once on a guardrail breach, advances
exactly one stage when the gates say so and the stage has lasted its minimum time, and
otherwise holds. It never skips a stage.

Every change that raises the candidate's exposure (advance, set-stage to a later stage,
resuming after a rollback) needs the gates to say advance, or ``force`` with a reason;
a forced change is marked in its audit row (``"forced": true`` in the evaluation). Each
action is announced to the configured webhooks (scheduler/notify.py) once committed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from celery import Celery
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.experiments import Experiment, ExperimentConfig
from scheduler.notify import Kind, Notice, Notifier
from storage import rollout_state as rollout
from storage.models import ExperimentState, RolloutEvent, utcnow

QueuedPolicy = Literal["finish", "reroute"]


class RolloutError(ValueError):
    pass


class GatesRefuse(RolloutError):
    """A change that raises exposure while the gates do not say advance (and no force)."""


@dataclass(frozen=True)
class LiveState:
    stage: str
    rolled_back: bool
    auto: bool
    stage_since: datetime | None  # None: never changed through rollout (the file's stage)

    @property
    def key(self) -> tuple[str, bool] | None:
        return (self.stage, self.rolled_back) if self.stage_since is not None else None


@dataclass(frozen=True)
class Step:
    action: Literal["advance", "hold", "rollback"]
    from_stage: str
    to_stage: str
    reasons: list[str]
    applied: bool


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


class Rollout:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        config: ExperimentConfig,
        app: Celery | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.config = config
        self.app = app
        self.notifier = notifier or Notifier.from_settings(settings)
        self.clock: Callable[[], datetime] = utcnow  # simulated days replace it in tests

    # ------------------------------------------------------------ reading
    def experiment(self, name: str) -> Experiment:
        try:
            return self.config.experiment(name)
        except KeyError:
            known = ", ".join(e.name for e in self.config.experiments) or "none"
            raise RolloutError(f"no experiment {name!r} (configured: {known})") from None

    def state(self, name: str) -> LiveState:
        experiment = self.experiment(name)
        stored = rollout.get_state(self.engine, name)
        if stored is None:
            return LiveState(experiment.stage, experiment.rolled_back, False, None)
        return LiveState(stored.stage, stored.rolled_back, stored.auto, _aware(stored.stage_since))

    def next_stage(self, name: str, stage: str) -> str | None:
        names = [s.name for s in self.experiment(name).stages]
        index = names.index(stage) if stage in names else -1
        return names[index + 1] if 0 <= index < len(names) - 1 else None

    def raises_exposure(self, name: str, before: LiveState, stage: str) -> bool:
        """Whether moving to ``stage`` (not rolled back) gives the candidate more traffic:
        a later stage (shares only grow along the ladder), or any stage after a rollback."""
        names = [s.name for s in self.experiment(name).stages]
        if before.rolled_back or before.stage not in names:
            return True
        return names.index(stage) > names.index(before.stage)

    @staticmethod
    def check_gates(
        evaluation: dict[str, Any] | None, force: bool, what: str
    ) -> dict[str, Any] | None:
        """The evaluation to record, marked ``forced`` when ``force`` overrode it; raises
        GatesRefuse when the gates do not say advance and nothing overrides them."""
        verdict = (evaluation or {}).get("verdict")
        if verdict == "advance":
            return evaluation
        if not force:
            reasons = "\n  ".join((evaluation or {}).get("reasons") or ["no gate evaluation"])
            raise GatesRefuse(
                f"the gates say {str(verdict or 'nothing').upper()}:\n  {reasons}\n"
                f"(use --force --reason TEXT to {what} anyway; it is recorded as forced)"
            )
        return {**(evaluation or {}), "forced": True}

    # ------------------------------------------------------------ writing
    def _write(
        self,
        name: str,
        before: LiveState,
        *,
        action: str,
        actor: str,
        reason: str,
        stage: str,
        rolled_back: bool,
        evaluation: dict[str, Any] | None = None,
        auto: bool | None = None,
    ) -> ExperimentState:
        event = RolloutEvent(
            experiment=name,
            actor=actor,
            action=action,
            from_stage=_label(before.stage, before.rolled_back),
            to_stage=_label(stage, rolled_back),
            reason=reason,
            evaluation=rollout.evaluation_json(evaluation),
        )
        try:
            return rollout.change_state(
                self.engine, name, expected=before.key, stage=stage, rolled_back=rolled_back,
                auto=auto, event=event, now=self.clock(),
            )  # fmt: skip
        except rollout.ConcurrentChange as exc:
            raise RolloutError(str(exc)) from None

    def _announce(
        self,
        name: str,
        action: Kind,
        actor: str,
        reason: str,
        before: LiveState,
        after: tuple[str, bool],
        evaluation: dict[str, Any] | None,
    ) -> None:
        self.notifier.send(
            Notice(
                kind=action,
                subject=name,
                actor=actor,
                reason=reason,
                from_stage=_label(before.stage, before.rolled_back),
                to_stage=_label(*after),
                verdict=(evaluation or {}).get("verdict"),
                forced=bool((evaluation or {}).get("forced")),
                at=self.clock(),
            )
        )

    def advance(
        self,
        name: str,
        actor: str,
        reason: str,
        evaluation: dict[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> ExperimentState:
        before = self.state(name)
        if before.rolled_back:
            raise RolloutError(f"{name} is rolled back; use set-stage to resume at a stage")
        target = self.next_stage(name, before.stage)
        if target is None:
            experiment = self.experiment(name)
            raise RolloutError(
                f"{name} is at its last stage ({before.stage}); retire the baseline with "
                f"`canary retire --model-version {experiment.baseline}`"
            )
        evaluation = self.check_gates(evaluation, force, "advance")
        state = self._write(
            name, before, action="advance", actor=actor, reason=reason, stage=target,
            rolled_back=False, evaluation=evaluation,
        )  # fmt: skip
        self._announce(name, "advance", actor, reason, before, (target, False), evaluation)
        return state

    def hold(
        self, name: str, actor: str, reason: str, evaluation: dict[str, Any] | None = None
    ) -> LiveState:
        before = self.state(name)
        rollout.record(
            self.engine,
            RolloutEvent(
                experiment=name, at=self.clock(), actor=actor, action="hold",
                from_stage=_label(before.stage, before.rolled_back),
                to_stage=_label(before.stage, before.rolled_back), reason=reason,
                evaluation=rollout.evaluation_json(evaluation),
            ),
        )  # fmt: skip
        after = (before.stage, before.rolled_back)
        self._announce(name, "hold", actor, reason, before, after, evaluation)
        return before

    def rollback(
        self,
        name: str,
        actor: str,
        reason: str,
        evaluation: dict[str, Any] | None = None,
        queued: QueuedPolicy = "finish",
    ) -> tuple[ExperimentState, int]:
        """All new traffic to the baseline now; queued candidate jobs finish or move."""
        before = self.state(name)
        state = self._write(
            name, before, action="rollback", actor=actor,
            reason=f"{reason} (queued candidate jobs: {queued})", stage=before.stage,
            rolled_back=True, evaluation=evaluation,
        )  # fmt: skip
        full_reason = f"{reason} (queued candidate jobs: {queued})"
        self._announce(
            name, "rollback", actor, full_reason, before, (before.stage, True), evaluation
        )
        moved = 0
        if queued == "reroute":
            if self.app is None:
                raise RolloutError("re-routing queued jobs needs the broker")
            from scheduler.retirement import reroute_queued

            experiment = self.experiment(name)
            moved = reroute_queued(
                self.app, self.engine, self.settings, experiment.candidate, experiment.baseline
            )
        return state, moved

    def set_stage(
        self,
        name: str,
        stage: str,
        actor: str,
        reason: str,
        evaluation: dict[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> ExperimentState:
        """Put the experiment at ``stage``; raising exposure needs the gates (or force)."""
        before = self.state(name)
        names = [s.name for s in self.experiment(name).stages]
        if stage not in names:
            raise RolloutError(f"{name} has no stage {stage!r} (stages: {', '.join(names)})")
        if self.raises_exposure(name, before, stage):
            evaluation = self.check_gates(evaluation, force, f"move to {stage}")
        state = self._write(
            name, before, action="set-stage", actor=actor, reason=reason, stage=stage,
            rolled_back=False, evaluation=evaluation,
        )  # fmt: skip
        self._announce(name, "set-stage", actor, reason, before, (stage, False), evaluation)
        return state

    def set_auto(self, name: str, on: bool, actor: str) -> ExperimentState:
        before = self.state(name)
        return self._write(
            name, before, action="auto-on" if on else "auto-off", actor=actor,
            reason="automatic mode switched " + ("on" if on else "off"), stage=before.stage,
            rolled_back=before.rolled_back, auto=on,
        )  # fmt: skip

    # ------------------------------------------------------------ automatic mode
    def auto_step(
        self,
        name: str,
        evaluation: dict[str, Any],
        *,
        now: datetime | None = None,
        dry_run: bool = False,
        actor: str = "auto",
    ) -> Step:
        """Act on one gate evaluation: roll back, advance one stage, or hold."""
        now = now or self.clock()
        before = self.state(name)
        verdict = evaluation["verdict"]
        reasons = list(evaluation.get("reasons", []))
        stage = before.stage
        if before.rolled_back:
            return self._hold(
                name, before, ["rolled back: an operator decides"], evaluation, dry_run, actor
            )
        if verdict == "rollback":
            if not dry_run:
                self.rollback(name, actor, "guardrail breach: " + "; ".join(reasons), evaluation)
            return Step("rollback", stage, stage, reasons, not dry_run)
        if verdict == "advance":
            target = self.next_stage(name, stage)
            minimum = timedelta(days=self.settings.rollout_min_stage_days)
            since = before.stage_since
            if target is None:
                reasons = [f"at the last stage ({stage}); retiring the baseline is manual"]
            elif since is not None and now - since < minimum:
                days = (now - since).total_seconds() / 86400
                reasons = [
                    f"gates pass, but {stage} has run {days:.1f} of the "
                    f"{self.settings.rollout_min_stage_days:g} days a stage must last"
                ]
            else:
                if not dry_run:
                    self.advance(name, actor, "gates pass: " + "; ".join(reasons), evaluation)
                return Step("advance", stage, target, reasons, not dry_run)
        return self._hold(name, before, reasons, evaluation, dry_run, actor)

    def _hold(
        self,
        name: str,
        before: LiveState,
        reasons: list[str],
        evaluation: dict[str, Any],
        dry_run: bool,
        actor: str,
    ) -> Step:
        if not dry_run:
            self.hold(name, actor, "; ".join(reasons), evaluation)
        return Step("hold", before.stage, before.stage, reasons, not dry_run)


def _label(stage: str, rolled_back: bool) -> str:
    return f"{stage} (rolled back)" if rolled_back else stage
