"""Request body size limits, as pure ASGI middleware.

Every route gets `MAX_REQUEST_BYTES`; a few (the upload) get their own larger limit. A request
whose Content-Length is over its limit is answered 413 before the application sees it (no
authentication, no database, not a byte of the body read). A body without Content-Length
(chunked) is counted as it streams through `receive`, and the read that passes the limit raises.

Once a request is over its limit, this middleware is the only one that answers it: whatever the
application does with the exception raised from `receive` (FastAPI turns errors while reading a
JSON body into 400s, the upload code may be halfway through a multipart parser), the response it
would start is replaced by the 413. Every 413 carries `Connection: close`: the rest of the body is
never read, so the connection cannot be reused for another request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskapi.kit.errors import PayloadTooLarge, app_error_response

# POST /api/v1/tasks/{task_id}/files: limited to MAX_UPLOAD_BYTES plus the multipart framing.
UPLOAD_ROUTE = re.compile(r"/api/v1/tasks/[^/]+/files")


@dataclass(frozen=True)
class RouteLimit:
    """A body limit for one method and the paths matching `path` (a full-match regex)."""

    method: str
    path: re.Pattern[str]
    max_bytes: int


class BodyTooLarge(PayloadTooLarge):
    """Raised from `receive` once a streamed body passes the limit."""


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            # The server has already rejected a malformed Content-Length; be safe anyway.
            return int(value) if value.isdigit() else None
    return None


class BodySizeLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, route_limits: Sequence[RouteLimit] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.route_limits = tuple(route_limits)

    def limit_for(self, method: str, path: str) -> int:
        for route in self.route_limits:
            if route.method == method and route.path.fullmatch(path):
                return route.max_bytes
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _reject(scope, receive, send, limit)
            return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:  # a handler that swallowed the first error must not read on
                raise BodyTooLarge(_detail(limit))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(_detail(limit))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                # The application's own answer to the failed read (a 400, a 422, our 413 without
                # Connection: close): dropped, the 413 below is sent instead.
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or response_started:
                raise
        if exceeded and not response_started:
            await _reject(scope, receive, send, limit)


def _detail(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes for this route."


async def _reject(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = app_error_response(PayloadTooLarge(_detail(limit), headers={"Connection": "close"}))
    await response(scope, receive, send)
