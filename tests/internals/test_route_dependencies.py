"""What FastAPI does per request for each route, read from its dependency tree."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute


def solved(dependant: Dependant, seen: set[object] | None = None) -> Iterator[Dependant]:
    """Each dependant FastAPI solves for one request: a cached dependency (the default) used in
    several places is solved once."""
    seen = set() if seen is None else seen
    for sub in dependant.dependencies:
        key = (sub.call, tuple(sorted(sub.own_oauth_scopes or [])))
        if sub.use_cache and key in seen:
            continue
        seen.add(key)
        yield from solved(sub, seen)
    yield dependant


def test_each_request_body_is_validated_once(built_app: FastAPI) -> None:
    # FastAPI validates a body parameter for every dependant that declares it: PATCH /tasks/{id}
    # declared its body in the handler and in the dependency that locks the task, and paid for
    # the validation twice.
    routes = [route for route in built_app.routes if isinstance(route, APIRoute)]
    assert len(routes) > 50
    for route in routes:
        bodies = Counter(
            field.name for dependant in solved(route.dependant) for field in dependant.body_params
        )
        repeated = {name: count for name, count in bodies.items() if count > 1}
        assert not repeated, (route.methods, route.path, repeated)


def test_every_dependency_of_ours_runs_on_the_event_loop(built_app: FastAPI) -> None:
    # FastAPI runs a dependency that is a plain function in its thread pool: a thread hop per
    # request for what takes microseconds (PATCH's body dependency was one).
    threaded = {
        (dependant.call.__qualname__, route.path)
        for route in built_app.routes
        if isinstance(route, APIRoute)
        for dependant in solved(route.dependant)
        if inspect.isfunction(dependant.call)
        and dependant.call.__module__.startswith("taskapi.")
        and not inspect.iscoroutinefunction(dependant.call)
        and not inspect.isasyncgenfunction(dependant.call)
    }
    assert not threaded
