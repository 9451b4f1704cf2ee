"""The event log at a million events, for scripts/perf_tasks.py (issue 18: a feed page and an
activity page under 50 ms p95 at 1M events).

Seeded once into each perf database (`--events`, by default as many as tasks; skipped when it
has events): `task.updated` events, 150,000 on the tasks each measured user sees (the same
events at every size), 2,000 of them on one of user1's tasks (a long activity), the rest on
other users' tasks, written as the application writes them: each batch one transaction (so positions
span many transaction ids), the recipients each task's viewers (`task_viewers`), the task
snapshot as JSON, versions increasing per task.
"""

from __future__ import annotations

import random
import time
from typing import Any

import asyncpg

from taskapi.events import repository
from taskapi.events.schemas import DEFAULT_ACTIVITY_LIMIT, DEFAULT_FEED_LIMIT
from taskapi.events.service import FEED_FINGERPRINT
from taskapi.kit.db import CompiledQuery
from taskapi.kit.pagination import CursorCodec

BATCH = 5_000
HOT_TASK_EVENTS = 2_000
USER1_SHARE = 0.3

_INSERT_BATCH = """
WITH picked AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id, p.task_id
    FROM unnest($1::bigint[]) WITH ORDINALITY AS p(task_id, n)
    ORDER BY p.n
), inserted AS (
    INSERT INTO events (id, type, actor_id, task_id, project_id, changes, task, task_version,
                        ends_copy)
    SELECT i.id, 'task.updated', t.owner_id, t.id, t.project_id,
           '{"status": ["todo", "in_progress"]}'::jsonb,
           to_jsonb(t) - 'search_vector' - 'deleted_at' - 'deleted_by', i.id, 0
    FROM picked i JOIN tasks t ON t.id = i.task_id
    ORDER BY i.id
)
INSERT INTO event_recipients (user_id, xid, event_id)
SELECT v.user_id, pg_current_xact_id(), i.id
FROM picked i JOIN tasks t ON t.id = i.task_id CROSS JOIN LATERAL task_viewers(t) AS v(user_id)
"""

MEASURED_EVENTS = 150_000  # on the tasks each measured user sees, at every size


async def seed_events(conn: asyncpg.Connection, count: int, measured: list[list[int]]) -> None:
    """`count` events: MEASURED_EVENTS on the tasks of each list of `measured` (the same picks at
    every size: their own random sequence), HOT_TASK_EVENTS of them on the first task of the
    first list, and the rest on tasks outside every list (so only other users' feeds grow)."""
    have = await conn.fetchval("SELECT count(*) FROM events")
    if have:
        return
    started = time.perf_counter()
    # Where measured events go, which measured tasks they are on, which others: three
    # sequences, so each measured user's picks are the same whatever `count` is.
    place = random.Random(7)  # noqa: S311 - repeatable seeds, not secrets
    ours = [random.Random(18 + i) for i in range(len(measured))]  # noqa: S311
    theirs = random.Random(21)  # noqa: S311
    excluded = {task for tasks in measured for task in tasks}
    hot = measured[0][0]
    top = await conn.fetchval("SELECT max(id) FROM tasks")
    ours_left = [MEASURED_EVENTS] * len(measured)
    ours_left[0] -= HOT_TASK_EVENTS
    hot_left = HOT_TASK_EVENTS
    todo = count
    await conn.execute("SET synchronous_commit = off")
    while todo > 0:
        size = min(BATCH, todo)
        picks: list[int] = []
        for _ in range(size):
            # Spread evenly: each measured user's share of what is left, so every batch has some.
            left = todo - len(picks)
            r = place.random() * left
            if hot_left and r < hot_left:
                picks.append(hot)
                hot_left -= 1
                continue
            r -= hot_left
            for i, n in enumerate(ours_left):
                if r < n:
                    picks.append(ours[i].choice(measured[i]))
                    ours_left[i] -= 1
                    break
                r -= n
            else:
                task = theirs.randint(1, top)
                while task in excluded:
                    task = theirs.randint(1, top)
                picks.append(task)
        async with conn.transaction():
            await conn.execute(_INSERT_BATCH, picks)
        todo -= size
    await conn.execute("VACUUM ANALYZE events")
    await conn.execute("VACUUM ANALYZE event_recipients")
    print(f"{count:,} events seeded in {time.perf_counter() - started:.0f} s", flush=True)


