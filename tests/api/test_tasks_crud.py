"""Single-task endpoints: create, read (ETag / If-None-Match), PATCH, PUT, DELETE, transition,
and the plain list (no filters or cursors)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from taskapi.models import Task
from tests.task_helpers import (
    ALL_PAIRS,
    ALLOWED,
    TASKS,
    assert_problem,
    assert_task_shape,
    etag,
    fetch,
    task_url,
)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _today() -> date:
    return datetime.now(UTC).date()


# --- create ------------------------------------------------------------------------------------


async def test_create_defaults_location_and_etag(client, alice):
    response = await client.post(TASKS, json={"title": "Write tests"}, headers=alice.headers)
    assert response.status_code == 201, response.text
    task = response.json()
    assert_task_shape(task)
    assert response.headers["location"] == f"/api/v1/tasks/{task['id']}"
    assert response.headers["etag"] == '"1"'
    assert task["title"] == "Write tests"
    assert task["description"] is None
    assert task["status"] == "todo"
    assert task["completed"] is False
    assert task["priority"] == "medium"
    assert task["due_date"] is None
    assert task["is_overdue"] is False
    assert task["tags"] == []
    assert task["owner_id"] == alice.id
    assert task["assignee_id"] is None
    assert task["attachment_count"] == 0
    assert task["completed_at"] is None
    assert task["version"] == 1

    location = await client.get(response.headers["location"], headers=alice.headers)
    assert location.status_code == 200
    assert location.json() == task


async def test_create_persists_row(client, alice, db_session):
    task = await client.post(
        TASKS,
        json={"title": "persisted", "priority": "urgent", "tags": ["x"]},
        headers=alice.headers,
    )
    row = await db_session.scalar(select(Task).where(Task.id == task.json()["id"]))
    assert row is not None
    assert row.owner_id == alice.id
    assert row.title == "persisted"
    assert row.priority == "urgent"
    assert row.tags == ["x"]


async def test_create_with_all_fields(client, alice, bob):
    body = {
        "title": "  Full task  ",
        "description": "some words",
        "status": "in_progress",
        "priority": "high",
        "due_date": "2999-01-31",
        "tags": ["Work", " urgent "],
        "assignee_id": bob.id,
    }
    response = await client.post(TASKS, json=body, headers=alice.headers)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["title"] == "Full task"
    assert task["description"] == "some words"
    assert task["status"] == "in_progress"
    assert task["completed_at"] is None
    assert task["priority"] == "high"
    assert task["due_date"] == "2999-01-31"
    assert task["tags"] == ["work", "urgent"]
    assert task["assignee_id"] == bob.id
    assert task["owner_id"] == alice.id


@pytest.mark.parametrize(
    ("body", "status", "completed_at_set"),
    [
        ({"completed": True}, "done", True),
        ({"completed": False}, "todo", False),
        ({"status": "done"}, "done", True),
        ({"status": "done", "completed": True}, "done", True),
        ({"status": "cancelled", "completed": False}, "cancelled", False),
        ({"status": "in_progress"}, "in_progress", False),
    ],
)
async def test_create_status_and_completed(client, alice, body, status, completed_at_set):
    response = await client.post(TASKS, json={"title": "t", **body}, headers=alice.headers)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == status
    assert task["completed"] is (status == "done")
    assert (task["completed_at"] is not None) is completed_at_set
    assert_task_shape(task)


@pytest.mark.parametrize("title", ["x", "a" * 200, "  " + "b" * 200 + "  ", "Ünïcødé ✓"])
async def test_create_title_bounds_ok(client, alice, title):
    response = await client.post(TASKS, json={"title": title}, headers=alice.headers)
    assert response.status_code == 201, response.text
    assert response.json()["title"] == title.strip()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "   "},
        {"title": "\t\n"},
        {"title": "a" * 201},
        {"title": None},
        {"title": 42},
        {"title": "t", "description": "d" * 10_001},
        {"title": "nul\u0000byte"},
        {"title": "t", "description": "nul\u0000byte"},
        {"title": "t", "status": "finished"},
        {"title": "t", "priority": "critical"},
        {"title": "t", "priority": None},
        {"title": "t", "due_date": "31/01/2030"},
        {"title": "t", "due_date": "2030-02-30"},
        {"title": "t", "status": "done", "completed": False},
        {"title": "t", "status": "todo", "completed": True},
        {"title": "t", "status": "in_progress", "completed": True},
        {"title": "t", "assignee_id": 0},
        {"title": "t", "assignee_id": -1},
        {"title": "t", "assignee_id": 2**63},
        {"title": "t", "tags": "a,b"},
        {"title": "t", "tags": [""]},
        {"title": "t", "tags": ["   "]},
        {"title": "t", "tags": ["x" * 51]},
        {"title": "t", "tags": ["a,b"]},
        {"title": "t", "tags": ["tab\there"]},
        {"title": "t", "tags": ["nul\u0000"]},
        {"title": "t", "tags": ["line\nbreak"]},
        {"title": "t", "tags": [f"tag{i}" for i in range(21)]},
        {"title": "t", "tags": [None]},
    ],
)
async def test_create_validation_errors(client, alice, body):
    response = await client.post(TASKS, json=body, headers=alice.headers)
    problem = assert_problem(response, 422)
    assert problem["code"] == "validation_error"
    assert problem["errors"]
    listing = await client.get(TASKS, headers=alice.headers)
    assert listing.json()["total"] == 0


async def test_create_description_at_limit(client, alice):
    response = await client.post(
        TASKS, json={"title": "t", "description": "d" * 10_000}, headers=alice.headers
    )
    assert response.status_code == 201
    assert len(response.json()["description"]) == 10_000


async def test_create_tags_normalised(client, alice):
    tags = ["  Python ", "python", "SQL", "sql ", "x" * 50, "ÄBC"]
    response = await client.post(TASKS, json={"title": "t", "tags": tags}, headers=alice.headers)
    assert response.status_code == 201, response.text
    assert response.json()["tags"] == ["python", "sql", "x" * 50, "äbc"]


async def test_create_twenty_tags_after_dedup_is_ok(client, alice):
    tags = [f"tag{i}" for i in range(20)] + [f"TAG{i}" for i in range(5)]
    response = await client.post(TASKS, json={"title": "t", "tags": tags}, headers=alice.headers)
    assert response.status_code == 201, response.text
    assert response.json()["tags"] == [f"tag{i}" for i in range(20)]


async def test_create_unknown_assignee(client, alice):
    response = await client.post(
        TASKS, json={"title": "t", "assignee_id": 2**62}, headers=alice.headers
    )
    problem = assert_problem(response, 422, "unknown_assignee")
    assert problem["errors"][0]["loc"] == ["body", "assignee_id"]
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 0


async def test_create_ignores_server_managed_fields(client, alice, bob):
    body = {
        "title": "sneaky",
        "id": 999_999,
        "owner_id": bob.id,
        "version": 42,
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
        "attachment_count": 7,
        "completed_at": "2000-01-01T00:00:00Z",
        "is_overdue": True,
    }
    response = await client.post(TASKS, json=body, headers=alice.headers)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["id"] != 999_999
    assert task["owner_id"] == alice.id
    assert task["version"] == 1
    assert not task["created_at"].startswith("2000")
    assert not task["updated_at"].startswith("2000")
    assert task["attachment_count"] == 0
    assert task["completed_at"] is None
    assert task["is_overdue"] is False
    bob_view = await client.get(task_url(task["id"]), headers=bob.headers)
    assert_problem(bob_view, 404, "task_not_found")


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"not json", 400, "malformed_json"),
        (b'{"title": "x"', 400, "malformed_json"),
        (b"", 422, "validation_error"),
    ],
)
async def test_create_malformed_body(client, alice, content, status, code):
    response = await client.post(
        TASKS,
        content=content,
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert_problem(response, status, code)
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 0


@pytest.mark.parametrize("body", [[], ["title"], "title", 1, None])
async def test_create_non_object_body(client, alice, body):
    response = await client.post(TASKS, json=body, headers=alice.headers)
    assert_problem(response, 422, "validation_error")


# --- read and conditional GET --------------------------------------------------------------------


async def test_get_returns_task_with_etag(client, alice, make_task):
    task = await make_task(alice, title="read me")
    response = await client.get(task_url(task["id"]), headers=alice.headers)
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == task


@pytest.mark.parametrize("header", ['"1"', 'W/"1"', '"7", "1"', "*"])
async def test_get_if_none_match_hit_is_304(client, alice, make_task, header):
    task = await make_task(alice)
    response = await client.get(
        task_url(task["id"]), headers={**alice.headers, "If-None-Match": header}
    )
    assert response.status_code == 304
    assert response.headers["etag"] == '"1"'
    assert response.content == b""


@pytest.mark.parametrize("header", ['"2"', '"0"', "1", 'W/"12"'])
async def test_get_if_none_match_miss_is_200(client, alice, make_task, header):
    task = await make_task(alice)
    response = await client.get(
        task_url(task["id"]), headers={**alice.headers, "If-None-Match": header}
    )
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json()["id"] == task["id"]


async def test_if_none_match_old_etag_after_change_is_200(client, alice, make_task):
    task = await make_task(alice)
    await client.patch(task_url(task["id"]), json={"title": "new"}, headers=alice.headers)
    response = await client.get(
        task_url(task["id"]), headers={**alice.headers, "If-None-Match": '"1"'}
    )
    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert response.json()["title"] == "new"


@pytest.mark.parametrize("bad_id", ["abc", "1.5", "0", "-1", str(2**63), "9" * 30, "1e3"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE", "TRANSITION"])
async def test_bad_path_ids_are_422(client, alice, bad_id, method):
    body: dict[str, Any] | None = {"title": "x"} if method in ("PATCH", "PUT") else None
    url = task_url(bad_id)
    if method == "TRANSITION":
        method, url, body = "POST", url + "/transition", {"status": "done"}
    response = await client.request(method, url, json=body, headers=alice.headers)
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE", "TRANSITION"])
async def test_nonexistent_id_is_404(client, alice, method):
    url = task_url(2**63 - 1)
    body: dict[str, Any] | None = {"title": "x"} if method in ("PATCH", "PUT") else None
    if method == "TRANSITION":
        method, url, body = "POST", url + "/transition", {"status": "done"}
    response = await client.request(method, url, json=body, headers=alice.headers)
    assert_problem(response, 404, "task_not_found")


# --- PATCH -------------------------------------------------------------------------------------


async def test_patch_partial_update(client, alice, make_task):
    task = await make_task(
        alice, title="orig", description="desc", priority="low", tags=["a"], due_date="2999-05-05"
    )
    response = await client.patch(
        task_url(task["id"]), json={"priority": "urgent"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert_task_shape(updated)
    assert updated["priority"] == "urgent"
    for name in ("title", "description", "tags", "due_date", "status", "created_at", "owner_id"):
        assert updated[name] == task[name]
    assert updated["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert _parse(updated["updated_at"]) > _parse(task["updated_at"])
    assert await fetch(client, alice, task["id"]) == updated


async def test_patch_all_fields(client, alice, bob, make_task):
    task = await make_task(alice)
    body = {
        "title": "  renamed ",
        "description": "new description",
        "priority": "high",
        "due_date": "2999-12-31",
        "tags": ["B", "a", "b"],
        "assignee_id": bob.id,
        "status": "in_progress",
    }
    response = await client.patch(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["title"] == "renamed"
    assert updated["description"] == "new description"
    assert updated["priority"] == "high"
    assert updated["due_date"] == "2999-12-31"
    assert updated["tags"] == ["b", "a"]
    assert updated["assignee_id"] == bob.id
    assert updated["status"] == "in_progress"
    assert updated["version"] == 2


@pytest.mark.parametrize("field", ["description", "due_date", "assignee_id"])
async def test_patch_null_clears_nullable_field(client, alice, bob, make_task, field):
    task = await make_task(alice, description="d", due_date="2999-01-01", assignee_id=bob.id)
    assert task[field] is not None
    response = await client.patch(task_url(task["id"]), json={field: None}, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json()[field] is None
    assert response.json()["version"] == 2
    assert (await fetch(client, alice, task["id"]))[field] is None


@pytest.mark.parametrize("field", ["title", "status", "priority", "tags", "completed"])
async def test_patch_null_on_required_field_is_422(client, alice, make_task, field):
    task = await make_task(alice, tags=["keep"])
    response = await client.patch(task_url(task["id"]), json={field: None}, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
    assert await fetch(client, alice, task["id"]) == task


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "  "},
        {"title": "a" * 201},
        {"description": "d" * 10_001},
        {"title": "\u0000"},
        {"description": "a\u0000"},
        {"priority": "extreme"},
        {"status": "archived"},
        {"due_date": "tomorrow"},
        {"tags": ["a,b"]},
        {"tags": [f"t{i}" for i in range(21)]},
        {"tags": ["x" * 51]},
        {"status": "done", "completed": False},
        {"status": "todo", "completed": True},
        {"assignee_id": 0},
    ],
)
async def test_patch_validation_errors_change_nothing(client, alice, make_task, body):
    task = await make_task(alice, description="d")
    response = await client.patch(task_url(task["id"]), json=body, headers=alice.headers)
    assert_problem(response, 422)
    assert await fetch(client, alice, task["id"]) == task


async def test_patch_unknown_assignee_is_422(client, alice, make_task):
    task = await make_task(alice)
    response = await client.patch(
        task_url(task["id"]), json={"assignee_id": 2**62}, headers=alice.headers
    )
    assert_problem(response, 422, "unknown_assignee")
    assert await fetch(client, alice, task["id"]) == task


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": "same"},
        {"title": "  same  "},
        {"priority": "medium"},
        {"status": "todo"},
        {"completed": False},
        {"tags": ["x", "X"]},
        {"description": None},
        {"title": "same", "status": "todo", "tags": ["x"], "due_date": None},
    ],
)
async def test_patch_without_real_change_keeps_version(client, alice, make_task, body):
    task = await make_task(alice, title="same", tags=["x"])
    response = await client.patch(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json() == task
    assert response.headers["etag"] == '"1"'
    assert await fetch(client, alice, task["id"]) == task


async def test_patch_version_increments_on_each_change(client, alice, make_task):
    task = await make_task(alice)
    url = task_url(task["id"])
    for expected, body in enumerate(
        [{"title": "a"}, {"title": "b"}, {"tags": ["t"]}, {"status": "done"}], start=2
    ):
        response = await client.patch(url, json=body, headers=alice.headers)
        assert response.status_code == 200
        assert response.json()["version"] == expected
        assert response.headers["etag"] == etag(expected)
    got = await client.get(url, headers=alice.headers)
    assert got.headers["etag"] == '"5"'


@pytest.mark.parametrize(
    ("start", "body", "status", "completed_at_set"),
    [
        ("todo", {"completed": True}, "done", True),
        ("done", {"completed": False}, "todo", False),
        ("in_progress", {"completed": False}, "todo", False),
        ("cancelled", {"completed": False}, "todo", False),
        ("in_progress", {"completed": True}, "done", True),
        ("todo", {"status": "done", "completed": True}, "done", True),
    ],
)
async def test_patch_completed_alias(
    client, alice, make_task, start, body, status, completed_at_set
):
    task = await make_task(alice, status=start)
    response = await client.patch(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["status"] == status
    assert updated["completed"] is (status == "done")
    assert (updated["completed_at"] is not None) is completed_at_set


async def test_patch_completed_true_on_cancelled_is_409(client, alice, make_task):
    task = await make_task(alice, status="cancelled")
    response = await client.patch(
        task_url(task["id"]), json={"completed": True}, headers=alice.headers
    )
    assert_problem(response, 409, "invalid_transition")
    assert await fetch(client, alice, task["id"]) == task


@pytest.mark.parametrize(
    "body",
    [
        {"owner_id": 1},
        {"id": 12345},
        {"version": 99},
        {"created_at": "2000-01-01T00:00:00Z"},
        {"attachment_count": 5},
        {"completed_at": "2000-01-01T00:00:00Z"},
        {"is_overdue": True},
    ],
)
async def test_patch_ignores_server_managed_fields(client, alice, bob, make_task, body):
    body = {k: (bob.id if k == "owner_id" else v) for k, v in body.items()}
    task = await make_task(alice)
    response = await client.patch(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json() == task
    assert await fetch(client, alice, task["id"]) == task
    assert_problem(await client.get(task_url(task["id"]), headers=bob.headers), 404)


async def test_patch_ignored_fields_alongside_real_change(client, alice, bob, make_task):
    task = await make_task(alice)
    body = {"title": "changed", "owner_id": bob.id, "version": 50, "id": 1, "attachment_count": 3}
    response = await client.patch(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200
    updated = response.json()
    assert updated["id"] == task["id"]
    assert updated["title"] == "changed"
    assert updated["owner_id"] == alice.id
    assert updated["version"] == 2
    assert updated["attachment_count"] == 0


# --- If-Match ----------------------------------------------------------------------------------


def _write_request(kind: str, task_id: int) -> tuple[str, str, dict[str, Any] | None]:
    url = task_url(task_id)
    if kind == "PATCH":
        return "PATCH", url, {"title": "changed"}
    if kind == "PUT":
        return "PUT", url, {"title": "replaced", "priority": "high"}
    if kind == "DELETE":
        return "DELETE", url, None
    return "POST", url + "/transition", {"status": "in_progress"}


WRITES = ["PATCH", "PUT", "DELETE", "TRANSITION"]


@pytest.mark.parametrize("header", ['"1"', 'W/"2"', '"3", "4"', "2", "garbage"])
@pytest.mark.parametrize("kind", WRITES)
async def test_stale_if_match_is_412_and_changes_nothing(client, alice, make_task, kind, header):
    task = await make_task(alice, title="orig")
    await client.patch(task_url(task["id"]), json={"priority": "low"}, headers=alice.headers)
    before = await fetch(client, alice, task["id"])
    assert before["version"] == 2
    method, url, body = _write_request(kind, task["id"])
    response = await client.request(
        method, url, json=body, headers={**alice.headers, "If-Match": header}
    )
    assert_problem(response, 412, "precondition_failed")
    assert await fetch(client, alice, task["id"]) == before


@pytest.mark.parametrize("header", ['"2"', "*", '"1", "2"'])
@pytest.mark.parametrize("kind", WRITES)
async def test_matching_if_match_succeeds(client, alice, make_task, kind, header):
    task = await make_task(alice, title="orig")
    await client.patch(task_url(task["id"]), json={"priority": "low"}, headers=alice.headers)
    method, url, body = _write_request(kind, task["id"])
    response = await client.request(
        method, url, json=body, headers={**alice.headers, "If-Match": header}
    )
    if kind == "DELETE":
        assert response.status_code == 204
        assert response.content == b""
        assert_problem(await client.get(task_url(task["id"]), headers=alice.headers), 404)
    else:
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 3
        assert response.headers["etag"] == '"3"'


async def test_if_match_with_etag_from_previous_response(client, alice, make_task):
    task = await make_task(alice)
    url = task_url(task["id"])
    first = await client.get(url, headers=alice.headers)
    second = await client.patch(
        url, json={"title": "one"}, headers={**alice.headers, "If-Match": first.headers["etag"]}
    )
    assert second.status_code == 200
    third = await client.patch(
        url, json={"title": "two"}, headers={**alice.headers, "If-Match": first.headers["etag"]}
    )
    assert_problem(third, 412, "precondition_failed")
    fourth = await client.patch(
        url, json={"title": "two"}, headers={**alice.headers, "If-Match": second.headers["etag"]}
    )
    assert fourth.status_code == 200
    assert fourth.json()["title"] == "two"


# --- workflow ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "target"), ALL_PAIRS)
async def test_transition_matrix(client, alice, make_task, start, target):
    task = await make_task(alice, status=start)
    response = await client.post(
        task_url(task["id"]) + "/transition", json={"status": target}, headers=alice.headers
    )
    if (start, target) in ALLOWED:
        assert response.status_code == 200, response.text
        moved = response.json()
        assert moved["status"] == target
        assert moved["completed"] is (target == "done")
        assert (moved["completed_at"] is not None) is (target == "done")
        assert moved["version"] == task["version"] + 1
        assert response.headers["etag"] == etag(moved["version"])
        assert _parse(moved["updated_at"]) > _parse(task["updated_at"])
        assert await fetch(client, alice, task["id"]) == moved
    else:
        problem = assert_problem(response, 409, "invalid_transition")
        assert start in problem["detail"]
        assert await fetch(client, alice, task["id"]) == task


@pytest.mark.parametrize(("start", "target"), ALL_PAIRS)
async def test_patch_status_matrix(client, alice, make_task, start, target):
    task = await make_task(alice, status=start)
    response = await client.patch(
        task_url(task["id"]), json={"status": target, "title": "new"}, headers=alice.headers
    )
    if start == target or (start, target) in ALLOWED:
        assert response.status_code == 200, response.text
        updated = response.json()
        assert updated["status"] == target
        assert updated["title"] == "new"
        assert updated["version"] == 2
        assert (updated["completed_at"] is not None) is (target == "done")
        if start == target == "done":
            assert updated["completed_at"] == task["completed_at"]
    else:
        assert_problem(response, 409, "invalid_transition")
        assert await fetch(client, alice, task["id"]) == task


@pytest.mark.parametrize(("start", "target"), ALL_PAIRS)
async def test_put_status_matrix(client, alice, make_task, start, target):
    task = await make_task(alice, status=start, title="t")
    response = await client.put(
        task_url(task["id"]), json={"title": "t", "status": target}, headers=alice.headers
    )
    if start == target:
        assert response.status_code == 200, response.text
        assert response.json() == task  # identical replacement: no new version
    elif (start, target) in ALLOWED:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == target
        assert response.json()["version"] == 2
        assert (response.json()["completed_at"] is not None) is (target == "done")
    else:
        assert_problem(response, 409, "invalid_transition")
        assert await fetch(client, alice, task["id"]) == task


async def test_workflow_error_leaves_other_fields_untouched(client, alice, make_task):
    task = await make_task(alice, status="done", title="keep", priority="low")
    response = await client.patch(
        task_url(task["id"]),
        json={"title": "lost", "priority": "urgent", "status": "in_progress"},
        headers=alice.headers,
    )
    assert_problem(response, 409, "invalid_transition")
    assert await fetch(client, alice, task["id"]) == task


async def test_reopen_clears_completed_at_and_redone_sets_it_again(client, alice, make_task):
    task = await make_task(alice)
    url = task_url(task["id"]) + "/transition"
    done = (await client.post(url, json={"status": "done"}, headers=alice.headers)).json()
    assert done["completed_at"] is not None
    assert done["completed"] is True
    reopened = (await client.post(url, json={"status": "todo"}, headers=alice.headers)).json()
    assert reopened["completed_at"] is None
    assert reopened["completed"] is False
    again = (await client.post(url, json={"status": "done"}, headers=alice.headers)).json()
    assert again["completed_at"] is not None
    assert _parse(again["completed_at"]) >= _parse(done["completed_at"])
    assert again["version"] == 4


@pytest.mark.parametrize("body", [{}, {"status": "finished"}, {"status": None}, {"status": 1}])
async def test_transition_validation(client, alice, make_task, body):
    task = await make_task(alice)
    response = await client.post(
        task_url(task["id"]) + "/transition", json=body, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")
    assert await fetch(client, alice, task["id"]) == task


# --- PUT ---------------------------------------------------------------------------------------


async def test_put_replaces_and_resets_omitted_fields(client, alice, bob, make_task):
    task = await make_task(
        alice,
        title="old",
        description="old desc",
        priority="urgent",
        tags=["a", "b"],
        due_date="2999-01-01",
        assignee_id=bob.id,
    )
    response = await client.put(task_url(task["id"]), json={"title": "new"}, headers=alice.headers)
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert_task_shape(replaced)
    assert replaced["title"] == "new"
    assert replaced["description"] is None
    assert replaced["priority"] == "medium"
    assert replaced["tags"] == []
    assert replaced["due_date"] is None
    assert replaced["assignee_id"] is None
    assert replaced["status"] == "todo"
    assert replaced["owner_id"] == alice.id
    assert replaced["id"] == task["id"]
    assert replaced["created_at"] == task["created_at"]
    assert replaced["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert await fetch(client, alice, task["id"]) == replaced


async def test_put_sets_every_field(client, alice, bob, make_task):
    task = await make_task(alice)
    body = {
        "title": " all ",
        "description": "desc",
        "status": "done",
        "priority": "low",
        "due_date": "2000-01-01",
        "tags": ["Z", "z", "y"],
        "assignee_id": bob.id,
    }
    response = await client.put(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["title"] == "all"
    assert replaced["description"] == "desc"
    assert replaced["status"] == "done"
    assert replaced["completed_at"] is not None
    assert replaced["priority"] == "low"
    assert replaced["due_date"] == "2000-01-01"
    assert replaced["is_overdue"] is False
    assert replaced["tags"] == ["z", "y"]
    assert replaced["assignee_id"] == bob.id


@pytest.mark.parametrize("start", ["in_progress", "cancelled", "done"])
async def test_put_without_status_moves_back_to_todo(client, alice, make_task, start):
    task = await make_task(alice, status=start)
    response = await client.put(task_url(task["id"]), json={"title": "x"}, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "todo"
    assert response.json()["completed_at"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"description": "no title"},
        {"title": "  "},
        {"title": None},
        {"title": "t", "tags": ["a,b"]},
        {"title": "t", "priority": None},
        {"title": "t", "status": "done", "completed": False},
        {"title": "t", "description": "d" * 10_001},
    ],
)
async def test_put_validation_errors_change_nothing(client, alice, make_task, body):
    task = await make_task(alice, description="d", tags=["k"])
    response = await client.put(task_url(task["id"]), json=body, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
    assert await fetch(client, alice, task["id"]) == task


async def test_put_unknown_assignee_is_422(client, alice, make_task):
    task = await make_task(alice)
    response = await client.put(
        task_url(task["id"]), json={"title": "t", "assignee_id": 2**62}, headers=alice.headers
    )
    assert_problem(response, 422, "unknown_assignee")
    assert await fetch(client, alice, task["id"]) == task


async def test_put_ignores_server_managed_fields(client, alice, bob, make_task):
    task = await make_task(alice, title="t")
    body = {
        "title": "t2",
        "id": 1,
        "owner_id": bob.id,
        "version": 77,
        "created_at": "2000-01-01T00:00:00Z",
        "attachment_count": 9,
        "completed_at": "2000-01-01T00:00:00Z",
    }
    response = await client.put(task_url(task["id"]), json=body, headers=alice.headers)
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["id"] == task["id"]
    assert replaced["owner_id"] == alice.id
    assert replaced["version"] == 2
    assert replaced["created_at"] == task["created_at"]
    assert replaced["attachment_count"] == 0
    assert replaced["completed_at"] is None
    assert_problem(await client.get(task_url(task["id"]), headers=bob.headers), 404)


# --- DELETE ------------------------------------------------------------------------------------


async def test_delete_moves_the_task_to_the_trash(client, alice, make_task, db_session):
    task = await make_task(alice)
    other = await make_task(alice)
    response = await client.delete(task_url(task["id"]), headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(task_url(task["id"]), headers=alice.headers), 404)
    again = await client.delete(task_url(task["id"]), headers=alice.headers)
    assert_problem(again, 404, "task_not_found")
    # Kept, in the trash (tests/api/test_trash.py): restorable until purged.
    deleted_at = await db_session.scalar(select(Task.deleted_at).where(Task.id == task["id"]))
    assert deleted_at is not None
    listing = (await client.get(TASKS, headers=alice.headers)).json()
    assert [item["id"] for item in listing["items"]] == [other["id"]]


# --- is_overdue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "status", "overdue"),
    [
        (-1, "todo", True),
        (-400, "in_progress", True),
        (-1, "done", False),
        (-1, "cancelled", False),
        (0, "todo", False),
        (1, "todo", False),
        (None, "todo", False),
    ],
)
async def test_is_overdue(client, alice, make_task, days, status, overdue):
    due = None if days is None else (_today() + timedelta(days=days)).isoformat()
    task = await make_task(alice, due_date=due, status=status)
    assert task["is_overdue"] is overdue
    assert (await fetch(client, alice, task["id"]))["is_overdue"] is overdue


async def test_is_overdue_follows_status_and_due_date(client, alice, make_task):
    yesterday = (_today() - timedelta(days=1)).isoformat()
    task = await make_task(alice, due_date=yesterday)
    url = task_url(task["id"])
    assert task["is_overdue"] is True
    done = await client.post(url + "/transition", json={"status": "done"}, headers=alice.headers)
    assert done.json()["is_overdue"] is False
    reopened = await client.patch(url, json={"status": "todo"}, headers=alice.headers)
    assert reopened.json()["is_overdue"] is True
    moved = await client.patch(url, json={"due_date": _today().isoformat()}, headers=alice.headers)
    assert moved.json()["is_overdue"] is False
    cleared = await client.patch(url, json={"due_date": None}, headers=alice.headers)
    assert cleared.json()["is_overdue"] is False


# --- list --------------------------------------------------------------------------------------


async def test_list_envelope_and_newest_first(client, alice, make_task):
    created = [await make_task(alice, title=f"t{i}") for i in range(3)]
    response = await client.get(TASKS, headers=alice.headers)
    assert response.status_code == 200
    page = response.json()
    assert set(page) == {"items", "total", "limit", "offset", "next_cursor"}
    assert page["total"] == 3
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert page["next_cursor"] is None
    assert [item["id"] for item in page["items"]] == [t["id"] for t in reversed(created)]
    for item in page["items"]:
        assert_task_shape(item)
    assert page["items"][0] == created[-1]


async def test_list_empty(client, alice):
    response = await client.get(TASKS, headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["items"] == []
    assert response.json()["total"] == 0


async def test_list_limit_and_offset(client, alice, make_task):
    ids = [(await make_task(alice))["id"] for _ in range(5)]
    newest_first = list(reversed(ids))
    page = (await client.get(TASKS, params={"limit": 2}, headers=alice.headers)).json()
    assert [i["id"] for i in page["items"]] == newest_first[:2]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    page = (await client.get(TASKS, params={"limit": 2, "offset": 2}, headers=alice.headers)).json()
    assert [i["id"] for i in page["items"]] == newest_first[2:4]
    assert page["offset"] == 2
    page = (
        await client.get(TASKS, params={"limit": 100, "offset": 4}, headers=alice.headers)
    ).json()
    assert [i["id"] for i in page["items"]] == newest_first[4:]
    page = (await client.get(TASKS, params={"offset": 50}, headers=alice.headers)).json()
    assert page["items"] == []
    assert page["total"] == 5
    page = (await client.get(TASKS, params={"limit": 1}, headers=alice.headers)).json()
    assert len(page["items"]) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "ten"},
        {"offset": -1},
        {"offset": "x"},
        {"offset": 2**63},
        {"limit": 2**70},
    ],
)
async def test_list_rejects_bad_paging(client, alice, params):
    response = await client.get(TASKS, params=params, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
