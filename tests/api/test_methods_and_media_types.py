"""What a client gets for a method a path lacks (405 with the path's whole `Allow`), for a body
of the wrong media type (415), and from a 204 (no content type)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import UserHandle
from tests.task_helpers import TASKS, assert_problem

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def documented_methods(app: FastAPI) -> dict[str, set[str]]:
    """Every path of the OpenAPI document, with the methods it documents."""
    return {
        path: {method.upper() for method in operations}
        for path, operations in app.openapi()["paths"].items()
    }


def concrete(path: str) -> str:
    """A request path for a template (the method is checked before any id is looked up)."""
    return re.sub(r"\{[a-z_]+\}", "1", path)


async def test_every_undocumented_method_is_a_405_naming_the_documented_ones(
    client: httpx.AsyncClient, app: FastAPI, alice: UserHandle
) -> None:
    """Fixed paths included: `PUT /tasks/stats` is not an update of a task with the id `stats`."""
    for path, methods in documented_methods(app).items():
        # HEAD is left out of the document and answered like any method a path lacks.
        for method in sorted(set(HTTP_METHODS) - methods):
            response = await client.request(method, concrete(path), headers=alice.headers)
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"].split(", ") == [
                m for m in HTTP_METHODS if m in methods
            ], (method, path)
            if method != "HEAD":
                assert_problem(response, 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", f"{TASKS}/stats", "GET"),
        ("POST", f"{TASKS}/bulk", "PATCH"),
        ("GET", f"{TASKS}/bulk-status", "POST"),
        ("POST", f"{TASKS}/42", "GET, PUT, PATCH, DELETE"),
        ("PUT", "/api/v1/users/me", "GET, PATCH, DELETE"),
    ],
)
async def test_a_405_lists_every_method_of_the_path(
    client: httpx.AsyncClient, alice: UserHandle, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, json={}, headers=alice.headers)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


async def test_a_fixed_path_is_never_read_as_a_task_id(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    for method, path in [("PUT", "stats"), ("DELETE", "stats"), ("GET", "bulk"), ("PUT", "bulk")]:
        response = await client.request(
            method, f"{TASKS}/{path}", json={"title": "x"}, headers=alice.headers
        )
        body = assert_problem(response, 405, "method_not_allowed")
        assert "errors" not in body  # no complaint about a task id
    stats = await client.get(f"{TASKS}/stats", headers=alice.headers)
    assert stats.status_code == 200


BODIES = {
    "form": {"data": {"title": "From a form"}},
    "multipart": {"files": {"file": ("t.txt", b"title")}},
    "text": {
        "content": b'{"title": "JSON sent as text"}',
        "headers": {"content-type": "text/plain"},
    },
}


@pytest.mark.parametrize("kind", BODIES)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", TASKS),
        ("PATCH", f"{TASKS}/1"),
        ("PATCH", f"{TASKS}/bulk"),
        ("POST", "/api/v1/auth/login"),
        ("PATCH", "/api/v1/users/me"),
    ],
)
async def test_a_json_endpoint_given_another_media_type_is_a_415(
    client: httpx.AsyncClient, alice: UserHandle, kind: str, method: str, path: str
) -> None:
    options = dict(BODIES[kind])
    headers = {**alice.headers, **options.pop("headers", {})}
    response = await client.request(method, path, headers=headers, **options)
    body = assert_problem(response, 415, "unsupported_media_type")
    assert "application/json" in body["detail"]


async def test_json_with_a_charset_or_a_json_suffix_is_json(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post(
            TASKS,
            content=json.dumps({"title": content_type}).encode(),
            headers={**alice.headers, "content-type": content_type},
        )
        assert response.status_code == 201, response.text


async def test_the_form_and_multipart_endpoints_still_take_their_media_types(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    token = await client.post(
        "/api/v1/auth/token", data={"username": alice.username, "password": alice.password}
    )
    assert token.status_code == 200, token.text
    task = (await client.post(TASKS, json={"title": "with a file"}, headers=alice.headers)).json()
    upload = await client.post(
        f"{TASKS}/{task['id']}/files",
        files={"file": ("notes.txt", b"plain text", "text/plain")},
        headers=alice.headers,
    )
    assert upload.status_code == 201, upload.text


async def test_a_204_has_no_content_type(client: httpx.AsyncClient, alice: UserHandle) -> None:
    task = (await client.post(TASKS, json={"title": "short-lived"}, headers=alice.headers)).json()
    responses = [
        await client.post("/api/v1/notifications/read-all", headers=alice.headers),
        await client.delete(f"{TASKS}/{task['id']}", headers=alice.headers),
        await client.post(
            "/api/v1/auth/logout",
            json={"refresh_token": alice.refresh_token},
            headers=alice.headers,
        ),
    ]
    for response in responses:
        assert response.status_code == 204, response.text
        assert "content-type" not in response.headers, response.headers
        assert response.content == b""
        assert response.headers["x-content-type-options"] == "nosniff"
