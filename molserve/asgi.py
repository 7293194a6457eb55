"""ASGI middleware both HTTP services use: a body size limit and a bearer token, applied
before a route reads a byte of the body."""

from __future__ import annotations

import hmac


class BodyLimit:
    """Reject bodies larger than the limit with 413 before they are read into memory, whether
    declared (`content-length`) or found while reading a chunked body (file uploads, which stream
    to disk, have a limit of their own)."""

    def __init__(self, app, limit: int, upload_limit: int | None = None) -> None:
        self.app = app
        self.default_limit = limit
        self.upload_limit = upload_limit or limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path") == "/v1/uploads" else self.default_limit
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(send, limit)
        received = 0
        exceeded = False
        started = False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            # A route or framework that catches the error and answers (FastAPI turns any failure
            # while reading a body into a 400) is overruled: past the limit the answer is 413.
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await self._reject(send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send, limit: int) -> None:
        body = (b'{"error":"body_too_large","message":"request body exceeds '
                + str(limit).encode() + b' bytes"}')
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BearerToken:
    """Every path but `open_paths` needs `Authorization: Bearer <token>` (constant-time
    comparison); without it the answer is 401 before the body is read or parsed."""

    def __init__(self, app, token: str, open_paths: frozenset[str] = frozenset({"/healthz"})) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or ()).get(b"authorization", b"")
        presented = header[7:].strip() if header[:7].lower() == b"bearer " else b""
        if hmac.compare_digest(presented, self.token):
            return await self.app(scope, receive, send)
        body = b'{"error":"unauthorized","message":"this worker needs its bearer token"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
