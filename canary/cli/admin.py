"""`canary db ...` and `canary keys ...`: the database schema and the API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from canary.cli.common import console, database_errors, db_engine, err, fail
from canary.settings import get_settings
from storage.models import ApiKeyRole

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


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    role: Annotated[ApiKeyRole, typer.Option(help="What the key may do")] = ApiKeyRole.CLIENT,
) -> None:
    """Create an API key and print its token (the only time it is shown)."""
    from gateway.auth import create_key

    key, token = create_key(db_engine(), name, role)
    err.print(f"created {key.role} key {key.id} ({key.name}); store the token now:")
    print(token)


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their role and prefix (never the token)."""
    from gateway.auth import list_keys

    for key in list_keys(db_engine()):
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        console.print(f"{key.id}  {key.prefix}…  {key.role:8}  {state:18}  {key.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; requests with it get 401 within seconds."""
    from gateway.auth import revoke_key

    if not revoke_key(db_engine(), key_id):
        raise fail(f"no active key {key_id}")
    console.print(f"revoked {key_id}")
