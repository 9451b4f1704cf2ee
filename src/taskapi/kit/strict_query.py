"""Strict query parameters on every list endpoint (API.md part 2, "Strictness"): a name the list
does not know answers 422 `unknown_parameter`, naming it and the accepted ones, so a misspelt
`sort_by` or `per_page` never silently returns page 1 in the default order.

How a list route complies (tests/api/test_strict_query.py finds every GET operation of the
OpenAPI document answering a collection, an array or an object with an `items` array, and fails
for one that lets an unknown name through):

- its query parameters are one model deriving from `StrictQuery` (or `PageParams`, which does),
  declared `params: Annotated[MyParams, Query()]`: FastAPI hands every query name to a model
  with `extra="forbid"`, and pydantic rejects the unknown ones (`extra_forbidden`);
- a list without query parameters declares `_strict: NoQueryParameters`;
- a reader of its own (GET /tasks's, taskapi.tasks.list_query) reports the names it does not
  know with `unknown_name_errors`.

The one handler of RequestValidationError (taskapi.kit.errors) then answers the problem: code
`unknown_parameter`, `parameter` (the first unknown name), `accepted` (the operation's documented
query parameters), `suggestions` (near misses among them, `sort_by` -> `sort`) and `errors`.

Other endpoints keep ignoring unknown query parameters: the contract asks this of lists, where an
ignored name silently changes what comes back; elsewhere a cache-busting `?_=<time>` some
clients add stays harmless.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict

UNKNOWN_PARAMETER: Final = "unknown_parameter"
# What pydantic (and FastAPI, for a query model with extra="forbid") calls a name it refuses.
_EXTRA_FORBIDDEN: Final = "extra_forbidden"


class StrictQuery(BaseModel):
    """The base of a list's query-parameter model: any other name is refused."""

    model_config = ConfigDict(extra="forbid")


# The whole declaration for a list without query parameters.
NoQueryParameters = Annotated[StrictQuery, Query()]


def unknown_name_errors(names: Iterable[str]) -> list[dict[str, Any]]:
    """The errors FastAPI reports for `names` sent to a strict query model."""
    return [
        {"type": _EXTRA_FORBIDDEN, "loc": ("query", name), "msg": "Extra inputs are not permitted"}
        for name in names
    ]


# Names other APIs use for what these lists call otherwise (near misses by spelling are found
# by difflib; these are not near by spelling).
_SYNONYMS: Final[Mapping[str, tuple[str, ...]]] = {
    "sort_by": ("sort",),
    "sortby": ("sort",),
    "order_by": ("sort",),
    "orderby": ("sort",),
    "order": ("sort",),
    "ordering": ("sort",),
    "per_page": ("limit",),
    "perpage": ("limit",),
    "page_size": ("limit",),
    "pagesize": ("limit",),
    "size": ("limit",),
    "count": ("limit",),
    "max_results": ("limit",),
    "top": ("limit",),
    "take": ("limit",),
    "page": ("offset", "cursor"),
    "skip": ("offset", "cursor"),
    "start": ("offset", "cursor"),
    "page_token": ("cursor", "since"),
    "next_cursor": ("cursor", "since"),
    "after": ("cursor", "since"),
    "q": ("search",),
    "query": ("search",),
    "filter": ("search",),
    "state": ("status",),
}


def suggestions(name: str, accepted: Sequence[str]) -> list[str]:
    """The accepted names `name` probably meant, best first (empty when none is close)."""
    key = name.strip().lower().replace("-", "_")
    if key in accepted:  # `Limit`, `LIMIT`, `due-before`
        return [key]
    known = [candidate for candidate in _SYNONYMS.get(key, ()) if candidate in accepted]
    return known or difflib.get_close_matches(key, accepted, n=2, cutoff=0.75)


def unknown_names(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """The query parameter names `errors` (as the handler lists them) refuse as unknown."""
    return [
        str(error["loc"][1])
        for error in errors
        if error["type"] == _EXTRA_FORBIDDEN and len(error["loc"]) == 2
        if error["loc"][0] == "query"
    ]


def accepted_parameters(request: Request) -> list[str]:
    """The query parameters the matched operation documents: what it accepts, by definition."""
    route = request.scope.get("route")
    path = getattr(route, "path_format", None)
    operation = request.app.openapi()["paths"].get(path, {}).get(request.method.lower(), {})
    return [p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"]


def unknown_parameter_extra(
    errors: Sequence[Mapping[str, Any]], unknown: Sequence[str], accepted: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """The problem's detail and extension members for the `unknown` names."""
    hints = {name: suggestions(name, accepted) for name in unknown}
    listed = []
    for error in errors:
        if unknown_names([error]):
            name = str(error["loc"][1])
            error = {**error, "type": UNKNOWN_PARAMETER, "msg": _message(name, hints[name])}
        listed.append(error)
    first = unknown[0]
    others = f" Also unknown: {', '.join(unknown[1:])}." if unknown[1:] else ""
    detail = (
        f"{_message(first, hints[first])}{others} "
        f"Accepted: {', '.join(accepted) if accepted else 'none'}."
    )
    extra = {"parameter": first, "accepted": list(accepted), "suggestions": hints[first]}
    return detail, {**extra, "errors": listed}


def _message(name: str, hints: Sequence[str]) -> str:
    if not hints:
        return f"Unknown query parameter {name!r}."
    return f"Unknown query parameter {name!r}; did you mean {' or '.join(map(repr, hints))}?"
