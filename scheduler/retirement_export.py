"""The log export `canary retire` writes: the version's read-only record for its
retention period, in the object store where every host (and compose) can reach it.

``logs/<version>/jobs.jsonl`` has one line per job the version was sent or rendered
(status, timings, worker, device, revision, failure); ``logs/<version>/<process>.log``
copies the local stack's log files of its workers, when there are any (with compose,
logs go to stdout and docker's log driver rotates them away). The retention job deletes
the ``logs/<version>/`` prefix together with the images.
"""

from __future__ import annotations

import json

from sqlalchemy.engine import Engine

from canary.settings import Settings
from storage import versions
from storage.objects import ObjectStore

EXPORT_FIELDS = (
    "id", "source", "batch_id", "experiment", "arm", "model_version", "worker_version",
    "status", "attempts", "misroutes", "created_at", "enqueued_at", "started_at",
    "finished_at", "worker_host", "device", "model_revision", "image_key", "failure_kind",
    "failure_message", "queue_wait_ms", "inference_ms", "end_to_end_ms", "peak_vram_bytes",
)  # fmt: skip


def log_prefix(version: str) -> str:
    return f"logs/{version}/"


def export_logs(settings: Settings, engine: Engine, store: ObjectStore, version: str) -> list[str]:
    """Write the version's export; returns the keys written."""
    lines = []
    for job in versions.jobs_served_by(engine, version):
        row = {name: getattr(job, name, None) for name in EXPORT_FIELDS}
        lines.append(json.dumps(row, default=str))
    keys = [f"{log_prefix(version)}jobs.jsonl"]
    store.put(keys[0], "".join(f"{line}\n" for line in lines).encode(), "application/x-ndjson")
    for log_file in sorted(settings.log_dir.glob(f"worker-{version}*.log")):
        key = f"{log_prefix(version)}{log_file.name}"
        store.put(key, log_file.read_bytes(), "text/plain")
        keys.append(key)
    return keys
