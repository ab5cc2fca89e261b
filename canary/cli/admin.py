"""`canary db ...` and `canary keys ...`: the database schema and the API keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from canary.cli.common import console, database_errors, db_engine, err, fail, usage_error
from canary.settings import Settings, get_settings
from storage.models import ApiKeyRole

if TYPE_CHECKING:
    from gateway.key_limits import KeyUsage

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys (stored hashed; a token is shown once).", no_args_is_help=True
)


@db_app.command("init")
def db_init() -> None:
    """Create the tables, or upgrade an existing database (idempotent)."""
    from sqlalchemy.engine import make_url

    from storage.db import init_db
    from storage.migrate import SchemaError

    with database_errors(get_settings()):
        try:
            init_db(db_engine())
        except SchemaError as exc:
            raise fail(str(exc)) from None
    shown = make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)
    console.print(f"database ready: {shown}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the schema to this release with Alembic migrations, keeping every row.

    A database made before migrations existed (by `canary db init`) is recognised first.
    """
    from sqlalchemy.engine import make_url

    from storage.migrate import SchemaError, upgrade_db

    with database_errors(get_settings()):
        try:
            before, after = upgrade_db(db_engine())
        except SchemaError as exc:
            raise fail(str(exc)) from None
    shown = make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)
    if before == after:
        console.print(f"database up to date (revision {after}): {shown}")
    else:
        console.print(f"database upgraded {before or 'empty'} -> {after}: {shown}")


RATE_HELP = (
    "Requests per second, over a moving window of CANARY_KEY_RATE_WINDOW_S (client keys; "
    "0 or 'unlimited': none; 'default': CANARY_KEY_RATE_PER_S)"
)
QUEUED_HELP = (
    "Jobs QUEUED or RUNNING at once (client keys; 0 or 'unlimited': none; 'default': "
    "CANARY_KEY_MAX_QUEUED)"
)
SHARE_HELP = (
    "Fair-share weight of the key's bulk jobs: it may have weight x CANARY_FAIR_SHARE_QUEUED "
    "of them queued in the broker per version (a number above 0; 'default': 1)"
)
UNLIMITED_WORDS = ("unlimited", "none")


def _limit(text: str | None, option: str, number: type[float] | type[int]) -> Any:
    """An option's limit: absent -> UNCHANGED, 'default' -> None, 'unlimited' -> 0, else a
    number >= 0 (exit 2 otherwise)."""
    from storage.api_keys import UNCHANGED

    if text is None:
        return UNCHANGED
    word = text.strip().lower()
    if word == "default":
        return None
    if word in UNLIMITED_WORDS:
        return number(0)
    try:
        value = number(word)
    except ValueError:
        kind = "a whole number" if number is int else "a number"
        raise usage_error(
            f"{option}: expected {kind}, 'unlimited' or 'default', got {text!r}"
        ) from None
    if value < 0 or value != value or value == float("inf"):
        raise usage_error(f"{option}: must be 0 (unlimited) or more, got {text!r}")
    return value


