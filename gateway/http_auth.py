"""Who is calling the HTTP API: the API key from the request, as a FastAPI dependency."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from gateway.auth import KeyVerifier, Principal
from storage.models import ApiKeyRole


def _principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` or ``X-API-Key``; else 401."""
    token = x_api_key
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    verifier: KeyVerifier = request.app.state.verifier
    found = verifier.verify(token) if token else None
    if found is None:
        raise HTTPException(
            401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return found


Caller = Annotated[Principal, Depends(_principal)]


def require_role(*roles: ApiKeyRole) -> Callable[[Principal], Principal]:
    """A dependency admitting only keys with one of ``roles`` (403 for the others)."""
    allowed = ", ".join(role.value for role in roles)

    def check(caller: Caller) -> Principal:
        if caller.role not in roles:
            raise HTTPException(403, f"this needs a key with role {allowed}")
        return caller

    return check
