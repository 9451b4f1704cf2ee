"""The counts behind GET /tasks/stats, kept by triggers on `tasks` (migration 0006) and folded
by reads and a periodic job: whatever the sequence of writes, concurrent or not, folded or not,
the stats equal a count made from scratch over the `tasks` table."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from taskapi.jobs.registry import JobContext
from taskapi.kit.services import services_of
from taskapi.storage import STORAGE
from taskapi.tasks import stat_counts
from taskapi.tasks.jobs import FOLD_AT_LEAST, fold_task_stats
from tests.conftest import MakeUser, UserHandle, register_and_login
from tests.internals.test_migrations import _insert_user, downgrade, fresh_database, upgrade
from tests.task_helpers import TASKS, task_url

STATS = f"{TASKS}/stats"
STATUSES = ("todo", "in_progress", "done", "cancelled")
PRIORITIES = ("low", "medium", "high", "urgent")
TAGS = ("api", "bug", "docs", "ops")

TASK_ROWS = text(
    "SELECT owner_id, assignee_id, project_id, deleted_at, status, priority, due_date, tags "
    "FROM tasks"
)


def today() -> date:
    return datetime.now(UTC).date()


def counted_from_scratch(rows: list[Any], user_id: int, on: date) -> dict[str, Any]:
    """What the stats must say, from the task rows themselves (the definition, not the triggers)."""
    # The personal tasks the user owns or is assigned, out of the trash (these tests share no
    # project with anyone).
    seen = [
        row
        for row in rows
        if row.deleted_at is None
        and row.project_id is None
        and user_id in (row.owner_id, row.assignee_id)
    ]
    by_status = Counter(dict.fromkeys(STATUSES, 0))
    by_priority = Counter(dict.fromkeys(PRIORITIES, 0))
    by_tag: Counter[str] = Counter()
    overdue = 0
    for row in seen:
        by_status[str(row.status)] += 1
        by_priority[str(row.priority)] += 1
        by_tag.update(row.tags)
        if row.due_date is not None and row.due_date < on and row.status not in STATUSES[2:]:
            overdue += 1
    return {
        "total": len(seen),
        "completed": by_status["done"],
        "overdue": overdue,
        "by_status": dict(by_status),
        "by_priority": dict(by_priority),
        # Most used first, then by name: the order the API promises nothing about but keeps.
        "by_tag": dict(sorted(by_tag.items(), key=lambda item: (-item[1], item[0]))),
    }


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    wanted = ("total", "completed", "overdue", "by_status", "by_priority", "by_tag")
    return {key: body[key] for key in wanted}


async def api_stats(client: httpx.AsyncClient, user: UserHandle) -> dict[str, Any]:
    response = await client.get(STATS, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def assert_stats_match_the_tasks(
    client: httpx.AsyncClient, session: AsyncSession, users: list[UserHandle]
) -> None:
    rows = list(await session.execute(TASK_ROWS))
    for user in users:
        body = await api_stats(client, user)
        assert comparable(body) == counted_from_scratch(rows, user.id, today()), user.username
        assert list(body["by_tag"]) == list(counted_from_scratch(rows, user.id, today())["by_tag"])


async def delta_rows(session: AsyncSession, user_id: int) -> list[Any]:
    result = await session.execute(
        text(
            "SELECT status, priority, due_date, tag, n, folded FROM task_stat_deltas "
            "WHERE user_id = :u"
        ),
        {"u": user_id},
    )
    return list(result)


def random_task_body(rng: random.Random, assignees: list[int | None]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": f"task {rng.randrange(10**6)}",
        "priority": rng.choice(PRIORITIES),
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "due_date": rng.choice([None, (today() + timedelta(days=rng.randint(-5, 5))).isoformat()]),
        "assignee_id": rng.choice(assignees),
    }
    if rng.random() < 0.5:
        body["status"] = rng.choice(STATUSES)
    return body


# --- every kind of write, folded at random points ----------------------------------------------


async def test_stats_equal_a_count_from_scratch_after_any_sequence_of_writes(
    client: httpx.AsyncClient, make_user: MakeUser, db_session: AsyncSession
) -> None:
    rng = random.Random(20261121)
    users = [await make_user() for _ in range(4)]
    leaver = users[3]  # deletes their account half way through
    live = users[:]
    task_ids: list[int] = []

    async def call(user: UserHandle, method: str, url: str, body: Any = None) -> None:
        response = await client.request(method, url, json=body, headers=user.headers)
        # Refusals (a workflow step that is not allowed, an assignee deleting) change nothing;
        # the stats must still match. A 5xx never happens.
        assert response.status_code < 500, response.text

    for step in range(160):
        user = rng.choice(live)
        assignees: list[int | None] = [None, *(u.id for u in live)]
        task = rng.choice(task_ids) if task_ids else None
        action = rng.choice(
            ["create"] * 5
            + ["patch", "put", "transition", "assign", "tag", "untag", "delete", "bulk", "fold"]
            + ["restore", "force"]
        )
        if action == "create" or task is None:
            response = await client.post(
                TASKS, json=random_task_body(rng, assignees), headers=user.headers
            )
            assert response.status_code == 201, response.text
            task_ids.append(response.json()["id"])
        elif action == "patch":
            body = random_task_body(rng, assignees)
            fields = rng.sample(sorted(body), rng.randint(1, 3))
            await call(user, "PATCH", task_url(task), {key: body[key] for key in fields})
        elif action == "put":
            await call(user, "PUT", task_url(task), random_task_body(rng, assignees))
        elif action == "transition":
            await call(
                user, "POST", task_url(task) + "/transition", {"status": rng.choice(STATUSES)}
            )
        elif action == "assign":
            await call(
                user, "POST", task_url(task) + "/assign", {"assignee_id": rng.choice(assignees)}
            )
        elif action == "tag":
            await call(user, "POST", task_url(task) + "/tags", rng.sample(TAGS, 2))
        elif action == "untag":
            await call(user, "DELETE", task_url(task) + f"/tags/{rng.choice(TAGS)}")
        elif action == "delete":  # to the trash
            await call(user, "DELETE", task_url(task))
        elif action == "restore":
            await call(user, "POST", task_url(task) + "/restore")
        elif action == "force":
            await call(user, "DELETE", task_url(task) + "/force")
        elif action == "bulk":
            some = rng.sample(task_ids, min(len(task_ids), 6))
            if rng.random() < 0.5:
                await call(
                    user,
                    "POST",
                    f"{TASKS}/bulk-status",
                    {"task_ids": some, "target_status": rng.choice(STATUSES)},
                )
            else:
                updates = {"priority": rng.choice(PRIORITIES), "tags": rng.sample(TAGS, 1)}
                await call(user, "PATCH", f"{TASKS}/bulk", {"task_ids": some, "updates": updates})
        else:
            await stat_counts.fold(db_session, "user_id", rng.choice(users).id)
        if step == 80:
            await call(leaver, "DELETE", "/api/v1/users/me")
            live.remove(leaver)
            assert await delta_rows(db_session, leaver.id) == []
        if step % 8 == 7:
            await assert_stats_match_the_tasks(client, db_session, live)
    await assert_stats_match_the_tasks(client, db_session, live)
    assert len(task_ids) > 40


# --- what is written ------------------------------------------------------------------------------


async def test_a_title_or_description_change_writes_no_counts(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any, db_session: AsyncSession
) -> None:
    task = await make_task(alice, tags=["x"], due_date=today().isoformat())
    before = await delta_rows(db_session, alice.id)
    response = await client.patch(
        task_url(task["id"]),
        json={"title": "renamed", "description": "longer"},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert await delta_rows(db_session, alice.id) == before


async def test_overdue_follows_the_calendar_without_any_write(
    alice: UserHandle, make_task: Any, db_session: AsyncSession
) -> None:
    """Nothing is written when a due date passes: overdue is summed up to the day of the read."""
    tomorrow = today() + timedelta(days=1)
    await make_task(alice, due_date=tomorrow.isoformat())
    await make_task(alice, due_date=tomorrow.isoformat(), status="done")
    assert (await stat_counts.read(db_session, alice.id, today())).overdue == 0
    assert (await stat_counts.read(db_session, alice.id, tomorrow)).overdue == 0
    assert (await stat_counts.read(db_session, alice.id, tomorrow + timedelta(days=1))).overdue == 1


async def test_a_bulk_insert_writes_one_row_per_key_not_per_task(
    alice: UserHandle, db_session: AsyncSession
) -> None:
    await db_session.execute(
        text(
            "INSERT INTO tasks (owner_id, title, priority, tags) "
            "SELECT :u, 'seeded ' || n, 'high', ARRAY['seed'] FROM generate_series(1, 500) AS n"
        ),
        {"u": alice.id},
    )
    rows = await delta_rows(db_session, alice.id)
    assert {(row.status, row.priority, row.tag, row.n) for row in rows} == {
        (None, None, "seed", 500),
        ("todo", "high", None, 500),
    }


# --- folding ------------------------------------------------------------------------------------


async def _single_row_inserts(session: AsyncSession, user_id: int, count: int) -> None:
    for n in range(count):
        await session.execute(
            text(
                "INSERT INTO tasks (owner_id, title, status, tags, due_date) "
                "VALUES (:u, :title, :status, ARRAY[:tag], :due)"
            ),
            {
                "u": user_id,
                "title": f"one by one {n}",
                "status": STATUSES[n % 2],
                "tag": TAGS[n % 3],
                "due": today() - timedelta(days=n % 4),
            },
        )


async def test_a_read_folds_once_enough_rows_pile_up_and_answers_the_same(
    client: httpx.AsyncClient, alice: UserHandle, db_session: AsyncSession
) -> None:
    # Three rows per task (status, due date, tag): a bit over the read threshold.
    await _single_row_inserts(db_session, alice.id, stat_counts.READ_FOLD_THRESHOLD // 3 + 1)
    assert len(await delta_rows(db_session, alice.id)) >= stat_counts.READ_FOLD_THRESHOLD

    first = await api_stats(client, alice)
    rows = await delta_rows(db_session, alice.id)
    # One row per key: 2 (status, priority) pairs, 4 due dates, 3 tags; all folded.
    assert len(rows) == 9
    assert all(row.folded for row in rows)
    assert await api_stats(client, alice) == first
    assert first["total"] == stat_counts.READ_FOLD_THRESHOLD // 3 + 1


async def test_a_read_below_the_threshold_writes_nothing(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any, db_session: AsyncSession
) -> None:
    await make_task(alice, tags=["a"])
    await make_task(alice, tags=["b"])
    before = await delta_rows(db_session, alice.id)
    await api_stats(client, alice)
    assert await delta_rows(db_session, alice.id) == before
    assert not any(row.folded for row in before)


async def test_the_periodic_job_folds_busy_writers_only(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: UserHandle,
    bob: UserHandle,
    make_task: Any,
    db_session: AsyncSession,
) -> None:
    await _single_row_inserts(db_session, alice.id, FOLD_AT_LEAST)  # 3 rows each: well over
    await make_task(bob, tags=["only"])  # 2 rows: not worth a fold
    alice_before = await api_stats(client, alice)
    bob_rows = await delta_rows(db_session, bob.id)

    context = JobContext(
        services_of(app).sessionmaker, services_of(app).get(STORAGE), services_of(app).settings
    )
    await fold_task_stats(context, {})

    alice_rows = await delta_rows(db_session, alice.id)
    assert len(alice_rows) == 9
    assert all(row.folded for row in alice_rows)
    assert await delta_rows(db_session, bob.id) == bob_rows
    assert await api_stats(client, alice) == alice_before


async def test_folding_drops_keys_that_sum_to_zero(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any, db_session: AsyncSession
) -> None:
    task = await make_task(alice, tags=["temporary"], priority="urgent")
    response = await client.delete(task_url(task["id"]) + "/tags/temporary", headers=alice.headers)
    assert response.status_code == 200
    assert (await api_stats(client, alice))["by_tag"] == {}
    await stat_counts.fold(db_session, "user_id", alice.id)
    rows = await delta_rows(db_session, alice.id)
    assert [(row.status, row.priority, row.tag, row.n) for row in rows] == [
        ("todo", "urgent", None, 1)
    ]


# --- real concurrency -----------------------------------------------------------------------------


async def test_concurrent_writers_and_folds_never_deadlock_and_stay_exact(
    live_app: FastAPI, live_client: httpx.AsyncClient
) -> None:
    """Two users change the same tasks at once (the counts of both move in every transaction),
    with bulk requests touching many tasks in one transaction and folds running meanwhile: no
    request fails, and the stats are exact afterwards."""
    client = live_client
    alice = await register_and_login(client)
    bob = await register_and_login(client)
    tasks = []
    for n in range(24):
        response = await client.post(
            TASKS,
            json={"title": f"shared {n}", "assignee_id": bob.id, "tags": [TAGS[n % 4]]},
            headers=alice.headers,
        )
        assert response.status_code == 201
        tasks.append(response.json()["id"])
    rng = random.Random(7)
    sessionmaker = services_of(live_app).sessionmaker

    async def writer(user: UserHandle) -> None:
        for _ in range(12):
            some = rng.sample(tasks, 8)
            if rng.random() < 0.5:
                body = {"task_ids": some, "target_status": rng.choice(STATUSES[:2])}
                response = await client.post(
                    f"{TASKS}/bulk-status", json=body, headers=user.headers
                )
            else:
                updates = {"priority": rng.choice(PRIORITIES), "tags": rng.sample(TAGS, 2)}
                body = {"task_ids": some, "updates": updates}
                response = await client.patch(f"{TASKS}/bulk", json=body, headers=user.headers)
            assert response.status_code == 200, response.text
            # Only the workflow may refuse an item (todo -> todo); never a deadlock or a 5xx.
            errors = {item.get("error") for item in response.json()["results"]}
            assert errors <= {None, "invalid_transition"}, response.text

    async def folder() -> None:
        for _ in range(20):
            async with sessionmaker() as session:
                await stat_counts.fold(session, "user_id", rng.choice([alice.id, bob.id]))
                await session.commit()
            await asyncio.sleep(0.005)

    await asyncio.gather(writer(alice), writer(bob), writer(alice), writer(bob), folder())

    async with sessionmaker() as session:
        rows = list(await session.execute(TASK_ROWS))
    for user in (alice, bob):
        body = await api_stats(client, user)
        assert comparable(body) == counted_from_scratch(rows, user.id, today())
        assert body["total"] == 24


# --- the migration counts what was already there -------------------------------------------


async def test_upgrading_counts_the_tasks_that_existed_before(migrated_databases: None) -> None:
    async with fresh_database() as url:
        upgrade(url, "0005")
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                owner = await _insert_user(conn, "before_owner", "before_owner@example.com")
                helper = await _insert_user(conn, "before_helper", "before_helper@example.com")
                await conn.execute(
                    text(
                        "INSERT INTO tasks (owner_id, assignee_id, title, status, priority, "
                        "due_date, tags) SELECT :owner, "
                        "CASE WHEN n % 3 = 0 THEN CAST(:helper AS bigint) END, "
                        "'old ' || n, (ARRAY['todo','in_progress','done','cancelled'])[n % 4 + 1]"
                        "::task_status, (ARRAY['low','high'])[n % 2 + 1]::task_priority, "
                        "current_date - n % 7 + 3, ARRAY['t' || n % 5] "
                        "FROM generate_series(1, 300) AS n"
                    ),
                    {"owner": owner, "helper": helper},
                )
            upgrade(url)
            async with engine.connect() as conn:
                session = AsyncSession(bind=conn)
                rows = list(await session.execute(TASK_ROWS))
                for user_id in (owner, helper):
                    counts = await stat_counts.read(session, user_id, today())
                    expected = counted_from_scratch(rows, user_id, today())
                    assert counts.by_status == expected["by_status"]
                    assert counts.by_priority == expected["by_priority"]
                    assert counts.by_tag == expected["by_tag"]
                    assert counts.overdue == expected["overdue"]
                    assert counts.unfolded == 0
                await session.close()
            # And back: nothing of it is left behind.
            downgrade(url, "0005")
            async with engine.connect() as conn:
                leftovers = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_proc WHERE proname LIKE 'task_stat%' "
                        "OR proname LIKE 'task_stat_deltas%'"
                    )
                )
                assert leftovers == 0
                assert await conn.scalar(text("SELECT to_regclass('task_stat_deltas')")) is None
        finally:
            await engine.dispose()
