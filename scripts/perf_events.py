"""The event log at a million events, for scripts/perf_tasks.py (issue 18: a feed page and an
activity page under 50 ms p95 at 1M events).

Seeded once into the perf database (`--events`, default 1,000,000; skipped when that many are
there): `task.updated` events on random tasks, 30% of them on tasks user1 sees (so user1's feed
holds ~300,000 events among ~3M recipient rows), 2,000 on one of user1's tasks (a long
activity), written as the application writes them: each batch one transaction (so positions
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

_USER1_TASKS = """
SELECT id FROM tasks
WHERE deleted_at IS NULL AND (
    (project_id IS NULL AND (owner_id = 1 OR assignee_id = 1))
    OR project_id IN (SELECT project_id FROM project_members WHERE user_id = 1))
"""


async def seed_events(conn: asyncpg.Connection, count: int) -> None:
    have = await conn.fetchval("SELECT count(*) FROM events")
    if have >= count:
        return
    started = time.perf_counter()
    rng = random.Random(18)  # noqa: S311 - a repeatable seed, not a secret
    user1 = [r["id"] for r in await conn.fetch(_USER1_TASKS)]
    hot = await conn.fetchval("SELECT min(id) FROM tasks WHERE owner_id = 1 AND project_id IS NULL")
    top = await conn.fetchval("SELECT max(id) FROM tasks")
    todo = count - have
    hot_left = HOT_TASK_EVENTS if have == 0 else 0
    await conn.execute("SET synchronous_commit = off")
    while todo > 0:
        size = min(BATCH, todo)
        picks: list[int] = []
        for _ in range(size):
            if hot_left and rng.random() < HOT_TASK_EVENTS / count * 2:
                picks.append(hot)
                hot_left -= 1
            elif rng.random() < USER1_SHARE:
                picks.append(rng.choice(user1))
            else:
                picks.append(rng.randint(1, top))
        async with conn.transaction():
            await conn.execute(_INSERT_BATCH, picks)
        todo -= size
    await conn.execute("VACUUM ANALYZE events")
    await conn.execute("VACUUM ANALYZE event_recipients")
    print(f"{count - have:,} events seeded in {time.perf_counter() - started:.0f} s", flush=True)


async def scenarios(
    conn: asyncpg.Connection, cursors: CursorCodec
) -> list[tuple[str, str, dict[str, Any], bool]]:
    """Feed pages of 100 (from the start, halfway through user1's events, caught up) and
    activity pages of the long-lived task (first, 1,000 events back)."""
    total = await conn.fetchval("SELECT count(*) FROM event_recipients WHERE user_id = 1")
    middle = await conn.fetchrow(
        "SELECT xid::text AS xid, event_id FROM event_recipients WHERE user_id = 1 "
        "ORDER BY xid, event_id OFFSET $1 LIMIT 1",
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
    print(f"user1 receives {total:,} of {events:,} events; task {hot['task_id']} has {hot['n']:,}")
    return [
        ("feed page of 100, from start", "/api/v1/events", {"since": start, "limit": 100}, True),
        ("feed page of 100, halfway", "/api/v1/events", {"since": halfway, "limit": 100}, True),
        ("feed, caught up (empty)", "/api/v1/events", {"since": "<now>"}, False),
        ("activity, first page", activity, {}, True),
        ("activity, 1,000 events back", activity, {"cursor": back}, True),
    ]  # fmt: skip


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
