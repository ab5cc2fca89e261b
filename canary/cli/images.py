"""`canary images ...`: find a version's images, and move legacy keys to the blind layout.

Image keys are ``renders/<job id>.png`` and name no version (so clients cannot tell
which version served them); operators find a version's images here, from the database.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from canary.settings import get_settings

images_app = typer.Typer(
    help="Rendered images: list a version's images; rekey legacy version-named keys.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@images_app.command("list")
def list_images(
    model_version: Annotated[str, typer.Option("--model-version", help="Version whose images")],
    urls: Annotated[bool, typer.Option(help="Also print a (presigned) URL of each image")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """The images of one version's jobs: job id and object key (and URL), by job id."""
    from storage.db import get_engine
    from storage.images import version_images
    from storage.objects import store_from_settings

    settings = get_settings()
    rows = version_images(get_engine(settings.resolved_database_url), model_version, limit=limit)
    store = store_from_settings(settings) if urls else None
    for job_id, key in rows:
        url = store.url(key, settings.presign_expiry_s) if store is not None else None
        if as_json:
            item = {"job_id": job_id, "model_version": model_version, "key": key}
            print(json.dumps(item | ({"url": url} if url else {})))
        else:
            print("\t".join([job_id, key, *([url] if url else [])]))
    if not as_json:
        err.print(f"{len(rows)} images of {model_version} in {settings.resolved_storage_url}")


@images_app.command("rekey")
def rekey_images(
    dry_run: Annotated[bool, typer.Option(help="Only count what would move")] = False,
) -> None:
    """Move legacy images (renders/VERSION/JOB.png) to version-blind keys (renders/JOB.png).

    Each job's row is updated to the new key, then the old object is deleted. Idempotent:
    an interrupted run is finished by running it again.
    """
    from storage.db import get_engine
    from storage.images import rekey
    from storage.objects import store_from_settings

    settings = get_settings()
    outcome = rekey(
        get_engine(settings.resolved_database_url), store_from_settings(settings), dry_run=dry_run
    )
    verb = "would move" if dry_run else "moved"
    console.print(
        f"{verb} {outcome.moved} images to version-blind keys; "
        f"{outcome.missing} legacy images missing from storage (rows left unchanged)"
        + ("" if dry_run else f"; {outcome.swept} leftover legacy objects deleted")
    )
    for error in outcome.errors:
        err.print(f"[red]{error}[/]")
    if outcome.errors:
        err.print(f"{len(outcome.errors)} images not moved; run `canary images rekey` again")
        raise typer.Exit(1)
