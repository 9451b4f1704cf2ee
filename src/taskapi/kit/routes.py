"""What the route table says about a request's path: the methods it supports, the route it is.

Starlette's router answers a method a route lacks with the `Allow` of the first route whose path
matched, not of the path; and a fixed path (`/tasks/stats`) is only preferred to a `{param}`
one (`/tasks/{task_id}`) for the methods the fixed route has. The rule used here: a path that
some route states literally is that route's alone (`PUT /tasks/stats` is a 405, not an attempt
to read `stats` as a task id); any other path belongs to every route whose template matches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

# The order methods are listed in `Allow`.
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def _ordered(methods: Iterable[str]) -> tuple[str, ...]:
    present = set(methods)
    return tuple(m for m in _METHOD_ORDER if m in present) + tuple(
        sorted(present.difference(_METHOD_ORDER))
    )


@dataclass(frozen=True, slots=True)
class FixedPath:
    """A path that routes state literally, and what they accept."""

    route: Route  # the first of them, as the router would pick it
    methods: tuple[str, ...]


def fixed_paths(routes: Sequence[BaseRoute]) -> dict[str, FixedPath]:
    """Every literal path of `routes` (no `{param}`), with the methods its routes support."""
    found: dict[str, tuple[Route, set[str]]] = {}
    for route in routes:
        if isinstance(route, Route) and route.methods and not route.param_convertors:
            found.setdefault(route.path, (route, set()))[1].update(route.methods)
    return {path: FixedPath(first, _ordered(methods)) for path, (first, methods) in found.items()}


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> tuple[str, ...]:
    """The methods the request's path supports, for an `Allow` header (see the module doc)."""
    literal: set[str] = set()
    templated: set[str] = set()
    for route in routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            (templated if route.param_convertors else literal).update(route.methods)
    return _ordered(literal or templated)


def matching_route(routes: Sequence[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route the router would run for this request, when it was answered before routing (a
    replayed idempotent response) or by a route that leaves no trace in the scope (the docs)."""
    partial: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial
