"""Where rendered images live, and the layout change that keeps A/B tests blind.

An image is stored under ``renders/<job id>.png``: deterministic (a redelivered job
overwrites its image instead of duplicating it) and version-blind, because clients
receive presigned URLs of these keys and must not learn which version served them.
Operators find a version's images through the database (:func:`version_images`), not
through the key.

Before that, images were stored under ``renders/<version>/<job id>.png`` (the legacy
layout, which names the version). Rows recorded then keep their ``image_key`` and keep
working; :func:`rekey` moves their objects to the blind layout (``canary images rekey``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from canary.contracts import IMAGES_PREFIX, image_key
from storage.models import Job
from storage.objects import ObjectNotFound, ObjectStore

CHUNK = 500


def legacy_image_key(version: str, job_id: str) -> str:
    """Where the image was stored before keys became version-blind."""
    return f"{IMAGES_PREFIX}{version}/{job_id}.png"


def legacy_prefix(version: str) -> str:
    """The listing prefix of a version's legacy-layout images."""
    return f"{IMAGES_PREFIX}{version}/"


def is_legacy_key(key: str) -> bool:
    """Whether ``key`` is in the legacy layout (a folder under ``renders/`` that names the
    version); such a key must not reach a client."""
    return key.startswith(IMAGES_PREFIX) and "/" in key[len(IMAGES_PREFIX) :]


def version_images(
    engine: Engine, version: str, *, limit: int | None = None
) -> list[tuple[str, str]]:
    """``(job id, image key)`` of every job of ``version`` that recorded an image, by id."""
    query = (
        select(Job.id, Job.image_key)
        .where(Job.model_version == version, col(Job.image_key).is_not(None))
        .order_by(col(Job.id))
    )
    if limit is not None:
        query = query.limit(limit)
    with Session(engine) as session:
        return [(job_id, key) for job_id, key in session.exec(query) if key]


def _legacy_rows(engine: Engine, after: str) -> list[tuple[str, str, str]]:
    """The next chunk of ``(job id, version, image key)`` whose key is in the legacy layout."""
    query = (
        select(Job.id, Job.model_version, Job.image_key)
        .where(col(Job.image_key).like(f"{IMAGES_PREFIX}%/%"), col(Job.id) > after)
        .order_by(col(Job.id))
        .limit(CHUNK)
    )
    with Session(engine) as session:
        return [(job_id, version, key) for job_id, version, key in session.exec(query) if key]


def _versions(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return sorted(session.exec(select(Job.model_version).distinct()))


def _set_key(engine: Engine, job_id: str, old: str, new: str) -> bool:
    """Point the row at ``new`` unless something else changed its key meanwhile."""
    with engine.begin() as connection:
        result = connection.execute(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.image_key) == old)
            .values(image_key=new)
        )
    return result.rowcount == 1


@dataclass
class RekeyOutcome:
    moved: int = 0  # objects copied to the blind key, row updated, old object deleted
    missing: int = 0  # rows whose old object is gone (left unchanged)
    swept: int = 0  # legacy objects left behind by an interrupted run, deleted
    errors: list[str] = field(default_factory=list)


def _iter_legacy(engine: Engine) -> Iterator[tuple[str, str, str]]:
    after = ""
    while rows := _legacy_rows(engine, after):
        yield from rows
        after = rows[-1][0]


def rekey(
    engine: Engine,
    store: ObjectStore,
    *,
    dry_run: bool = False,
    progress: Callable[[RekeyOutcome], None] | None = None,
) -> RekeyOutcome:
    """Move every legacy-layout image to its blind key; idempotent and resumable.

    Per job: copy the object to ``renders/<job id>.png``, point the row at it (guarded by
    the old key), then delete the old object, so the row always names an existing object.
    A run interrupted between the last two steps leaves the old object behind: the final
    sweep deletes legacy objects whose job row already names its blind key. Objects of
    rows that name no image (a job that may still be recording one) are left alone.
    """
    outcome = RekeyOutcome()
    for job_id, _version, old in _iter_legacy(engine):
        new = image_key(job_id)
        try:
            if dry_run:
                if store.exists(old):
                    outcome.moved += 1
                else:
                    outcome.missing += 1
                continue
            try:
                data = store.get(old)
            except ObjectNotFound:
                if not store.exists(new):
                    outcome.missing += 1
                    continue
            else:
                store.put(new, data, content_type="image/png")
            if _set_key(engine, job_id, old, new):
                store.delete(old)
                outcome.moved += 1
        except Exception as exc:  # keep going: a rerun retries what failed
            outcome.errors.append(f"job {job_id}: {type(exc).__name__}: {exc}")
        if progress is not None:
            progress(outcome)
    if not dry_run:
        _sweep(engine, store, outcome)
    return outcome


def _sweep(engine: Engine, store: ObjectStore, outcome: RekeyOutcome) -> None:
    for version in _versions(engine):
        leftovers = {
            key.removeprefix(legacy_prefix(version)).removesuffix(".png"): key
            for key in store.list(legacy_prefix(version))
        }
        if not leftovers:
            continue
        rows: dict[str, str | None] = {}
        ids = list(leftovers)
        for start in range(0, len(ids), CHUNK):
            query = select(Job.id, Job.image_key).where(
                col(Job.id).in_(ids[start : start + CHUNK]), Job.model_version == version
            )
            with Session(engine) as session:
                rows.update(dict(session.exec(query).all()))
        for job_id, key in leftovers.items():
            if job_id in rows and rows[job_id] == image_key(job_id):
                store.delete(key)
                outcome.swept += 1
