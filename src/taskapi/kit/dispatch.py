"""Pure ASGI middleware for two answers the router gets wrong (see routes.py for the rules):

* a method that a literal path (`/tasks/stats`, `/tasks/bulk`) lacks is a 405 with that path's
  `Allow`, never a request to the `{param}` route that also matches it (`PUT /tasks/stats` was a
  422 about the task id `stats`);
* a body of another media type (a form, multipart, text) sent to an endpoint that takes JSON is a
  415 `unsupported_media_type`, not a 422 about the body's shape.

Both are decided before routing, so neither authenticates nor spends a rate-limit token, as the
router's own 405 does not. A request with a JSON body costs one look-up in a dict of literal
paths and a scan of its headers.
"""

from __future__ import annotations

from fastapi import params
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from taskapi.kit.errors import MethodNotAllowed, UnsupportedMediaType, app_error_response
from taskapi.kit.routes import FixedPath, fixed_paths

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def takes_json(route: BaseRoute) -> bool:
    """Whether FastAPI reads this route's body as JSON (not a form, and not the raw stream)."""
    body = route.body_field if isinstance(route, APIRoute) else None
    return body is not None and not isinstance(body.field_info, params.Form)


def is_json(content_type: bytes) -> bool:
    """`application/json` or `application/*+json`, as FastAPI decides whether to parse JSON."""
    media_type = content_type.split(b";", 1)[0].strip().lower()
    main, _, sub = media_type.partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


class _Table:
    def __init__(self, routes: list[BaseRoute]) -> None:
        self.routes = routes
        self.fixed: dict[str, FixedPath] = fixed_paths(routes)
        self.json_routes = [route for route in routes if takes_json(route)]

    def json_route(self, scope: Scope) -> BaseRoute | None:
        for route in self.json_routes:
            if route.matches(scope)[0] is Match.FULL:
                return route
        return None


class MethodAndMediaTypeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._table: _Table | None = None

    def _routes(self, scope: Scope) -> _Table:
        # Built at the first request: every route has been added by then.
        if self._table is None:
            self._table = _Table(scope["app"].router.routes)
        return self._table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        table = self._routes(scope)
        method: str = scope["method"]
        fixed = table.fixed.get(scope["path"])
        if fixed is not None and method not in fixed.methods:
            scope["route"] = fixed.route  # what logs and metrics are labelled with
            error = MethodNotAllowed(headers={"Allow": ", ".join(fixed.methods)})
            await app_error_response(error)(scope, receive, send)
            return
        if method in _BODY_METHODS and _has_foreign_body(scope):
            route = table.json_route(scope)
            if route is not None:
                scope["route"] = route
                await app_error_response(UnsupportedMediaType())(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _has_foreign_body(scope: Scope) -> bool:
    """A body declared as something other than JSON. A request without `Content-Type` is left to
    the endpoint, as is an empty one: there is no body to object to."""
    content_type: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length" and value == b"0":
            return False
    return content_type is not None and not is_json(content_type)
