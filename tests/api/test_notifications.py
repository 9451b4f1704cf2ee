"""Notifications: listing, read state, and which changes notify whom (assigned / updated)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import UserHandle
from tests.task_helpers import RFC3339_UTC, TASKS, assert_problem, etag, fetch, task_url

NOTIFICATIONS = "/api/v1/notifications"
NOTIFICATION_FIELDS = {"id", "kind", "task_id", "project_id", "message", "read", "created_at"}


async def page(client: httpx.AsyncClient, user: UserHandle, **params: Any) -> dict[str, Any]:
    response = await client.get(NOTIFICATIONS, params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"items", "total", "limit", "offset", "next_cursor"}
    for item in body["items"]:
        assert set(item) == NOTIFICATION_FIELDS
        assert RFC3339_UTC.match(item["created_at"]), item["created_at"]
    return body


async def kinds(client: httpx.AsyncClient, user: UserHandle) -> list[tuple[str, int | None]]:
    """(kind, task_id) of every notification of `user`, newest first."""
    body = await page(client, user, limit=100)
    return [(item["kind"], item["task_id"]) for item in body["items"]]


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def carol(make_user) -> UserHandle:
    return await make_user("carol")


@pytest.fixture
async def shared(client, alice, bob, make_task) -> dict[str, Any]:
    """A task of alice's assigned to bob; bob's task_assigned notification is marked read."""
    task = await make_task(alice, title="shared work", tags=["docs"], assignee_id=bob.id)
    response = await client.post(f"{NOTIFICATIONS}/read-all", headers=bob.headers)
    assert response.status_code == 204
    return task


async def unread(client: httpx.AsyncClient, user: UserHandle) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await page(client, user, unread="true", limit=100))["items"]
    return items


# --- task_assigned -----------------------------------------------------------------------------


async def test_create_with_assignee_notifies_the_assignee(client, alice, bob, carol, make_task):
    task = await make_task(alice, title="Write the release notes", assignee_id=bob.id)
    body = await page(client, bob)
    assert body["total"] == 1
    assert body["limit"] == 20
    assert body["offset"] == 0
    [item] = body["items"]
    assert item["kind"] == "task_assigned"
    assert item["task_id"] == task["id"]
    assert item["read"] is False
    assert "Write the release notes" in item["message"]
    assert "alice" in item["message"]
    assert (await page(client, alice))["total"] == 0
    assert (await page(client, carol))["total"] == 0


async def test_assign_endpoint_notifies_the_assignee(client, alice, bob, make_task):
    task = await make_task(alice)
    await ok(
        await client.post(
            f"{task_url(task['id'])}/assign", json={"assignee_id": bob.id}, headers=alice.headers
        )
    )
    assert await kinds(client, bob) == [("task_assigned", task["id"])]


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
async def test_patch_or_put_assignee_notifies(client, alice, bob, make_task, method):
    task = await make_task(alice, title="delegated")
    await ok(
        await client.request(
            method,
            task_url(task["id"]),
            json={"title": "delegated", "assignee_id": bob.id},
            headers=alice.headers,
        )
    )
    assert await kinds(client, bob) == [("task_assigned", task["id"])]


async def test_bulk_assign_notifies_once_per_task(client, alice, bob, make_task):
    first = await make_task(alice)
    second = await make_task(alice)
    result = await ok(
        await client.patch(
            f"{TASKS}/bulk",
            json={"task_ids": [first["id"], second["id"]], "updates": {"assignee_id": bob.id}},
            headers=alice.headers,
        )
    )
    assert result["successful"] == 2
    assert sorted(await kinds(client, bob)) == [
        ("task_assigned", first["id"]),
        ("task_assigned", second["id"]),
    ]


async def test_reassign_notifies_only_the_new_assignee(client, alice, bob, carol, shared):
    await ok(
        await client.post(
            f"{task_url(shared['id'])}/assign",
            json={"assignee_id": carol.id},
            headers=alice.headers,
        )
    )
    assert await kinds(client, carol) == [("task_assigned", shared["id"])]
    assert await unread(client, bob) == []
    # From now on the owner's changes notify carol, not bob.
    await ok(await client.patch(task_url(shared["id"]), json={"title": "x"}, headers=alice.headers))
    assert await kinds(client, carol) == [
        ("task_updated", shared["id"]),
        ("task_assigned", shared["id"]),
    ]
    assert await unread(client, bob) == []


async def test_assigning_yourself_never_notifies(client, alice, make_task):
    task = await make_task(alice, assignee_id=alice.id)
    other = await make_task(alice)
    await ok(
        await client.post(
            f"{task_url(other['id'])}/assign", json={"assignee_id": alice.id}, headers=alice.headers
        )
    )
    await ok(await client.patch(task_url(task["id"]), json={"title": "t"}, headers=alice.headers))
    assert (await page(client, alice))["total"] == 0


async def test_assigning_the_same_user_again_does_not_notify_again(client, alice, bob, shared):
    for _ in range(2):
        response = await client.post(
            f"{task_url(shared['id'])}/assign", json={"assignee_id": bob.id}, headers=alice.headers
        )
        assert (await ok(response))["version"] == shared["version"]
    patched = await ok(
        await client.patch(
            task_url(shared["id"]), json={"assignee_id": bob.id}, headers=alice.headers
        )
    )
    assert patched["version"] == shared["version"]
    assert await kinds(client, bob) == [("task_assigned", shared["id"])]
    assert await unread(client, bob) == []


async def test_bulk_with_same_assignee_and_other_changes_is_an_update_not_an_assignment(
    client, alice, bob, shared, make_task
):
    fresh = await make_task(alice)
    result = await ok(
        await client.patch(
            f"{TASKS}/bulk",
            json={
                "task_ids": [shared["id"], fresh["id"]],
                "updates": {"assignee_id": bob.id, "priority": "high"},
            },
            headers=alice.headers,
        )
    )
    assert result["successful"] == 2
    assert sorted((n["kind"], n["task_id"]) for n in await unread(client, bob)) == [
        ("task_assigned", fresh["id"]),
        ("task_updated", shared["id"]),
    ]


# --- task_updated ------------------------------------------------------------------------------

Action = Callable[[httpx.AsyncClient, UserHandle, int, int], Awaitable[httpx.Response]]


def _patch(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    return c.patch(task_url(t), json={"priority": "urgent"}, headers=u.headers)


def _put(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    body = {"title": "replaced", "assignee_id": a}
    return c.put(task_url(t), json=body, headers=u.headers)


def _transition(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    return c.post(f"{task_url(t)}/transition", json={"status": "in_progress"}, headers=u.headers)


def _add_tag(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    return c.post(f"{task_url(t)}/tags", json=["urgent"], headers=u.headers)


def _remove_tag(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    return c.delete(f"{task_url(t)}/tags/docs", headers=u.headers)


def _bulk_patch(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    body = {"task_ids": [t], "updates": {"due_date": "2031-01-02"}}
    return c.patch(f"{TASKS}/bulk", json=body, headers=u.headers)


def _bulk_status(c: httpx.AsyncClient, u: UserHandle, t: int, a: int) -> Awaitable[httpx.Response]:
    return c.post(
        f"{TASKS}/bulk-status", json={"task_ids": [t], "target_status": "done"}, headers=u.headers
    )


ACTIONS: dict[str, Action] = {
    "patch": _patch,
    "put": _put,
    "transition": _transition,
    "add-tag": _add_tag,
    "remove-tag": _remove_tag,
    "bulk-patch": _bulk_patch,
    "bulk-status": _bulk_status,
}


def _assert_succeeded(name: str, response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    if name.startswith("bulk"):
        assert response.json()["successful"] == 1, response.text


@pytest.mark.parametrize("name", list(ACTIONS))
async def test_owner_change_notifies_the_assignee(client, alice, bob, carol, shared, name):
    before = await fetch(client, alice, shared["id"])
    response = await ACTIONS[name](client, alice, shared["id"], bob.id)
    _assert_succeeded(name, response)
    assert (await fetch(client, alice, shared["id"]))["version"] == before["version"] + 1
    [item] = await unread(client, bob)
    assert item["kind"] == "task_updated"
    assert item["task_id"] == shared["id"]
    assert "alice" in item["message"]
    assert (await page(client, alice))["total"] == 0
    assert (await page(client, carol))["total"] == 0


@pytest.mark.parametrize("name", list(ACTIONS))
async def test_assignee_own_change_notifies_nobody(client, alice, bob, shared, name):
    response = await ACTIONS[name](client, bob, shared["id"], bob.id)
    _assert_succeeded(name, response)
    assert (await fetch(client, alice, shared["id"]))["version"] == shared["version"] + 1
    assert await unread(client, bob) == []
    assert (await page(client, alice))["total"] == 0


async def test_owner_change_to_unassigned_task_notifies_nobody(client, alice, bob, make_task):
    task = await make_task(alice)
    await ok(await client.patch(task_url(task["id"]), json={"title": "x"}, headers=alice.headers))
    await ok(await client.post(f"{task_url(task['id'])}/tags", json=["a"], headers=alice.headers))
    assert (await page(client, alice))["total"] == 0
    assert (await page(client, bob))["total"] == 0


async def test_change_that_changes_nothing_does_not_notify(client, alice, bob, shared):
    same_put = {"title": "shared work", "tags": ["docs"], "assignee_id": bob.id}
    for method, path, body in [
        ("PATCH", "", {"title": "shared work", "tags": ["DOCS"]}),
        ("PATCH", "", {}),
        ("PUT", "", same_put),
        ("POST", "/tags", ["docs"]),
        ("POST", "/assign", {"assignee_id": bob.id}),
    ]:
        response = await client.request(
            method, task_url(shared["id"]) + path, json=body, headers=alice.headers
        )
        assert (await ok(response))["version"] == shared["version"], (method, path, body)
    assert await unread(client, bob) == []


async def test_bulk_that_changes_nothing_does_not_notify(client, alice, bob, shared):
    result = await ok(
        await client.patch(
            f"{TASKS}/bulk",
            json={"task_ids": [shared["id"]], "updates": {"title": "shared work"}},
            headers=alice.headers,
        )
    )
    assert result["successful"] == 1
    assert await unread(client, bob) == []


async def test_failed_change_creates_no_notification(client, alice, bob, shared):
    stale = {"If-Match": etag(99)}
    cases: list[tuple[str, str, Any, int, dict[str, str]]] = [
        ("POST", "/transition", {"status": "todo"}, 409, {}),
        ("PATCH", "", {"title": "late"}, 412, stale),
        ("PUT", "", {"title": "late"}, 412, stale),
        ("POST", "/tags", ["late"], 412, stale),
        ("DELETE", "/tags/docs", None, 412, stale),
        ("POST", "/assign", {"assignee_id": bob.id}, 412, stale),
        ("PATCH", "", {"title": "x", "assignee_id": 2**62}, 422, {}),
        ("PATCH", "", {"title": "x", "priority": "asap"}, 422, {}),
        ("POST", "/tags", [f"t{i}" for i in range(20)], 422, {}),
        ("DELETE", "/tags/nope", None, 404, {}),
    ]
    before = await fetch(client, alice, shared["id"])
    for method, path, body, status, headers in cases:
        response = await client.request(
            method, task_url(shared["id"]) + path, json=body, headers={**alice.headers, **headers}
        )
        assert_problem(response, status)
    assert await fetch(client, alice, shared["id"]) == before
    assert await unread(client, bob) == []

    # done -> in_progress is refused, and the title sent with it does not change either.
    await ok(
        await client.patch(task_url(shared["id"]), json={"status": "done"}, headers=alice.headers)
    )
    assert (await client.post(f"{NOTIFICATIONS}/read-all", headers=bob.headers)).status_code == 204
    done = await fetch(client, alice, shared["id"])
    refused = await client.patch(
        task_url(shared["id"]), json={"status": "in_progress", "title": "x"}, headers=alice.headers
    )
    assert_problem(refused, 409, "invalid_transition")
    assert await fetch(client, alice, shared["id"]) == done
    assert await unread(client, bob) == []


async def test_bulk_items_that_fail_do_not_notify(client, alice, bob, shared, make_task):
    done = await make_task(alice, assignee_id=bob.id, status="done")
    todo = await make_task(alice, assignee_id=bob.id)
    await client.post(f"{NOTIFICATIONS}/read-all", headers=bob.headers)
    result = await ok(
        await client.post(
            f"{TASKS}/bulk-status",
            json={"task_ids": [done["id"], todo["id"]], "target_status": "cancelled"},
            headers=alice.headers,
        )
    )
    assert [r["success"] for r in result["results"]] == [False, True]
    assert [(n["kind"], n["task_id"]) for n in await unread(client, bob)] == [
        ("task_updated", todo["id"])
    ]


async def test_stranger_never_receives_notifications(client, alice, bob, carol, shared):
    for name in ACTIONS:
        await ACTIONS[name](client, alice, shared["id"], bob.id)
        response = await ACTIONS[name](client, carol, shared["id"], bob.id)
        if name.startswith("bulk"):
            assert response.json()["results"][0]["error"] == "task_not_found"
        else:
            assert_problem(response, 404, "task_not_found")
    await client.post(
        f"{task_url(shared['id'])}/assign", json={"assignee_id": bob.id}, headers=carol.headers
    )
    assert (await page(client, carol))["total"] == 0
    assert len(await unread(client, bob)) >= 1


async def test_notifications_survive_task_deletion(client, alice, bob, shared):
    await ok(await client.patch(task_url(shared["id"]), json={"title": "x"}, headers=alice.headers))
    assert (await client.delete(task_url(shared["id"]), headers=alice.headers)).status_code == 204
    body = await page(client, bob)
    assert body["total"] == 2
    assert [item["task_id"] for item in body["items"]] == [None, None]


# --- listing -----------------------------------------------------------------------------------


async def _assign_many(client, alice, bob, make_task, count: int) -> list[int]:
    return [(await make_task(alice, title=f"n{i}", assignee_id=bob.id))["id"] for i in range(count)]


async def test_list_is_newest_first_and_paginates(client, alice, bob, make_task):
    task_ids = await _assign_many(client, alice, bob, make_task, 5)
    everything = await page(client, bob)
    assert everything["total"] == 5
    assert [item["task_id"] for item in everything["items"]] == task_ids[::-1]
    ids = [item["id"] for item in everything["items"]]
    assert ids == sorted(ids, reverse=True)

    first = await page(client, bob, limit=2)
    second = await page(client, bob, limit=2, offset=2)
    third = await page(client, bob, limit=2, offset=4)
    beyond = await page(client, bob, limit=2, offset=10)
    assert (first["limit"], second["offset"]) == (2, 2)
    assert {p["total"] for p in (first, second, third, beyond)} == {5}
    seen = [item["id"] for p in (first, second, third) for item in p["items"]]
    assert seen == ids
    assert beyond["items"] == []


async def test_unread_filter(client, alice, bob, make_task):
    task_ids = await _assign_many(client, alice, bob, make_task, 3)
    everything = (await page(client, bob))["items"]
    oldest = everything[-1]
    marked = await ok(
        await client.post(f"{NOTIFICATIONS}/{oldest['id']}/read", headers=bob.headers)
    )
    assert marked == {**oldest, "read": True}

    only_unread = await page(client, bob, unread="true")
    assert only_unread["total"] == 2
    assert [item["task_id"] for item in only_unread["items"]] == task_ids[:0:-1]
    assert all(item["read"] is False for item in only_unread["items"])
    only_read = await page(client, bob, unread="false")
    assert only_read["total"] == 1
    assert only_read["items"] == [marked]
    assert (await page(client, bob))["total"] == 3


async def test_bad_list_parameters_are_422(client, bob):
    for params in [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"offset": -1},
        {"offset": "x"},
        {"unread": "perhaps"},
    ]:
        response = await client.get(NOTIFICATIONS, params=params, headers=bob.headers)
        assert response.status_code == 422, (params, response.text)
        assert assert_problem(response, 422)["errors"]


async def test_notifications_need_authentication(client, bob):
    assert_problem(await client.get(NOTIFICATIONS), 401)
    assert_problem(await client.post(f"{NOTIFICATIONS}/read-all"), 401)
    assert_problem(await client.post(f"{NOTIFICATIONS}/1/read"), 401)


# --- read state --------------------------------------------------------------------------------


async def test_mark_read_is_idempotent(client, alice, bob, make_task):
    await _assign_many(client, alice, bob, make_task, 2)
    newest = (await page(client, bob))["items"][0]
    url = f"{NOTIFICATIONS}/{newest['id']}/read"
    first = await ok(await client.post(url, headers=bob.headers))
    assert first["read"] is True
    assert {k: v for k, v in first.items() if k != "read"} == {
        k: v for k, v in newest.items() if k != "read"
    }
    second = await ok(await client.post(url, headers=bob.headers))
    assert second == first
    assert (await page(client, bob, unread="true"))["total"] == 1


async def test_cannot_mark_someone_elses_notification(client, alice, bob, carol, make_task):
    await _assign_many(client, alice, bob, make_task, 1)
    [item] = (await page(client, bob))["items"]
    response = await client.post(f"{NOTIFICATIONS}/{item['id']}/read", headers=carol.headers)
    problem = assert_problem(response, 404, "notification_not_found")
    missing = await client.post(f"{NOTIFICATIONS}/{2**62}/read", headers=carol.headers)
    assert_problem(missing, 404, "notification_not_found")
    assert missing.json()["detail"] == problem["detail"]
    assert (await page(client, bob, unread="true"))["items"] == [item]
    assert (await page(client, carol))["total"] == 0


async def test_mark_read_with_invalid_id_is_422(client, bob):
    for bad_id in ["0", "-1", "abc", str(2**63)]:
        response = await client.post(f"{NOTIFICATIONS}/{bad_id}/read", headers=bob.headers)
        assert response.status_code == 422, (bad_id, response.text)
        assert_problem(response, 422)


async def test_read_all_affects_only_your_own(client, alice, bob, carol, make_task):
    await _assign_many(client, alice, bob, make_task, 3)
    await _assign_many(client, alice, carol, make_task, 2)
    response = await client.post(f"{NOTIFICATIONS}/read-all", headers=bob.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert (await page(client, bob, unread="true"))["total"] == 0
    assert (await page(client, bob, unread="false"))["total"] == 3
    assert all(item["read"] for item in (await page(client, bob))["items"])
    assert (await page(client, carol, unread="true"))["total"] == 2
    again = await client.post(f"{NOTIFICATIONS}/read-all", headers=bob.headers)
    assert again.status_code == 204
    # New notifications after read-all arrive unread.
    [new_task] = await _assign_many(client, alice, bob, make_task, 1)
    assert [n["task_id"] for n in await unread(client, bob)] == [new_task]
