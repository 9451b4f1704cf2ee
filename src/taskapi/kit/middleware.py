"""Pure ASGI middleware: request ids, security headers, the last-resort 500, the access log and
the request metrics.

Written against raw ASGI rather than Starlette's base HTTP middleware class, which costs a task
and memory streams per request on the hot path.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskapi.kit.db_errors import is_database_unavailable
from taskapi.kit.errors import (
    PROBLEM_CONTENT_TYPE,
    database_unavailable_response,
    internal_error_body,
)
from taskapi.kit.metrics import observe_request
from taskapi.kit.request_context import reset_request_id, set_request_id
from taskapi.kit.routes import matching_route

logger = logging.getLogger("taskapi.request")
access_logger = logging.getLogger("taskapi.access")

# The label and log value for requests no route matched (404s): their raw paths are unbounded
# (every id a scanner tries would be a new series) and may carry things that are nobody's business.
UNMATCHED_ROUTE = "unmatched"
# Nothing was sent: the client went away before the response started (nginx's convention).
CLIENT_CLOSED_REQUEST = 499

# Client-supplied ids are echoed into headers and logs, so only accept a conservative shape.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")

_BASE_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# Swagger UI and ReDoc load their scripts from a CDN; everything else is data and may run nothing.
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOC_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_NO_STORE = (b"cache-control", b"no-store")
# Set by us whatever the app sent.
_REPLACED_HEADERS = frozenset({b"server", b"x-request-id"})
# A 204 has no content, so no content type (FastAPI's JSON responses set one all the same).
_REPLACED_HEADERS_204 = _REPLACED_HEADERS | {b"content-type"}
# Ours unless the app set its own; the common case (it set none of them) is one precomputed list.
_OWN_HEADER_NAMES = frozenset(
    {name for name, _ in _BASE_SECURITY_HEADERS} | {_API_CSP[0], _NO_STORE[0]}
)
_DEFAULT_API_HEADERS = [*_BASE_SECURITY_HEADERS, _API_CSP, _NO_STORE]
_DEFAULT_DOCS_HEADERS = [*_BASE_SECURITY_HEADERS, _NO_STORE]


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            try:
                candidate = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            return candidate if _SANE_REQUEST_ID.match(candidate) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = set_request_id(request_id)
        is_docs = scope.get("path", "") in _DOC_PATHS
        response_started = False
        status = CLIENT_CLOSED_REQUEST

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                # One pass over what the app set (names lower-cased once), then ours.
                headers: list[tuple[bytes, bytes]] = []
                present: set[bytes] = set()
                replaced = _REPLACED_HEADERS if status != 204 else _REPLACED_HEADERS_204
                for name, value in message.get("headers", ()):
                    lowered = name.lower()
                    if lowered not in replaced:
                        headers.append((name, value))
                        present.add(lowered)
                headers.append((b"x-request-id", request_id.encode()))
                if present.isdisjoint(_OWN_HEADER_NAMES):
                    headers += _DEFAULT_API_HEADERS if not is_docs else _DEFAULT_DOCS_HEADERS
                else:
                    headers.extend(h for h in _BASE_SECURITY_HEADERS if h[0] not in present)
                    if not is_docs and _API_CSP[0] not in present:
                        headers.append(_API_CSP)
                    if b"cache-control" not in present:
                        headers.append(_NO_STORE)
                decision = scope["state"].get("rate_limit")
                if decision is not None:
                    headers.extend(decision.headers())
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # The client went away mid-request (an upload cut off): nobody to answer, nothing
            # of ours failed. Recorded as 499, without a traceback.
            status = CLIENT_CLOSED_REQUEST
        except Exception as error:
            if not response_started and is_database_unavailable(error):
                # Raised outside the routes (a middleware's own query): the same 503 as inside.
                response = database_unavailable_response(error)
                await response(scope, receive, send_with_headers)
                return
            logger.exception(
                "unhandled error while serving %s %s", scope.get("method"), scope.get("path")
            )
            if response_started:
                raise
            body = json.dumps(internal_error_body()).encode()
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": body})
        finally:
            try:
                _record(scope, state, status, time.perf_counter() - started)
            finally:
                reset_request_id(token)


def _route_template(scope: Scope) -> str:
    """`/api/v1/tasks/{task_id}` for `/api/v1/tasks/42`; UNMATCHED_ROUTE when no route matched.

    The router leaves the route it ran in the scope; routes are added to the app itself with
    their full paths (app.add_routes), so its template is the label. Requests answered before
    routing (an idempotent replay) and routes the router does not record (FastAPI's docs and
    schema) are looked up in the route table: only they pay for that scan.
    """
    route = scope.get("route")
    if route is None and "app" in scope:
        route = matching_route(scope["app"].router.routes, scope)
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


def _record(scope: Scope, state: dict[str, object], status: int, seconds: float) -> None:
    """One access record and the request metrics, labelled by route template, never raw path."""
    route = _route_template(scope)
    method: str = scope["method"]
    observe_request(method, route, status, seconds)
    if access_logger.isEnabledFor(logging.INFO):
        # The request id is added by the logging filter (the context variable is still set).
        access_logger.info(
            "%s %s %d",
            method,
            route,
            status,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "user_id": state.get("user_id"),
            },
        )