async def scenarios(
    conn: asyncpg.Connection, cursors: CursorCodec, user_id: int
) -> list[tuple[str, str, dict[str, Any], bool]]:
    """Feed pages of 100 (from the start, halfway through the user's events, caught up) and,
    when the user sees it, activity pages of the long-lived task (first, 1,000 events back)."""
    total = await conn.fetchval("SELECT count(*) FROM event_recipients WHERE user_id = $1", user_id)
    middle = await conn.fetchrow(
        "SELECT xid::text AS xid, event_id FROM event_recipients WHERE user_id = $1 "
        "ORDER BY xid, event_id OFFSET $2 LIMIT 1",
        user_id,
        total // 2,
    )
    now = int(time.time())
    start = cursors.encode([0, 0, now], FEED_FINGERPRINT)
    halfway = cursors.encode([int(middle["xid"]), middle["event_id"], now], FEED_FINGERPRINT)
    hot = await conn.fetchrow(
        "SELECT task_id, count(*) AS n FROM events WHERE task_id IS NOT NULL "
        "GROUP BY task_id ORDER BY count(*) DESC LIMIT 1"
    )
    deep = await conn.fetchrow(
        "SELECT xid::text AS xid, id FROM events WHERE task_id = $1 "
        "ORDER BY xid DESC, id DESC OFFSET 1000 LIMIT 1",
        hot["task_id"],
    )
    activity = f"/api/v1/tasks/{hot['task_id']}/activity"
    back = cursors.encode([int(deep["xid"]), deep["id"]], f"activity:{hot['task_id']}")
    events = await conn.fetchval("SELECT count(*) FROM events")
    print(f"user{user_id} receives {total:,} of {events:,} events")
    feed: list[tuple[str, str, dict[str, Any], bool]] = [
        ("feed page of 100, from start", "/api/v1/events", {"since": start, "limit": 100}, True),
        ("feed page of 100, halfway", "/api/v1/events", {"since": halfway, "limit": 100}, True),
        ("feed, caught up (empty)", "/api/v1/events", {"since": "<now>"}, False),
    ]  # fmt: skip
    sees_hot = await conn.fetchval(
        "SELECT 1 FROM event_recipients r JOIN events e ON e.id = r.event_id "
        "WHERE r.user_id = $1 AND e.task_id = $2 LIMIT 1",
        user_id,
        hot["task_id"],
    )
    if not sees_hot:
        return feed
    return [
        *feed,
        ("activity, first page", activity, {}, True),
        ("activity, 1,000 events back", activity, {"cursor": back}, True),
    ]


def statement(
    path: str, params: dict[str, Any], user_id: int, cursors: CursorCodec, horizon: int
) -> tuple[str, list[Any]]:
    """The statement the application runs for a feed or activity page, and its arguments."""
    if path == "/api/v1/events":
        xid, event_id, _ = cursors.decode(params["since"], FEED_FINGERPRINT)
        query = CompiledQuery.of(repository.FEED)  # the module's own statement
        values = {"after_xid": xid, "after_id": event_id, "horizon": horizon}
        values |= {"user_id": user_id, "limit": int(params.get("limit", DEFAULT_FEED_LIMIT)) + 1}
        return query.sql, query.arguments(values)
    task_id = int(path.split("/")[-2])
    before = repository.MAX_POSITION
    if "cursor" in params:
        before = tuple(cursors.decode(params["cursor"], f"activity:{task_id}"))
    query = CompiledQuery.of(repository.ACTIVITY)
    values = {"user_id": user_id, "task_id": task_id, "before_xid": before[0]}
    values |= {"before_id": before[1], "limit": DEFAULT_ACTIVITY_LIMIT + 1}
    return query.sql, query.arguments(values)
