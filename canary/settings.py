"""The one source of configuration: environment variables with embedded defaults.

Every process (CLI, worker, beat, API) builds its settings here; nothing else reads
``os.environ``. Defaults make a laptop run self-contained: a SQLite file, a local
object directory and model folders under ``CANARY_HOME`` (``./.canary``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from celery.schedules import crontab, schedule
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Schedule expressions of the periodic jobs (validated here, used by scheduler/schedule.py).
_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*s?$")


def parse_schedule(expression: str) -> crontab | schedule:
    """A 5-field crontab (minute hour day-of-month month day-of-week) or 'every N' seconds."""
    text = expression.strip()
    interval = _EVERY.match(text)
    if interval:
        seconds = float(interval.group(1))
        if seconds <= 0:
            raise ValueError(f"{expression!r}: the interval must be positive")
        return schedule(run_every=seconds)
    try:
        return crontab.from_string(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{expression!r} is neither a crontab ('30 2 * * *') nor 'every N': {exc}"
        ) from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CANARY_", extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path(".canary"), description="Working directory for local state")

    # --- services (unprefixed names, as deployments usually spell them) ---
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "CANARY_REDIS_URL"),
        description="Broker URL; when unset, the local stack's private Valkey server "
        "(`canary up`) at 127.0.0.1:local_broker_port",
    )
    local_broker_port: int = Field(
        default=6390,
        ge=1,
        le=65535,
        description="Port of the private Valkey server `canary up` starts when REDIS_URL is "
        "unset; fixed, so every command and a long-running API find a restarted stack",
    )
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CANARY_DATABASE_URL")
    )
    storage_url: str | None = Field(
        default=None, validation_alias=AliasChoices("STORAGE_URL", "CANARY_STORAGE_URL")
    )
    s3_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("S3_ENDPOINT_URL", "CANARY_S3_ENDPOINT_URL")
    )
    s3_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("S3_REGION", "CANARY_S3_REGION")
    )
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    # --- model versions ---
    model_dir: Path | None = Field(
        default=None, description="Registry: one diffusers folder per version"
    )
    versions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["v1", "v2"],
        description="Model versions that may receive jobs (comma separated in the environment)",
    )

    experiment_file: Path | None = Field(
        default=None,
        description="YAML experiment file (default: home/experiments.yaml when it exists, "
        "as `canary demo` writes it)",
    )

    # --- worker binding (set by `canary worker`) ---
    worker_model_version: str | None = None
    worker_device: str = "cpu"
    worker_node: str | None = None
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per worker process; several CPU workers on one host must "
        "share the cores or OpenMP's spinning threads slow every one of them down",
    )

    # --- reliability ---
    task_soft_time_limit_s: int = Field(default=300, ge=1)
    task_time_limit_s: int = Field(default=360, ge=1)
    visibility_timeout_s: int = Field(default=3600, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    worker_start_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a new pool process may take to load its model (and re-send "
        "what its predecessor left) before Celery kills it as hung; Celery's own 4 s would "
        "kill every replacement of a process that loads a real model",
    )
    upload_attempts: int = Field(default=4, ge=1)
    upload_backoff_s: float = Field(default=0.5, ge=0)
    # --- object-store outages (tasks/spool.py, docs/operators-guide.md) ---
    spool_dir: Path | None = Field(
        default=None,
        description="Where a worker keeps rendered images it could not upload (default "
        "home/spool); one sub-folder per version, shared by that version's workers on a host",
    )
    spool_max_images: int = Field(
        default=256,
        ge=0,
        description="Images a version's spool holds at most; beyond it a job goes back to "
        "the queue (rendered again later). 0 turns the spool off: a job whose upload "
        "retries run out fails as storage_error",
    )
    spool_retry_s: float = Field(
        default=5.0,
        gt=0,
        description="While storage is down: how often a worker tries the oldest spooled "
        "image again (its breaker closes and it takes jobs again once the spool is empty)",
    )
    fault_injection: bool = Field(
        default=False, description="Honour [[fault:...]] markers in prompts (tests only)"
    )

    # --- worker throughput (docs/performance.md) ---
    record_queue_size: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Rendered images a worker holds for background upload + record; the "
        "next render starts while they are written, and a full queue makes it wait",
    )
    prefetch_multiplier: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Messages a worker process reserves: 2 lets the next job wait in the "
        "pool process so it starts the moment the current one returns; 1 leaves every "
        "queued job to whichever worker is free first",
    )
    claim_ahead: bool = Field(
        default=True,
        description="The worker's main process claims the job it writes to the pool "
        "process's pipe while the current one renders, so the next render starts without a "
        "database round trip (tasks/claim_ahead.py)",
    )
    micro_batch: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Render up to N queued jobs of the same size, steps and guidance in one "
        "pipeline call (1 = off); each job keeps its own seeded generator",
    )
    benchmark_stubs: bool = Field(
        default=False,
        description="Allow model folders marked as benchmark stub pipelines (benchmarks only)",
    )
    recovery_sweep_every_s: float = Field(
        default=60.0,
        gt=0,
        description="How often a render worker re-sends jobs stranded on a lost worker "
        "(running for longer than the visibility timeout)",
    )

    # --- job validation limits ---
    max_prompt_chars: int = Field(default=2000, ge=1)
    max_steps: int = Field(default=150, ge=1)
    min_side: int = Field(default=64, ge=8)
    max_side: int = Field(default=2048, ge=8)

    republish_every_s: float = Field(
        default=60.0, gt=0, description="How often beat re-sends jobs recorded but never sent"
    )
    reconcile_every_s: float = Field(
        default=60.0,
        gt=0,
        description="How often beat re-sends QUEUED jobs (sent at least this long ago) whose "
        "message the broker no longer holds",
    )

    # --- golden set ---
    golden_set_file: Path = Field(
        default=Path(__file__).resolve().parent.parent / "golden" / "golden-set.yaml",
        description="The curated cases replayed through both versions every night",
    )
    golden_schedule: str = Field(
        default="30 2 * * *",
        description="When the nightly golden run starts: a crontab (minute hour day month "
        "weekday) in golden_timezone, or 'every N' seconds (tests and demos)",
    )
    golden_timezone: str = Field(default="UTC", description="IANA zone of golden_schedule")
    golden_experiment: str | None = Field(
        default=None,
        description="Experiment whose baseline and candidate the golden run compares "
        "(default: the experiment file's first; without a file, the first two versions)",
    )
    golden_scorer_dir: Path | None = Field(
        default=None, description="Local CLIP model folder scoring expected elements (optional)"
    )
    golden_check_every_s: float = Field(
        default=30.0, gt=0, description="How often beat checks finished golden images"
    )
    golden_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a run's submitter holds it before another process may resume it",
    )

    # --- HTTP API ---
    api_max_batch: int = Field(default=100, ge=1, le=10_000)
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    show_variant_to_clients: bool = Field(
        default=False, description="Whether client keys see which version served a job"
    )
    # limits per client key (gateway/key_limits.py); a key's own values override them
    key_rate_per_s: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second a client key may make, sustained over "
        "key_rate_window_s (0: unlimited)",
    )
    key_rate_window_s: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="The moving window of the request rate: a key may make rate x window "
        "requests in any window (its burst)",
    )
    key_max_queued: int = Field(
        default=1000,
        ge=0,
        description="Jobs a client key may have QUEUED or RUNNING at once (0: unlimited)",
    )

    # fair share among bulk tenants (tasks/release.py)
    fair_share_queued: int = Field(
        default=64,
        ge=0,
        description="Bulk jobs each tenant (API key, else CLI batch) may have waiting in the "
        "broker per version; the rest wait in the database and are released round-robin "
        "as workers take jobs (0: no fair share, a batch goes to the broker at once)",
    )
    fair_share_release_every_s: float = Field(
        default=0.5,
        gt=0,
        description="How often each worker at most releases held bulk jobs of its version; "
        "beat also releases every 5 s in case no worker is finishing jobs",
    )

    # shadow traffic (gateway/shadow.py)
    shadow_max_queued: int = Field(
        default=500,
        ge=0,
        description="Shadow jobs a candidate may have QUEUED at once; beyond it new samples "
        "are skipped and counted, never queued (0: no shadow jobs at all)",
    )
    shadow_max_failure_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Shadow health: the candidate's failure rate may exceed the baseline's "
        "on the same jobs by at most this much (the 95% interval's upper end)",
    )
    shadow_max_p95_ratio: float = Field(
        default=1.10,
        ge=1,
        description="Shadow health: the candidate's P95 render time over the baseline's on "
        "the same jobs may be at most this (the 95% interval's upper end)",
    )
    shadow_min_pairs: int = Field(
        default=30, ge=1, description="Shadow health: finished pairs needed for a verdict"
    )

    # --- measurement ---
    gate_policy_file: Path | None = Field(
        default=None, description="Gate policy YAML (default: the seed's guardrails and rule)"
    )
    report_days: int = Field(default=14, ge=1, le=366, description="Days an A/B report covers")
    dashboard_schedule: str = Field(
        default="45 0 * * *", description="When beat writes the daily dashboards (crontab)"
    )

    rollout_min_stage_days: float = Field(
        default=2.0, ge=0, description="Automatic mode: the least time a stage runs"
    )
    rollout_schedule: str = Field(
        default="0 1 * * *", description="When the automatic mode evaluates the gates (crontab)"
    )

    # --- notifications (scheduler/notify.py) ---
    notify_webhooks: SecretStr | None = Field(
        default=None,
        description="Webhooks told of every stage change and verdict change: comma "
        "separated, each `slack=URL` (Slack-compatible message) or `json=URL` (the notice's "
        "fields); a bare URL is `json`. Secret: Slack's URLs carry their token",
    )
    notify_attempts: int = Field(default=4, ge=1, le=20, description="Tries per webhook")
    notify_backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles on each retry"
    )
    notify_timeout_s: float = Field(default=5.0, gt=0, description="Per request")
    notify_deadline_s: float = Field(
        default=15.0, gt=0, description="Give up on a webhook after this long (retries included)"
    )

    # --- events ---
    api_max_events: int = Field(default=1000, ge=1, le=10_000, description="Events per batch")
    event_max_age_days: float = Field(
        default=7.0, gt=0, description="Older events are rejected (late instrumentation)"
    )
    event_max_skew_s: float = Field(
        default=300.0, ge=0, description="How far in the future a client clock may be"
    )

    # --- local stack ---
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_address: str = "127.0.0.1"
    flower_basic_auth: SecretStr | None = Field(
        default=None,
        description="user:password[,user:password...] for Flower; required off loopback",
    )
    flower_persistent: bool = Field(
        default=True, description="Keep Flower's task history across restarts (home/flower.db)"
    )
    flower_hide_prompts: bool = Field(
        default=True,
        description="Publish render tasks with the prompt and negative prompt masked in the "
        "argument text Flower shows (job id, version and parameters stay visible)",
    )
    stack_restart_backoff_s: float = Field(
        default=1.0, gt=0, description="`canary up`: first wait before restarting a process"
    )
    stack_restart_backoff_max_s: float = Field(
        default=30.0, gt=0, description="`canary up`: the restart wait doubles up to this"
    )
    stack_fast_failure_s: float = Field(
        default=10.0, ge=0, description="`canary up`: an exit this soon after starting is fast"
    )
    stack_max_fast_failures: int = Field(
        default=5, ge=1, description="`canary up`: fast failures in a row before giving up"
    )
    stack_stop_grace_s: float = Field(
        default=60.0, ge=0,
        description="`canary up` on Ctrl-C: how long workers may finish their job (warm "
        "shutdown) before they are killed",
    )  # fmt: skip

    @field_validator("versions", mode="before")
    @classmethod
    def _split_versions(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("versions")
    @classmethod
    def _check_versions(cls, value: list[str]) -> list[str]:
        import re

        if not value:
            raise ValueError("at least one model version must be configured")
        for version in value:
            if not re.match(VERSION_PATTERN, version):
                raise ValueError(
                    f"model version {version!r} must match {VERSION_PATTERN} (it names a queue)"
                )
        if len(set(value)) != len(value):
            raise ValueError("model versions must be unique")
        # render.<v>.interactive and render.<v>.background are v's queues
        # (canary.contracts.queue_for): no other version may be called v.interactive
        clashes = [v for v in value for suffix in (".interactive", ".background")
                   if v.endswith(suffix) and v.removesuffix(suffix) in value]  # fmt: skip
        if clashes:
            raise ValueError(
                f"model version {clashes[0]!r} would share its queue with another version's "
                "priority queue"
            )
        return value

    @field_validator("golden_schedule", "dashboard_schedule", "rollout_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("notify_webhooks")
    @classmethod
    def _valid_webhooks(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_webhooks(value.get_secret_value())
        return value

    @field_validator("golden_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @model_validator(mode="after")
    def _check_time_limits(self) -> Settings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError(
                "CANARY_TASK_SOFT_TIME_LIMIT_S must be below CANARY_TASK_TIME_LIMIT_S "
                f"({self.task_soft_time_limit_s} >= {self.task_time_limit_s})"
            )
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "CANARY_VISIBILITY_TIMEOUT_S must exceed CANARY_TASK_TIME_LIMIT_S "
                f"({self.visibility_timeout_s} <= {self.task_time_limit_s}), or Redis "
                "redelivers jobs that are still running"
            )
        return self

    # --- derived values ---
    @property
    def stack_file(self) -> Path:
        """Where a running `canary up` records the broker it started."""
        return self.home / "stack.json"

    @property
    def dashboard_dir(self) -> Path:
        return self.home / "dashboards"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'canary.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.home / 'objects').resolve()}"

    @property
    def resolved_model_dir(self) -> Path:
        return (self.model_dir or self.home / "models").resolve()

    @property
    def resolved_spool_dir(self) -> Path:
        return (self.spool_dir or self.home / "spool").resolve()

    @property
    def resolved_experiment_file(self) -> Path | None:
        """CANARY_EXPERIMENT_FILE, else ``home/experiments.yaml`` if present, else none."""
        if self.experiment_file is not None:
            return self.experiment_file
        default = self.home / "experiments.yaml"
        return default if default.is_file() else None

    @property
    def uses_local_broker(self) -> bool:
        return not self.redis_url

    @property
    def broker_url(self) -> str:
        """REDIS_URL, else the local stack's private server at its fixed address.

        Never some other Redis that happens to run on this machine: a job published there
        would wait for workers that do not exist.
        """
        if self.redis_url:
            return self.redis_url
        return f"redis://127.0.0.1:{self.local_broker_port}/0"

    @property
    def shown_broker_url(self) -> str:
        """The broker URL for messages and logs, password masked."""
        return mask_url(self.broker_url)

    @property
    def notify_targets(self) -> list[Webhook]:
        """``notify_webhooks`` parsed: ``slack=URL`` / ``json=URL`` / ``URL`` (json)."""
        if self.notify_webhooks is None:
            return []
        return parse_webhooks(self.notify_webhooks.get_secret_value())


@dataclass(frozen=True)
class Webhook:
    url: str
    format: Literal["slack", "json"] = "json"


def parse_webhooks(text: str) -> list[Webhook]:
    hooks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fmt, sep, url = item.partition("=")
        if sep and fmt in ("slack", "json"):
            hooks.append(Webhook(url.strip(), "slack" if fmt == "slack" else "json"))
        else:
            hooks.append(Webhook(item))
    for hook in hooks:
        if not hook.url.startswith(("http://", "https://")):
            raise ValueError(f"notify webhook {mask_url(hook.url)!r} is not an http(s) URL")
    return hooks


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and log)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class ConfigError(ValueError):
    """Invalid settings from the environment: one line per bad setting, naming its variable
    but never its value (it may be a password, a token or a URL with credentials)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def env_name(field: str) -> str:
    """The environment variable a settings field is read from."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"CANARY_{field.upper()}"


def _config_error(exc: ValidationError) -> ConfigError:
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        message = error["msg"].removeprefix("Value error, ")
        where = error["loc"][0] if error["loc"] else None
        lines.append(f"{env_name(str(where))}: {message}" if where else message)
    return ConfigError(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process; raises ConfigError (without the values) if invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        raise _config_error(exc) from None


def reset_settings_cache() -> None:
    """Forget cached settings (after a command changed the environment it runs in)."""
    get_settings.cache_clear()
