"""POST /api/v1/tasks/batch (API.md part 2, "Batch writes"): operations in order by the single-task
rules, temp ids, per-operation problems, atomic all-or-nothing, one token per 10 operations,
Idempotency-Key, events, concurrency, and the statements it costs."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection

from taskapi.kit.ratelimit import LocalBuckets, Policy
from tests.conftest import MakeUser, StatementLog, UserHandle, register_and_login
from tests.event_helpers import now_cursor, settle
from tests.task_helpers import TASKS, assert_problem, assert_task_shape, etag, task_url

BATCH = f"{TASKS}/batch"
PROJECTS = "/api/v1/projects"


async def batch(
    client: httpx.AsyncClient, user: UserHandle, *operations: dict[str, Any], **body: Any
) -> dict[str, Any]:
    response = await client.post(
        BATCH, json={"operations": list(operations), **body}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    assert [r["index"] for r in result["results"]] == list(range(len(operations)))
    return result


def without_request_id(problem: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in problem.items() if k != "request_id"}


async def get(client: httpx.AsyncClient, user: UserHandle, task_id: int) -> httpx.Response:
    return await client.get(task_url(task_id), headers=user.headers)


async def project_with(
    client: httpx.AsyncClient, admin: UserHandle, **members: tuple[UserHandle, str]
) -> int:
    created = await client.post(
        PROJECTS, json={"name": f"p{admin.id}-{len(members)}"}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    project_id: int = created.json()["id"]
    for member, role in members.values():
        added = await client.put(
            f"{PROJECTS}/{project_id}/members/{member.id}",
            json={"role": role},
            headers=admin.headers,
        )
        assert added.status_code == 200, added.text
    return project_id


# --- applying operations in order ----------------------------------------------------------------


async def test_operations_apply_in_order_and_temp_ids_name_created_tasks(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any
) -> None:
    existing = await make_task(alice, title="existing")
    result = await batch(
        client,
        alice,
        {"op": "create", "temp_id": "a", "task": {"title": "  first ", "tags": ["X", "x"]}},
        {"op": "create", "temp_id": "b", "task": {"title": "second", "completed": True}},
        {"op": "transition", "temp_id": "a", "status": "in_progress"},
        {"op": "update", "temp_id": "a", "changes": {"priority": "high"}, "if_match": etag(2)},
        {"op": "update", "task_id": existing["id"], "changes": {"description": "d"}},
        {"op": "delete", "temp_id": "b"},
        {"op": "create", "task": {"title": "no temp id"}},
    )
    a, b = result["temp_ids"]["a"], result["temp_ids"]["b"]
    assert set(result["temp_ids"]) == {"a", "b"}
    items = result["results"]
    assert all(item["success"] for item in items), items
    assert [item["task_id"] for item in items[:6]] == [a, b, a, a, existing["id"], b]
    assert "error" not in items[0]
    first = items[0]["task"]
    assert_task_shape(first)
    assert (first["title"], first["tags"], first["version"]) == ("first", ["x"], 1)
    assert items[1]["task"]["status"] == "done"
    assert (items[2]["task"]["status"], items[2]["task"]["version"]) == ("in_progress", 2)
    assert (items[3]["task"]["priority"], items[3]["task"]["version"]) == ("high", 3)
    assert items[4]["task"]["description"] == "d"
    assert "task" not in items[5]  # a delete answers no task, as DELETE answers 204
    # What the batch answered is what the API shows afterwards.
    shown = await get(client, alice, a)
    assert shown.json() == items[3]["task"]
    assert shown.headers["etag"] == etag(3)
    assert (await get(client, alice, b)).status_code == 404
    trash = await client.get("/api/v1/trash", headers=alice.headers)
    assert [t["id"] for t in trash.json()["items"]] == [b]
    third = items[6]["task"]["id"]
    assert (await get(client, alice, third)).json()["title"] == "no temp id"


async def test_unknown_forward_and_failed_temp_ids_fail_their_operation(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    result = await batch(
        client,
        alice,
        {"op": "transition", "temp_id": "later", "status": "done"},  # created after it
        {"op": "create", "temp_id": "later", "task": {"title": "t", "assignee_id": 2**31}},
        {"op": "delete", "temp_id": "later"},  # its create failed
        {"op": "update", "temp_id": "never", "changes": {"title": "x"}},
        {"op": "create", "temp_id": "ok", "task": {"title": "fine"}},
    )
    codes = [item.get("error", {}).get("code") for item in result["results"]]
    assert codes == [
        "temp_id_not_found",
        "unknown_assignee",
        "temp_id_not_found",
        "temp_id_not_found",
        None,
    ]
    problem = result["results"][0]["error"]
    assert (problem["status"], problem["type"]) == (404, "urn:taskapi:problem:temp_id_not_found")
    assert "task_id" not in result["results"][0]
    assert list(result["temp_ids"]) == ["ok"]


async def test_each_failure_is_the_problem_its_own_endpoint_answers(
    client: httpx.AsyncClient, make_user: MakeUser, make_task: Any
) -> None:
    """Same status, code, title, detail and extras as the single-task endpoint, for the same
    request on the same state."""
    alice, bob, carol = await make_user(), await make_user(), await make_user()
    theirs = await make_task(bob, title="bob's")
    assigned = await make_task(bob, title="assigned to alice", assignee_id=alice.id)
    mine = await make_task(alice, title="mine")
    viewer_of = await project_with(client, bob, alice=(alice, "viewer"))
    in_project = await make_task(bob, title="project task", project_id=viewer_of)
    editor_of = await project_with(client, carol, alice=(alice, "editor"))
    cases: list[tuple[dict[str, Any], str, str, Any]] = [
        (
            {"op": "update", "task_id": theirs["id"], "changes": {"title": "x"}},
            "PATCH",
            task_url(theirs["id"]),
            {"title": "x"},
        ),
        (
            {"op": "transition", "task_id": mine["id"], "status": "todo"},
            "POST",
            task_url(mine["id"]) + "/transition",
            {"status": "todo"},
        ),
        (
            {"op": "update", "task_id": mine["id"], "changes": {"title": "x"}, "if_match": '"7"'},
            "PATCH",
            task_url(mine["id"]),
            {"title": "x"},
        ),
        ({"op": "delete", "task_id": assigned["id"]}, "DELETE", task_url(assigned["id"]), None),
        (
            {"op": "update", "task_id": assigned["id"], "changes": {"assignee_id": None}},
            "PATCH",
            task_url(assigned["id"]),
            {"assignee_id": None},
        ),
        (
            {"op": "update", "task_id": mine["id"], "changes": {"assignee_id": 2**31}},
            "PATCH",
            task_url(mine["id"]),
            {"assignee_id": 2**31},
        ),
        (
            {"op": "update", "task_id": in_project["id"], "changes": {"title": "x"}},
            "PATCH",
            task_url(in_project["id"]),
            {"title": "x"},
        ),
        (
            {"op": "create", "task": {"title": "x", "project_id": viewer_of}},
            "POST",
            TASKS,
            {"title": "x", "project_id": viewer_of},
        ),
        (  # the same project again: refused again
            {"op": "create", "task": {"title": "y", "project_id": viewer_of}},
            "POST",
            TASKS,
            {"title": "y", "project_id": viewer_of},
        ),
        (
            {
                "op": "create",
                "task": {"title": "x", "project_id": editor_of, "assignee_id": bob.id},
            },
            "POST",
            TASKS,
            {"title": "x", "project_id": editor_of, "assignee_id": bob.id},
        ),
        (
            {"op": "create", "task": {"title": "x", "project_id": 2**40}},
            "POST",
            TASKS,
            {"title": "x", "project_id": 2**40},
        ),
    ]
    result = await batch(client, alice, *(op for op, *_ in cases))
    expected_codes = [
        "task_not_found",
        "invalid_transition",
        "precondition_failed",
        "forbidden",
        "forbidden",
        "unknown_assignee",
        "insufficient_role",
        "insufficient_role",
        "insufficient_role",
        "assignee_not_member",
        "project_not_found",
    ]
    assert [item["error"]["code"] for item in result["results"]] == expected_codes
    for item, (_op, method, url, body) in zip(result["results"], cases, strict=True):
        assert item["success"] is False
        headers = dict(alice.headers)
        if "if_match" in _op:
            headers["If-Match"] = _op["if_match"]
        single = await client.request(method, url, json=body, headers=headers)
        problem = assert_problem(single, item["error"]["status"], item["error"]["code"])
        assert without_request_id(item["error"]) == without_request_id(problem), item
        assert item["error"]["request_id"]
    # Nothing changed: the tasks the failed operations named are as they were.
    assert (await get(client, alice, mine["id"])).json()["version"] == 1
    assert (await get(client, alice, assigned["id"])).json()["version"] == 1


async def test_a_failed_operation_leaves_nothing_and_the_others_apply(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any
) -> None:
    task = await make_task(alice, title="t")
    result = await batch(
        client,
        alice,
        {"op": "update", "task_id": task["id"], "changes": {"title": "one"}},
        # Valid fields, then an assignee who does not exist: the whole change is refused.
        {"op": "update", "task_id": task["id"], "changes": {"title": "two", "assignee_id": 2**31}},
        {"op": "update", "task_id": task["id"], "changes": {"priority": "low"}},
        {"op": "update", "task_id": task["id"], "changes": {"assignee_id": bob.id}},
    )
    assert [item["success"] for item in result["results"]] == [True, False, True, True]
    after = (await get(client, alice, task["id"])).json()
    assert (after["title"], after["priority"], after["assignee_id"]) == ("one", "low", bob.id)
    assert after["version"] == 4
    # Assignment notifies, as POST /tasks/{id}/assign or PATCH would.
    notes = await client.get("/api/v1/notifications", headers=bob.headers)
    assert [(n["kind"], n["task_id"]) for n in notes.json()["items"]] == [
        ("task_assigned", task["id"])
    ]


async def test_an_assignee_may_edit_but_not_delete_through_a_batch(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any
) -> None:
    task = await make_task(alice, assignee_id=bob.id)
    result = await batch(
        client,
        bob,
        {"op": "transition", "task_id": task["id"], "status": "done"},
        {"op": "delete", "task_id": task["id"]},
    )
    assert result["results"][0]["success"] is True
    assert result["results"][1]["error"]["code"] == "forbidden"
    assert result["results"][1]["error"]["status"] == 403
    assert (await get(client, alice, task["id"])).json()["status"] == "done"


async def test_project_tasks_follow_roles_and_assignees_are_told(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle
) -> None:
    project_id = await project_with(client, alice, bob=(bob, "editor"))
    result = await batch(
        client,
        alice,
        {"op": "create", "temp_id": "p", "task": {"title": "shared", "project_id": project_id}},
        {"op": "update", "temp_id": "p", "changes": {"assignee_id": bob.id}},
        {"op": "create", "task": {"title": "mine", "assignee_id": bob.id}},
    )
    assert all(item["success"] for item in result["results"])
    shared = result["temp_ids"]["p"]
    assert result["results"][1]["task"]["project_id"] == project_id
    # bob sees the project's task (a member) and his own assignment, and was told of both.
    assert (await get(client, bob, shared)).status_code == 200
    notes = (await client.get("/api/v1/notifications", headers=bob.headers)).json()["items"]
    assigned = sorted(n["task_id"] for n in notes if n["kind"] == "task_assigned")
    assert assigned == sorted([shared, result["results"][2]["task_id"]])
    # bob, an editor, may delete the project's task through a batch too.
    deleted = await batch(client, bob, {"op": "delete", "task_id": shared})
    assert deleted["results"][0]["success"] is True


# --- atomic --------------------------------------------------------------------------------------


async def test_an_atomic_batch_that_fails_leaves_nothing(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any
) -> None:
    task = await make_task(alice, title="kept", tags=["k"])
    stats_before = (await client.get(f"{TASKS}/stats", headers=alice.headers)).json()
    operations = [
        {"op": "create", "temp_id": "n", "task": {"title": "new", "assignee_id": bob.id}},
        {"op": "update", "task_id": task["id"], "changes": {"title": "changed", "tags": []}},
        {"op": "transition", "temp_id": "n", "status": "done"},
        {"op": "delete", "task_id": task["id"]},
        {"op": "transition", "task_id": task["id"], "status": "done"},  # trashed: 404
    ]
    response = await client.post(
        BATCH, json={"operations": operations, "atomic": True}, headers=alice.headers
    )
    problem = assert_problem(response, 409, "batch_failed")
    assert problem["index"] == 4
    assert problem["error"]["code"] == "task_not_found"
    assert problem["error"]["status"] == 404
    # Nothing applied: the task as it was, no new task, stats as they were, nobody told.
    assert (await get(client, alice, task["id"])).json() == task
    listed = (await client.get(TASKS, headers=alice.headers)).json()
    assert [t["id"] for t in listed["items"]] == [task["id"]]
    hits = REGISTRY.get_sample_value("taskapi_stats_cache_hits_total") or 0.0
    assert (await client.get(f"{TASKS}/stats", headers=alice.headers)).json() == stats_before
    # Still answered from the cache: the rolled-back batch invalidated nobody's stats.
    assert REGISTRY.get_sample_value("taskapi_stats_cache_hits_total") == hits + 1
    notes = await client.get("/api/v1/notifications", headers=bob.headers)
    assert notes.json()["items"] == []

    # The same batch without its failing operation applies whole.
    applied = await client.post(
        BATCH, json={"operations": operations[:4], "atomic": True}, headers=alice.headers
    )
    assert applied.status_code == 200, applied.text
    assert all(item["success"] for item in applied.json()["results"])
    assert (await client.get(f"{TASKS}/stats", headers=alice.headers)).json()["total"] == 1


async def test_an_atomic_batch_fails_at_its_first_failure(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    response = await client.post(
        BATCH,
        json={
            "atomic": True,
            "operations": [
                {"op": "create", "temp_id": "a", "task": {"title": "a"}},
                {"op": "create", "task": {"title": "b", "assignee_id": 2**31}},
                {"op": "update", "temp_id": "zz", "changes": {"title": "c"}},
            ],
        },
        headers=alice.headers,
    )
    problem = assert_problem(response, 409, "batch_failed")
    assert (problem["index"], problem["error"]["code"]) == (1, "unknown_assignee")
    assert problem["error"]["errors"][0]["type"] == "unknown_user"
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 0


# --- the request as a whole ----------------------------------------------------------------------


async def test_a_malformed_batch_is_refused_whole(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    create = {"op": "create", "temp_id": "a", "task": {"title": "a"}}
    bad = {
        "duplicate temp ids": [create, {"op": "create", "temp_id": "a", "task": {"title": "b"}}],
        "both targets": [{"op": "delete", "task_id": 1, "temp_id": "a"}],
        "no target": [{"op": "delete"}],
        "null target": [{"op": "delete", "task_id": None, "temp_id": "a"}],
        "null if_match": [{"op": "delete", "task_id": 1, "if_match": None}],
        "unknown op": [{"op": "merge", "task_id": 1}],
        "invalid task": [create, {"op": "create", "task": {"title": "   "}}],
        "invalid change": [{"op": "update", "task_id": 1, "changes": {"status": "nope"}}],
        "bad temp id": [{"op": "create", "temp_id": "a b", "task": {"title": "a"}}],
        "too many": [create] + [{"op": "create", "task": {"title": "x"}}] * 500,
        "none": [],
    }
    for label, operations in bad.items():
        response = await client.post(BATCH, json={"operations": operations}, headers=alice.headers)
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"], label
    invalid = await client.post(
        BATCH, json={"operations": bad["invalid task"]}, headers=alice.headers
    )
    assert invalid.json()["errors"][0]["loc"][:5] == ["body", "operations", 1, "create", "task"]
    duplicate = await client.post(
        BATCH, json={"operations": bad["duplicate temp ids"]}, headers=alice.headers
    )
    assert duplicate.json()["errors"] == [
        {
            "loc": ["body", "operations"],
            "msg": "temp_id 'a' is declared by two creates",
            "type": "duplicate_temp_id",
        }
    ]
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 0


# --- cost ----------------------------------------------------------------------------------------


async def test_500_creates_cost_a_few_statements_and_changes_one_each(
    client: httpx.AsyncClient, alice: UserHandle, sql_log: StatementLog
) -> None:
    creates = [{"op": "create", "task": {"title": f"t{i}", "tags": ["a"]}} for i in range(500)]
    # Warm: the login's principal cached, the connection's JSON and array types introspected.
    await batch(client, alice, creates[0])
    sql_log.clear()
    created = await batch(client, alice, *creates)
    # The tasks, their events (whose trigger wakes the feed): whatever the number of creates.
    assert sql_log.count <= 3, sql_log.statements
    ids = [item["task_id"] for item in created["results"]]
    assert len(set(ids)) == 500
    # Into a project, with an assignee: its checks run once for all of them.
    project_id = await project_with(client, alice)
    in_project = {"title": "p", "project_id": project_id, "assignee_id": alice.id}
    sql_log.clear()
    await batch(client, alice, *({"op": "create", "task": in_project} for _ in range(500)))
    assert sql_log.count <= 11, sql_log.statements
    sql_log.clear()
    await batch(
        client, alice, *({"op": "transition", "task_id": i, "status": "done"} for i in ids[:50])
    )
    # One read locking every named task, then per operation its UPDATE (the locked read is what
    # it changes); the events of all 50 in one statement at the end (which wakes the feed).
    # Each operation is checked before it writes, so none needs a savepoint of its own.
    assert sql_log.count <= 1 + 50 + 1, sql_log.statements
    assert sql_log.savepoints <= 1, sql_log.savepoints
    # A task named twice is read again for its second operation (the first changed it), and a
    # refused operation costs only its checks.
    sql_log.clear()
    twice = await batch(
        client,
        alice,
        {"op": "transition", "task_id": ids[0], "status": "todo"},
        {"op": "transition", "task_id": ids[0], "status": "done"},
        {"op": "transition", "task_id": ids[0], "status": "done"},  # done -> done: refused
    )
    assert [r["success"] for r in twice["results"]] == [True, True, False]
    assert twice["results"][2]["error"]["code"] == "invalid_transition"
    assert sql_log.count <= 1 + (1 + 1) + (1 + 1) + 1 + 2, sql_log.statements


def _project_holds(log: StatementLog) -> list[str]:
    return [s for s in log.statements if "FROM projects" in s and "FOR KEY SHARE" in s]


async def test_a_move_holds_its_target_project_once_per_transaction(
    client: httpx.AsyncClient, alice: UserHandle, sql_log: StatementLog
) -> None:
    project_id = await project_with(client, alice)
    other_id = await project_with(client, alice, bob=(alice, "admin"))
    ids = [
        (await client.post(TASKS, json={"title": f"t{i}"}, headers=alice.headers)).json()["id"]
        for i in range(21)
    ]
    # PATCH: held by its dependency before the task is locked (the lock order), and not asked
    # for again when the change is checked.
    sql_log.clear()
    moved = await client.patch(
        task_url(ids[0]), json={"project_id": project_id}, headers=alice.headers
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["project_id"] == project_id
    assert len(_project_holds(sql_log)) == 1, sql_log.statements
    # A batch: each target held once at its start, however many operations move tasks there.
    sql_log.clear()
    moves = [
        {"op": "update", "task_id": task_id, "changes": {"project_id": target}}
        for i, task_id in enumerate(ids[1:])
        for target in [(project_id, other_id)[i % 2]]
    ]
    result = await batch(client, alice, *moves)
    assert all(item["success"] for item in result["results"]), result
    assert len(_project_holds(sql_log)) == 2, sql_log.statements
    listed = await client.get(TASKS, params={"project_id": other_id}, headers=alice.headers)
    assert listed.json()["total"] == 10
    # The next transaction holds nothing yet: its own move asks again.
    sql_log.clear()
    back = await client.patch(
        task_url(ids[1]), json={"project_id": other_id}, headers=alice.headers
    )
    assert back.status_code == 200, back.text
    assert len(_project_holds(sql_log)) == 1, sql_log.statements


async def test_one_rate_limit_token_per_ten_operations(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    from tests.api.test_ratelimit import http, limited_settings, running

    settings = limited_settings(rate_limit_user_burst=20, rate_limit_user_per_minute=1)
    async with running(settings, connection) as application, http(application) as c:

        async def send(n: int) -> httpx.Response:
            operations = [{"op": "create", "task": {"title": f"t{i}"}} for i in range(n)]
            return await c.post(BATCH, json={"operations": operations}, headers=alice.headers)

        costs = {1: 1, 10: 1, 11: 2, 95: 10}
        left = 20
        started = time.monotonic()  # the bucket refills a token a minute from its first take
        for n, cost in costs.items():
            response = await send(n)
            assert response.status_code == 200, response.text
            left -= cost
            assert response.headers["ratelimit"].startswith(f'"user";r={left};'), (n, left)
        assert left == 6
        # 70 operations cost 7: the request's own token is taken, the other 6 can't be paid.
        refused = await send(70)
        assert_problem(refused, 429, "rate_limited")
        # Until the one missing token is back: a minute, less what refilled since the first take
        # (on a slow machine these requests take seconds).
        elapsed = time.monotonic() - started
        assert 60 - elapsed <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-policy"] == '"user";q=20;w=1200'
        # All or nothing: the request's own token went, the 6 it could not pay stayed.
        assert refused.headers["ratelimit"].startswith('"user";r=5;')
        ok = await c.get(TASKS, headers=alice.headers)
        assert ok.headers["ratelimit"].startswith('"user";r=4;')
        assert ok.json()["total"] == 1 + 10 + 11 + 95  # the refused batch applied nothing


def test_without_redis_a_cost_is_taken_all_or_nothing_too() -> None:
    buckets = LocalBuckets()
    policy = Policy("user", burst=10, per_minute=60)  # one token a second
    paid = buckets.take("k", policy, 8)
    assert (paid.allowed, paid.remaining) == (True, 2)
    refused = buckets.take("k", policy, 5)
    assert (refused.allowed, refused.remaining) == (False, 2)
    assert refused.retry_after == 3  # until 5 are there, not 1
    assert buckets.take("k", policy, 2).allowed


# --- idempotency ---------------------------------------------------------------------------------


async def test_a_retried_batch_replays_and_applies_nothing_twice(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any
) -> None:
    task = await make_task(alice)
    body = {
        "operations": [
            {"op": "create", "temp_id": "n", "task": {"title": "once"}},
            {"op": "transition", "task_id": task["id"], "status": "done"},
            {"op": "transition", "task_id": task["id"], "status": "done"},  # fails
        ]
    }
    headers = {**alice.headers, "Idempotency-Key": "batch-retry-1"}
    first = await client.post(BATCH, json=body, headers=headers)
    assert first.status_code == 200, first.text
    again = await client.post(BATCH, json=body, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 2
    assert (await get(client, alice, task["id"])).json()["version"] == 2

    # An atomic failure is an answer too: replayed, and still nothing applied.
    atomic = {**body, "atomic": True}
    headers["Idempotency-Key"] = "batch-retry-2"
    failed = await client.post(BATCH, json=atomic, headers=headers)
    assert_problem(failed, 409, "batch_failed")
    replayed = await client.post(BATCH, json=atomic, headers=headers)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == failed.content
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 2


async def test_an_answer_over_a_mebibyte_is_replayed_too(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    long = "d" * 10_000
    ids: list[int] = []
    for part in range(2):
        created = await batch(
            client,
            alice,
            *(
                {"op": "create", "task": {"title": f"{part}-{i}", "description": long}}
                for i in range(60)
            ),
        )
        ids += [item["task_id"] for item in created["results"]]
    body = {"operations": [{"op": "transition", "task_id": i, "status": "done"} for i in ids]}
    headers = {**alice.headers, "Idempotency-Key": "big-answer"}
    first = await client.post(BATCH, json=body, headers=headers)
    assert first.status_code == 200
    assert len(first.content) > 1024 * 1024
    again = await client.post(BATCH, json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert (await get(client, alice, ids[0])).json()["version"] == 2


async def test_the_route_is_documented_with_its_errors(app: FastAPI) -> None:
    operation = app.openapi()["paths"]["/api/v1/tasks/batch"]["post"]
    assert {"200", "401", "409", "422", "429"} <= set(operation["responses"])
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]
    assert "temp_id" in operation["description"]


# --- real commits: events, concurrency ------------------------------------------------------------


async def test_events_are_exactly_one_per_change_and_none_for_a_rolled_back_batch(
    live_client: httpx.AsyncClient, live_app: FastAPI
) -> None:
    alice = await register_and_login(live_client)
    cursor = (await settle(live_client, live_app, alice, await now_cursor(live_client, alice)))[1]
    result = await batch(
        live_client,
        alice,
        {"op": "create", "temp_id": "a", "task": {"title": "a"}},
        {"op": "create", "temp_id": "b", "task": {"title": "b"}},
        {"op": "update", "temp_id": "a", "changes": {"title": "a2"}},
        {"op": "update", "temp_id": "a", "changes": {"title": "a2"}},  # no change: no event
        {"op": "transition", "temp_id": "b", "status": "done"},
        {"op": "transition", "temp_id": "b", "status": "done"},  # refused: no event
        {"op": "create", "temp_id": "c", "task": {"title": "c"}},
        {"op": "delete", "temp_id": "c"},
    )
    ids = result["temp_ids"]
    rolled_back = await live_client.post(
        BATCH,
        json={
            "atomic": True,
            "operations": [
                {"op": "create", "task": {"title": "never"}},
                {"op": "update", "task_id": ids["a"], "changes": {"title": "never"}},
                {"op": "delete", "task_id": ids["b"]},
                {"op": "transition", "task_id": ids["a"], "status": "cancelled"},
                {"op": "transition", "task_id": ids["a"], "status": "cancelled"},
            ],
        },
        headers=alice.headers,
    )
    assert_problem(rolled_back, 409, "batch_failed")
    events, _ = await settle(live_client, live_app, alice, cursor)
    assert [(e["type"], e["task_id"]) for e in events] == [
        ("task.created", ids["a"]),
        ("task.created", ids["b"]),
        ("task.updated", ids["a"]),
        ("task.updated", ids["b"]),
        ("task.created", ids["c"]),
        ("task.deleted", ids["c"]),
    ]
    # Each event carries the task as that operation left it.
    assert events[2]["task"] == result["results"][2]["task"]
    assert events[3]["task"] == result["results"][4]["task"]


async def test_concurrent_batches_on_overlapping_tasks_agree(
    busy_client: httpx.AsyncClient, busy_app: FastAPI
) -> None:
    """Six clients (two users of one project) each rename every task and start it, in their own
    order, at once: no deadlock, every rename applies, exactly one start per task wins, and the
    versions and events count exactly those changes."""
    alice, bob = await register_and_login(busy_client), await register_and_login(busy_client)
    project_id = await project_with(busy_client, alice, bob=(bob, "editor"))
    created = await batch(
        busy_client,
        alice,
        *(
            {"op": "create", "task": {"title": f"t{i}", "project_id": project_id}}
            for i in range(12)
        ),
    )
    ids = [item["task_id"] for item in created["results"]]
    cursor = (await settle(busy_client, busy_app, alice, await now_cursor(busy_client, alice)))[1]

    def operations(client_no: int) -> list[dict[str, Any]]:
        order = random.Random(client_no).sample(ids, len(ids))
        return [
            op
            for task_id in order
            for op in (
                {"op": "update", "task_id": task_id, "changes": {"title": f"c{client_no}"}},
                {"op": "transition", "task_id": task_id, "status": "in_progress"},
            )
        ]

    users = [alice, bob] * 3
    responses = await asyncio.gather(
        *(
            busy_client.post(BATCH, json={"operations": operations(n)}, headers=user.headers)
            for n, user in enumerate(users)
        )
    )
    assert [r.status_code for r in responses] == [200] * len(users), [r.text for r in responses]
    starts: Counter[int] = Counter()
    for n, response in enumerate(responses):
        for op, item in zip(operations(n), response.json()["results"], strict=True):
            if op["op"] == "update":
                assert item["success"], item  # each client's title is new to every task
            elif item["success"]:
                starts[op["task_id"]] += 1
            else:
                assert item["error"]["code"] == "invalid_transition", item
    assert starts == dict.fromkeys(ids, 1)
    events, _ = await settle(busy_client, busy_app, alice, cursor)
    final_version = 1 + len(users) + 1  # six renames and one start
    for task_id in ids:
        task = (await get(busy_client, alice, task_id)).json()
        assert task["status"] == "in_progress"
        assert task["version"] == final_version
        # One event per change, each with its own version: the task's activity holds them all.
        activity = await busy_client.get(
            f"/api/v1/tasks/{task_id}/activity", params={"limit": 100}, headers=alice.headers
        )
        updated = [e for e in activity.json()["items"] if e["type"] == "task.updated"]
        assert sorted(e["task"]["version"] for e in updated) == list(range(2, final_version + 1))
        # The feed may leave out an event a later one supersedes (a batch whose transaction id
        # is older than the one it waited for: docs/sync.md, "stale events"), never the last.
        versions = [e["task"]["version"] for e in events if e.get("task_id") == task_id]
        assert max(versions) == final_version


async def test_concurrent_retries_of_a_keyed_batch_apply_it_once(
    live_client: httpx.AsyncClient,
) -> None:
    alice = await register_and_login(live_client)
    existing = (await live_client.post(TASKS, json={"title": "x"}, headers=alice.headers)).json()
    body = {
        "operations": [
            *({"op": "create", "task": {"title": f"n{i}"}} for i in range(3)),
            {"op": "transition", "task_id": existing["id"], "status": "done"},
        ]
    }
    headers = {**alice.headers, "Idempotency-Key": "concurrent-batch"}
    responses = await asyncio.gather(
        *(live_client.post(BATCH, json=body, headers=headers) for _ in range(8))
    )
    originals = [
        r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    for response in responses:
        if response.status_code == 200:
            assert response.content == originals[0].content
        else:
            assert_problem(response, 409, "idempotency_key_in_use")
    retry = await live_client.post(BATCH, json=body, headers=headers)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == originals[0].content
    listed = await live_client.get(TASKS, headers=alice.headers)
    assert listed.json()["total"] == 4
    assert (await get(live_client, alice, existing["id"])).json()["version"] == 2
