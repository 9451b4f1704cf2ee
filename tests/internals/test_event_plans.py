"""A feed page and an activity page read a page's worth of the log, however much of it the
reader holds: the work of a page must not grow with the log (issue 18: pages under 50 ms at 1M
events). Checked on PostgreSQL's own plans (EXPLAIN ANALYZE) of the statements the application
runs, for a reader holding every event of a log of 4,000 on 200 tasks (half of them on one):
the shape in which a plain join had PostgreSQL hash the whole log and sort it (39 ms a page,
1.2 ms now)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events import repository
from taskapi.events.wakeup import FRONTIER
from taskapi.kit.db import CompiledQuery
from tests.conftest import UserHandle

EVENTS = 4_000
TASKS = 200
PAGE = 100

_SEED = text(
    """
WITH made AS (
    INSERT INTO tasks (owner_id, title) SELECT :user_id, 'logged ' || g
    FROM generate_series(1, :tasks) g RETURNING id
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM made
), input AS MATERIALIZED (
    -- one transaction id per 20 events, below this transaction's, as 200 writers would leave
    SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id, t.id AS task_id,
           (pg_current_xact_id()::text::bigint - :events + g / 20 * 20)::text::xid8 AS xid
    -- every other event is about the first task: a long history
    FROM generate_series(0, :events - 1) g
    JOIN numbered t ON t.n = CASE WHEN g % 2 = 0 THEN 0 ELSE g % :tasks END
    ORDER BY g
), inserted AS (
    INSERT INTO events (id, xid, type, actor_id, task_id, task, task_version)
    SELECT id, xid, 'task.updated', :user_id, task_id, jsonb_build_object('id', task_id), id
    FROM input
)
INSERT INTO event_recipients (user_id, xid, event_id) SELECT :user_id, xid, id FROM input
"""
)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


async def _plan(session: AsyncSession, statement: Any, values: dict[str, Any]) -> list[dict]:
    query = CompiledQuery.of(statement)
    return await _plan_sql(session, query.sql, *query.arguments(values))


async def _plan_sql(session: AsyncSession, sql: str, *arguments: Any) -> list[dict]:
    """The nodes of PostgreSQL's executed plan of `sql`, run on the session's connection."""
    driver = (await (await session.connection()).get_raw_connection()).driver_connection
    assert driver is not None
    (row,) = await driver.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *arguments)
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    return list(_nodes(document[0]["Plan"]))


async def _seed(session: AsyncSession, user: UserHandle) -> list[Any]:
    await session.execute(_SEED, {"user_id": user.id, "tasks": TASKS, "events": EVENTS})
    await session.execute(text("ANALYZE events"))
    await session.execute(text("ANALYZE event_recipients"))
    positions = await session.execute(
        text(
            "SELECT xid::text AS xid, event_id FROM event_recipients WHERE user_id = :u "
            "ORDER BY xid, event_id"
        ),
        {"u": user.id},
    )
    return list(positions)


async def test_a_feed_page_reads_the_readers_rows_in_order_up_to_the_page(
    db_session: AsyncSession, alice: UserHandle
) -> None:
    positions = await _seed(db_session, alice)
    halfway = positions[len(positions) // 2]
    values = {
        "user_id": alice.id,
        "after_xid": int(halfway.xid),
        "after_id": halfway.event_id,
        "horizon": 2**62,
        "limit": PAGE + 1,
    }
    nodes = await _plan(db_session, repository.FEED, values)
    kinds = [node["Node Type"] for node in nodes]
    assert "Sort" not in kinds, kinds
    assert "Hash Join" not in kinds, kinds
    reads = [n for n in nodes if n.get("Relation Name") == "event_recipients"]
    outer = reads[0]  # the reader's rows, in index order
    assert outer["Node Type"] == "Index Only Scan", outer
    assert outer["Actual Rows"] <= PAGE + 1, outer
    # ...and the statement returns that page.
    rows = await repository.feed_page(
        db_session, alice.id, (int(halfway.xid), halfway.event_id), 2**62, PAGE + 1
    )
    assert [r["id"] for r in rows] == [p.event_id for p in positions][
        len(positions) // 2 + 1 : len(positions) // 2 + 2 + PAGE
    ]


async def test_an_activity_page_reads_the_tasks_events_in_order_up_to_the_page(
    db_session: AsyncSession, alice: UserHandle
) -> None:
    await _seed(db_session, alice)
    task_id = await db_session.scalar(
        text("SELECT task_id FROM events GROUP BY task_id ORDER BY count(*) DESC LIMIT 1")
    )
    limit = 21
    values = {
        "user_id": alice.id,
        "task_id": task_id,
        "before_xid": repository.MAX_POSITION[0],
        "before_id": repository.MAX_POSITION[1],
        "limit": limit,
    }
    nodes = await _plan(db_session, repository.ACTIVITY, values)
    # Rows read from the log's tables, all scans together: a few pages' worth at most (the
    # task's 2,000 events read and sorted, as before, would be thousands).
    read = sum(
        n["Actual Rows"] * n["Actual Loops"]
        for n in nodes
        if n.get("Relation Name") in ("events", "event_recipients")
    )
    assert read <= 5 * limit, [
        (n["Node Type"], n.get("Index Name"), n["Actual Rows"]) for n in nodes
    ]


async def test_the_stream_wakers_frontier_is_two_index_steps_whatever_the_logs_size(
    db_session: AsyncSession, alice: UserHandle
) -> None:
    """Every process reads the frontier on each notification (each write). Its second branch
    once ordered by its output's `xid`, the text: the whole log read and sorted on every write
    (11 ms at 21,000 events, a third of a core for the listening connection under 250 creates
    a second), and the last event chosen in text order (`9` after `10`)."""
    await _seed(db_session, alice)
    # An event whose transaction id sorts last as text though it is the smallest number.
    await db_session.execute(
        text(
            "INSERT INTO events (xid, type, actor_id, task_id, task, task_version) "
            "SELECT '9'::xid8, 'task.updated', :u, task_id, task, 1 FROM events LIMIT 1"
        ),
        {"u": alice.id},
    )
    await db_session.execute(text("ANALYZE events"))
    nodes = await _plan_sql(db_session, FRONTIER)
    assert "Sort" not in [node["Node Type"] for node in nodes]
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in nodes if n.get("Relation Name"))
    assert read <= 2, [(n["Node Type"], n["Actual Rows"]) for n in nodes]
    ends = await db_session.execute(text(FRONTIER))
    rows = {row.k: (int(row.xid), row.id) for row in ends}
    last = await db_session.execute(
        text("SELECT xid::text::bigint, id FROM events ORDER BY xid DESC, id DESC LIMIT 1")
    )
    assert rows[1] == tuple(last.one())
