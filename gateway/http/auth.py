"""Who is calling the HTTP API: the API key from the request, as a FastAPI dependency.

The key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Both are
declared as OpenAPI security schemes (so /docs has an Authorize button and every
protected operation its lock), with ``auto_error=False`` so that a missing or unknown
key is always our 401, never FastAPI's own answer.

Every request of a known key is counted against the key's request rate here, once per
request (gateway/key_limits.py: client keys only); over it, the answer is 429 with
``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from canary.settings import Settings
from gateway.auth import KeyVerifier, Principal
from gateway.key_limits import LimitExceeded, RequestRateLimiter, effective_limits
from storage.models import ApiKeyRole

bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="An API key from `canary keys create`, as `Authorization: Bearer <key>`",
    auto_error=False,
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    scheme_name="apiKey",
    description="The same API key in an `X-API-Key` header",
    auto_error=False,
)


def _principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    x_api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>`` or ``X-API-Key``; else 401."""
    token = bearer.credentials if bearer else x_api_key
    verifier: KeyVerifier = request.app.state.verifier
    found = verifier.verify(token) if token else None
    if found is None:
        raise HTTPException(
            401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )
    _count_request(request, found)
    return found


def _count_request(request: Request, caller: Principal) -> None:
    """The key's request rate: 429 over it. Once per request, however many dependencies
    ask who the caller is."""
    if getattr(request.state, "rate_counted", False):
        return
    request.state.rate_counted = True
    settings: Settings = request.app.state.settings
    rate = effective_limits(caller.role, caller.rate_per_s, caller.max_queued, settings).rate_per_s
    if rate is None:
        return
    limiter: RequestRateLimiter = request.app.state.rate_limiter
    try:
        limiter.check(caller.key_id, rate)
    except LimitExceeded as exc:
        raise refused(limiter, exc) from None


def refused(limiter: RequestRateLimiter, exc: LimitExceeded) -> HTTPException:
    """The 429 answer to a refused request (counted for /metrics)."""
    limiter.count_refusal(exc.reason)
    return HTTPException(429, exc.message, headers={"Retry-After": str(exc.retry_after_s)})


Caller = Annotated[Principal, Depends(_principal)]


def require_role(*roles: ApiKeyRole) -> Callable[..., Principal]:
    """A dependency admitting only keys with one of ``roles`` (403 for the others).

    The roles also go into the operation's OpenAPI security requirement (OpenAPI 3.1
    allows role names there for non-OAuth schemes): the schema says who may call what.
    """
    allowed = [role.value for role in roles]
    caller_with_role = Security(_principal, scopes=allowed)

    def check(caller: Principal = caller_with_role) -> Principal:
        if caller.role not in roles:
            raise HTTPException(403, f"this needs a key with role {', '.join(allowed)}")
        return caller

    return check
