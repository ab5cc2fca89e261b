"""The `canary` command line: a thin shell over the gateway, tasks, storage and analysis.

This module only assembles the app; the commands are in the topic modules of canary/cli/:
processes (api, worker, scheduler-worker, beat, flower, up), jobs (submit, status),
versions (hotfix, retire, models ...), ab_report (report, simulate), demo, admin
(db ..., keys ...), golden (golden ...), rollout (rollout ...), images (images ...),
shadow (shadow ...).
"""

from __future__ import annotations

import atexit
import gc
import sys

import typer

from canary.cli.ab_report import report, simulate
from canary.cli.admin import db_app, keys_app
from canary.cli.common import EXIT_USAGE, err
from canary.cli.demo import demo
from canary.cli.golden import golden_app
from canary.cli.images import images_app
from canary.cli.jobs import status, submit
from canary.cli.processes import api, beat, flower, scheduler_worker, up, worker
from canary.cli.rollout import rollout_app
from canary.cli.shadow import shadow_app
from canary.cli.versions import hotfix, models_app, retire
from canary.settings import ConfigError

app = typer.Typer(
    help="Canary releases and A/B tests of diffusion model versions.",
    no_args_is_help=True,
    # a traceback's local variables can hold URLs with passwords and tokens
    pretty_exceptions_show_locals=False,
)
# `canary --help` lists the commands in this order, then the groups in theirs.
app.command()(api)
app.command()(worker)
app.command("scheduler-worker")(scheduler_worker)
app.command()(beat)
app.command()(flower)
app.command()(up)
app.command()(submit)
app.command()(status)
app.command()(hotfix)
app.command()(retire)
app.command()(report)
app.command()(demo)
app.command()(simulate)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(golden_app, name="golden")
app.add_typer(rollout_app, name="rollout")
app.add_typer(shadow_app, name="shadow")
app.add_typer(images_app, name="images")


def main() -> None:
    # At exit, before the interpreter's last garbage collections: they then skip the
    # objects the imports made (Celery's, SQLAlchemy's, torch's...), which cost up to a
    # second of CPU on every exit (a third of `canary --help`) for memory the OS takes
    # back anyway. Objects are still released as the modules are cleared.
    atexit.register(gc.freeze)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ConfigError as exc:  # one line per bad setting, never a traceback with values
        for line in exc.lines:
            err.print(f"[bold red]configuration error:[/] {line}", soft_wrap=True, highlight=False)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
