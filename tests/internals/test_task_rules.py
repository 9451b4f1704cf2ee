"""Who sees a task and when it is overdue are defined once (taskapi.tasks.visibility, .overdue):
every user of the two rules agrees with a plain-Python model of them, on random data sets.

* the list, its total, search, GET of each task, the `overdue=` filter, each item's
  `is_overdue`, the stats (from the trigger-kept counts) and a direct count all agree;
* the due-soon job tells exactly the viewers of the open tasks due today or tomorrow;
* the SQL functions PostgreSQL code uses are the ones the rules render (so a rule cannot change
  in Python without a migration), and the Python form of "overdue" is the SQL form.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Date, delete, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.auth.service import AUTH_SERVICE
from taskapi.jobs.registry import JobContext
from taskapi.kit.services import services_of
from taskapi.models import Notification, NotificationKind, Task, TaskStatus, User
from taskapi.notifications.jobs import due_soon_notifications
from taskapi.storage import STORAGE
from taskapi.tasks import functions, stat_counts
from taskapi.tasks.overdue import is_overdue, is_overdue_now
from taskapi.tasks.visibility import visible_to
from tests.task_helpers import TASKS

USERS = 5
STATUSES = list(TaskStatus)
WORD = "ruleword"  # in every title, so a search finds every visible task

# --- the plain-Python model ----------------------------------------------------------------------


@dataclass
class ModelTask:
    owner: int  # user index
    assignee: int | None
    status: TaskStatus
    due: date | None
    id: int = 0


def sees(task: ModelTask, user: int) -> bool:
    return user in (task.owner, task.assignee)


def overdue(task: ModelTask, today: date) -> bool:
    return (
        task.due is not None
        and task.due < today
        and task.status not in (TaskStatus.DONE, TaskStatus.CANCELLED)
    )


def due_soon(task: ModelTask, today: date) -> bool:
    open_ = task.status not in (TaskStatus.DONE, TaskStatus.CANCELLED)
    return open_ and task.due is not None and today <= task.due <= today + timedelta(days=1)


# --- random data sets ----------------------------------------------------------------------------

user_index = st.integers(0, USERS - 1)
maybe_user = st.none() | user_index
tasks_drawn = st.lists(
    st.tuples(
        user_index,
        maybe_user,
        st.sampled_from(STATUSES),
        st.none() | st.integers(-3, 3),  # due in days from today
    ),
    min_size=1,
    max_size=14,
)
# After creation: (task ref, new assignee) reassignments, then maybe one account deleted.
reassignments = st.lists(st.tuples(st.integers(0, 13), maybe_user), max_size=6)
deleted = st.none() | user_index


async def _users(app: FastAPI, db: AsyncSession) -> tuple[list[int], list[dict[str, str]]]:
    """Users straight in the database, with tokens from the app's own auth service."""
    auth = services_of(app).get(AUTH_SERVICE)
    ids, headers = [], []
    for _ in range(USERS):
        name = f"rule_{uuid.uuid4().hex[:12]}"
        user = User(username=name, email=f"{name}@example.com", password_hash="x")
        db.add(user)
        await db.flush()
        pair = await auth.issue_tokens(db, user.id, family_id=uuid.uuid4())
        ids.append(user.id)
        headers.append({"Authorization": f"Bearer {pair.access_token}"})
    await db.commit()
    return ids, headers


