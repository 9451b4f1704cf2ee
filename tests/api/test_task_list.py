"""GET /api/v1/tasks: every filter alone and combined, every sort, offset and cursor pagination
(including cursor walks while rows are being inserted), parameter validation and query count.

Most tests arrange rows directly through `db_session` (same transaction as the app) so that
created_at / updated_at / due_date can be chosen freely: with the `client` fixture every request
of a test shares one transaction, so `now()` would give every task the same timestamps.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import insert

from taskapi.models import Task, TaskPriority, TaskStatus
from tests.conftest import UserHandle, register_and_login
from tests.task_helpers import TASKS, assert_problem, assert_task_shape

PRIORITIES = ("low", "medium", "high", "urgent")
STATUSES = ("todo", "in_progress", "done", "cancelled")
SORT_FIELDS = ("created_at", "updated_at", "due_date", "priority", "title", "status", "id")
LINK_NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def _today() -> date:
    return datetime.now(UTC).date()


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


async def _get(client: httpx.AsyncClient, user: UserHandle, params: Any = None) -> httpx.Response:
    return await client.get(TASKS, params=params, headers=user.headers)


async def _page(client: httpx.AsyncClient, user: UserHandle, params: Any = None) -> dict[str, Any]:
    response = await _get(client, user, params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = LINK_NEXT.match(link)
    assert match, link
    return match.group(1)


_title_counter = iter(range(1, 1_000_000))


async def insert_tasks(db_session: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert task rows directly (fast, with any timestamps); returns their ids in order."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    values = []
    for row in rows:
        values.append(
            {
                "owner_id": row["owner_id"],
                "assignee_id": row.get("assignee_id"),
                "title": row.get("title") or f"task{next(_title_counter)}",
                "status": TaskStatus(row.get("status", "todo")),
                "priority": TaskPriority(row.get("priority", "medium")),
                "due_date": row.get("due_date"),
                "tags": row.get("tags", []),
                "created_at": row.get("created_at", base),
                "updated_at": row.get("updated_at", row.get("created_at", base)),
                "completed_at": base if row.get("status") == "done" else None,
            }
        )
    ids: list[int] = []
    for value in values:  # one by one: ids then follow the order of `rows`
        result = await db_session.execute(insert(Task).values(**value).returning(Task.id))
        ids.append(result.scalar_one())
    await db_session.commit()
    return ids


# --- expected order, computed independently in Python ---------------------------------------------


def _parse_sort(sort: str | None) -> list[tuple[str, bool]]:
    keys = []
    for part in (sort or "-created_at").split(","):
        keys.append((part.lstrip("-+"), part.startswith("-")))
    return keys


_SORT_VALUE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "created_at": lambda t: _ts(t["created_at"]),
    "updated_at": lambda t: _ts(t["updated_at"]),
    "priority": lambda t: PRIORITIES.index(t["priority"]),
    "status": lambda t: STATUSES.index(t["status"]),
    "title": lambda t: t["title"].lower(),
    "id": lambda t: t["id"],
}


def expected_order(items: list[dict[str, Any]], sort: str | None, *, ties_desc: bool) -> list[int]:
    """Stable multi-pass sort: id tie-breaker first, then each key from the last to the first."""
    rows = sorted(items, key=lambda t: t["id"], reverse=ties_desc)
    for field, descending in reversed(_parse_sort(sort)):
        if field == "due_date":
            rows.sort(key=lambda t: t["due_date"] or "", reverse=descending)
            rows.sort(key=lambda t: t["due_date"] is None)  # no due date: last either way
        else:
            rows.sort(key=_SORT_VALUE[field], reverse=descending)
    return [t["id"] for t in rows]


def assert_ordered(items: list[dict[str, Any]], sort: str | None) -> None:
    got = [t["id"] for t in items]
    # docs/api.md: "ties broken by id" (direction unspecified): accept either, but consistently.
    candidates = [expected_order(items, sort, ties_desc=d) for d in (False, True)]
    assert got in candidates, (sort, got, candidates)


# --- a fixed little world -------------------------------------------------------------------------


@dataclass
class World:
    alice: UserHandle
    bob: UserHandle
    carol: UserHandle
    today: date
    rows: dict[str, dict[str, Any]]  # name -> attributes incl. "id"

    def visible(self) -> list[dict[str, Any]]:
        return [
            r for r in self.rows.values() if self.alice.id in (r["owner_id"], r.get("assignee_id"))
        ]


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
async def world(client, alice, bob, make_user, db_session) -> World:
    carol = await make_user("carol")
    today = _today()

    def d(days: int) -> date:
        return today + timedelta(days=days)

    a, b, c = alice.id, bob.id, carol.id
    # name: owner, assignee, status, priority, due, tags, created_at, updated_at, title
    spec: dict[str, tuple[Any, ...]] = {
        "a1": (a, None, "todo", "low", d(-3), ["work", "urgent"],
               "2024-01-10T12:00:00", "2024-02-01T00:00:00", "banana"),
        "a2": (a, b, "in_progress", "high", d(-1), ["work"],
               "2024-01-11T00:00:00", "2024-02-02T00:00:00", "Apple"),
        "a3": (a, None, "done", "urgent", d(-5), ["home"],
               "2024-01-11T23:59:59.999999", "2024-02-03T00:00:00", "cherry"),
        "a4": (a, c, "cancelled", "medium", d(-2), [],
               "2024-01-12T00:00:00", "2024-02-01T23:59:59.999999", "apple"),
        "a5": (a, None, "todo", "medium", d(0), ["work", "home"],
               "2024-01-09T23:59:59.999999", "2024-02-05T00:00:00", "Date"),
        "a6": (a, b, "todo", "urgent", None, ["urgent"],
               "2024-01-13T00:00:00", "2024-02-02T00:00:00", "elder"),
        "a7": (a, None, "in_progress", "low", d(10), ["home", "work", "urgent"],
               "2024-01-11T12:00:00", "2024-01-20T00:00:00", "Fig"),
        "b1": (b, a, "todo", "high", d(-1), ["work"],
               "2024-01-11T12:00:00", "2024-02-04T00:00:00", "grape"),
        "b2": (b, a, "done", "low", None, ["home"],
               "2024-01-14T00:00:00", "2024-01-15T00:00:00", "Banana"),
        "b3": (b, a, "cancelled", "urgent", d(3), ["work", "urgent"],
               "2024-01-08T00:00:00", "2024-02-06T00:00:00", "fig"),
        # Never visible to alice, yet matching most filters.
        "x1": (b, None, "todo", "high", d(-1), ["work", "urgent"],
               "2024-01-11T06:00:00", "2024-02-10T00:00:00", "apple"),
        "x2": (b, c, "in_progress", "urgent", d(-4), ["work", "home", "urgent"],
               "2024-01-12T00:00:00", "2024-02-10T00:00:00", "banana"),
        "x3": (c, b, "todo", "low", d(1), ["work"],
               "2024-01-10T00:00:00", "2024-02-10T00:00:00", "cherry"),
        "x4": (c, None, "done", "medium", None, ["home"],
               "2024-01-11T00:00:00", "2024-02-10T00:00:00", "date"),
    }  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    for name, (owner, assignee, status, prio, due, tags, created, updated, title) in spec.items():
        rows[name] = {
            "owner_id": owner,
            "assignee_id": assignee,
            "status": status,
            "priority": prio,
            "due_date": due,
            "tags": tags,
            "created_at": _dt(created),
            "updated_at": _dt(updated),
            "title": title,
        }
    ids = await insert_tasks(db_session, list(rows.values()))
    for row, task_id in zip(rows.values(), ids, strict=True):
        row["id"] = task_id
    return World(alice, bob, carol, today, rows)


def _overdue(r: dict[str, Any], w: World) -> bool:
    return (
        r["due_date"] is not None
        and r["due_date"] < w.today
        and r["status"] not in ("done", "cancelled")
    )


def _due(r: dict[str, Any], low: int | None, high: int | None, w: World) -> bool:
    if r["due_date"] is None:
        return False
    if low is not None and r["due_date"] < w.today + timedelta(days=low):
        return False
    return high is None or r["due_date"] <= w.today + timedelta(days=high)


def _day(w: World, days: int) -> str:
    return (w.today + timedelta(days=days)).isoformat()


Params = Callable[[World], Any]
Predicate = Callable[[dict[str, Any], World], bool]

# (id, params, predicate over alice's visible rows, whether it must pick a proper non-empty subset)
FILTER_CASES: list[tuple[str, Params, Predicate, bool]] = [
    ("no-filter", lambda w: {}, lambda r, w: True, False),
    ("status-one", lambda w: {"status": "todo"}, lambda r, w: r["status"] == "todo", True),
    (
        "status-comma",
        lambda w: {"status": "todo,done"},
        lambda r, w: r["status"] in ("todo", "done"),
        True,
    ),
    (
        "status-comma-spaces",
        lambda w: {"status": " in_progress , cancelled "},
        lambda r, w: r["status"] in ("in_progress", "cancelled"),
        True,
    ),
    (
        "status-repeated",
        lambda w: [("status", "in_progress"), ("status", "cancelled")],
        lambda r, w: r["status"] in ("in_progress", "cancelled"),
        True,
    ),
    (
        "status-all-four",
        lambda w: {"status": "todo,in_progress,done,cancelled"},
        lambda r, w: True,
        False,
    ),
    (
        "priority-one",
        lambda w: {"priority": "urgent"},
        lambda r, w: r["priority"] == "urgent",
        True,
    ),
    (
        "priority-comma",
        lambda w: {"priority": "low,high"},
        lambda r, w: r["priority"] in ("low", "high"),
        True,
    ),
    (
        "priority-repeated",
        lambda w: [("priority", "medium"), ("priority", "urgent")],
        lambda r, w: r["priority"] in ("medium", "urgent"),
        True,
    ),
    ("completed-true", lambda w: {"completed": "true"}, lambda r, w: r["status"] == "done", True),
    ("completed-false", lambda w: {"completed": "false"}, lambda r, w: r["status"] != "done", True),
    ("overdue-true", lambda w: {"overdue": "true"}, _overdue, True),
    ("overdue-false", lambda w: {"overdue": "false"}, lambda r, w: not _overdue(r, w), True),
    ("tags-one", lambda w: {"tags": "work"}, lambda r, w: "work" in r["tags"], True),
    (
        "tags-all-of",
        lambda w: {"tags": "work,urgent"},
        lambda r, w: {"work", "urgent"} <= set(r["tags"]),
        True,
    ),
    (
        "tags-normalised",
        lambda w: {"tags": "  WORK , Home "},
        lambda r, w: {"work", "home"} <= set(r["tags"]),
        True,
    ),
    (
        "tags-repeated",
        lambda w: [("tags", "home"), ("tags", "urgent")],
        lambda r, w: {"home", "urgent"} <= set(r["tags"]),
        True,
    ),
    ("tags-unknown", lambda w: {"tags": "nope"}, lambda r, w: False, False),
    (
        "due-before-inclusive",
        lambda w: {"due_before": _day(w, -2)},
        lambda r, w: _due(r, None, -2, w),
        True,
    ),
    (
        "due-after-inclusive",
        lambda w: {"due_after": _day(w, 0)},
        lambda r, w: _due(r, 0, None, w),
        True,
    ),
    (
        "due-window",
        lambda w: {"due_after": _day(w, -3), "due_before": _day(w, -1)},
        lambda r, w: _due(r, -3, -1, w),
        True,
    ),
    (
        "due-single-day",
        lambda w: {"due_after": _day(w, -1), "due_before": _day(w, -1)},
        lambda r, w: _due(r, -1, -1, w),
        True,
    ),
    (
        "due-empty-window",
        lambda w: {"due_after": _day(w, 1), "due_before": _day(w, -1)},
        lambda r, w: False,
        False,
    ),
    (
        "created-before-inclusive",
        lambda w: {"created_before": "2024-01-11"},
        lambda r, w: r["created_at"] < _dt("2024-01-12T00:00:00"),
        True,
    ),
    (
        "created-after-inclusive",
        lambda w: {"created_after": "2024-01-11"},
        lambda r, w: r["created_at"] >= _dt("2024-01-11T00:00:00"),
        True,
    ),
    (
        "created-single-day",
        lambda w: {"created_after": "2024-01-11", "created_before": "2024-01-11"},
        lambda r, w: _dt("2024-01-11T00:00:00") <= r["created_at"] < _dt("2024-01-12T00:00:00"),
        True,
    ),
    (
        "updated-since-z",
        lambda w: {"updated_since": "2024-02-02T00:00:00Z"},
        lambda r, w: r["updated_at"] >= _dt("2024-02-02T00:00:00"),
        True,
    ),
    (
        "updated-since-offset",
        lambda w: {"updated_since": "2024-02-02T02:00:00+02:00"},
        lambda r, w: r["updated_at"] >= _dt("2024-02-02T00:00:00"),
        True,
    ),
    (
        "updated-since-naive-is-utc",
        lambda w: {"updated_since": "2024-02-02T00:00:00"},
        lambda r, w: r["updated_at"] >= _dt("2024-02-02T00:00:00"),
        True,
    ),
    (
        "updated-since-one-microsecond-later",
        lambda w: {"updated_since": "2024-02-02T00:00:00.000001Z"},
        lambda r, w: r["updated_at"] > _dt("2024-02-02T00:00:00"),
        True,
    ),
    (
        "assignee-me",
        lambda w: {"assignee": "me"},
        lambda r, w: r["assignee_id"] == w.alice.id,
        True,
    ),
    ("assignee-none", lambda w: {"assignee": "none"}, lambda r, w: r["assignee_id"] is None, True),
    (
        "assignee-bob",
        lambda w: {"assignee": w.bob.id},
        lambda r, w: r["assignee_id"] == w.bob.id,
        True,
    ),
    (
        "assignee-carol",
        lambda w: {"assignee": w.carol.id},
        lambda r, w: r["assignee_id"] == w.carol.id,
        True,
    ),
    (
        "assignee-own-id-is-me",
        lambda w: {"assignee": w.alice.id},
        lambda r, w: r["assignee_id"] == w.alice.id,
        True,
    ),
    ("assignee-unknown-user", lambda w: {"assignee": 10**15}, lambda r, w: False, False),
    ("scope-all", lambda w: {"scope": "all"}, lambda r, w: True, False),
    (
        "scope-owned",
        lambda w: {"scope": "owned"},
        lambda r, w: r["owner_id"] == w.alice.id,
        True,
    ),
    (
        "scope-assigned",
        lambda w: {"scope": "assigned"},
        lambda r, w: r["assignee_id"] == w.alice.id,
        True,
    ),
    # --- combinations: AND across filters -------------------------------------------------------
    (
        "status+priority",
        lambda w: {"status": "todo,in_progress", "priority": "high,urgent"},
        lambda r, w: r["status"] in ("todo", "in_progress") and r["priority"] in ("high", "urgent"),
        True,
    ),
    (
        "owned+assignee-bob",
        lambda w: {"scope": "owned", "assignee": w.bob.id},
        lambda r, w: r["owner_id"] == w.alice.id and r["assignee_id"] == w.bob.id,
        True,
    ),
    (
        "owned+assignee-none+tags",
        lambda w: {"scope": "owned", "assignee": "none", "tags": "work"},
        lambda r, w: (
            r["owner_id"] == w.alice.id and r["assignee_id"] is None and "work" in r["tags"]
        ),
        True,
    ),
    (
        "assigned+overdue",
        lambda w: {"scope": "assigned", "overdue": "true"},
        lambda r, w: r["assignee_id"] == w.alice.id and _overdue(r, w),
        True,
    ),
    (
        "open+not-overdue+tag",
        lambda w: {"completed": "false", "overdue": "false", "tags": "work"},
        lambda r, w: r["status"] != "done" and not _overdue(r, w) and "work" in r["tags"],
        True,
    ),
    (
        "overdue+priority+due-window",
        lambda w: {"overdue": "true", "priority": "high", "due_after": _day(w, -1)},
        lambda r, w: _overdue(r, w) and r["priority"] == "high" and _due(r, -1, None, w),
        True,
    ),
    (
        "created+updated+status",
        lambda w: {
            "created_after": "2024-01-10",
            "created_before": "2024-01-12",
            "updated_since": "2024-02-01T12:00:00Z",
            "status": "todo,in_progress,cancelled",
        },
        lambda r, w: (
            _dt("2024-01-10T00:00:00") <= r["created_at"] < _dt("2024-01-13T00:00:00")
            and r["updated_at"] >= _dt("2024-02-01T12:00:00")
            and r["status"] in ("todo", "in_progress", "cancelled")
        ),
        True,
    ),
    (
        "everything-at-once",
        lambda w: {
            "status": "todo,in_progress",
            "priority": "low,high",
            "completed": "false",
            "overdue": "true",
            "tags": "work",
            "due_before": _day(w, 0),
            "due_after": _day(w, -10),
            "created_before": "2024-01-31",
            "created_after": "2024-01-01",
            "updated_since": "2024-01-01T00:00:00Z",
            "assignee": "none",
            "scope": "owned",
        },
        lambda r, w: r["title"] == "banana" and r["owner_id"] == w.alice.id,
        True,
    ),
    (
        "done-and-not-completed-is-empty",
        lambda w: {"status": "done", "completed": "false"},
        lambda r, w: False,
        False,
    ),
    (
        "assigned-to-me-and-nobody-is-empty",
        lambda w: {"scope": "assigned", "assignee": "none"},
        lambda r, w: False,
        False,
    ),
    (
        "completed-and-overdue-is-empty",
        lambda w: {"completed": "true", "overdue": "true"},
        lambda r, w: False,
        False,
    ),
]


FILTER_FAMILIES = (
    "status", "priority", "completed", "overdue", "tags", "due", "created", "updated",
    "assignee", "scope",
)  # fmt: skip


def _family(name: str) -> str:
    head = name.split("-")[0]
    return head if head in FILTER_FAMILIES else "combined"


@pytest.mark.parametrize("family", [*FILTER_FAMILIES, "combined"])
async def test_filters(client, world, family):
    visible = world.visible()
    cases = [case for case in FILTER_CASES if _family(case[0]) == family]
    assert cases
    for name, params, predicate, proper in cases:
        expected = [r for r in visible if predicate(r, world)]
        if proper:  # the case really discriminates on this data set
            assert 0 < len(expected) < len(visible), name
        page = await _page(client, world.alice, params(world))
        wanted = sorted(expected, key=lambda r: (r["created_at"], r["id"]), reverse=True)
        # filtered, and still in the default order (-created_at)
        assert _ids(page) == [r["id"] for r in wanted], name
        assert page["total"] == len(expected), name
        for item in page["items"]:
            assert_task_shape(item)


async def test_filters_never_reveal_other_users_tasks(client, world):
    """Every filter, as bob and as carol: only tasks they own or are assigned."""
    for user in (world.bob, world.carol):
        mine = {
            r["id"] for r in world.rows.values() if user.id in (r["owner_id"], r["assignee_id"])
        }
        for name, params, _pred, _proper in FILTER_CASES:
            query = params(world)
            query = [*query, ("limit", 100)] if isinstance(query, list) else {**query, "limit": 100}
            page = await _page(client, user, query)
            assert set(_ids(page)) <= mine, name
            assert page["total"] == len(page["items"])


async def test_assignee_filter_shows_only_own_tasks_assigned_to_that_user(client, world):
    # Bob's own tasks and carol's task assigned to bob exist, but alice sees only hers.
    page = await _page(client, world.alice, {"assignee": world.bob.id})
    assert set(_ids(page)) == {world.rows["a2"]["id"], world.rows["a6"]["id"]}
    page = await _page(client, world.bob, {"assignee": world.bob.id})
    assert set(_ids(page)) == {world.rows[n]["id"] for n in ("a2", "a6", "x3")}
    page = await _page(client, world.carol, {"assignee": world.alice.id})
    assert page["items"] == []
    assert page["total"] == 0


async def test_overdue_uses_status_and_today(client, alice, make_task):
    today = _today()
    yesterday = (today - timedelta(days=1)).isoformat()
    late = await make_task(alice, due_date=yesterday)
    late_started = await make_task(alice, due_date=yesterday, status="in_progress")
    await make_task(alice, due_date=yesterday, status="done")
    await make_task(alice, due_date=yesterday, status="cancelled")
    await make_task(alice, due_date=today.isoformat())
    no_due = await make_task(alice)
    overdue = await _page(client, alice, {"overdue": "true"})
    assert set(_ids(overdue)) == {late["id"], late_started["id"]}
    assert all(item["is_overdue"] for item in overdue["items"])
    not_overdue = await _page(client, alice, {"overdue": "false"})
    assert no_due["id"] in _ids(not_overdue)
    assert not_overdue["total"] == 4
    assert not any(item["is_overdue"] for item in not_overdue["items"])

    # Finishing a task takes it out of the overdue list at once.
    response = await client.post(
        f"{TASKS}/{late['id']}/transition", json={"status": "done"}, headers=alice.headers
    )
    assert response.status_code == 200
    assert _ids(await _page(client, alice, {"overdue": "true"})) == [late_started["id"]]


async def test_tag_filter_follows_tag_changes(client, alice, make_task):
    task = await make_task(alice, tags=["Alpha", " beta "])
    other = await make_task(alice, tags=["alpha"])
    assert set(_ids(await _page(client, alice, {"tags": "ALPHA"}))) == {task["id"], other["id"]}
    assert _ids(await _page(client, alice, {"tags": "alpha,beta"})) == [task["id"]]
    response = await client.delete(f"{TASKS}/{task['id']}/tags/beta", headers=alice.headers)
    assert response.status_code == 200
    assert _ids(await _page(client, alice, {"tags": "alpha,beta"})) == []
    # An empty tag list is no filter at all.
    assert (await _page(client, alice, {"tags": ""}))["total"] == 2
    assert (await _page(client, alice, {"tags": ","}))["total"] == 2


async def test_created_filters_use_utc_days(client, alice, db_session):
    # 23:30 in New York on 10 March is already 11 March in UTC.
    ids = await insert_tasks(
        db_session,
        [
            {"owner_id": alice.id, "created_at": _ts("2024-03-10T23:30:00-05:00")},
            {"owner_id": alice.id, "created_at": _ts("2024-03-10T23:59:59Z")},
        ],
    )  # fmt: skip
    late_ny, late_utc = ids
    assert _ids(await _page(client, alice, {"created_before": "2024-03-10"})) == [late_utc]
    assert _ids(await _page(client, alice, {"created_after": "2024-03-11"})) == [late_ny]


# --- sorting --------------------------------------------------------------------------------------

SORTS = [
    *SORT_FIELDS,
    *(f"-{field}" for field in SORT_FIELDS),
    "+title",
    "priority,-due_date",
    "-priority,due_date",
    "-status,title",
    "status,-created_at",
    "due_date,-priority,title",
    "-updated_at,priority",
    "title,-id",
    "id,title",
    "title,-title,title",  # a field named again is ignored: the first key decides
    "-priority,priority,due_date",
]


@pytest.mark.parametrize(
    "sorts",
    [SORTS[:7], SORTS[7:14], SORTS[14:]],
    ids=["ascending", "descending", "multi-key"],
)
async def test_sort(client, world, sorts):
    for sort in sorts:
        page = await _page(client, world.alice, {"sort": sort, "limit": 100})
        items = page["items"]
        assert len(items) == len(world.visible()) == page["total"]
        assert_ordered(items, sort)
        field, _descending = _parse_sort(sort)[0]
        if field == "due_date":  # tasks without a due date come last in both directions
            dues = [item["due_date"] for item in items]
            assert dues[-2:] == [None, None], sort
            assert None not in dues[:-2], sort


async def test_sort_semantics_spelled_out(client, world):
    def names(page: dict[str, Any]) -> list[str]:
        by_id = {r["id"]: name for name, r in world.rows.items()}
        return [by_id[i] for i in _ids(page)]

    by_priority = await _page(client, world.alice, {"sort": "priority", "limit": 100})
    assert [i["priority"] for i in by_priority["items"]] == sorted(
        (r["priority"] for r in world.visible()), key=PRIORITIES.index
    )
    by_status = await _page(client, world.alice, {"sort": "-status", "limit": 100})
    assert [i["status"] for i in by_status["items"]][:2] == ["cancelled", "cancelled"]
    assert [i["status"] for i in by_status["items"]][-4:] == ["todo"] * 4
    # Titles compare case-insensitively: "Apple" and "apple" are neighbours, "Date" before "elder".
    by_title = await _page(client, world.alice, {"sort": "title", "limit": 100})
    assert [t.lower() for t in (i["title"] for i in by_title["items"])] == [
        "apple", "apple", "banana", "banana", "cherry", "date", "elder", "fig", "fig", "grape",
    ]  # fmt: skip
    by_due = await _page(client, world.alice, {"sort": "-due_date", "limit": 100})
    assert names(by_due)[0] == "a7"
    assert set(names(by_due)[-2:]) == {"a6", "b2"}


async def test_default_sort_is_newest_first_with_newest_id_first_on_ties(client, alice, make_task):
    # All tasks of one test share created_at (one transaction): the tie-breaker decides.
    ids = [(await make_task(alice))["id"] for _ in range(4)]
    for params in ({}, {"sort": ""}, {"sort": "-created_at"}):
        assert _ids(await _page(client, alice, params)) == ids[::-1]


BAD_SORTS = (
    "nope", "-", ",", "title,,id", "--title", "-+title", "+-title", "title desc",
    "-Title", "search", "rank", "owner_id", "title;drop table tasks",
)  # fmt: skip


async def test_bad_sort_is_422(client, alice):
    for sort in BAD_SORTS:
        response = await _get(client, alice, {"sort": sort})
        assert response.status_code == 422, sort
        assert_problem(response, 422, "validation_error")


# --- offset pagination and the envelope -----------------------------------------------------------


async def test_offset_pages_link_header_and_total(client, world):
    everything = _ids(await _page(client, world.alice, {"limit": 100, "sort": "title"}))
    seen: list[int] = []
    for offset in range(0, 12, 3):
        params = {"limit": 3, "offset": offset, "sort": "title"}
        response = await _get(client, world.alice, params)
        assert response.status_code == 200
        page = response.json()
        assert (page["limit"], page["offset"], page["total"]) == (3, offset, 10)
        seen += _ids(page)
        link = _next_link(response)
        if offset + 3 < 10:
            assert page["next_cursor"]
            assert link is not None
            query = parse_qs(urlsplit(link).query)
            assert "offset" not in query
            assert query["cursor"] == [page["next_cursor"]]
            assert query["sort"] == ["title"]
            # The link continues right after this page.
            following = (await client.get(link, headers=world.alice.headers)).json()
            assert _ids(following) == everything[offset + 3 : offset + 6]
        else:
            assert page["next_cursor"] is None
            assert link is None
    assert seen == everything


async def test_envelope_in_cursor_mode_and_link_keeps_filters(client, world):
    params: dict[str, Any] = {"limit": 2, "tags": "work", "status": "todo,in_progress"}
    first = await _get(client, world.alice, params)
    body = first.json()
    expected_total = sum(
        1 for r in world.visible() if "work" in r["tags"] and r["status"] in ("todo", "in_progress")
    )
    assert expected_total == 5
    assert set(body) == {"items", "total", "limit", "offset", "next_cursor"}
    assert (body["total"], body["limit"], body["offset"]) == (5, 2, 0)
    seen = _ids(body)
    link = _next_link(first)
    pages = 1
    while link is not None:
        query = parse_qs(urlsplit(link).query)
        assert query["tags"] == ["work"]
        assert query["status"] == ["todo,in_progress"]
        response = await client.get(link, headers=world.alice.headers)
        assert response.status_code == 200
        body = response.json()
        assert body["offset"] is None  # cursor mode
        assert body["total"] == 5  # all matching rows, not the rest nor the page
        assert body["limit"] == 2
        seen += _ids(body)
        link = _next_link(response)
        assert (link is None) == (body["next_cursor"] is None)
        pages += 1
    assert pages == 3
    assert seen == _ids(await _page(client, world.alice, {**params, "limit": 100}))


async def test_exactly_full_last_page_has_no_next(client, alice, make_task):
    for _ in range(4):
        await make_task(alice)
    response = await _get(client, alice, {"limit": 2, "offset": 2})
    assert len(response.json()["items"]) == 2
    assert response.json()["next_cursor"] is None
    assert "link" not in response.headers
    response = await _get(client, alice, {"limit": 4})
    assert response.json()["next_cursor"] is None
    assert "link" not in response.headers
    beyond = await _page(client, alice, {"offset": 10})
    assert (beyond["items"], beyond["total"], beyond["next_cursor"]) == ([], 4, None)


# --- cursor pagination ----------------------------------------------------------------------------

TITLE_POOL = ("alpha", "Alpha", "beta", "BETA", "gamma", "Delta", "delta", "omega")


def _random_rows(rng: random.Random, n: int, owner: int, assignee: int | None) -> list[dict]:
    today = _today()
    due_pool = (None, None, today - timedelta(days=2), today, today + timedelta(days=5))
    stamp_pool = [datetime(2024, 5, day, 8, 30, tzinfo=UTC) for day in (1, 2, 3, 4)]
    rows = []
    for _ in range(n):
        rows.append(
            {
                "owner_id": owner,
                "assignee_id": assignee,
                "title": rng.choice(TITLE_POOL),
                "status": rng.choice(STATUSES),
                "priority": rng.choice(PRIORITIES),
                "due_date": rng.choice(due_pool),
                "created_at": rng.choice(stamp_pool),
                "updated_at": rng.choice(stamp_pool),
            }
        )
    return rows


async def _walk_with_inserts(
    client, db_session, user: UserHandle, other: UserHandle, params: dict, seed: int
) -> tuple[list[int], list[tuple[list[int], int]]]:
    """Walk all pages by cursor; after each page insert rows (some visible, one not)."""
    rng = random.Random(seed)
    seen: list[int] = []
    inserted: list[tuple[list[int], int]] = []  # (new visible ids, last id seen before insert)
    cursor = None
    for _ in range(50):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = await _page(client, user, query)
        seen += _ids(page)
        if page["offset"] is not None:
            assert cursor is None
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, inserted
        if len(inserted) < 6:
            visible = _random_rows(rng, 2, user.id, None) + _random_rows(rng, 1, other.id, user.id)
            new_ids = await insert_tasks(db_session, visible)
            await insert_tasks(db_session, _random_rows(rng, 1, other.id, None))  # not visible
            inserted.append((new_ids, seen[-1]))
    raise AssertionError("the cursor walk did not end")


WALK_SORTS = [
    None,
    "-created_at",
    "created_at",
    "due_date",
    "-due_date",
    "priority",
    "-priority",
    "title",
    "-title",
    "status,-due_date",
    "-updated_at,title",
    "-priority,due_date,-title",
    "id",
    "-id",
]


@pytest.mark.parametrize("sort", WALK_SORTS, ids=lambda s: s or "default")
async def test_cursor_walk_while_rows_are_inserted(client, alice, bob, db_session, sort):
    rng = random.Random(f"initial-{sort}")
    await insert_tasks(db_session, _random_rows(rng, 14, alice.id, None))
    await insert_tasks(db_session, _random_rows(rng, 4, bob.id, alice.id))
    await insert_tasks(db_session, _random_rows(rng, 4, bob.id, None))  # never visible
    initial = _ids(await _page(client, alice, {"limit": 100, **({"sort": sort} if sort else {})}))
    assert len(initial) == 18

    params: dict[str, Any] = {"limit": 4, **({"sort": sort} if sort else {})}
    seen, inserted = await _walk_with_inserts(client, db_session, alice, bob, params, seed=7)

    final_page = await _page(client, alice, {"limit": 100, **({"sort": sort} if sort else {})})
    final = _ids(final_page)
    assert_ordered(final_page["items"], sort)
    position = {task_id: index for index, task_id in enumerate(final)}
    new_ids = {i for batch, _ in inserted for i in batch}
    assert len(final) == 18 + len(new_ids)
    # A row inserted during the walk shows up iff it sorts after the position the walk had reached.
    appears = {
        task_id
        for batch, last_seen in inserted
        for task_id in batch
        if position[task_id] > position[last_seen]
    }
    assert seen == [i for i in final if i not in new_ids or i in appears]
    assert len(seen) == len(set(seen))
    assert set(initial) <= set(seen)  # every row that existed all along, exactly once
    if sort in ("due_date", "-due_date", "priority", "title", "-priority,due_date,-title"):
        # the data really exercised both cases
        assert appears
        assert new_ids - appears


async def test_cursor_walk_default_sort_with_new_rows_sorting_before_and_after(
    client, alice, make_task, db_session
):
    """Default order (-created_at): a task created during the walk is newer, so it lands before
    the walk's position and is not seen (and causes no duplicate); an older one is seen."""
    ids = [(await make_task(alice, title=f"orig{i}"))["id"] for i in range(7)]
    first = await _page(client, alice, {"limit": 3})
    assert _ids(first) == ids[::-1][:3]
    newer = await make_task(alice, title="newer")  # same created_at, higher id: sorts first
    older = await make_task(alice, title="older")
    await db_session.execute(
        Task.__table__.update()
        .where(Task.id == older["id"])
        .values(created_at=datetime(2000, 1, 1, tzinfo=UTC))
    )
    await db_session.commit()
    second = await _page(client, alice, {"limit": 3, "cursor": first["next_cursor"]})
    third = await _page(client, alice, {"limit": 3, "cursor": second["next_cursor"]})
    assert second["total"] == third["total"] == 9
    assert _ids(second) + _ids(third) == [*ids[::-1][3:], older["id"]]
    assert third["next_cursor"] is None
    assert newer["id"] == _ids(await _page(client, alice))[0]


