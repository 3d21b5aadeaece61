"""What guards the server before a request reaches a strategy: API keys, body size, and admission control.

:class:`GuardMiddleware` is plain ASGI (it also bounds bodies sent without a Content-Length, which a
``BaseHTTPMiddleware`` cannot). Keys are compared with :func:`hmac.compare_digest` against every configured key,
so the time taken does not depend on where a wrong key differs. :class:`Admission` bounds the chat requests being
served and those waiting for a slot; beyond both bounds a request is refused at once with 429 and Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.exceptions import HTTPException

from server.errors import APIError

OPEN_PATHS = frozenset({"/health"})  # reachable without a key (load balancers, supervisors)


def _error_body(message: str, type: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


class BodyTooLargeError(HTTPException):
    """Raised while the body is read; an HTTPException, so FastAPI's body parser passes it through."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body is larger than this server's cap of {cap} bytes (--max-body-bytes)")


class GuardMiddleware:
    def __init__(self, app: Any, *, api_keys: tuple[str, ...], max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.keys and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return await _reply(
                send,
                401,
                _error_body(
                    "missing or invalid API key (send Authorization: Bearer KEY)",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
                {b"www-authenticate": b"Bearer"},
            )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _reply(send, 413, self._too_large())
        await self.app(scope, self._bounded(receive), send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]  # all compared: constant time
        return scheme.lower() == b"bearer" and any(matches)

    def _too_large(self) -> bytes:
        return _error_body(BodyTooLargeError(self.max_body_bytes).detail, "invalid_request_error", "body_too_large")

    def _bounded(self, receive: Any) -> Any:
        seen = 0

        async def bounded_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLargeError(self.max_body_bytes)
            return message

        return bounded_receive


async def _reply(send: Any, status: int, body: bytes, extra: dict[bytes, bytes] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Admission:
    """At most ``concurrent`` chat requests served at once and ``queued`` waiting; the rest get a 429."""

    def __init__(self, concurrent: int, queued: int) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self.queued_cap = queued
        self.waiting = 0

    def full(self) -> bool:
        """Every slot is taken and the queue is full: a new request would be refused."""
        return self._slots.locked() and self.waiting >= self.queued_cap

    @staticmethod
    def busy() -> APIError:
        return APIError(
            "the server is at capacity (--max-concurrent-requests, --max-queued-requests); retry shortly",
            status=429,
            type="rate_limit_error",
            code="server_busy",
            headers={"Retry-After": "1"},
        )

    @contextlib.asynccontextmanager
    async def slot(self, queue_anyway: bool = False) -> AsyncIterator[None]:
        """Hold a slot, waiting in the queue; a full queue refuses (429) unless ``queue_anyway``."""
        if self._slots.locked():
            if self.waiting >= self.queued_cap and not queue_anyway:
                raise self.busy()
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()
