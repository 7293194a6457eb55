"""Authorization of requests by scope, with per-key rate limits (the statuses these answer are
`molserve.gateway.errors.AUTH`)."""

from __future__ import annotations

from fastapi import Request

from molserve.gateway.errors import Forbidden, MissingCredentials, RateLimited
from molserve.gateway.keys import KeyRecord


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def authorize(request: Request, scope: str) -> KeyRecord | None:
    """The caller's key record; None for an anonymous read or predict where those are open."""
    settings = request.app.state.settings
    keys = request.app.state.keys
    key = presented_key(request)
    open_scope = scope in ("read", "predict") and not settings.gateway.require_key_for_reads
    if key is None:
        if open_scope:
            return None
        if not keys.configured:
            raise Forbidden("this route needs an API key and none is configured on the server "
                            "(MOLSERVE_API_KEY or MOLSERVE_API_KEYS_FILE)", code="writes_disabled")
        raise MissingCredentials("send the API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    record = keys.verify(key)
    if record is None:
        raise Forbidden("the API key is not valid", code="invalid_api_key")
    if not record.allows(scope):
        raise Forbidden(f"key {record.id} ({record.name}) lacks the '{scope}' scope",
                        code="insufficient_scope")
    wait = keys.throttle(record)
    if wait > 0:
        raise RateLimited(f"key {record.id} is limited to {record.rate_per_minute} requests/minute",
                          details={"retry_after_s": round(wait, 2)})
    return record


def require_read(request: Request) -> None:
    authorize(request, "read")


def require_predict(request: Request) -> None:
    authorize(request, "predict")


def require_train(request: Request) -> None:
    authorize(request, "train")


def require_key(request: Request) -> None:
    """Write routes that change the registry: the admin scope."""
    authorize(request, "admin")