async def test_cursor_walk_with_unicode_titles(client, alice, db_session):
    """Titles whose lower-casing differs between Python and PostgreSQL (Turkish dotted capital I)
    must still be walked completely in title order."""
    titles = ["İa", "İa", "ia", "Ib", "ıc", "Ic", "Id", "İd", "ie", "Straße", "STRASSE", "ǅemal"]
    await insert_tasks(db_session, [{"owner_id": alice.id, "title": t} for t in titles])
    for sort in ("title", "-title", "title,-priority"):
        everything = _ids(await _page(client, alice, {"sort": sort, "limit": 100}))
        for limit in (1, 2):
            seen: list[int] = []
            cursor = None
            for _ in range(30):
                query = {"sort": sort, "limit": limit, **({"cursor": cursor} if cursor else {})}
                page = await _page(client, alice, query)
                seen += _ids(page)
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == everything, (sort, limit)


async def test_cursor_walk_with_filters_and_changing_limit(client, world):
    params = {"tags": "work", "sort": "due_date"}
    everything = _ids(await _page(client, world.alice, {**params, "limit": 100}))
    assert len(everything) == 6
    seen: list[int] = []
    cursor = None
    for limit in (1, 2, 1, 5):  # the limit may change between pages
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await _page(client, world.alice, query)
        assert page["total"] == 6
        seen += _ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    assert cursor is None