async def _get(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> Any:
    response = await client.get(TASKS, params={"limit": 100, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@settings(
    max_examples=12,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=tasks_drawn, moves=reassignments, gone=deleted)
# Always covered: self-assigned, unassigned, assigned either way, every status at every side of
# today, a reassignment to someone, to nobody and to the owner, and a deleted assignee.
@example(
    drawn=[
        (0, 0, TaskStatus.TODO, -1),
        (0, None, TaskStatus.IN_PROGRESS, -2),
        (0, 1, TaskStatus.DONE, -1),
        (1, 0, TaskStatus.CANCELLED, -3),
        (1, 2, TaskStatus.TODO, 0),
        (2, 1, TaskStatus.IN_PROGRESS, 1),
        (2, None, TaskStatus.TODO, 2),
        (3, 4, TaskStatus.TODO, None),
    ],
    moves=[(0, 2), (4, None), (5, 2)],
    gone=4,
)
async def test_every_user_of_the_rules_agrees_with_the_model(
    client: httpx.AsyncClient,
    app: FastAPI,
    db_session: AsyncSession,
    drawn: list[tuple[int, int | None, TaskStatus, int | None]],
    moves: list[tuple[int, int | None]],
    gone: int | None,
) -> None:
    today = datetime.now(UTC).date()
    ids, headers = await _users(app, db_session)
    tasks = [
        ModelTask(o, a, s, None if d is None else today + timedelta(days=d)) for o, a, s, d in drawn
    ]
    rows = [
        {
            "owner_id": ids[t.owner],
            "assignee_id": None if t.assignee is None else ids[t.assignee],
            "title": f"{WORD} {n}",
            "status": t.status,
            "due_date": t.due,
        }
        for n, t in enumerate(tasks)
    ]
    created = await db_session.scalars(
        insert(Task).returning(Task.id, sort_by_parameter_order=True), rows
    )
    for task, task_id in zip(tasks, created.all(), strict=True):
        task.id = task_id
    for ref, assignee in moves:
        task = tasks[ref % len(tasks)]
        task.assignee = assignee
        new = None if assignee is None else ids[assignee]
        await db_session.execute(update(Task).where(Task.id == task.id).values(assignee_id=new))
    alive = set(range(USERS))
    if gone is not None:
        # As an account deletion does: owned tasks go (cascade), assignments are cleared.
        await db_session.execute(delete(User).where(User.id == ids[gone]))
        await stat_counts.forget(db_session, "user_id", ids[gone])
        alive.discard(gone)
        tasks = [t for t in tasks if t.owner != gone]
        for t in tasks:
            if t.assignee == gone:
                t.assignee = None
    await db_session.commit()

    by_id = {t.id: t for t in tasks}
    all_ids = [t.id for t in tasks]
    for user in sorted(alive):
        h, uid = headers[user], ids[user]
        visible = {t.id for t in tasks if sees(t, user)}
        late = {i for i in visible if overdue(by_id[i], today)}

        page = await _get(client, h)
        assert {item["id"] for item in page["items"]} == visible
        assert page["total"] == len(visible)
        assert {item["id"] for item in page["items"] if item["is_overdue"]} == late
        found = await _get(client, h, search=WORD)
        assert {item["id"] for item in found["items"]} == visible
        filtered = await _get(client, h, overdue="true")
        assert {item["id"] for item in filtered["items"]} == late
        assert filtered["total"] == len(late)
        on_time = await _get(client, h, overdue="false")
        assert {item["id"] for item in on_time["items"]} == visible - late
        for task_id in all_ids:
            response = await client.get(f"{TASKS}/{task_id}", headers=h)
            assert response.status_code == (200 if task_id in visible else 404)
            if task_id in visible:
                assert response.json()["is_overdue"] == (task_id in late)

        stats = (await client.get(f"{TASKS}/stats", headers=h)).json()
        statuses = Counter(by_id[i].status.value for i in visible)
        assert (stats["total"], stats["overdue"]) == (len(visible), len(late))
        assert stats["by_status"] == {s.value: statuses[s.value] for s in STATUSES}
        # The trigger-kept counts against a count made straight from `tasks` by the rules.
        counts = await stat_counts.read(db_session, uid, today)
        direct = await db_session.scalar(
            select(func.count()).where(
                visible_to(uid), is_overdue(Task.due_date, Task.status, today)
            )
        )
        assert counts.overdue == direct == len(late)
        assert sum(counts.by_status.values()) == len(visible)

    services = services_of(app)
    context = JobContext(services.sessionmaker, services.get(STORAGE), services.settings)
    await due_soon_notifications(context, {})
    told = await db_session.execute(
        select(Notification.user_id, Notification.task_id).where(
            Notification.kind == NotificationKind.TASK_DUE_SOON, Notification.user_id.in_(ids)
        )
    )
    expected = {
        (ids[user], t.id)
        for t in tasks
        if due_soon(t, today)
        for user in sorted(alive)
        if sees(t, user)
    }
    assert Counter(tuple(row) for row in told) == Counter(expected)  # each once


# --- one definition, two forms -------------------------------------------------------------------


async def test_postgresql_holds_the_functions_the_rules_render(db_session: AsyncSession) -> None:
    """A rule changed in Python alone fails here: its migration must install the new text."""
    installed = dict(
        (
            await db_session.execute(
                text("SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(:names)"),
                {"names": list(functions.BODIES)},
            )
        ).all()
    )
    assert installed == functions.BODIES


async def test_overdue_in_python_is_overdue_in_sql(db_session: AsyncSession) -> None:
    today = date(2026, 3, 1)
    cases = [
        (today + timedelta(days=offset) if offset is not None else None, status)
        for offset in (None, -400, -1, 0, 1)
        for status in STATUSES
    ]
    seen = set()
    for due, status in cases:
        sql = is_overdue(literal(due, Date), literal(status, Task.status.type), today)
        in_sql = await db_session.scalar(select(sql))
        assert in_sql is is_overdue_now(due, status, today), (due, status)
        seen.add(in_sql)
    assert seen == {True, False}
