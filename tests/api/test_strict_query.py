"""Strict query parameters (API.md part 2, "Strictness"): every list endpoint refuses a query
parameter it does not know with 422 `unknown_parameter`, naming it, the accepted ones and the
near misses; a misspelt `sort_by` or `per_page` never silently answers page 1 in the default order.

The list endpoints are found in the app's own OpenAPI document (every GET answering a collection),
so a new list route that lets an unknown name through fails here: see taskapi.kit.strict_query
for the one-line way to comply.
"""

from __future__ import annotations

from typing import Any

import httpx

from taskapi.tasks.list_params import TaskListParams
from tests.conftest import UserHandle
from tests.task_helpers import TASKS, assert_problem

# Names other APIs use, and plain typos: none of them is a parameter of any list here.
TASK_PARAMETERS = list(TaskListParams.model_fields)
MISSPELLINGS = ("sort_by", "per_page", "page", "skip", "order_by", "page_size", "no_such_thing")


def _is_collection(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """An array, or an object (a page) whose `items` is one."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("type") == "array":
        return True
    return schema.get("properties", {}).get("items", {}).get("type") == "array"


def list_operations(document: dict[str, Any]) -> dict[str, list[str]]:
    """path -> documented query parameters, for every GET whose 200 is a JSON collection."""
    components = document["components"]["schemas"]
    found = {}
    for path, operations in document["paths"].items():
        get = operations.get("get")
        if get is None:
            continue
        content = get["responses"].get("200", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is not None and _is_collection(schema, components):
            parameters = get.get("parameters", [])
            found[path] = [p["name"] for p in parameters if p["in"] == "query"]
    return found


async def _path_values(client: httpx.AsyncClient, user: UserHandle) -> dict[str, str]:
    """A real, visible resource for each path parameter a list route may have."""
    task = await client.post(TASKS, json={"title": "strict"}, headers=user.headers)
    project = await client.post("/api/v1/projects", json={"name": "strict"}, headers=user.headers)
    webhook = await client.post(
        "/api/v1/webhooks",
        json={"url": "https://hooks.example.com/strict", "events": ["task.*"]},
        headers=user.headers,
    )
    for response in (task, project, webhook):
        assert response.status_code == 201, response.text
    return {
        "task_id": str(task.json()["id"]),
        "project_id": str(project.json()["id"]),
        "webhook_id": str(webhook.json()["id"]),
    }


def _url(path: str, values: dict[str, str]) -> str:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    missing = [name for name in names if name not in values]
    assert not missing, f"{path}: give _path_values a resource for {missing}"
    return path.format(**{name: values[name] for name in names})


async def _list_urls(client: httpx.AsyncClient, user: UserHandle) -> dict[str, list[str]]:
    """Every list endpoint's URL (path parameters filled in) -> its documented query names."""
    document = (await client.get("/openapi.json")).json()
    operations = list_operations(document)
    values = await _path_values(client, user)
    return {_url(path, values): accepted for path, accepted in operations.items()}


def _assert_refused(response: httpx.Response, name: str, accepted: list[str]) -> dict[str, Any]:
    body = assert_problem(response, 422, "unknown_parameter")
    assert body["parameter"] == name
    assert body["accepted"] == accepted
    assert set(body["suggestions"]) <= set(accepted)
    assert repr(name) in body["detail"]
    for known in accepted:
        assert known in body["detail"]
    error = next(e for e in body["errors"] if e["loc"] == ["query", name])
    assert error["type"] == "unknown_parameter"
    assert repr(name) in error["msg"]
    return body


async def test_the_list_endpoints_are_found_in_the_document(client, alice):
    urls = await _list_urls(client, alice)
    paths = {url.split("?")[0] for url in urls}
    # Those the contract names, at least: the finder is not looking at nothing.
    for expected in ("/api/v1/tasks", "/api/v1/projects", "/api/v1/trash",
                     "/api/v1/notifications", "/api/v1/webhooks", "/api/v1/events",
                     "/api/v1/users"):  # fmt: skip
        assert expected in paths, expected
    assert any(path.endswith("/activity") for path in paths)
    assert any(path.endswith("/deliveries") for path in paths)
    assert any(path.endswith("/files") for path in paths)
    assert any(path.endswith("/members") for path in paths)
    assert len(urls) >= 11


async def test_every_list_endpoint_refuses_unknown_parameters(client, alice):
    for url, accepted in (await _list_urls(client, alice)).items():
        # /users needs its search; every other list answers with no parameter at all.
        valid = {"search": "ali"} if url == "/api/v1/users" else {}
        plain = await client.get(url, params=valid, headers=alice.headers)
        assert plain.status_code == 200, (url, plain.text)
        for name in MISSPELLINGS:
            response = await client.get(url, params={**valid, name: "2"}, headers=alice.headers)
            _assert_refused(response, name, accepted)


async def test_near_misses_are_suggested(client, alice):
    cases = {
        "sort_by": ["sort"],
        "order_by": ["sort"],
        "order": ["sort"],
        "per_page": ["limit"],
        "page_size": ["limit"],
        "page": ["offset", "cursor"],
        "skip": ["offset", "cursor"],
        "limt": ["limit"],
        "Limit": ["limit"],
        "stauts": ["status"],
        "due-before": ["due_before"],
        "q": ["search"],
        "colour": [],
    }
    for name, expected in cases.items():
        response = await client.get(TASKS, params={name: "1"}, headers=alice.headers)
        body = _assert_refused(response, name, TASK_PARAMETERS)
        assert body["suggestions"] == expected, name
        if expected:
            assert f"did you mean {expected[0]!r}" in body["detail"]
    # Only names the endpoint has are suggested: the feed pages with `since`, not `cursor`.
    feed = await client.get("/api/v1/events", params={"after": "x"}, headers=alice.headers)
    assert _assert_refused(feed, "after", ["since", "limit"])["suggestions"] == ["since"]
    feed = await client.get("/api/v1/events", params={"page": "2"}, headers=alice.headers)
    assert _assert_refused(feed, "page", ["since", "limit"])["suggestions"] == []


async def test_a_misspelt_paging_parameter_never_answers_the_first_page(client, alice, make_task):
    for _ in range(3):
        await make_task(alice)
    first = await client.get(TASKS, params={"limit": 1}, headers=alice.headers)
    assert first.status_code == 200
    for params in ({"limit": 1, "page": 2}, {"per_page": 1}, {"limit": 1, "sort_by": "title"}):
        response = await client.get(TASKS, params=params, headers=alice.headers)
        assert_problem(response, 422, "unknown_parameter")


async def test_several_unknown_names_are_all_listed_with_the_bad_values(client, alice):
    response = await client.get(
        TASKS, params={"limit": "0", "per_page": "5", "sort_by": "title"}, headers=alice.headers
    )
    body = _assert_refused(response, "per_page", TASK_PARAMETERS)
    locs = [error["loc"] for error in body["errors"]]
    assert locs == [["query", "limit"], ["query", "per_page"], ["query", "sort_by"]]
    assert "sort_by" in body["detail"]
    # The same from a list whose parameters FastAPI reads itself.
    response = await client.get(
        "/api/v1/projects", params={"limit": "0", "per_page": "5"}, headers=alice.headers
    )
    body = assert_problem(response, 422, "unknown_parameter")
    assert {tuple(e["loc"]) for e in body["errors"]} == {("query", "limit"), ("query", "per_page")}


async def test_known_parameters_still_work(client, alice, make_task):
    await make_task(alice, title="b", priority="high")
    await make_task(alice, title="a", priority="low")
    page = await client.get(
        TASKS, params={"sort": "title", "limit": 1, "priority": "low,high"}, headers=alice.headers
    )
    assert page.status_code == 200, page.text
    assert [task["title"] for task in page.json()["items"]] == ["a"]
    users = await client.get("/api/v1/users", params={"search": "ali"}, headers=alice.headers)
    assert users.status_code == 200
    assert [user["username"] for user in users.json()["items"]] == ["alice"]


async def test_other_endpoints_ignore_unknown_parameters(client, alice, make_task):
    """The contract asks it of lists only; elsewhere a cache-busting `?_=` stays harmless."""
    task = await make_task(alice)
    one = await client.get(f"{TASKS}/{task['id']}", params={"_": "1"}, headers=alice.headers)
    assert one.status_code == 200
    stats = await client.get(f"{TASKS}/stats", params={"_": "1"}, headers=alice.headers)
    assert stats.status_code == 200
    me = await client.get("/api/v1/users/me", params={"_": "1"}, headers=alice.headers)
    assert me.status_code == 200


async def test_the_refusal_is_documented(client):
    document = (await client.get("/openapi.json")).json()
    for path in list_operations(document):
        assert "422" in document["paths"][path]["get"]["responses"], path