async def test_cursor_of_one_user_never_shows_another_users_tasks(client, world):
    alice_page = await _page(client, world.alice, {"limit": 1, "sort": "title"})
    response = await _get(
        client, world.bob, {"limit": 100, "sort": "title", "cursor": alice_page["next_cursor"]}
    )
    if response.status_code == 200:
        bobs = {
            r["id"]
            for r in world.rows.values()
            if world.bob.id in (r["owner_id"], r["assignee_id"])
        }
        assert set(_ids(response.json())) <= bobs
    else:
        assert_problem(response, 422, "invalid_cursor")


CURSOR_CHANGES: list[dict[str, Any]] = [
    {"status": "done"},
    {"status": "todo"},
    {"status": None},
    {"tags": "work"},
    {"priority": "high"},
    {"sort": "-title"},
    {"sort": "title,id"},
    {"sort": None},
    {"overdue": "true"},
    {"assignee": "me"},
    {"scope": "owned"},
    {"due_before": "2030-01-01"},
    {"created_after": "2024-01-01"},
    {"updated_since": "2024-01-01T00:00:00Z"},
    {"completed": "false"},
]


async def test_cursor_is_bound_to_filters_and_sort(client, world):
    params = {"status": "todo,in_progress", "sort": "title", "limit": 2}
    page = await _page(client, world.alice, params)
    assert page["next_cursor"]
    for changed in CURSOR_CHANGES:
        reused = {k: v for k, v in {**params, **changed}.items() if v is not None}
        reused["cursor"] = page["next_cursor"]
        response = await _get(client, world.alice, reused)
        assert response.status_code == 422, changed
        assert_problem(response, 422, "invalid_cursor")
    # Same filters and sort, another limit: fine.
    same = await _get(client, world.alice, {**params, "limit": 5, "cursor": page["next_cursor"]})
    assert same.status_code == 200
    assert _ids(same.json()) == _ids(await _page(client, world.alice, {**params, "limit": 7}))[2:]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_tampered_or_garbage_cursor_is_invalid_cursor(client, world):
    page = await _page(client, world.alice, {"limit": 2})
    cursor = page["next_cursor"]
    body, signature = cursor.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_payload = dict(payload, v=[payload["v"][0], 1])  # jump to another position
    forged = _b64(json.dumps(forged_payload, separators=(",", ":")).encode())
    flipped_sig = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    bad = [
        f"{forged}.{signature}",
        f"{body}.{flipped_sig}",
        f"{body[:-1]}.{signature}",
        f"{body}{signature}",
        body,
        f"{body}.",
        f".{signature}",
        ".",
        "garbage",
        "a.b.c",
        "%%%.***",
        "éé.üü",
        _b64(b"not json") + "." + signature,
        cursor + "x",
        "x" * 2000,
    ]
    for value in bad:
        response = await _get(client, world.alice, {"limit": 2, "cursor": value})
        assert_problem(response, 422, "invalid_cursor")
    # The genuine cursor still works.
    assert (await _get(client, world.alice, {"limit": 2, "cursor": cursor})).status_code == 200


