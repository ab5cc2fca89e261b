"""What the traffic simulator simulates: user kinds, behaviour parameters, the true effects.

Effects act on behaviour, not on metrics: ``Effects(dwell=0.12)`` makes every candidate
view 12% more likely to last 15 s or more. For ``long_dwell_share`` that is exactly the
metric's relative lift (views do not depend on the arm); for the other metrics each arm's
true value follows from the model and ``analysis.simulation.truth`` measures it on a
large simulated population.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gateway.segments import SEGMENTS, SegmentRules

SECOND = 1_000_000  # simulated times are integer microseconds since the simulation's origin
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

SEGMENT_INDEX = {name: index for index, name in enumerate(SEGMENTS)}
BASELINE, CANDIDATE = 0, 1
OUTSIDE = -1  # not (yet) in the experiment: pre-period jobs get the default version

VIEW, DOWNLOAD, FEEDBACK, LOGIN, TRIAL, PAID = range(6)  # storage.models.EventType order
FAILURE_KINDS = ("oom", "timeout", "nan_output", "black_image")
FAILURE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
FEEDBACK_REASONS = ("poor_quality", "style_mismatch", "other")

SUBJECTS = (
    "a lighthouse at dusk", "portrait of a dancer mid-jump", "a brass teapot on linen",
    "a fox in the snow", "a city street after rain", "a mountain lake at dawn",
    "an old fishing boat", "a bowl of ripe cherries", "a robot reading a book",
    "a desert caravan", "a greenhouse full of ferns", "a violinist on a rooftop",
    "a red bicycle against a wall", "a stormy sea", "a cat asleep on a windowsill",
    "a crowded night market", "a glass of iced tea", "a snowy pine forest",
    "an astronaut in a sunflower field", "a steam locomotive", "a quiet library",
    "a paper crane", "a surfer at sunset", "a medieval castle gate",
)  # fmt: skip


@dataclass(frozen=True)
class Effects:
    """The candidate's true effect: relative change of each behaviour (0 = none)."""

    dwell: float = 0.0  # P(a view lasts >= 15 s)
    quick_retry: float = 0.0  # P(the same prompt again within 30 s) after a generation
    download: float = 0.0  # P(download) of a viewed image
    negative_feedback: float = 0.0  # P(negative feedback) on a viewed image
    retention: float = 0.0  # P(active) on each day after the first exposure
    generation_rate: float = 0.0  # expected extra prompts per session
    conversion: float = 0.0  # P(paying) after a trial
    failure: float = 0.0  # P(a job fails)
    latency: float = 0.0  # inference time

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) <= -1:
                raise ValueError(f"effect {item.name} must be above -1 (a relative change)")


@dataclass(frozen=True)
class Kind:
    """A kind of user: the centre of its behaviour (logits, probabilities, Poisson means)."""

    name: str
    share: float
    activity: float  # logit of P(active on a day)
    sessions: float  # extra sessions per active day (Poisson mean)
    prompts: float  # extra new prompts per session (Poisson mean)
    style: float  # P(a prompt carries a style tag)
    dwell: float  # logit of P(dwell >= 15 s)
    retry: float  # logit of P(quick retry)
    download: float  # logit of P(download | viewed)
    feedback: float  # logit of P(negative feedback | viewed)
    trial: float  # P(starting a trial) on an active day
    pay: float  # logit of P(paying | trial)


# The kind drives behaviour only; the gateway derives the segment from sign-up time
# (new users), generations in the last 7 days (creators) and style tags (stylists).
KINDS = (
    Kind("new", 0.20, -1.3, 0.2, 1.2, 0.10, -1.0, -1.8, -1.4, -2.8, 0.030, -0.6),
    Kind("creator", 0.15, 1.4, 0.6, 1.8, 0.15, -0.7, -2.2, -1.0, -3.2, 0.020, -0.3),
    Kind("stylist", 0.15, -0.6, 0.2, 1.0, 0.90, -0.4, -2.0, -1.1, -3.0, 0.015, -0.5),
    Kind("casual", 0.50, -1.6, 0.1, 0.8, 0.04, -0.9, -2.0, -1.3, -3.0, 0.010, -0.8),
)  # fmt: skip
NEW_KIND = 0


@dataclass(frozen=True)
class SimulationSpec:
    """One simulated experiment. Day 0 is the experiment's first day (UTC midnight)."""

    users: int = 1000
    days: int = 10
    pre_days: int = 7  # history before the experiment: segments and the CUPED covariate
    effects: Effects = field(default_factory=Effects)
    shares: dict[str, float] = field(default_factory=lambda: {"default": 0.5})
    broken_split: float = 0.0  # share of candidate users whose traffic is never recorded
    # per segment, overriding broken_split there: a positive fraction loses that share of
    # the segment's candidate users, a negative one that share of its baseline users (the
    # candidate looks over-enrolled)
    broken_segments: dict[str, float] = field(default_factory=dict)
    rules: SegmentRules = field(default_factory=SegmentRules)
    failure_rate: float = 0.002
    engagement_weight: float = 0.8  # how strongly engagement drives activity and dwell

    def __post_init__(self) -> None:
        if self.users < 1 or self.days < 1 or self.pre_days < 0:
            raise ValueError("users and days must be positive, pre_days not negative")
        if not 0.0 <= self.broken_split <= 1.0:
            raise ValueError("broken_split is a share between 0 and 1")
        unknown = sorted(set(self.broken_segments) - set(SEGMENTS))
        if unknown:
            raise ValueError(f"broken_segments: unknown segments {unknown}; known: {SEGMENTS}")
        if any(not -1.0 <= f <= 1.0 for f in self.broken_segments.values()):
            raise ValueError("broken_segments: each fraction is between -1 and 1")
        if "default" not in self.shares:
            raise ValueError("shares need a 'default'")

    def share(self, segment: int) -> float:
        return self.shares.get(SEGMENTS[segment], self.shares["default"])

    def lost_fraction(self, segment: int) -> float:
        """Signed share of a segment's users that never reach the system: > 0 candidates,
        < 0 baseline users."""
        return self.broken_segments.get(SEGMENTS[segment], self.broken_split)

    @property
    def breaks_split(self) -> bool:
        return self.broken_split > 0 or any(self.broken_segments.values())

    @property
    def horizon(self) -> int:
        """The simulation's end, in microseconds since its origin."""
        return (self.pre_days + self.days) * DAY


def prompt_text(prompt: int, rules: SegmentRules) -> str:
    """Prompt ids are subject * (tags + 1) + style (0: no style tag)."""
    subject, style = divmod(int(prompt), len(rules.style_tags) + 1)
    text = SUBJECTS[subject % len(SUBJECTS)]
    return f"{text}, {rules.style_tags[style - 1]} style" if style else text
