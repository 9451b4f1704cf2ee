"""Shapes used only to document the API: the problem+json body and per-status error responses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
# statuses that are specific to them. `tests/test_schemathesis.py` holds the app to the result.

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_JSON = "application/json"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

_HEADER_DOCS: dict[str, dict[str, Any]] = {
    "ETag": {"description": "The entity tag of the task's current version", "required": True},
    "Location": {"description": "The URL of the resource", "required": True},
    "WWW-Authenticate": {"description": "`Bearer` challenge", "required": True},
    "Retry-After": {"description": "Seconds to wait before retrying", "required": True},
}


def _header(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**_HEADER_DOCS[name], "schema": schema or {"type": "string"}}


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


def finish_schema(schema: dict[str, Any], *, api_prefix: str) -> None:
    """Make the documented responses the ones the app really sends (see the module comment)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    for path, _method, operation in _operations(schema):
        responses: dict[str, Any] = operation.setdefault("responses", {})
        statuses = {int(code) for code in responses if code.isdigit()}
        # Errors are problem+json, never FastAPI's `application/json` HTTPValidationError.
        errors = {s for s in statuses if s >= 400 and PROBLEM_CONTENT_TYPE in _media(responses, s)}
        body = operation.get("requestBody", {}).get("content", {})
        if _JSON in body:
            errors.add(400)  # malformed JSON
        if body:
            errors.add(413)  # every body has a size limit (limits.py)
        if body or operation.get("parameters"):
            errors.add(422)
        if operation.get("security"):
            errors |= {401, 429}  # every authenticated request spends from the caller's bucket
        if path.startswith(api_prefix):
            errors.add(503)  # the database (or storage) is unreachable
        for status in sorted(errors):
            _set_problem(responses, status)
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


def _media(responses: dict[str, Any], status: int) -> dict[str, Any]:
    content: dict[str, Any] = responses.get(str(status), {}).get("content", {})
    return content