async def test_offset_and_cursor_together_is_422(client, world):
    cursor = (await _page(client, world.alice, {"limit": 2}))["next_cursor"]
    for offset in (0, 2):
        response = await _get(client, world.alice, {"limit": 2, "offset": offset, "cursor": cursor})
        assert_problem(response, 422, "validation_error")


# --- validation -----------------------------------------------------------------------------------

BAD_PARAMS = [
    {"status": "nope"},
    {"status": "todo,nope"},
    {"status": "TODO"},
    {"priority": "x"},
    {"priority": "low,extreme"},
    {"completed": "maybe"},
    {"completed": ""},
    {"overdue": "sometimes"},
    {"due_before": "2026-13-01"},
    {"due_after": "2026-02-30"},
    {"due_before": "yesterday"},
    {"created_before": "2024-1-1x"},
    {"created_after": "01/02/2024"},
    {"updated_since": "garbage"},
    {"updated_since": "2024-02-30T00:00:00Z"},
    {"assignee": "-1"},
    {"assignee": "0"},
    {"assignee": "abc"},
    {"assignee": "ME"},
    {"assignee": str(2**63)},
    {"assignee": "9" * 40},
    {"scope": "x"},
    {"scope": ""},
    {"tags": "x" * 51},
    {"tags": "ok,\x01bad"},
    {"limit": "0"},
    {"limit": "101"},
    {"limit": "abc"},
    {"limit": "-5"},
    {"limit": "9" * 40},
    {"offset": "-1"},
    {"offset": "9" * 40},
    {"offset": "1.5"},
    {"cursor": "c" * 5000},
    {"cursor": ""},
]


