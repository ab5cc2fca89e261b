"""`canary status` without a job id: the whole system on one screen, or as one JSON document.

It should answer within a second on a running stack, so it imports nothing heavy (the
analysis and scheduler packages pull in scipy and matplotlib) and asks only the workers
recorded in the database which queues they consume: a broadcast to everyone has to wait
out its whole timeout, since nobody knows how many nodes will answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from canary.contracts import queue_for, queues_for
from canary.settings import Settings

console = Console()
# How long a recorded worker may take to answer before it counts as offline.
WORKER_REPLY_TIMEOUT_S = 0.5
# How long the broker may take to answer a ping (connect and read) before it counts as
# unreachable: the whole command answers in under 2 s even when it is a silent host.
BROKER_TIMEOUT_S = 0.5
VERDICT_COLOUR = {"advance": "green", "hold": "yellow", "rollback": "red"}


class OverviewError(RuntimeError):
    """The overview cannot be built (broker down, invalid experiment file); one line."""


def collect_overview(settings: Settings) -> dict[str, Any]:
    """Experiments, queues and workers, and the last golden run, as plain JSON data."""
    from storage.db import get_engine
    from tasks.queues import broker_answers

    if not broker_answers(settings.broker_url, BROKER_TIMEOUT_S):
        raise OverviewError(broker_unreachable(settings))
    engine = get_engine(settings.resolved_database_url)
    experiment_file, experiments = _experiments(settings, engine)
    return {
        "experiment_file": experiment_file,
        "experiments": experiments,
        "queues": _queues(settings, engine),
        "waiting_by_tenant": waiting_by_tenant(settings, engine),
        "golden": _golden(engine),
    }


def broker_unreachable(settings: Settings) -> str:
    """One line naming the broker (password masked) and what to do."""
    line = f"broker unreachable at {settings.shown_broker_url}"
    if settings.uses_local_broker:
        line += ": the local stack is not running (start `canary up`, or set REDIS_URL)"
    return line


def _experiments(settings: Settings, engine: Engine) -> tuple[str | None, list[dict[str, Any]]]:
    from gateway.experiment_source import ExperimentSource

    try:
        source = ExperimentSource.from_settings(settings, engine)
    except (OSError, ValueError) as exc:
        raise OverviewError(f"experiment file: {exc}") from None
    experiments = []
    for e in source.config.experiments:
        dashboard = _latest_report(settings, e.name)
        experiments.append(
            {
                "name": e.name,
                "baseline": e.baseline,
                "candidate": e.candidate,
                "stage": e.stage,
                "rolled_back": e.rolled_back,
                "candidate_shares": dict(e.current_stage.shares),
                "gates": _verdict(dashboard),
                "shadow": _shadow(e.current_stage.shadow.share, dashboard),
            }
        )
    return (str(source.path) if source.path else None), experiments


def latest_dashboard(settings: Settings, experiment: str) -> Path:
    """``scheduler.dashboards.dashboard_paths(settings, experiment, None)[1]``, without
    importing the scheduler (and with it the whole analysis stack)."""
    return settings.dashboard_dir / experiment / "latest.json"


def _latest_report(settings: Settings, experiment: str) -> dict[str, Any] | None:
    """The report behind the latest daily dashboard; None before the first."""
    path = latest_dashboard(settings, experiment)
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


def _verdict(report: dict[str, Any] | None) -> dict[str, str] | None:
    """The gate verdict of the latest daily dashboard and its day; None before the first."""
    if report is None:
        return None
    return {"verdict": report["gates"]["verdict"], "day": report["window"]["last"]}


def _shadow(share: float, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stage's shadow share and the latest dashboard's shadow-health verdict (None
    before a dashboard of a stage with shadow traffic); None when the stage copies none."""
    if not share:
        return None
    section = (report or {}).get("shadow")
    health = section["health"] if section else None
    return {
        "share": share,
        "verdict": health["verdict"] if health else None,
        "pairs": health["pairs"] if health else None,
        "gate": bool(section and section["required"]),
        "day": report["window"]["last"] if report and section else None,
    }


def _shadow_cell(shadow: dict[str, Any] | None) -> str:
    if shadow is None:
        return "off"
    share = f"{shadow['share']:.0%} copied"
    if shadow["verdict"] is None:
        return f"{share}; no verdict yet (`canary shadow status`)"
    colour = {"pass": "green", "fail": "red", "insufficient": "yellow"}[shadow["verdict"]]
    gate = ", gates leaving this stage" if shadow["gate"] else ""
    return (
        f"{share}; [{colour}]{shadow['verdict']}[/] ({shadow['pairs']} pairs, "
        f"{shadow['day']}{gate})"
    )


