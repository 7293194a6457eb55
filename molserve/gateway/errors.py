"""The HTTP face of errors: which status each of the project's errors answers with, the one
body every error answer has (`ErrorBody`), and how routes document the errors they can answer.

Below the gateway, code raises `molserve.errors` classes and knows nothing of HTTP; the classes
here are the few that only exist at the HTTP edge (credentials, rate limits, file types). One
handler turns any of them into a status, a body `{"error": code, "message": ..., "details": ...}`
and, for errors worth retrying, a `Retry-After` header. Unparsable JSON is a 400; schema
violations, a body that is not UTF-8 and JSON nested too deeply to read are 422; a body of
another media type on a JSON route is 415 (`molserve.gateway.app`), one over the size limit
413 (`molserve.asgi`); unknown paths a 404 and wrong methods a 405 whose `Allow` lists every
method the path has.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from molserve.errors import (
    Conflict,
    InvalidInput,
    MolserveError,
    NotFound,
    StorageError,
    TooLarge,
    Unavailable,
)
from molserve.gateway.schemas import ErrorBody
from molserve.responses import JSONResponse

log = logging.getLogger("molserve.gateway")


class MissingCredentials(MolserveError):
    """The route needs an API key and none was sent."""

    code = "missing_api_key"


class Forbidden(MolserveError):
    """The key is not valid, lacks the scope, or the server has no keys for this route."""

    code = "forbidden"


class RateLimited(Unavailable):
    """The key sent more requests than its rate allows; `details.retry_after_s` says when to retry."""

    code = "rate_limited"


class QuotaExceeded(MolserveError):
    """The caller's key holds as many uploaded bytes or queued or running jobs as its quota
    allows; `details` says which quota, what is used and the limit."""

    code = "quota_exceeded"


class UnsupportedFile(InvalidInput):
    """An uploaded file of a type molserve does not read."""

    code = "unsupported_file"


# The most specific class in an error's MRO decides its status.
STATUS: dict[type[MolserveError], int] = {
    MissingCredentials: 401,
    Forbidden: 403,
    RateLimited: 429,
    QuotaExceeded: 429,
    UnsupportedFile: 415,
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unavailable: 503,
    StorageError: 507,
    MolserveError: 500,
}

DESCRIPTIONS = {
    400: "The request body cannot be parsed (not JSON, or broken multipart form data)",
    401: "An API key is needed and none was sent",
    403: "The API key is not valid, lacks the scope, or no key is configured for this route",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The request body or batch is too large",
    415: "The body's media type (a JSON route takes application/json) or the uploaded file type "
         "is not supported",
    422: "The request is well-formed JSON but not a valid request",
    429: "The API key's rate limit (see Retry-After) or quota (uploads, jobs) is exceeded",
    503: "Not available now; retry later (see Retry-After when present)",
    507: "The server could not store the upload",
}

# The statuses the key check answers, for routes behind it.
AUTH = (401, 403, 429)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with its description and the ErrorBody schema."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


def status_of(error: MolserveError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    headers = dict(headers or {})
    if details is not None:
        body["details"] = details
        if isinstance(details, dict) and isinstance(details.get("retry_after_s"), int | float):
            headers["retry-after"] = str(max(1, round(details["retry_after_s"] + 0.5)))
    return JSONResponse(body, status_code=status, headers=headers)


# A body can break many rules at once (one per list item): the answer names the first few and
# counts the rest, so its size does not grow with the request's.
SHOWN_ERRORS = 5
LISTED_ERRORS = 10


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for item in errors[:SHOWN_ERRORS]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {str(item.get('msg', 'invalid'))[:200]}")
    more = f"; and {len(errors) - SHOWN_ERRORS} more" if len(errors) > SHOWN_ERRORS else ""
    return ("; ".join(parts) or "the request body is not valid") + more


def _allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's).
    Each method is tried against the routes, so included routers need no special case."""
    methods = [method for method in ("DELETE", "GET", "PATCH", "POST", "PUT")
               if any(route.matches({**scope, "method": method})[0] == Match.FULL
                      for route in app.router.routes)]
    return sorted([*methods, "HEAD"] if "GET" in methods else methods)


def install(app: FastAPI) -> None:
    """The gateway's exception handlers: the only place errors become statuses."""

    @app.exception_handler(MolserveError)
    async def molserve_error(request: Request, error: MolserveError) -> JSONResponse:
        status = status_of(error)
        if status == 500:
            log.error("%s on %s: %s", type(error).__name__, request.url.path, error.message)
        return error_response(status, error.code, error.message, error.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        details = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                   for e in errors[:LISTED_ERRORS]]
        if len(errors) > LISTED_ERRORS:
            details.append({"more": len(errors) - LISTED_ERRORS})
        unparsable = [e for e in errors[:1] if e.get("type") == "json_invalid"]
        if unparsable:
            reason = (unparsable[0].get("ctx") or {}).get("error", "JSON decode error")
            return error_response(400, "invalid_json", f"the request body is not valid JSON: {reason}",
                                  details)
        return error_response(422, "invalid_request", _validation_message(errors), details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return error_response(404, "not_found", f"nothing at {request.url.path}; GET /docs "
                                  "lists the API")
        if error.status_code == 405:
            allowed = _allowed_methods(request.app, request.scope)
            if not allowed:  # a mounted app (the static files) says itself what it allows
                given = (error.headers or {}).get("Allow") or (error.headers or {}).get("allow", "")
                allowed = [m.strip() for m in given.split(",") if m.strip()]
            return error_response(405, "method_not_allowed",
                                  f"{request.method} is not allowed on {request.url.path}; "
                                  f"use {', '.join(m for m in allowed if m != 'HEAD')}",
                                  headers={"allow": ", ".join(allowed)})
        # A body the JSON parser gave up on for a reason other than syntax: the request is
        # well-formed HTTP but its content cannot be used (the same 422 as a schema violation).
        cause = error.__cause__
        if error.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            return error_response(422, "invalid_encoding", "the request body is not UTF-8 text: "
                                  f"byte {cause.start} cannot be decoded")
        if error.status_code == 400 and isinstance(cause, RecursionError):
            return error_response(422, "too_deeply_nested", "the request body's JSON is nested too "
                                  "deeply to read; no request needs more than a few levels")
        # Starlette's own refusals, e.g. a multipart body it cannot parse (400).
        code = "invalid_body" if error.status_code == 400 else "http_error"
        return error_response(error.status_code, code, str(error.detail).rstrip("."),
                              headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s", incident, request.url.path)
        return error_response(
            500, "internal_error",
            f"the server failed on this request (incident {incident}); it has been logged")
