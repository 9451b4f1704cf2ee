"""The one shortcut on GET /tasks: its query string read as FastAPI reads a query-parameter
model, without FastAPI's per-request cost.

Declared natively (`Annotated[TaskListParams, Query()]`), FastAPI works out again on every
request, for each of the model's 17 fields, whether its annotation is a list: about 85 µs of a
list request's ~900 µs of CPU (measured in the commit that added this module). Here that is
decided once, with the same rule; the rest is what FastAPI does: every value of a list field
(`?status=a&status=b`), the last value of any other, the model's errors as FastAPI's 422 (a
RequestValidationError located in "query"), and, as FastAPI does for a model deriving from
taskapi.kit.strict_query.StrictQuery, an unknown name refused as `extra_forbidden` (the list is
strict: a 422 `unknown_parameter`). The parameters are documented
as FastAPI documents such a model (`QUERY_PARAMETERS`, for the route's openapi_extra).

tests/internals/test_read_path.py reads and documents the same model through FastAPI itself and
compares,
so a FastAPI release that reads or documents query models differently fails there.
"""

from __future__ import annotations

from typing import Any, Final, get_args, get_origin

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams

from taskapi.kit.strict_query import unknown_name_errors
from taskapi.tasks.list_params import TaskListParams


def _is_list(annotation: Any) -> bool:
    """A list, or a list or None: what FastAPI reads with every value of a repeated name."""
    if get_origin(annotation) is list:
        return True
    return any(get_origin(arg) is list for arg in get_args(annotation))


_FIELDS: Final = frozenset(TaskListParams.model_fields)
_LISTS: Final = frozenset(
    name for name, field in TaskListParams.model_fields.items() if _is_list(field.annotation)
)
# Shared by every request without a query string; never mutated.
DEFAULT_PARAMS: Final = TaskListParams()


async def read_list_params(request: Request) -> TaskListParams:
    query = request.query_params
    if not query:
        return DEFAULT_PARAMS
    data = {
        key: query.getlist(key) if key in _LISTS else query[key] for key in query if key in _FIELDS
    }
    try:
        params = TaskListParams.model_validate(data)
    except ValidationError as exc:
        located = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError([*located, *_unknown(query)]) from None
    if not _FIELDS.issuperset(query.keys()):
        raise RequestValidationError(_unknown(query))
    return params


def _unknown(query: QueryParams) -> list[dict[str, Any]]:
    return unknown_name_errors(key for key in query if key not in _FIELDS)


def _documented(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The model's fields as OpenAPI query parameters, as FastAPI renders them (it leaves out
    null defaults; enums are components, which the app's TaskPage schema already brings)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    parameters = []
    for name, field_schema in schema["properties"].items():
        kept = {k: v for k, v in field_schema.items() if not (k == "default" and v is None)}
        parameter = {"name": name, "in": "query", "required": False, "schema": kept}
        if description := model.model_fields[name].description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


QUERY_PARAMETERS: Final = _documented(TaskListParams)
