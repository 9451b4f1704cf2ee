"""Every route and every scope (API.md part 2, "Personal access tokens"): a personal access token
reaches exactly the routes its scopes allow, is refused the rest with 403 `insufficient_scope`
and the RFC 6750 challenge, and never reaches token or account management; a login reaches all.

`CONTRACT` is written from the contract, not read from the code: a route declaring the wrong
scope fails here, and so does a new route nobody classified."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from tests.conftest import UserHandle
from tests.task_helpers import assert_problem

TOKENS = "/api/v1/tokens"
SCOPES = (
    "tasks:read",
    "tasks:write",
    "projects:read",
    "projects:write",
    "events:read",
    "webhooks:write",
    "notifications",
)
ANY = "any valid token"
LOGIN = "a login only"
PUBLIC = "no token"

_R, _W = "tasks:read", "tasks:write"
CONTRACT: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/tasks"): _R,
    ("POST", "/api/v1/tasks"): _W,
    ("GET", "/api/v1/tasks/stats"): _R,
    ("PATCH", "/api/v1/tasks/bulk"): _W,
    ("POST", "/api/v1/tasks/bulk-status"): _W,
    ("POST", "/api/v1/tasks/batch"): _W,
    ("GET", "/api/v1/tasks/{task_id}"): _R,
    ("PATCH", "/api/v1/tasks/{task_id}"): _W,
    ("PUT", "/api/v1/tasks/{task_id}"): _W,
    ("DELETE", "/api/v1/tasks/{task_id}"): _W,
    ("POST", "/api/v1/tasks/{task_id}/transition"): _W,
    ("POST", "/api/v1/tasks/{task_id}/assign"): _W,
    ("POST", "/api/v1/tasks/{task_id}/tags"): _W,
    ("DELETE", "/api/v1/tasks/{task_id}/tags/{tag}"): _W,
    ("POST", "/api/v1/tasks/{task_id}/files"): _W,
    ("GET", "/api/v1/tasks/{task_id}/files"): _R,
    ("GET", "/api/v1/files/{file_id}"): _R,
    ("DELETE", "/api/v1/files/{file_id}"): _W,
    ("GET", "/api/v1/trash"): _R,
    ("POST", "/api/v1/tasks/{task_id}/restore"): _W,
    ("DELETE", "/api/v1/tasks/{task_id}/force"): _W,
    ("GET", "/api/v1/projects"): "projects:read",
    ("POST", "/api/v1/projects"): "projects:write",
    ("GET", "/api/v1/projects/{project_id}"): "projects:read",
    ("PATCH", "/api/v1/projects/{project_id}"): "projects:write",
    ("DELETE", "/api/v1/projects/{project_id}"): "projects:write",
    ("GET", "/api/v1/projects/{project_id}/members"): "projects:read",
    ("PUT", "/api/v1/projects/{project_id}/members/{user_id}"): "projects:write",
    ("DELETE", "/api/v1/projects/{project_id}/members/{user_id}"): "projects:write",
    ("GET", "/api/v1/events"): "events:read",
    ("GET", "/api/v1/events/stream"): "events:read",
    ("GET", "/api/v1/tasks/{task_id}/activity"): "events:read",
    ("GET", "/api/v1/notifications"): "notifications",
    ("POST", "/api/v1/notifications/read-all"): "notifications",
    ("POST", "/api/v1/notifications/{notification_id}/read"): "notifications",
    ("GET", "/api/v1/webhooks"): "webhooks:write",
    ("POST", "/api/v1/webhooks"): "webhooks:write",
    ("GET", "/api/v1/webhooks/{webhook_id}"): "webhooks:write",
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): "webhooks:write",
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): "webhooks:write",
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"): "webhooks:write",
    ("POST", "/api/v1/webhooks/{webhook_id}/ping"): "webhooks:write",
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): "webhooks:write",
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): "webhooks:write",
    # Who you are: any token may ask (a script checks its token this way).
    ("GET", "/api/v1/auth/me"): ANY,
    ("GET", "/api/v1/users/me"): ANY,
    ("GET", "/api/v1/users"): ANY,
    # The account and its credentials: only a login.
    ("PATCH", "/api/v1/users/me"): LOGIN,
    ("DELETE", "/api/v1/users/me"): LOGIN,
    ("POST", "/api/v1/auth/logout"): LOGIN,
    ("POST", "/api/v1/tokens"): LOGIN,
    ("GET", "/api/v1/tokens"): LOGIN,
    ("DELETE", "/api/v1/tokens/{token_id}"): LOGIN,
    ("POST", "/api/v1/auth/register"): PUBLIC,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/token"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
}


def api_routes(app: FastAPI) -> list[tuple[str, str, APIRoute]]:
    return [
        (method, route.path, route)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in sorted(route.methods)
    ]


def declared(dependant: Dependant) -> list[str]:
    """What a route declares, read from its dependency tree: each `requires(...)` (its scopes, or
    ANY) and each `login_only`."""
    found: list[str] = []
    for sub in dependant.dependencies:
        name = getattr(sub.call, "__name__", "")
        if name == "_check_scopes":
            found.append(",".join(sub.own_oauth_scopes or []) or ANY)
        elif name == "_refuse_personal_tokens":
            found.append(LOGIN)
        found.extend(declared(sub))
    return found


def test_every_route_declares_what_a_token_needs_as_the_contract_says(app: FastAPI) -> None:
    routes = api_routes(app)
    assert {(method, path) for method, path, _ in routes} == set(CONTRACT), (
        "classify new routes in CONTRACT (and declare requires(...) or login_only on them)"
    )
    for method, path, route in routes:
        expected = CONTRACT[(method, path)]
        declarations = declared(route.dependant)
        if expected == PUBLIC:
            assert declarations == [], (method, path)
        else:
            assert declarations == [expected], (method, path, declarations)


def test_the_openapi_document_lists_each_operations_scope(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for (method, path), expected in CONTRACT.items():
        operation = paths[path][method.lower()]
        if expected == PUBLIC:
            assert operation["security"] == [], path
        else:
            needed = [] if expected in (ANY, LOGIN) else [expected]
            assert operation["security"] == [{"OAuth2PasswordBearer": needed}], (method, path)
            assert "403" in operation["responses"], (method, path)


async def create_token(
    client: httpx.AsyncClient, user: UserHandle, scopes: list[str], **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        TOKENS, json={"name": "script", "scopes": scopes, **extra}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def concrete(path: str, ids: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: str(ids[match.group(1)]), path)


def is_refused(response: httpx.Response) -> bool:
    return response.status_code == 403 and response.json().get("code") == "insufficient_scope"


@pytest.mark.parametrize("scope", [*SCOPES, "every scope"])
async def test_scope_matrix(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any, scope: str
) -> None:
    """Each route called with a token of one scope: refused exactly when the contract says, with
    the challenge naming the missing scope; allowed calls get the route's own answer."""
    scopes = list(SCOPES) if scope == "every scope" else [scope]
    token = (await create_token(client, alice, scopes))["token"]
    headers = {"Authorization": f"Bearer {token}"}
    task = await make_task(alice, title="matrix")
    ids = {
        "task_id": task["id"],
        "tag": "none",
        "file_id": 2**31,
        "project_id": 2**31,
        "user_id": alice.id,
        "notification_id": 2**31,
        "webhook_id": 2**31,
        "delivery_id": 2**31,
        "token_id": 2**31,
    }
    for (method, path), needed in CONTRACT.items():
        if needed == PUBLIC:
            continue
        url = concrete(path, ids)
        # An invalid cursor answers the stream at once instead of opening it.
        params = {"since": "not-a-cursor"} if path.endswith("/stream") else None
        response = await client.request(method, url, headers=headers, params=params, json={})
        allowed = needed == ANY or (needed != LOGIN and needed in scopes)
        if allowed:
            assert not is_refused(response), (method, path, response.text)
            assert response.status_code != 401, (method, path, response.text)
        else:
            body = assert_problem(response, 403, "insufficient_scope")
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="taskapi", error="insufficient_scope"')
            if needed == LOGIN:
                assert body["required_scope"] is None
            else:
                assert f'scope="{needed}"' in challenge, (method, path)
                assert body["required_scope"] == needed
    # Nothing above could delete the task through a token lacking tasks:write.
    still = await client.get(f"/api/v1/tasks/{task['id']}", headers=alice.headers)
    assert still.status_code == (404 if _W in scopes else 200)


async def test_a_login_reaches_every_route(client: httpx.AsyncClient, alice: UserHandle) -> None:
    for (method, path), needed in CONTRACT.items():
        if needed in (PUBLIC, LOGIN) or path.endswith("/stream"):
            continue
        url = concrete(path, dict.fromkeys(re.findall(r"\{(\w+)\}", path), 2**31))
        response = await client.request(method, url, headers=alice.headers, json={})
        assert not is_refused(response), (method, path)
        assert response.status_code != 401, (method, path)
