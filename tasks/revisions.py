"""Weights revisions: publishing a hot fix and finding the folder a worker should load.

A revision's source is a diffusers folder on a path every worker host can read, or an
``s3://bucket/prefix`` in object storage; workers copy S3 sources into a local cache
(``MODEL_DIR/.revisions/<version>/<revision>``) before loading.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sqlalchemy.engine import Engine

from canary.settings import Settings
from storage import revisions
from storage.models import ModelRevision
from storage.objects import open_store
from tasks.registry import ModelNotFound, weights_revision


def fetch(source: str, settings: Settings, version: str) -> Path:
    """A local folder holding the source's files (downloaded once per revision)."""
    if not source.startswith("s3://"):
        folder = Path(source)
        if not (folder / "model_index.json").is_file():
            raise ModelNotFound(f"{folder} is not a diffusers folder (no model_index.json)")
        return folder
    bucket_and_prefix = source.removeprefix("s3://").rstrip("/")
    bucket, _, prefix = bucket_and_prefix.partition("/")
    store = open_store(
        f"s3://{bucket}", endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )
    keys = [k for k in store.list(f"{prefix}/" if prefix else "") if not k.endswith("/")]
    if not any(k.endswith("model_index.json") for k in keys):
        raise ModelNotFound(f"{source} holds no model_index.json")
    cache = settings.resolved_model_dir / ".revisions" / version
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".incoming-"))
    try:
        for key in keys:
            target = staging / key.removeprefix(f"{prefix}/" if prefix else "")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(key))
        final = cache / weights_revision(staging)
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(final)  # atomic: a half-downloaded folder is never loaded
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(engine: Engine, settings: Settings, version: str, source: str) -> ModelRevision:
    """Check the source and record it as the version's current revision."""
    folder = fetch(source, settings, version)
    return revisions.add(
        engine, ModelRevision(version=version, revision=weights_revision(folder), source=source)
    )
