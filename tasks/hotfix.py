"""Hot weight reload: a broadcast control command swaps a version's weights between jobs.

The command runs in each worker's parent process, which never touches the model or CUDA;
it hands the reload to the pool child through the pool's own queue, so it runs after the
job in progress and before the next. A revision that fails to load leaves the worker on
the old one and records the error.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.control import control_command, ok

from tasks.pipelines import load_pipeline_from
from tasks.revisions import fetch
from tasks.worker_state import context

log = logging.getLogger(__name__)
RELOAD_COMMAND = "canary_reload"


def reload_in_child(source: str, revision: str) -> str:
    """Runs in the pool child: load the new revision fully, then swap it in."""
    ctx = context()
    assert ctx.version is not None
    try:
        folder = fetch(source, ctx.settings, ctx.version)
        model = load_pipeline_from(
            folder,
            ctx.version,
            ctx.device,
            ctx.settings.torch_threads,
            allow_stub=ctx.settings.benchmark_stubs,
        )
        if model.revision != revision:
            raise ValueError(f"{source} holds revision {model.revision}, expected {revision}")
    except Exception as exc:
        error = f"revision {revision} failed to load: {type(exc).__name__}: {exc}"
        log.error("%s; staying on %s", error, ctx.model.revision if ctx.model else None)
        ctx.report(error=error)
        return error
    ctx.swap(model)
    log.info("now serving %s revision %s", ctx.version, revision)
    return revision


@control_command(  # type: ignore[untyped-decorator]  # Celery ships no type hints
    args=[("version", str), ("source", str), ("revision", str)],
    signature="<version> <source> <revision>",
)
def canary_reload(state: Any, version: str, source: str, revision: str, **_: Any) -> dict[str, Any]:
    """Schedule a reload of ``version``'s weights on this worker, if it serves that version."""
    reply: dict[str, Any]
    if context().version != version:
        reply = ok(f"skipped: this worker serves {context().version}")
        return reply
    state.consumer.pool.apply_async(reload_in_child, args=(source, revision))
    reply = ok(f"reload of {version} to {revision} scheduled")
    return reply