def _queues(settings: Settings, engine: Engine) -> list[dict[str, Any]]:
    """Each version's queues, their waiting messages (in all and by priority class) and the
    online workers consuming them."""
    from kombu.exceptions import OperationalError

    from storage import overview
    from tasks import storage_health
    from tasks.app import make_app
    from tasks.queues import class_depths, consumers

    app = make_app(settings)
    records = {r.node: r for r in overview.worker_records(engine) if r.version in settings.versions}

    try:
        online = consumers(app, WORKER_REPLY_TIMEOUT_S, nodes=records)
        by_class = {v: class_depths(app, v) for v in settings.versions}
        depths = {v: sum(counts.values()) for v, counts in by_class.items()}
        breakers = storage_health.read_all(app)
    except OperationalError:
        raise OverviewError(broker_unreachable(settings)) from None
    from storage import versions

    serving = {
        v for v in settings.versions
        if depths[v] or any(queue_for(v) in names for names in online.values())
    }  # fmt: skip
    lifecycles = versions.lifecycles(engine, settings.versions, busy=serving)
    rows = []
    for version in settings.versions:
        queue = queue_for(version)  # bulk's; a worker consumes all three of its version
        nodes = sorted(node for node, names in online.items() if queue in names)
        workers = [
            {"node": n, "device": records[n].device, "revision": records[n].revision} for n in nodes
        ]
        rows.append(
            {
                "version": version, "queue": queue, "queues": list(queues_for(version)),
                "waiting": depths[version], "waiting_by_class": by_class[version],
                "workers": workers, "lifecycle": _lifecycle(lifecycles[version]),
                "storage": [_breaker(b) for _, b in sorted(breakers.items())
                            if b.version == version and (b.open or b.spooled)],
            }
        )  # fmt: skip
    return rows


def waiting_by_tenant(settings: Settings, engine: Engine) -> list[dict[str, Any]]:
    """Bulk jobs no worker has taken yet, per version and tenant: ``held`` in the database
    for fair share, ``queued`` in the broker, and the tenant's share cap (the queued jobs
    it may have; None with fair share off). ``tenant`` is shown as the key's name
    (``key:<name>``), ``tenant_id`` as fair share knows it (``key:<id>``)."""
    from storage import fair_share
    from tasks.release import tenant_cap

    waiting = fair_share.waiting_by_tenant(engine)
    tenants = sorted({w.tenant for w in waiting})
    names = fair_share.key_names(engine, tenants)
    weights = fair_share.share_weights(engine, tenants)
    per_tenant = settings.fair_share_queued
    return [
        {
            "version": w.version,
            "tenant": names.get(w.tenant, w.tenant),
            "tenant_id": w.tenant,
            "held": w.held,
            "queued": w.queued,
            "share_weight": weights.get(w.tenant, 1.0),
            "share_cap": tenant_cap(per_tenant, weights.get(w.tenant)) if per_tenant > 0 else None,
        }
        for w in waiting
    ]


def _breaker(state: Any) -> dict[str, Any]:
    """A worker whose object-store breaker is open or whose spool holds images."""
    keys = ("node", "open", "open_since", "spooled", "spool_dir", "last_error")
    return {key: getattr(state, key) for key in keys}


def describe_breaker(version: str, b: dict[str, Any]) -> str:
    """One status line: a worker not taking jobs because storage is down."""
    if b["open"]:
        since = f" since {_minute(b['open_since'])} UTC" if b["open_since"] else ""
        line = (f"[red]storage breaker open[/] on {b['node']} ({version}){since}: object "
                f"store unavailable, not taking jobs, {b['spooled']} image(s) spooled in "
                f"{b['spool_dir']}")  # fmt: skip
        return line + (f" (last error: {b['last_error']})" if b["last_error"] else "")
    return f"{b['node']} ({version}): uploading {b['spooled']} spooled image(s)"


def _lifecycle(life: Any) -> dict[str, Any]:
    """A storage.versions.Lifecycle as JSON data (times in ISO 8601, UTC)."""

    def iso(moment: Any) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "state": life.state,
        "retired_since": iso(life.retired_since),
        "purge_after": iso(life.purge_after),
        "purged_at": iso(life.purged_at),
        "rerouted_to": life.rerouted_to,
    }


def describe_lifecycle(life: dict[str, Any]) -> str:
    """``active``, or e.g. ``retired since 2026-12-01 09:30 UTC, purge after 2026-12-08 09:30``."""
    if life["state"] == "active":
        return "active"
    since = f"{life['state']} since {_minute(life['retired_since'])} UTC"
    if life["state"] == "purged":
        return f"{since}, images and logs purged {_minute(life['purged_at'])}"
    moved = f", queue re-routed to {life['rerouted_to']}" if life["rerouted_to"] else ""
    return f"{since}{moved}, images and logs purged after {_minute(life['purge_after'])}"