async def test_bad_values_are_422(client, alice, make_task):
    await make_task(alice)
    wrong = {}
    for params in BAD_PARAMS:
        response = await _get(client, alice, params)
        if response.status_code != 422:
            wrong[str(params)[:80]] = response.status_code
            continue
        body = assert_problem(response, 422)
        assert body["code"] in ("validation_error", "invalid_cursor"), params
    assert wrong == {}


EXTREME_PARAMS: list[dict[str, str]] = [
    {"created_before": "9999-12-31"},
    {"created_after": "0001-01-01"},
    {"due_before": "9999-12-31"},
    {"due_after": "0001-01-01"},
    {"updated_since": "0001-01-01T00:00:00Z"},
    {"updated_since": "9999-12-31T23:59:59Z"},
    {"updated_since": "0001-01-01T00:00:00+01:00"},
    {"updated_since": "9999-12-31T23:59:59-01:00"},
    {"updated_since": "99999999999999999999"},
    {"due_before": "99999999999999999999"},
    {"created_after": "-1"},
    {"assignee": str(2**63 - 1)},
    {"offset": "10000000"},
    {"offset": "10000001"},
    {"status": ",,,"},
]


async def test_extreme_values_never_500(client, alice, make_task):
    """Extreme but well-formed values either work or are refused with a 422, never a 500."""
    await make_task(alice)
    wrong = {}
    for params in EXTREME_PARAMS:
        response = await _get(client, alice, params)
        if response.status_code not in (200, 422):
            wrong[str(params)] = response.status_code
        elif response.status_code == 422:
            assert_problem(response, 422, "validation_error")
    assert wrong == {}


