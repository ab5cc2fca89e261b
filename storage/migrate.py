"""Schema creation and upgrades with Alembic (migrations in storage/migrations/).

A database created before Alembic was used (``create_all`` only, no ``alembic_version``
table) is recognised by its tables, stamped with the revision it matches, then upgraded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on the metadata)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
BASELINE = "0001"
# Databases from before Alembic: the tables each known schema had, newest first. Pre-Alembic
# schemas only ever existed up to 0002; later revisions always find alembic_version, except
# a bare ``create_all`` of a later release's models (0003: job_attempts; 0004: the
# metric roll-up tables; 0005: the API keys' limit columns; 0006: jobs.priority_class;
# 0008: jobs.shadow_of), recognised too.
ROLLUP_TABLES = ("metric_unit_rows", "metric_rollups", "metric_rollup_pending")
PRE_ALEMBIC_SCHEMAS: tuple[tuple[str, frozenset[str]], ...] = (
    ("0004", frozenset({"batches", "batch_lines", "job_attempts", *ROLLUP_TABLES})),
    ("0003", frozenset({"batches", "batch_lines", "job_attempts"})),
    ("0002", frozenset({"batches", "batch_lines"})),
    (BASELINE, frozenset()),
)
# Revisions that only added columns, recognised in such a database by one of them:
# (revision, the revision it follows, table, column), oldest first.
PRE_ALEMBIC_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("0005", "0004", "api_keys", "rate_per_s"),
    ("0006", "0005", "jobs", "priority_class"),
    ("0007", "0006", "api_keys", "share_weight"),
    ("0008", "0007", "jobs", "shadow_of"),
)
BASELINE_TABLES = frozenset(
    {
        "jobs", "assignments", "users", "api_keys", "model_revisions", "workers",
        "version_states", "golden_runs", "golden_results", "golden_grades", "events",
        "experiment_states", "rollout_audit",
    }
)  # fmt: skip


class SchemaError(RuntimeError):
    """The database's schema is not one this release can recognise or upgrade."""


def alembic_config(connection: Connection) -> Config:
    """An Alembic config without alembic.ini that runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def _known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_differences(connection: Connection) -> list[object]:
    """What autogenerate would change to make the database match storage/models.py."""
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_object": lambda _obj, name, kind, *_: (
                not (kind == "table" and name == VERSION_TABLE)
            ),
        },
    )
    diffs: list[object] = compare_metadata(context, SQLModel.metadata)
    return diffs


def _pre_alembic_revision(connection: Connection, tables: set[str]) -> str:
    """The revision an unversioned database's tables (and columns) match (create_all of
    that release)."""
    app_tables = tables & set(SQLModel.metadata.tables)
    missing_baseline = BASELINE_TABLES - app_tables
    if missing_baseline:
        raise SchemaError(f"unrecognised schema: tables missing {sorted(missing_baseline)}")
    for revision, added_since_baseline in PRE_ALEMBIC_SCHEMAS:
        if app_tables - BASELINE_TABLES == added_since_baseline:
            return _with_added_columns(connection, revision)
    raise SchemaError(f"unrecognised schema: tables {sorted(app_tables)}")


def _with_added_columns(connection: Connection, revision: str) -> str:
    """``revision``, or a later one that only added columns if the database has them."""
    inspector = inspect(connection)
    for later, follows, table, column in PRE_ALEMBIC_COLUMNS:
        if revision == follows and column in {c["name"] for c in inspector.get_columns(table)}:
            revision = later
    return revision


def upgrade_db(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the schema to the newest revision; returns (revision before, revision after).

    An empty database gets every migration in order; an unversioned (pre-Alembic) one is
    stamped with the revision it matches first. Idempotent.
    """
    with engine.begin() as connection:
        before = current_revision(connection)
        if before is not None and before not in _known_revisions():
            raise SchemaError(f"database schema revision {before} is unknown to this release")
        tables = set(inspect(connection).get_table_names())
        config = alembic_config(connection)
        if before is None and tables & set(SQLModel.metadata.tables):
            before = _pre_alembic_revision(connection, tables)
            command.stamp(config, before)
        if before != head_revision():
            command.upgrade(config, "head")
    return before, head_revision()


def create_or_upgrade(engine: Engine) -> None:
    """Create the schema in an empty database, or upgrade an existing one (idempotent).

    An empty database gets ``create_all`` and a stamp of the newest revision (a
    fraction of the cost of running every migration; tests call this very often); a test
    checks that both ways give the same schema.
    """
    with engine.begin() as connection:
        tables = set(inspect(connection).get_table_names())
        if tables & set(SQLModel.metadata.tables):
            revision = current_revision(connection) if VERSION_TABLE in tables else None
            if revision == head_revision():
                return
        else:
            SQLModel.metadata.create_all(connection)
            MigrationContext.configure(connection).stamp(_scripts(), "head")
            return
    upgrade_db(engine)