def _share_weight(text: str | None, option: str) -> Any:
    """An option's share weight: absent -> UNCHANGED, 'default' -> None, else a finite
    number above 0 (exit 2 otherwise)."""
    import math

    from storage.api_keys import UNCHANGED

    if text is None:
        return UNCHANGED
    word = text.strip().lower()
    if word == "default":
        return None
    try:
        value = float(word)
    except ValueError:
        raise usage_error(
            f"{option}: expected a number above 0 or 'default', got {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise usage_error(f"{option}: must be a number above 0 (1 is the default), got {text!r}")
    return value


def describe_share(usage: KeyUsage, settings: Settings) -> str:
    """A key's fair share as `canary keys list` shows it: ``share 2 (128 queued bulk jobs
    per version)``, ``share 1 default (64 ...)``, or without fair share ``share 2 (fair
    share off)``."""
    from tasks.release import tenant_cap

    weight = usage.key.share_weight
    shown = f"share {1.0 if weight is None else weight:g}" + (" default" if weight is None else "")
    if settings.fair_share_queued <= 0:
        return f"{shown} (fair share off)"
    cap = tenant_cap(settings.fair_share_queued, weight)
    return f"{shown} ({cap} bulk queued/version)"


def describe_limits(usage: KeyUsage, settings: Settings) -> tuple[str, str]:
    """(rate, queued) of a key as `canary keys list` shows them: ``rate 2/s (20 in any
    10 s)``, ``queued 3 of 1000 default`` ("default": from the settings, not the key)."""
    from gateway.key_limits import rate_window

    key, limits = usage.key, usage.limits
    if not usage.limited:
        return "rate not limited", f"queued {usage.unfinished} (not limited)"
    rate_default = " default" if key.rate_per_s is None else ""
    queued_default = " default" if key.max_queued is None else ""
    if limits.rate_per_s is None:
        rate = f"rate unlimited{rate_default}"
    else:
        amount, seconds = rate_window(limits.rate_per_s, settings.key_rate_window_s)
        rate = f"rate {limits.rate_per_s:g}/s{rate_default} ({amount} in any {seconds} s)"
    if limits.max_queued is None:
        queued = f"queued {usage.unfinished} of unlimited{queued_default}"
    else:
        queued = f"queued {usage.unfinished} of {limits.max_queued}{queued_default}"
    return rate, queued


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    role: Annotated[ApiKeyRole, typer.Option(help="What the key may do")] = ApiKeyRole.CLIENT,
    rate: Annotated[str | None, typer.Option(help=RATE_HELP)] = None,
    max_queued: Annotated[str | None, typer.Option("--max-queued", help=QUEUED_HELP)] = None,
    share_weight: Annotated[str | None, typer.Option("--share-weight", help=SHARE_HELP)] = None,
) -> None:
    """Create an API key and print its token (the only time it is shown)."""
    from gateway.auth import create_key
    from gateway.key_limits import check_limit_values, check_share_weight
    from storage.api_keys import UNCHANGED

    rate_value = _limit(rate, "--rate", float)
    queued_value = _limit(max_queued, "--max-queued", int)
    weight_value = _share_weight(share_weight, "--share-weight")
    rate_value = None if rate_value is UNCHANGED else rate_value
    queued_value = None if queued_value is UNCHANGED else queued_value
    weight_value = None if weight_value is UNCHANGED else weight_value
    try:
        check_limit_values(role, rate_value, queued_value)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    try:
        check_share_weight(role, weight_value)
    except ValueError as exc:
        raise usage_error(f"--share-weight: {exc}") from None
    key, token = create_key(
        db_engine(),
        name,
        role,
        rate_per_s=rate_value,
        max_queued=queued_value,
        share_weight=weight_value,
    )
    err.print(f"created {key.role} key {key.id} ({key.name}); store the token now:")
    print(token)


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their role, prefix (never the token), limits, unfinished jobs and
    fair-share weight.

    Limits apply to client keys; "default" marks a limit or weight the key takes from the
    settings. The share is the key's weight and the bulk jobs it may have queued in the
    broker per version (weight x CANARY_FAIR_SHARE_QUEUED); the rest wait in the database.
    """
    from gateway.key_limits import keys_with_usage

    settings = get_settings()
    with database_errors(settings):
        usages = keys_with_usage(db_engine(), settings)
    for usage in usages:
        key = usage.key
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        rate, queued = describe_limits(usage, settings)
        share = describe_share(usage, settings)
        console.print(
            f"{key.id}  {key.prefix}…  {key.role:8}  {state:18}  {rate:36}  {queued:26}  "
            f"{share:38}  {key.name}",
            soft_wrap=True,
            highlight=False,
        )


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    rate: Annotated[str | None, typer.Option(help=RATE_HELP)] = None,
    max_queued: Annotated[str | None, typer.Option("--max-queued", help=QUEUED_HELP)] = None,
    share_weight: Annotated[str | None, typer.Option("--share-weight", help=SHARE_HELP)] = None,
) -> None:
    """Show or change a client key's limits (in force from its next request) or a key's
    fair-share weight (from the next release of held bulk jobs)."""
    from gateway.key_limits import keys_with_usage, set_key_limits

    settings = get_settings()
    engine = db_engine()
    with database_errors(settings):
        try:
            set_key_limits(
                engine,
                key_id,
                rate_per_s=_limit(rate, "--rate", float),
                max_queued=_limit(max_queued, "--max-queued", int),
                share_weight=_share_weight(share_weight, "--share-weight"),
            )
        except LookupError:
            raise fail(f"no key {key_id}") from None
        except ValueError as exc:
            raise usage_error(str(exc)) from None
        [usage] = [u for u in keys_with_usage(engine, settings) if u.key.id == key_id]
    described = ", ".join((*describe_limits(usage, settings), describe_share(usage, settings)))
    console.print(f"{key_id} ({usage.key.name}): {described}", soft_wrap=True, highlight=False)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; requests with it get 401 within seconds."""
    from gateway.auth import revoke_key

    if not revoke_key(db_engine(), key_id):
        raise fail(f"no active key {key_id}")
    console.print(f"revoked {key_id}")