async def test_extreme_but_valid_values_work(client, alice, make_task):
    await make_task(alice)
    cases = [
        ({"created_before": "9999-12-31"}, 1),
        ({"created_after": "0001-01-01"}, 1),
        ({"due_before": "9999-12-31"}, 0),  # no due date: never matches
        ({"due_after": "0001-01-01"}, 0),
        ({"updated_since": "0001-01-01T00:00:00Z"}, 1),
        ({"updated_since": "9999-12-31T23:59:59Z"}, 0),
        ({"assignee": str(2**63 - 1)}, 0),
        ({"status": ",,,"}, 1),  # an empty list is no filter
    ]
    for params, count in cases:
        assert (await _page(client, alice, params))["total"] == count, params


async def test_unknown_parameters_are_refused(client, world):
    # Never the first page in the default order as if the filter were applied (API.md part 2).
    params = {"stauts": "done", "foo": "bar", "page": "7"}
    response = await client.get(TASKS, params=params, headers=world.alice.headers)
    body = assert_problem(response, 422, "unknown_parameter")
    assert body["parameter"] == "stauts"
    assert body["suggestions"] == ["status"]
    assert [error["loc"][1] for error in body["errors"]] == ["stauts", "foo", "page"]


# --- statement count ------------------------------------------------------------------------------


