"""Routes added to the app itself, flat, instead of through `include_router`.

FastAPI 0.165 keeps an included router as a nested branch that is matched route by route once
to pick the branch and again inside it; measured, that cost the list ~30 µs of CPU per request
(2.5-5% of it) and hid the full path templates from the route table, which the 405/`Allow`
answer (kit/dispatch.py) and the route labels of logs and metrics (kit/middleware.py) read.

Each route is re-added under its prefixed path with every argument `APIRouter.add_api_route`
takes, read from the route by the parameter's own name, so an argument FastAPI adds later is
carried over without an edit here. tests/internals/test_read_path.py holds the resulting OpenAPI
document
equal to what `include_router` gives: if FastAPI changes under this module, that test fails.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

# Parameters of add_api_route that are not attributes of the same name on the route.
_RENAMED = {"path": None, "endpoint": None, "route_class_override": None}


def _route_arguments(route: APIRoute) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for name in inspect.signature(APIRouter.add_api_route).parameters:
        if name == "self" or name in _RENAMED:
            continue
        if hasattr(route, name):
            arguments[name] = getattr(route, name)
    return arguments


def add_routes(app: FastAPI, router: APIRouter, prefix: str = "") -> None:
    """Add `router`'s routes to `app` under `prefix`, as `include_router` documents them."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"only API routes can be added this way, not {route!r}")
        app.router.add_api_route(
            prefix + route.path,
            route.endpoint,
            route_class_override=type(route),
            **_route_arguments(route),
        )
