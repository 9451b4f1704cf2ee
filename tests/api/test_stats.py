"""GET /api/v1/tasks/stats: exact numbers over the tasks the caller can see, kept current by
every kind of write, computed by SQL aggregates (constant statement count)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from taskapi.models import Task, TaskPriority, TaskStatus
from tests.conftest import UserHandle
from tests.task_helpers import TASKS, assert_problem, task_url

STATS = f"{TASKS}/stats"
STATUS_KEYS = {"todo", "in_progress", "done", "cancelled"}
PRIORITY_KEYS = {"low", "medium", "high", "urgent"}


async def stats(client: httpx.AsyncClient, user: UserHandle) -> dict[str, Any]:
    response = await client.get(STATS, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {
        "total",
        "completed",
        "incomplete",
        "completion_rate",
        "overdue",
        "by_status",
        "by_priority",
        "by_tag",
    }
    assert set(body["by_status"]) == STATUS_KEYS
    assert set(body["by_priority"]) == PRIORITY_KEYS
    assert sum(body["by_status"].values()) == body["total"]
    assert sum(body["by_priority"].values()) == body["total"]
    assert body["completed"] == body["by_status"]["done"]
    assert body["incomplete"] == body["total"] - body["completed"]
    return body


def zeros(keys: set[str], **counts: int) -> dict[str, int]:
    return {key: counts.get(key, 0) for key in keys}


def today() -> date:
    return datetime.now(UTC).date()


async def change(
    client: httpx.AsyncClient, user: UserHandle, method: str, url: str, body: Any = None
) -> httpx.Response:
    response = await client.request(method, url, json=body, headers=user.headers)
    assert response.status_code in (200, 204), response.text
    return response


async def transition(
    client: httpx.AsyncClient, user: UserHandle, task_id: int, status: str
) -> None:
    await change(client, user, "POST", task_url(task_id) + "/transition", {"status": status})


# --- shape and exact numbers -------------------------------------------------------------------


async def test_stats_with_no_tasks_are_all_zero(client, alice):
    assert await stats(client, alice) == {
        "total": 0,
        "completed": 0,
        "incomplete": 0,
        "completion_rate": 0.0,
        "overdue": 0,
        "by_status": zeros(STATUS_KEYS),
        "by_priority": zeros(PRIORITY_KEYS),
        "by_tag": {},
    }


async def test_stats_requires_authentication(client, alice, make_task):
    await make_task(alice, title="hidden")
    response = await client.get(STATS)
    assert_problem(response, 401)
    assert "hidden" not in response.text


async def test_exact_numbers_over_owned_and_assigned_tasks(
    client, alice, bob, make_user, make_task
):
    carol = await make_user()
    yesterday, tomorrow = today() - timedelta(days=1), today() + timedelta(days=1)
    # alice's own tasks
    await make_task(alice, priority="high", tags=["work", "urgent-ish"], due_date=str(yesterday))
    await make_task(alice, status="in_progress", priority="low", tags=["work"])
    await make_task(alice, status="done", priority="high", tags=["home"], due_date=str(yesterday))
    await make_task(alice, status="cancelled", due_date=str(yesterday))
    await make_task(alice, priority="urgent", due_date=str(today()))
    await make_task(alice, priority="urgent", due_date=str(tomorrow), assignee_id=bob.id)
    # bob's task assigned to alice counts for her; bob's and carol's others don't
    await make_task(
        bob,
        status="in_progress",
        tags=["Work", "shared"],
        due_date=str(yesterday),
        assignee_id=alice.id,
    )
    await make_task(bob, status="done", priority="urgent", tags=["work", "bob-only"])
    await make_task(carol, status="done", tags=["home"], due_date=str(yesterday))
    await make_task(carol, priority="low", tags=["work"], due_date=str(yesterday))

    assert await stats(client, alice) == {
        "total": 7,
        "completed": 1,
        "incomplete": 6,
        "completion_rate": 14.3,
        "overdue": 2,
        "by_status": {"todo": 3, "in_progress": 2, "done": 1, "cancelled": 1},
        "by_priority": {"low": 1, "medium": 2, "high": 2, "urgent": 2},
        "by_tag": {"work": 3, "urgent-ish": 1, "home": 1, "shared": 1},
    }
    assert await stats(client, bob) == {
        "total": 3,
        "completed": 1,
        "incomplete": 2,
        "completion_rate": 33.3,
        "overdue": 1,
        "by_status": {"todo": 1, "in_progress": 1, "done": 1, "cancelled": 0},
        "by_priority": {"low": 0, "medium": 1, "high": 0, "urgent": 2},
        "by_tag": {"work": 2, "shared": 1, "bob-only": 1},
    }
    carol_stats = await stats(client, carol)
    assert carol_stats["total"] == 2
    assert carol_stats["overdue"] == 1
    assert carol_stats["by_tag"] == {"home": 1, "work": 1}


async def test_a_task_owned_and_assigned_to_yourself_counts_once(client, alice, make_task):
    await make_task(alice, title="self", assignee_id=alice.id, tags=["me"], status="done")
    body = await stats(client, alice)
    assert body["total"] == 1
    assert body["completed"] == 1
    assert body["completion_rate"] == 100.0
    assert body["by_tag"] == {"me": 1}


@pytest.mark.parametrize(
    ("done", "other", "rate"),
    [
        (0, 1, 0.0),
        (1, 0, 100.0),
        (1, 2, 33.3),
        (2, 1, 66.7),
        (1, 1, 50.0),
        (1, 5, 16.7),
        (2, 5, 28.6),
        (1, 7, 12.5),
        (1, 15, 6.3),  # 6.25: halves round up, not to even
        (3, 0, 100.0),
    ],
)
async def test_completion_rate_is_a_percentage_with_one_decimal(
    client, alice, make_task, done, other, rate
):
    for n in range(done):
        await make_task(alice, title=f"done {n}", status="done")
    statuses = ["todo", "in_progress", "cancelled"]
    for n in range(other):
        await make_task(alice, title=f"open {n}", status=statuses[n % 3])
    body = await stats(client, alice)
    assert body["total"] == done + other
    assert body["completed"] == done
    assert body["completion_rate"] == rate
    assert isinstance(body["completion_rate"], float)


async def test_overdue_is_due_before_today_and_still_open(client, alice, make_task):
    yesterday = str(today() - timedelta(days=1))
    last_year = str(today() - timedelta(days=365))
    counted = [
        await make_task(alice, status="todo", due_date=yesterday),
        await make_task(alice, status="in_progress", due_date=last_year),
    ]
    for status, due in [
        ("done", yesterday),
        ("cancelled", last_year),
        ("todo", str(today())),
        ("todo", str(today() + timedelta(days=1))),
        ("in_progress", None),
    ]:
        await make_task(alice, status=status, due_date=due)
    body = await stats(client, alice)
    assert body["overdue"] == 2
    listed = await client.get(TASKS, params={"overdue": "true"}, headers=alice.headers)
    assert sorted(t["id"] for t in listed.json()["items"]) == sorted(t["id"] for t in counted)
    # Finishing one overdue task removes it from the count; reopening brings it back.
    await change(
        client, alice, "POST", task_url(counted[0]["id"]) + "/transition", {"status": "done"}
    )
    assert (await stats(client, alice))["overdue"] == 1
    await change(
        client, alice, "POST", task_url(counted[0]["id"]) + "/transition", {"status": "todo"}
    )
    assert (await stats(client, alice))["overdue"] == 2
    # Moving the due date to today makes it no longer overdue.
    await change(client, alice, "PATCH", task_url(counted[1]["id"]), {"due_date": str(today())})
    assert (await stats(client, alice))["overdue"] == 1


# --- stats follow every write ------------------------------------------------------------------


async def test_stats_follow_create_update_transition_tags_and_delete(client, alice, make_task):
    first = await make_task(alice, title="one", priority="high", tags=["a"])
    body = await stats(client, alice)
    assert (body["total"], body["by_priority"]["high"], body["by_tag"]) == (1, 1, {"a": 1})

    second = await make_task(alice, title="two", tags=["a", "b"])
    body = await stats(client, alice)
    assert body["total"] == 2
    assert body["by_priority"] == zeros(PRIORITY_KEYS, high=1, medium=1)
    assert body["by_tag"] == {"a": 2, "b": 1}

    await change(client, alice, "PATCH", task_url(first["id"]), {"priority": "low", "tags": ["c"]})
    body = await stats(client, alice)
    assert body["by_priority"] == zeros(PRIORITY_KEYS, low=1, medium=1)
    assert body["by_tag"] == {"a": 1, "b": 1, "c": 1}

    await transition(client, alice, first["id"], "done")
    body = await stats(client, alice)
    assert (body["completed"], body["incomplete"], body["completion_rate"]) == (1, 1, 50.0)
    assert body["by_status"] == zeros(STATUS_KEYS, done=1, todo=1)

    await change(client, alice, "PATCH", task_url(second["id"]), {"completed": True})
    body = await stats(client, alice)
    assert (body["completed"], body["completion_rate"]) == (2, 100.0)

    await change(client, alice, "POST", task_url(second["id"]) + "/tags", ["d"])
    await change(client, alice, "DELETE", task_url(second["id"]) + "/tags/a")
    assert (await stats(client, alice))["by_tag"] == {"b": 1, "c": 1, "d": 1}

    await change(client, alice, "PUT", task_url(second["id"]), {"title": "two again"})
    body = await stats(client, alice)
    assert body["by_tag"] == {"c": 1}
    assert body["by_status"] == zeros(STATUS_KEYS, done=1, todo=1)
    assert body["by_priority"] == zeros(PRIORITY_KEYS, low=1, medium=1)

    await change(client, alice, "DELETE", task_url(first["id"]))
    body = await stats(client, alice)
    assert (body["total"], body["completed"], body["completion_rate"]) == (1, 0, 0.0)
    assert body["by_tag"] == {}


async def test_stats_follow_bulk_changes(client, alice, make_task):
    tasks = [await make_task(alice, title=f"bulk {n}", tags=["x"]) for n in range(4)]
    task_ids = [task["id"] for task in tasks]
    await change(
        client,
        alice,
        "POST",
        f"{TASKS}/bulk-status",
        {"task_ids": task_ids[:3], "target_status": "done"},
    )
    body = await stats(client, alice)
    assert (body["completed"], body["completion_rate"]) == (3, 75.0)
    await change(
        client,
        alice,
        "PATCH",
        f"{TASKS}/bulk",
        {"task_ids": task_ids[2:], "updates": {"priority": "urgent", "tags": ["y"]}},
    )
    body = await stats(client, alice)
    assert body["by_priority"] == zeros(PRIORITY_KEYS, medium=2, urgent=2)
    assert body["by_tag"] == {"x": 2, "y": 2}


async def test_assignee_stats_include_a_task_only_while_assigned(client, alice, bob, make_task):
    task = await make_task(alice, title="shared", priority="urgent", tags=["team"])
    assert (await stats(client, bob))["total"] == 0

    await change(client, alice, "POST", task_url(task["id"]) + "/assign", {"assignee_id": bob.id})
    bob_stats = await stats(client, bob)
    assert bob_stats["total"] == 1
    assert bob_stats["by_priority"]["urgent"] == 1
    assert bob_stats["by_tag"] == {"team": 1}
    assert (await stats(client, alice))["total"] == 1

    # The assignee's own changes show up in both users' stats.
    await transition(client, bob, task["id"], "done")
    assert (await stats(client, bob))["completion_rate"] == 100.0
    assert (await stats(client, alice))["completion_rate"] == 100.0

    await change(client, alice, "POST", task_url(task["id"]) + "/assign", {"assignee_id": None})
    assert await stats(client, bob) == {
        "total": 0,
        "completed": 0,
        "incomplete": 0,
        "completion_rate": 0.0,
        "overdue": 0,
        "by_status": zeros(STATUS_KEYS),
        "by_priority": zeros(PRIORITY_KEYS),
        "by_tag": {},
    }
    assert (await stats(client, alice))["total"] == 1


async def test_reassigning_moves_the_task_between_assignees(
    client, alice, bob, make_user, make_task
):
    carol = await make_user()
    task = await make_task(alice, title="moving", assignee_id=bob.id, tags=["m"])
    assert (await stats(client, bob))["by_tag"] == {"m": 1}
    await change(client, alice, "PATCH", task_url(task["id"]), {"assignee_id": carol.id})
    assert (await stats(client, bob))["total"] == 0
    assert (await stats(client, carol))["by_tag"] == {"m": 1}
    assert (await stats(client, alice))["total"] == 1


# --- computed in SQL ---------------------------------------------------------------------------


async def test_statement_count_does_not_grow_with_the_number_of_tasks(
    client, alice, bob, make_task, db_session, sql_log
):
    await make_task(alice, title="first", tags=["t0"], status="done")
    sql_log.clear()
    small = await stats(client, alice)
    statements_for_one = sql_log.count
    assert small["total"] == 1

    # bob's 200 tasks are inserted directly (before bob's first stats request).
    statuses = list(TaskStatus)
    priorities = list(TaskPriority)
    past = today() - timedelta(days=3)
    db_session.add_all(
        [
            Task(
                owner_id=bob.id,
                title=f"bulk {n}",
                status=statuses[n % 4],
                priority=priorities[n % 4],
                tags=[f"t{n % 5}", "all"],
                due_date=past if n % 2 else None,
            )
            for n in range(200)
        ]
    )
    await db_session.flush()
    # Both measured requests find their caller in the principal cache.
    assert (await client.get("/api/v1/users/me", headers=bob.headers)).status_code == 200

    sql_log.clear()
    large = await stats(client, bob)
    assert sql_log.count == statements_for_one
    assert statements_for_one <= 5, sql_log.statements

    assert large["total"] == 200
    assert large["by_status"] == {"todo": 50, "in_progress": 50, "done": 50, "cancelled": 50}
    assert large["by_priority"] == {"low": 50, "medium": 50, "high": 50, "urgent": 50}
    assert large["completion_rate"] == 25.0
    # Odd n is past due; of those, n % 4 == 1 (in_progress) counts, n % 4 == 3 (cancelled) not.
    assert large["overdue"] == 50
    assert large["by_tag"] == {"all": 200, "t0": 40, "t1": 40, "t2": 40, "t3": 40, "t4": 40}
    # alice's numbers are unaffected by bob's tasks.
    assert (await stats(client, alice))["total"] == 1
