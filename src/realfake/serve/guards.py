"""Pure ASGI guards that act before a handler reads anything: the body's size and time, and the access token.

They are middleware rather than FastAPI dependencies because FastAPI parses a multipart body *before* it
resolves a route's dependencies: a check made there would come after the bytes were already taken in. Every
refusal is counted (a Counter by status: `app.state.refusals`), logged on the "realfake.serve" logger, and
closes the connection, since the rest of an unread body would otherwise stay on it.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import hmac
import json
import logging
import time
from collections import Counter

import anyio
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("realfake.serve")


class Refused(HTTPException):
    """A request refused while its body was being read.

    Raised from inside `receive`; FastAPI re-raises HTTPExceptions from body parsing as they are (anything else
    becomes a 400), so the client gets this status and detail.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail, headers={"connection": "close"})


class BodyTooLarge(Refused):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (limit {limit:,} bytes)")


class BodyTooSlow(Refused):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not complete within {timeout_s:g} s")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown client"


def count_refusal(refusals: Counter[int], scope: Scope, status: int, detail: str) -> None:
    """Count (by status) and log a refusal in one place, so an operator can see slow or oversized clients."""
    refusals[status] += 1
    level = logging.INFO if status == 401 else logging.WARNING
    logger.log(level, "refused %s %s from %s with %d: %s", scope.get("method"), scope.get("path"), _client(scope),
               status, detail)


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """Refuse bodies over `limit` bytes (413) or not complete within `timeout_s` seconds (408).

    The size is checked from Content-Length first, then by counting, because Content-Length can be absent
    (chunked) or false. The time limit is for the whole body, from the moment the request's headers are in:
    a client that declares 10 MB and sends 10 bytes would otherwise hold a connection (and a worker's form
    parser) for as long as it likes, and a per-read timeout would still let it trickle a byte at a time.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float, refusals: Counter[int]) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            refusal: Refused = BodyTooLarge(self.limit)
            count_refusal(self.refusals, scope, refusal.status_code, refusal.detail)
            await send_json(send, refusal.status_code, refusal.detail)
            return
        deadline = time.monotonic() + self.timeout_s
        seen = 0
        body_done = False
        started = False

        def refuse(exc: Refused) -> Refused:
            count_refusal(self.refusals, scope, exc.status_code, exc.detail)
            return exc

        async def guarded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline for that
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise refuse(BodyTooSlow(self.timeout_s)) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise refuse(BodyTooLarge(self.limit))
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # http.disconnect
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, watching_send)
        except Refused as e:  # raised where no exception handler turned it into a response
            if started:
                raise
            await send_json(send, e.status_code, e.detail)


class TokenGuard:
    """Require `Authorization: Bearer TOKEN` on paths under `prefix`; answer 401 before any body is read.

    The comparison is `hmac.compare_digest`, whose time does not depend on where the tokens differ.
    """

    def __init__(self, app: ASGIApp, token: str, refusals: Counter[int], prefix: str = "/v1/") -> None:
        self.app = app
        self.token = token.encode()
        self.refusals = refusals
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token):
            await self.app(scope, receive, send)
            return
        if given:
            detail, challenge = "wrong access token", 'Bearer error="invalid_token"'
        else:
            detail, challenge = "missing access token: send the header 'Authorization: Bearer TOKEN'", "Bearer"
        count_refusal(self.refusals, scope, 401, detail)
        await send_json(send, 401, detail, {"WWW-Authenticate": challenge})
