"""What to tell an operator about Flower: where it listens and how to log in.

Flower's web pages and its JSON API (``/api/...``) answer only with HTTP basic auth.
``CANARY_FLOWER_BASIC_AUTH`` sets the users; without it the local stack logs in user
``canary`` with a random password made once and kept in ``$CANARY_HOME/flower-password``
(mode 0600, reused on every restart). The password itself is never printed: the lines
say where it is.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from canary.settings import Settings

LOCAL_USER = "canary"
PASSWORD_FILE = "flower-password"


def local_flower_password(settings: Settings) -> Path:
    """The file holding the local stack's Flower password, made (0600) if missing."""
    path = settings.home / PASSWORD_FILE
    if path.exists() and path.read_text().strip():
        if path.stat().st_mode & 0o077:  # e.g. copied around: tighten it again
            path.chmod(0o600)
        return path
    settings.home.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{PASSWORD_FILE}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(18) + "\n")
    os.replace(temporary, path)  # two processes at once: both end with a whole file
    return path


def flower_credentials(settings: Settings) -> str:
    """``user:password[,...]`` for Flower's FLOWER_BASIC_AUTH: the configured users, else
    the local user with the generated password."""
    if settings.flower_basic_auth is not None:
        return settings.flower_basic_auth.get_secret_value()
    password = local_flower_password(settings).read_text().strip()
    return f"{LOCAL_USER}:{password}"


def flower_lines(settings: Settings) -> list[str]:
    """Lines for `canary flower` and `canary up` to print."""
    host = "127.0.0.1" if settings.flower_address in {"0.0.0.0", "::"} else settings.flower_address
    url = f"http://{host}:{settings.flower_port}"
    if settings.flower_basic_auth is None:
        path = settings.home / PASSWORD_FILE
        return [
            f"Flower: {url} (log in as {LOCAL_USER} with the password in {path}, made for "
            "this stack; the same login opens its JSON API, e.g. "
            f'curl -u "{LOCAL_USER}:$(cat {path})" {url}/api/tasks; set '
            "CANARY_FLOWER_BASIC_AUTH=user:password to choose your own)"
        ]
    users = [
        pair.partition(":")[0]
        for pair in settings.flower_basic_auth.get_secret_value().split(",")
        if pair.strip()
    ]
    return [
        f"Flower: {url} (log in as {', '.join(users)} with the password from "
        "CANARY_FLOWER_BASIC_AUTH; the same credentials open its JSON API, e.g. "
        f"curl -u USER:PASSWORD {url}/api/tasks)"
    ]
