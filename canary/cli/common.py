"""What every command module of the CLI shares: the consoles, the exit codes, failing with
one line on stderr, the JSON of `--json` options, report files, and the database.

Kept light (no storage, tasks or analysis import at module level) so that the CLI starts
quickly; what a helper needs is imported where it is used.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from canary.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

console = Console()
err = Console(stderr=True)

# Exit codes of every command (README, "Exit codes"): 0 done; 1 the operation failed (a
# failed job, a timeout, an unknown id, a refusal, a broker or database out of reach);
# 2 bad usage (Typer's own usage errors and invalid option values).
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``message`` to stderr (unwrapped, for scripts); returns the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def usage_error(message: str) -> typer.Exit:
    """An invalid option value: exit code 2, like Typer's own usage errors."""
    return fail(message, EXIT_USAGE)


def print_json(document: Any) -> None:
    """The one JSON document of a `--json` command: plain stdout, no wrapping or markup."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def write_file(path: Path | None, text: Callable[[], str], what: str) -> None:
    """Write a report file if asked to; the note goes to stderr (stdout may be JSON)."""
    if path is not None:
        path.write_text(text(), encoding="utf-8")
        err.print(f"{what}: {path}")


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """A database out of reach (or without the schema) as one line and exit code 1."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        shown = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        first_line = str(exc.orig).strip().splitlines()[0]
        raise fail(f"database {shown}: {first_line}") from None


def db_engine() -> Engine:
    """The engine of the configured database."""
    from storage.db import get_engine

    return get_engine(get_settings().resolved_database_url)