def _minute(iso: str) -> str:
    return iso[:16].replace("T", " ")


def _golden(engine: Engine) -> dict[str, Any] | None:
    from canary.cli.golden import run_summary
    from storage import golden

    run = golden.latest_run(engine)
    return None if run is None else run_summary(engine, run)


def print_overview(settings: Settings, data: dict[str, Any]) -> None:
    _print_experiments(settings, data)
    _print_queues(data["queues"])
    _print_waiting(settings, data.get("waiting_by_tenant", []))
    run = data["golden"]
    if run is None:
        console.print("golden set: no run yet (`canary golden run`)")
    else:
        console.print(
            f"golden set: last run {run['id']} ({run['status']}, {run['baseline']} vs "
            f"{run['candidate']}, {run['checked']}/{run['images']} images checked, started "
            f"{run['created_at'][:16].replace('T', ' ')} UTC)"
        )


def _print_experiments(settings: Settings, data: dict[str, Any]) -> None:
    if not data["experiments"]:
        where = (
            f"in {data['experiment_file']}"
            if data["experiment_file"]
            else f"(set CANARY_EXPERIMENT_FILE, or write {settings.home / 'experiments.yaml'})"
        )
        console.print(f"no experiments configured {where}", soft_wrap=True)
        return
    table = Table(title="Experiments")
    columns = ("experiment", "baseline", "candidate", "stage", "candidate share", "gates",
               "shadow")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for e in data["experiments"]:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in e["candidate_shares"].items())
        stage = e["stage"] + (" [bold red](rolled back)[/]" if e["rolled_back"] else "")
        gates = e["gates"]
        verdict = (
            "no dashboard yet (`canary report`)"
            if gates is None
            else f"[{VERDICT_COLOUR[gates['verdict']]}]{gates['verdict']}[/] ({gates['day']})"
        )
        shadow = _shadow_cell(e.get("shadow"))
        table.add_row(e["name"], e["baseline"], e["candidate"], stage, shares, verdict, shadow)
    console.print(table)


def _waiting(queue: dict[str, Any]) -> str:
    """``5 (1 interactive, 4 bulk)``: the total, and the classes that have messages."""
    parts = [f"{n} {name}" for name, n in queue.get("waiting_by_class", {}).items() if n]
    return f"{queue['waiting']} ({', '.join(parts)})" if parts else str(queue["waiting"])


def _print_queues(queues: list[dict[str, Any]]) -> None:
    table = Table(title="Queues and workers")
    for column in ("version", "lifecycle", "queue", "waiting", "workers (device, revision)"):
        table.add_column(column)
    for q in queues:
        described = ", ".join(
            f"{w['node']} ({w['device']}, {w['revision'] or '-'})" for w in q["workers"]
        )
        life = q["lifecycle"]
        idle = "none" if life["state"] in {"retired", "purged"} else "[red]none[/]"
        table.add_row(
            q["version"], describe_lifecycle(life), q["queue"], _waiting(q), described or idle,
        )  # fmt: skip
    console.print(table)
    console.print(
        "Each version has three queues, consumed highest class first: "
        "render.<version>.interactive, render.<version> (bulk), render.<version>.background.",
        style="dim", soft_wrap=True,
    )  # fmt: skip
    for q in queues:
        for breaker in q.get("storage", []):
            console.print(describe_breaker(q["version"], breaker), soft_wrap=True)


def _print_waiting(settings: Settings, waiting: list[dict[str, Any]]) -> None:
    """The "Waiting per tenant" table, when any bulk job waits."""
    if not waiting:
        return
    table = Table(title="Waiting per tenant (bulk jobs)")
    for column in ("version", "tenant", "held", "queued", "share cap"):
        table.add_column(column, justify="right" if column in {"held", "queued"} else "left")
    for w in waiting:
        if w["share_cap"] is None:
            cap = "none (fair share off)"
        else:
            weight = f", weight {w['share_weight']:g}" if w["share_weight"] != 1 else ""
            cap = f"{w['share_cap']}{weight}"
        table.add_row(w["version"], w["tenant"], str(w["held"]), str(w["queued"]), cap)
    console.print(table)
    if settings.fair_share_queued > 0:
        console.print(
            "held: in the database until fair share releases them; queued: in the broker. "
            f"Each tenant may have its share cap queued per version (CANARY_FAIR_SHARE_QUEUED="
            f"{settings.fair_share_queued} x its key's share weight); held jobs are released "
            "round-robin as workers take jobs.",
            style="dim", soft_wrap=True,
        )  # fmt: skip
