"""The OpenAPI document has the shape tools rely on: readable operation ids, public operations
marked as such, a server, integer bounds as integers, downloads as bytes."""

from __future__ import annotations

import json
from typing import Any

from taskapi.app import create_app
from tests.conftest import make_settings

# --- the document ---------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def _document() -> dict[str, Any]:
    if "document" not in _CACHE:
        _CACHE["document"] = create_app(make_settings("unused")).openapi()
    return _CACHE["document"]


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in _document()["paths"].items()
        for method, operation in item.items()
    ]


def test_operation_ids_are_the_endpoint_names() -> None:
    ids = {(method.upper(), path): op["operationId"] for path, method, op in _operations()}
    assert len(set(ids.values())) == len(ids)
    assert ids[("GET", "/api/v1/tasks")] == "list_tasks"
    assert ids[("POST", "/api/v1/tasks")] == "create_task"
    assert ids[("GET", "/api/v1/tasks/{task_id}")] == "get_task"
    assert ids[("PATCH", "/api/v1/tasks/{task_id}")] == "update_task"
    assert ids[("GET", "/api/v1/files/{file_id}")] == "download_file"
    assert all(name.isidentifier() and name.islower() for name in ids.values())


def test_public_operations_say_they_need_no_credentials() -> None:
    public = {(m.upper(), p) for p, m, op in _operations() if op["security"] == []}
    assert public == {
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/token"),
        ("POST", "/api/v1/auth/refresh"),
        ("GET", "/ops/health"),
        ("GET", "/ops/ready"),
        ("GET", "/ops/metrics"),
    }
    assert _document()["servers"] == [{"url": "/", "description": ANY_TEXT}]


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


def test_integer_bounds_are_integers() -> None:
    text = json.dumps(_document())
    assert "9.223372036854776e+18" not in text
    assert "9223372036854775807" in text
    task_create = _document()["components"]["schemas"]["TaskCreate"]["properties"]
    assert task_create["assignee_id"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**63 - 1,
    }


def test_a_download_is_documented_as_bytes() -> None:
    content = _document()["paths"]["/api/v1/files/{file_id}"]["get"]["responses"]["200"]["content"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    assert next(iter(content.items())) == ("application/octet-stream", binary)
    assert content["*/*"] == binary
