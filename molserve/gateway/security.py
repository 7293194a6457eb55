"""API-key checks for write routes (and reads, when configured)."""

from __future__ import annotations

import hmac

from fastapi import Request

from molserve.gateway.predictor import RequestError


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def require_key(request: Request) -> None:
    """Refuse unless the request carries the configured key (constant-time comparison)."""
    expected = request.app.state.settings.api_key
    if not expected:
        raise RequestError(
            403, "writes_disabled",
            "this route changes the registry and needs MOLSERVE_API_KEY set on the server",
        )
    key = presented_key(request)
    if key is None:
        raise RequestError(401, "missing_api_key",
                           "send the API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise RequestError(403, "invalid_api_key", "the API key is not valid")


def require_read(request: Request) -> None:
    if request.app.state.settings.require_key_for_reads:
        require_key(request)
