"""Retention: a retired version's images and logs are deleted after its retention period.

Job rows are kept (the experiment's history); only the bulky artefacts go. Image keys
name no version (storage/images.py), so a version's images are found through its job
rows; legacy-layout objects under ``renders/<version>/`` are deleted too.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from canary.settings import Settings
from scheduler.context import context
from storage import versions
from storage.db import get_engine
from storage.images import legacy_prefix, version_images
from storage.models import utcnow
from storage.objects import ObjectStore
from tasks.app import app

log = logging.getLogger(__name__)
PURGE_TASK = "canary.scheduler.purge_retired"


def purge_retired(settings: Settings, store: ObjectStore) -> dict[str, int]:
    """Delete what retention allows; returns objects deleted per version."""
    engine = get_engine(settings.resolved_database_url)
    now = utcnow()
    purged: dict[str, int] = {}
    for state in versions.retired_states(engine):
        if state.purged_at is not None or state.retired_at is None:
            continue
        retired_at = state.retired_at
        if retired_at.tzinfo is None:
            retired_at = retired_at.replace(tzinfo=now.tzinfo)
        if now - retired_at < timedelta(days=state.retention_days):
            continue
        keys = sorted(
            {key for _job_id, key in version_images(engine, state.version)}
            | set(store.list(legacy_prefix(state.version)))  # unrecorded or not yet rekeyed
        )
        for key in keys + store.list(f"logs/{state.version}/"):  # the retire log export too
            store.delete(key)
        for log_file in settings.log_dir.glob(f"worker-{state.version}*.log"):
            log_file.unlink(missing_ok=True)
        versions.mark_purged(engine, state.version)
        log.info("purged %d objects of retired version %s", len(keys), state.version)
        purged[state.version] = len(keys)
    return purged


@app.task(name=PURGE_TASK)  # type: ignore[untyped-decorator]  # Celery ships no type hints
def purge_retired_task() -> dict[str, int]:
    ctx = context()
    return purge_retired(ctx.settings, ctx.store)
