"""Shapes used only to document the API: the problem+json body and per-status error responses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from taskapi.kit.errors import PROBLEM_CONTENT_TYPE


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(examples=["urn:taskapi:problem:task_not_found"])
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code", examples=["task_not_found"])
    request_id: str | None
    errors: list[ValidationErrorItem] | None = Field(
        default=None, description="Present on validation errors"
    )


# --- text rules as JSON Schema patterns ----------------------------------------------------------
# Validators trim before they measure, so `minLength`/`maxLength` on the raw text would be wrong
# both ways ("  " is too short, a padded title can be longer): a pattern states the rule exactly.
# Classes are ECMA-262 regex class bodies, as JSON Schema patterns are written.

# What pydantic's `strip_whitespace` removes (Unicode White_Space).
STRIPPED_BY_PYDANTIC = (
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)
# What Python's `str.strip()` removes: the same, and the four information separators.
STRIPPED_BY_PYTHON = STRIPPED_BY_PYDANTIC + r"\u001c-\u001f"
NUL = r"\u0000"


def trimmed_text_pattern(*, min_length: int, max_length: int, forbidden: str, trimmed: str) -> str:
    """Text that, once the characters of `trimmed` are stripped from both ends, has between
    `min_length` (0 or 1) and `max_length` characters, none of them in `forbidden`."""
    if min_length not in (0, 1) or max_length < 2:
        raise ValueError("only lengths from 0 or 1 up to at least 2 are written this way")
    inner, edge = f"[^{forbidden}]", f"[^{forbidden}{trimmed}]"
    core = f"{edge}(?:{inner}{{0,{max_length - 2}}}{edge})?"
    if min_length == 0:
        core = f"(?:{core})?"
    return f"^[{trimmed}]*{core}[{trimmed}]*$"


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid or expired credentials",
    403: "Visible but not allowed",
    404: "Not found, or not visible to you",
    409: "Conflict with the current state",
    412: "If-Match did not match the current version",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Validation error",
    429: "Rate limited",
    503: "A dependency is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            # No `model`: FastAPI would document it as `application/json` as well. The schema is
            # registered by the app's openapi hook.
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


# --- finishing the generated schema -------------------------------------------------------------
# FastAPI documents what it can see in the signatures; what the error handlers, the middleware and
# the dependencies add is filled in here, once for every operation, so routers only declare the
# statuses that are specific to them. `tests/fuzz/test_schemathesis.py` holds the app to the result.

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_JSON = "application/json"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

_HEADER_DOCS: dict[str, dict[str, Any]] = {
    "ETag": {"description": "The entity tag of the task's current version", "required": True},
    "ETag (body)": {
        "description": "A strong entity tag of this response's body (for this caller and query): "
        "send it back in If-None-Match",
        "required": True,
    },
    "Location": {"description": "The URL of the resource", "required": True},
    "WWW-Authenticate": {"description": "`Bearer` challenge", "required": True},
    "Retry-After": {"description": "Seconds to wait before retrying", "required": True},
}


def _header(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**_HEADER_DOCS[name], "schema": schema or {"type": "string"}}


def _document_conditional_get(operation: dict[str, Any], responses: dict[str, Any]) -> None:
    """A GET taking If-None-Match (kit/conditional.py) and documenting no 304 of its own: the
    ETag of its 200 and the 304 it answers when a tag matches."""
    names = {
        p.get("name", "").lower()
        for p in operation.get("parameters", [])
        if p.get("in") == "header"
    }
    if "if-none-match" not in names or "304" in responses or "200" not in responses:
        return
    etag = _header("ETag (body)")
    responses["200"].setdefault("headers", {})["ETag"] = etag
    responses["304"] = {
        "description": "Not modified: If-None-Match listed the current ETag (or `*`); no body, "
        "and no rate-limit token spent",
        "headers": {"ETag": etag},
    }


def problem_response(status: int) -> dict[str, Any]:
    """The OpenAPI response object for a problem+json error with this status."""
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS.get(status, "Error"),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}},
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _header("WWW-Authenticate")}
    elif status == 429:
        response["headers"] = {"Retry-After": _header("Retry-After", {"type": "integer"})}
    return response


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method in _METHODS:
                yield path, method, operation


def _set_problem(responses: dict[str, Any], status: int) -> None:
    """Document `status` as problem+json, keeping a description the router chose."""
    existing = responses.get(str(status), {})
    response = problem_response(status)
    if existing.get("description") and status != 422:
        response["description"] = existing["description"]
    responses[str(status)] = response


def operation_id(route: APIRoute) -> str:
    """The operation id of a route: its endpoint function's name (`list_tasks`, `get_task`), which
    generated clients turn into method names. `finish_schema` checks that no two are alike."""
    return route.name


# Where the schema is served from; clients are pointed at their own base URL anyway.
SERVERS = [{"url": "/", "description": "The server this document is served by"}]


def finish_schema(schema: dict[str, Any], *, api_prefix: str) -> None:
    """Make the documented responses the ones the app really sends (see the module comment)."""
    schema.setdefault("servers", SERVERS)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    ids = Counter(operation.get("operationId") for _, _, operation in _operations(schema))
    if repeated := sorted(str(name) for name, count in ids.items() if count > 1):
        raise ValueError(f"operation ids must be unique: {repeated}")
    _restore_integer_bounds(schema)
    for path, _method, operation in _operations(schema):
        # Public operations say so: a missing `security` would mean "as the document's default".
        operation.setdefault("security", [])
        for parameter in operation.get("parameters", []):
            if "schema" in parameter:
                parameter["schema"] = _without_null(parameter["schema"])
        responses: dict[str, Any] = operation.setdefault("responses", {})
        statuses = {int(code) for code in responses if code.isdigit()}
        # Errors are problem+json, never FastAPI's `application/json` HTTPValidationError.
        errors = {s for s in statuses if s >= 400 and PROBLEM_CONTENT_TYPE in _media(responses, s)}
        body = operation.get("requestBody", {}).get("content", {})
        if _JSON in body:
            errors |= {400, 415}  # malformed JSON; a body of another type (dispatch.py)
        if body:
            errors.add(413)  # every body has a size limit (limits.py)
        if body or operation.get("parameters"):
            errors.add(422)
        if operation.get("security"):
            errors |= {401, 429}  # every authenticated request spends from the caller's bucket
            errors.add(403)  # a personal access token without the scope (or any, login only)
        if path.startswith(api_prefix):
            errors.add(503)  # the database (or storage) is unreachable
        for status in sorted(errors):
            _set_problem(responses, status)
        if _method == "get":
            _document_conditional_get(operation, responses)
        for code, response in responses.items():
            if _refers_to(response, "TaskOut") or (path.endswith("{task_id}") and code == "304"):
                response.setdefault("headers", {})["ETag"] = _header("ETag")
    for (path, method, code), links in _LINKS.items():
        schema["paths"][path][method]["responses"][code].setdefault("links", {}).update(links)


def _refers_to(response: dict[str, Any], model: str) -> bool:
    media = response.get("content", {}).get(_JSON, {})
    return bool(media.get("schema", {}).get("$ref") == f"#/components/schemas/{model}")


def _link(path: str, method: str) -> dict[str, Any]:
    return {"operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method}


# Links schemathesis cannot infer from names alone (it does find `POST /tasks` → `/tasks/{task_id}`
# by itself): they let its stateful phase, and readers, chain the calls a client makes.
_LINKS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/api/v1/auth/register", "post", "201"): {
        "LogIn": {
            **_link("/api/v1/auth/login", "post"),
            "requestBody": {
                "username": "$request.body#/username",
                "password": "$request.body#/password",
            },
        }
    },
    ("/api/v1/auth/login", "post", "200"): {
        "Refresh": {
            **_link("/api/v1/auth/refresh", "post"),
            "requestBody": {"refresh_token": "$response.body#/refresh_token"},
        },
        "LogOut": {
            **_link("/api/v1/auth/logout", "post"),
            "requestBody": {"refresh_token": "$response.body#/refresh_token"},
        },
    },
    ("/api/v1/tasks/{task_id}/files", "post", "201"): {
        "DownloadFile": {
            **_link("/api/v1/files/{file_id}", "get"),
            "parameters": {"path.file_id": "$response.body#/id"},
        },
        "DeleteFile": {
            **_link("/api/v1/files/{file_id}", "delete"),
            "parameters": {"path.file_id": "$response.body#/id"},
        },
    },
}


_NULL = {"type": "null"}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without pydantic's `null` branch for `X | None = None`: a query,
    header or path parameter is text, never JSON null; leaving it out is how it is not given."""
    branches = schema.get("anyOf")
    if not branches or _NULL not in branches:
        return schema
    kept = [branch for branch in branches if branch != _NULL]
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


# FastAPI's OpenAPI models type `minimum`/`maximum` as floats, so pydantic's integer bounds reach
# the document as floats, and past 2**53 as another number (2**63 - 1 becomes 2.0**63). Integer
# schemas get them back as integers; the one such bound the API has is PostgreSQL's bigint's.
INT64_MAX = 2**63 - 1
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_EXACT_FLOAT = 2**53


def _restore_integer_bounds(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _restore_integer_bounds(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "integer":
        for key in _BOUNDS:
            value = node.get(key)
            if isinstance(value, float):
                node[key] = _as_integer(value)
    for value in node.values():
        _restore_integer_bounds(value)


def _as_integer(value: float) -> int:
    if value.is_integer() and abs(value) <= _EXACT_FLOAT:
        return int(value)
    if value == float(INT64_MAX):
        return INT64_MAX
    raise ValueError(f"cannot tell which integer bound {value!r} stands for")


def _media(responses: dict[str, Any], status: int) -> dict[str, Any]:
    content: dict[str, Any] = responses.get(str(status), {}).get("content", {})
    return content
