"""What to tell an operator about Flower: where it listens and how to log in.

Flower's web pages and its JSON API (``/api/...``) answer only with HTTP basic auth when
``CANARY_FLOWER_BASIC_AUTH`` is set; without it the JSON API is closed (Flower refuses
API calls when no authentication is configured) and only the pages work, on loopback.
The password itself is never printed.
"""

from __future__ import annotations

from canary.settings import Settings


def flower_lines(settings: Settings) -> list[str]:
    """Lines for `canary flower` and `canary up` to print."""
    host = "127.0.0.1" if settings.flower_address in {"0.0.0.0", "::"} else settings.flower_address
    url = f"http://{host}:{settings.flower_port}"
    if settings.flower_basic_auth is None:
        return [
            f"Flower: {url} (no login; its JSON API {url}/api/ stays closed until "
            "CANARY_FLOWER_BASIC_AUTH=user:password is set)"
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