async def test_listing_100_tasks_costs_the_same_statements_as_1(
    client, alice, bob, db_session, sql_log
):
    rng = random.Random(3)
    rows = _random_rows(rng, 100, alice.id, None)
    for index, row in enumerate(rows):
        if index % 2:
            row["assignee_id"] = bob.id
        row["tags"] = ["t1", f"t{index % 7}"]
    await insert_tasks(db_session, rows)

    await _page(client, alice, {"limit": 1})  # the first request also looks up the caller
    counts = {}
    for limit in (1, 100):
        sql_log.clear()
        page = await _page(client, alice, {"limit": limit})
        counts[limit] = sql_log.count
        assert len(page["items"]) == limit
    # One statement: the page and its total together; the caller comes from the auth cache.
    assert counts == {1: 1, 100: 1}, sql_log.statements

    first = await _page(client, alice, {"limit": 50, "sort": "due_date", "tags": "t1"})
    sql_log.clear()
    second = await _page(
        client,
        alice,
        {"limit": 50, "sort": "due_date", "tags": "t1", "cursor": first["next_cursor"]},
    )
    assert len(second["items"]) == 50
    assert sql_log.count == counts[1], sql_log.statements


# --- real commits ---------------------------------------------------------------------------------


async def test_cursor_walk_with_real_commits(live_client):
    user = await register_and_login(live_client, "walker")
    for i in range(7):
        response = await live_client.post(TASKS, json={"title": f"t{i}"}, headers=user.headers)
        assert response.status_code == 201
    newest_first = _ids(await _page(live_client, user, {"limit": 100}))
    oldest_first = _ids(await _page(live_client, user, {"limit": 100, "sort": "created_at"}))
    assert oldest_first == newest_first[::-1]

    for sort, new_rows_appear in ((None, False), ("created_at", True)):
        params: dict[str, Any] = {"limit": 3, **({"sort": sort} if sort else {})}
        seen: list[int] = []
        created: list[int] = []
        cursor = None
        while True:
            page = await _page(
                live_client, user, {**params, **({"cursor": cursor} if cursor else {})}
            )
            seen += _ids(page)
            cursor = page["next_cursor"]
            if cursor is None:
                break
            response = await live_client.post(TASKS, json={"title": "new"}, headers=user.headers)
            created.append(response.json()["id"])
        original = newest_first if sort is None else oldest_first
        if new_rows_appear:  # newer rows sort after the position: they are seen, at the end
            assert seen == original + created
        else:  # newer rows sort before the position: not seen, no duplicates
            assert seen == original
        newest_first = _ids(await _page(live_client, user, {"limit": 100}))
        oldest_first = newest_first[::-1]
