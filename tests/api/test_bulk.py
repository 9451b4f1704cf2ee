"""PATCH /tasks/bulk and POST /tasks/bulk-status: per-item results, validation, bounded SQL,
and concurrent bulk requests against a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from taskapi.models import Task
from tests.conftest import UserHandle, register_and_login
from tests.task_helpers import ALLOWED, TASKS, assert_problem, assert_task_shape, fetch, task_url

BULK = f"{TASKS}/bulk"
BULK_STATUS = f"{TASKS}/bulk-status"


async def bulk_patch(
    client: httpx.AsyncClient, user: UserHandle, ids: list[int], updates: dict[str, Any]
) -> dict[str, Any]:
    response = await client.patch(
        BULK, json={"task_ids": ids, "updates": updates}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def bulk_status(
    client: httpx.AsyncClient, user: UserHandle, ids: list[int], target: str
) -> dict[str, Any]:
    response = await client.post(
        BULK_STATUS, json={"task_ids": ids, "target_status": target}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_id(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {item["task_id"]: item for item in result["results"]}


@pytest.fixture
async def carol(make_user) -> UserHandle:
    return await make_user("carol")


# --- bulk PATCH --------------------------------------------------------------------------------


async def test_bulk_patch_applies_and_stores_every_field(client, alice, bob, make_task):
    tasks = [await make_task(alice, title=f"t{i}") for i in range(3)]
    ids = [t["id"] for t in tasks]
    updates = {
        "priority": "high",
        "description": "from bulk",
        "due_date": "2030-05-06",
        "tags": [" Bulk ", "BULK", "x"],
        "assignee_id": bob.id,
    }
    result = await bulk_patch(client, alice, ids, updates)
    assert result == {
        "total": 3,
        "successful": 3,
        "failed": 0,
        # The status was not touched: no status change is reported.
        "results": [{"task_id": i, "success": True} for i in ids],
    }
    for before in tasks:
        response = await client.get(task_url(before["id"]), headers=alice.headers)
        after = response.json()
        assert_task_shape(after)
        assert after["priority"] == "high"
        assert after["description"] == "from bulk"
        assert after["due_date"] == "2030-05-06"
        assert after["tags"] == ["bulk", "x"]
        assert after["assignee_id"] == bob.id
        assert after["title"] == before["title"]
        assert after["version"] == before["version"] + 1
        assert response.headers["etag"] != f'"{before["version"]}"'
        assert after["updated_at"] >= before["updated_at"]
    assert await fetch(client, bob, ids[0]) == await fetch(client, alice, ids[0])


async def test_results_in_input_order_and_duplicates_once(client, alice, make_task):
    a, b, c = [(await make_task(alice))["id"] for _ in range(3)]
    result = await bulk_patch(client, alice, [c, a, c, b, a], {"priority": "low"})
    assert [item["task_id"] for item in result["results"]] == [c, a, b]
    assert (result["total"], result["successful"], result["failed"]) == (3, 3, 0)
    for task_id in (a, b, c):
        task = await fetch(client, alice, task_id)
        assert (task["priority"], task["version"]) == ("low", 2)


async def test_invisible_and_missing_ids_fail_per_item(client, alice, bob, make_task):
    mine = await make_task(alice, title="mine")
    theirs = await make_task(bob, title="theirs")
    missing = 2**62
    result = await bulk_patch(
        client, alice, [theirs["id"], mine["id"], missing], {"title": "renamed"}
    )
    assert result["total"] == 3
    assert (result["successful"], result["failed"]) == (1, 2)
    assert result["results"] == [
        {"task_id": theirs["id"], "success": False, "error": "task_not_found"},
        {"task_id": mine["id"], "success": True},
        {"task_id": missing, "success": False, "error": "task_not_found"},
    ]
    assert (await fetch(client, alice, mine["id"]))["title"] == "renamed"
    assert await fetch(client, bob, theirs["id"]) == theirs


async def test_bulk_patch_status_follows_workflow_per_item(client, alice, make_task):
    todo = await make_task(alice)
    done = await make_task(alice, status="done")
    started = await make_task(alice, status="in_progress")
    ids = [todo["id"], done["id"], started["id"]]
    result = await bulk_patch(client, alice, ids, {"status": "in_progress", "priority": "urgent"})
    items = by_id(result)
    assert items[todo["id"]] == {
        "task_id": todo["id"],
        "success": True,
        "previous_status": "todo",
        "new_status": "in_progress",
    }
    assert items[done["id"]] == {
        "task_id": done["id"],
        "success": False,
        "error": "invalid_transition",
        "previous_status": "done",
    }
    # Already in that status: a PATCH keeping the status is fine, the other field still applies,
    # and no status change is reported.
    assert items[started["id"]] == {"task_id": started["id"], "success": True}
    assert (result["successful"], result["failed"]) == (2, 1)
    assert await fetch(client, alice, done["id"]) == done
    for task_id in (todo["id"], started["id"]):
        task = await fetch(client, alice, task_id)
        assert (task["status"], task["priority"]) == ("in_progress", "urgent")


async def test_bulk_patch_completed_alias_sets_and_clears_completed_at(client, alice, make_task):
    ids = [(await make_task(alice))["id"] for _ in range(2)]
    result = await bulk_patch(client, alice, ids, {"completed": True})
    assert [item["new_status"] for item in result["results"]] == ["done", "done"]
    for task_id in ids:
        task = await fetch(client, alice, task_id)
        assert task["completed"] is True
        assert task["completed_at"] is not None
    await bulk_patch(client, alice, ids, {"completed": False})
    for task_id in ids:
        task = await fetch(client, alice, task_id)
        assert (task["status"], task["completed"], task["completed_at"]) == ("todo", False, None)
        assert task["version"] == 3


async def test_version_bumps_only_on_tasks_that_change(client, alice, make_task):
    same = await make_task(alice, priority="high")
    other = await make_task(alice, priority="low")
    result = await bulk_patch(client, alice, [same["id"], other["id"]], {"priority": "high"})
    assert result["successful"] == 2
    assert await fetch(client, alice, same["id"]) == same
    changed = await fetch(client, alice, other["id"])
    assert (changed["priority"], changed["version"]) == ("high", other["version"] + 1)
    nothing = await bulk_patch(client, alice, [same["id"], other["id"]], {})
    assert nothing["successful"] == 2
    assert await fetch(client, alice, other["id"]) == changed


async def test_assignee_bulk_reassign_is_forbidden_per_item(client, alice, bob, carol, make_task):
    assigned = await make_task(alice, title="assigned", assignee_id=bob.id)
    own = await make_task(bob, title="own")
    result = await bulk_patch(
        client, bob, [assigned["id"], own["id"]], {"assignee_id": carol.id, "priority": "low"}
    )
    assert result["results"] == [
        {
            "task_id": assigned["id"],
            "success": False,
            "error": "forbidden",
            "previous_status": "todo",
        },
        {"task_id": own["id"], "success": True},
    ]
    assert await fetch(client, alice, assigned["id"]) == assigned
    assert (await fetch(client, carol, own["id"]))["assignee_id"] == carol.id


async def test_assignee_bulk_updates_fields_of_assigned_tasks(client, alice, bob, make_task):
    assigned = await make_task(alice, assignee_id=bob.id)
    result = await bulk_patch(client, bob, [assigned["id"]], {"due_date": "2029-12-31"})
    assert result["successful"] == 1
    assert (await fetch(client, alice, assigned["id"]))["due_date"] == "2029-12-31"


async def test_bulk_unassign_removes_access(client, alice, bob, make_task):
    ids = [(await make_task(alice, assignee_id=bob.id))["id"] for _ in range(2)]
    result = await bulk_patch(client, alice, ids, {"assignee_id": None})
    assert result["successful"] == 2
    for task_id in ids:
        assert_problem(await client.get(task_url(task_id), headers=bob.headers), 404)
    listing = await client.get(TASKS, headers=bob.headers)
    assert listing.json()["total"] == 0


async def test_invalid_updates_reject_the_whole_request(client, alice, make_task):
    tasks = [await make_task(alice) for _ in range(2)]
    for updates in [
        {"title": None},
        {"title": "   "},
        {"priority": "asap"},
        {"priority": None},
        {"status": "finished"},
        {"tags": ["a,b"]},
        {"tags": [f"t{i}" for i in range(21)]},
        {"due_date": "tomorrow"},
        {"status": "done", "completed": False},
        {"assignee_id": 0},
    ]:
        response = await client.patch(
            BULK,
            json={"task_ids": [t["id"] for t in tasks], "updates": {"priority": "low", **updates}},
            headers=alice.headers,
        )
        assert response.status_code == 422, (updates, response.text)
        assert_problem(response, 422)
    for task in tasks:
        assert await fetch(client, alice, task["id"]) == task


async def test_unknown_assignee_rejects_the_whole_request(client, alice, make_task):
    tasks = [await make_task(alice) for _ in range(2)]
    response = await client.patch(
        BULK,
        json={
            "task_ids": [t["id"] for t in tasks],
            "updates": {"assignee_id": 2**62, "title": "x"},
        },
        headers=alice.headers,
    )
    assert_problem(response, 422, "unknown_assignee")
    for task in tasks:
        assert await fetch(client, alice, task["id"]) == task


# --- validation of the id list -----------------------------------------------------------------


def _bodies(ids: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("PATCH", BULK, {"task_ids": ids, "updates": {"priority": "low"}}),
        ("POST", BULK_STATUS, {"task_ids": ids, "target_status": "done"}),
    ]


async def test_bad_id_lists_are_422(client, alice, make_task):
    task = await make_task(alice)
    bad_lists = [[], list(range(1, 502)), [0], [-1], ["x"], [2**63], [task["id"], 1.5], None, "1"]
    for ids in bad_lists:
        for method, url, body in _bodies(ids):
            response = await client.request(method, url, json=body, headers=alice.headers)
            assert response.status_code == 422, (url, ids, response.text)
            assert assert_problem(response, 422)["errors"]
    assert await fetch(client, alice, task["id"]) == task


async def test_five_hundred_ids_are_accepted(client, alice, make_task):
    task = await make_task(alice)
    ids = [task["id"], *range(2**60, 2**60 + 499)]
    for method, url, body in _bodies(ids):
        response = await client.request(method, url, json=body, headers=alice.headers)
        assert response.status_code == 200, response.text
        result = response.json()
        assert (result["total"], result["successful"], result["failed"]) == (500, 1, 499)
    task = await fetch(client, alice, task["id"])
    assert (task["priority"], task["status"]) == ("low", "done")


async def test_malformed_bulk_bodies_are_422(client, alice):
    for body in [{"task_ids": [1]}, {"updates": {}}, {"task_ids": [1], "updates": None}, [1, 2]]:
        response = await client.patch(BULK, json=body, headers=alice.headers)
        assert response.status_code == 422, (body, response.text)
        assert_problem(response, 422)
    for body in [
        {"task_ids": [1]},
        {"target_status": "done"},
        {"task_ids": [1], "target_status": "closed"},
        {"task_ids": [1], "target_status": None},
    ]:
        response = await client.post(BULK_STATUS, json=body, headers=alice.headers)
        assert response.status_code == 422, (body, response.text)
        assert_problem(response, 422)


async def test_bulk_needs_authentication(client):
    assert_problem(await client.patch(BULK, json={"task_ids": [1], "updates": {}}), 401)
    body = {"task_ids": [1], "target_status": "done"}
    assert_problem(await client.post(BULK_STATUS, json=body), 401)


# --- bulk-status -------------------------------------------------------------------------------


async def test_bulk_status_mixed_todo_and_done(client, alice, make_task):
    todo = await make_task(alice)
    done = await make_task(alice, status="done")
    todo2 = await make_task(alice)
    result = await bulk_status(client, alice, [todo["id"], done["id"], todo2["id"]], "in_progress")
    assert result["total"] == 3
    assert (result["successful"], result["failed"]) == (2, 1)
    assert result["results"] == [
        {
            "task_id": todo["id"],
            "success": True,
            "previous_status": "todo",
            "new_status": "in_progress",
        },
        {
            "task_id": done["id"],
            "success": False,
            "error": "invalid_transition",
            "previous_status": "done",
        },
        {
            "task_id": todo2["id"],
            "success": True,
            "previous_status": "todo",
            "new_status": "in_progress",
        },
    ]
    assert await fetch(client, alice, done["id"]) == done
    for task in (todo, todo2):
        after = await fetch(client, alice, task["id"])
        assert (after["status"], after["version"]) == ("in_progress", task["version"] + 1)


@pytest.mark.parametrize("start", ["todo", "in_progress", "done", "cancelled"])
async def test_bulk_status_follows_the_workflow(client, alice, make_task, start):
    tasks: dict[str, dict[str, Any]] = {}
    for target in ("todo", "in_progress", "done", "cancelled"):
        task = await make_task(alice, title=f"{start}->{target}")
        if start != "todo":
            moved = await client.post(
                f"{task_url(task['id'])}/transition", json={"status": start}, headers=alice.headers
            )
            assert moved.status_code == 200, moved.text
            task = moved.json()
        tasks[target] = task
    for target, task in tasks.items():
        result = await bulk_status(client, alice, [task["id"]], target)
        [item] = result["results"]
        after = await fetch(client, alice, task["id"])
        if (start, target) in ALLOWED:
            assert item == {
                "task_id": task["id"],
                "success": True,
                "previous_status": start,
                "new_status": target,
            }
            assert (after["status"], after["version"]) == (target, task["version"] + 1)
        else:
            # Including asking for the status the task already has.
            assert item["error"] == "invalid_transition", item
            assert after == task


async def test_bulk_status_sets_and_clears_completed_at(client, alice, make_task):
    ids = [(await make_task(alice))["id"] for _ in range(2)]
    await bulk_status(client, alice, ids, "done")
    for task_id in ids:
        task = await fetch(client, alice, task_id)
        assert (task["status"], task["completed"]) == ("done", True)
        assert task["completed_at"] is not None
    await bulk_status(client, alice, ids, "todo")
    for task_id in ids:
        task = await fetch(client, alice, task_id)
        assert (task["status"], task["completed"], task["completed_at"]) == ("todo", False, None)
    stats = (await client.get(f"{TASKS}/stats", headers=alice.headers)).json()
    assert stats["by_status"]["todo"] == 2


async def test_bulk_status_by_assignee_and_stranger(client, alice, bob, carol, make_task):
    task = await make_task(alice, assignee_id=bob.id)
    stranger = await bulk_status(client, carol, [task["id"]], "done")
    assert stranger["results"] == [
        {"task_id": task["id"], "success": False, "error": "task_not_found"}
    ]
    assert await fetch(client, alice, task["id"]) == task
    assignee = await bulk_status(client, bob, [task["id"]], "done")
    assert assignee["successful"] == 1
    assert (await fetch(client, alice, task["id"]))["status"] == "done"


# --- a bounded number of SQL statements --------------------------------------------------------


async def _insert_tasks(db_session, owner: UserHandle, assignee: UserHandle, n: int) -> list[int]:
    rows = [{"owner_id": owner.id, "assignee_id": assignee.id, "title": f"b{i}"} for i in range(n)]
    ids = list((await db_session.scalars(insert(Task).returning(Task.id), rows)).all())
    await db_session.commit()
    return ids


async def test_bulk_sql_statements_do_not_grow_with_ids(client, alice, bob, db_session, sql_log):
    warm = await _insert_tasks(db_session, alice, bob, 1)
    few = await _insert_tasks(db_session, alice, bob, 2)
    many = await _insert_tasks(db_session, alice, bob, 200)
    # First requests pay one-off costs (the caller's lookup before the principal cache holds it,
    # asyncpg's type introspection): not what is being compared.
    await bulk_patch(client, alice, warm, {"priority": "urgent", "tags": ["b"]})
    await bulk_status(client, alice, warm, "done")
    counts: dict[tuple[str, int], int] = {}
    for ids in (few, many):
        sql_log.clear()
        result = await bulk_patch(client, alice, ids, {"priority": "urgent", "tags": ["b"]})
        counts["patch", len(ids)] = sql_log.count
        assert result["successful"] == len(ids)
        sql_log.clear()
        result = await bulk_status(client, alice, ids, "done")
        counts["status", len(ids)] = sql_log.count
        assert result["successful"] == len(ids)
    assert counts["patch", 2] == counts["patch", 200], counts
    assert counts["status", 2] == counts["status", 200], counts
    assert max(counts.values()) <= 10, counts
    # The changes really happened, and the assignee was told about each task once per change.
    for task_id in (many[0], many[-1]):
        task = await fetch(client, bob, task_id)
        assert (task["priority"], task["status"], task["version"]) == ("urgent", "done", 3)
    notes = await client.get("/api/v1/notifications", params={"limit": 1}, headers=bob.headers)
    assert notes.json()["total"] == 2 * (1 + 2 + 200)


# --- concurrency (real commits) ----------------------------------------------------------------


async def test_concurrent_overlapping_bulk_status_requests(live_client):
    owner = await register_and_login(live_client, "bulkowner")
    ids = []
    for i in range(30):
        response = await live_client.post(TASKS, json={"title": f"c{i}"}, headers=owner.headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    first_ids = ids[:20]  # todo -> in_progress
    second_ids = ids[10:][::-1]  # todo/in_progress -> done, in the opposite order

    async def send(task_ids: list[int], target: str) -> httpx.Response:
        return await live_client.post(
            BULK_STATUS,
            json={"task_ids": task_ids, "target_status": target},
            headers=owner.headers,
        )

    async def current() -> dict[int, dict[str, Any]]:
        response = await live_client.get(TASKS, params={"limit": 100}, headers=owner.headers)
        return {task["id"]: task for task in response.json()["items"]}

    for _ in range(3):
        before = await current()
        first, second = await asyncio.wait_for(
            asyncio.gather(send(first_ids, "in_progress"), send(second_ids, "done")), timeout=20
        )
        assert first.status_code == 200, first.text
        assert second.status_code == 200, second.text
        first_items, second_items = by_id(first.json()), by_id(second.json())
        after = await current()
        for task_id in ids:
            task, bumps = after[task_id], after[task_id]["version"] - before[task_id]["version"]
            if task_id in second_items:
                # Whichever ran first, done is reachable from todo and from in_progress.
                assert second_items[task_id]["success"] is True, second_items[task_id]
                assert task["status"] == "done"
                assert task["completed_at"] is not None
                if task_id in first_items:
                    # in_progress is refused after done; before it, it succeeds.
                    item = first_items[task_id]
                    assert item["success"] == (item["previous_status"] == "todo"), item
                    assert bumps == (2 if item["success"] else 1)
                else:
                    assert bumps == 1
            else:
                assert first_items[task_id]["success"] is True
                assert (task["status"], bumps) == ("in_progress", 1)
        # Back to todo for the next round (done -> todo, in_progress -> todo).
        reset = await send(ids, "todo")
        assert reset.status_code == 200, reset.text
        assert reset.json()["successful"] == 30
