"""The event log's statements: I/O only.

Order and exactness (docs/sync.md has the proof): events are read in `(xid, id)` order and only
below the horizon `pg_snapshot_xmin(pg_current_snapshot())`: every transaction with a smaller
xid has ended, so no event can still appear below a position already served. (The reader's own
transaction is left out of the horizon: it has no xid in a request, and inside one test
transaction it would otherwise hide its own events.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events.schemas import ENDS_COPY, EventSpec

# One statement per batch, however many events and recipients: the events get their ids from
# the identity's sequence first (so the recipients can name them), then both tables are filled.
_RECORD: Final = text(
    """
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id, x.*
    FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS x(
        type text, actor_id bigint, task_id bigint, project_id bigint, changes jsonb,
        task jsonb, task_version integer, ends_copy smallint, users bigint[],
        members_of bigint, minus_users bigint[], minus_members_of bigint, ord bigint)
    ORDER BY x.ord
), inserted AS (
    INSERT INTO events (id, type, actor_id, task_id, project_id, changes, task, task_version,
                        ends_copy)
    SELECT id, type, actor_id, task_id, project_id, changes, task, task_version, ends_copy
    FROM input ORDER BY id
)
INSERT INTO event_recipients (user_id, xid, event_id)
SELECT r.user_id, pg_current_xact_id(), r.event_id FROM (
    (SELECT i.id AS event_id, u.user_id FROM input i, unnest(i.users) AS u(user_id)
     UNION
     SELECT i.id, m.user_id FROM input i JOIN project_members m ON m.project_id = i.members_of)
    EXCEPT
    (SELECT i.id, u.user_id FROM input i, unnest(i.minus_users) AS u(user_id)
     UNION ALL
     SELECT i.id, m.user_id FROM input i
     JOIN project_members m ON m.project_id = i.minus_members_of)
) AS r
WHERE r.user_id IS NOT NULL
"""
)


def _row(ord_: int, spec: EventSpec) -> dict[str, Any]:
    audience = spec.audience
    return {
        "ord": ord_,
        "type": spec.type,
        "actor_id": spec.actor_id,
        "task_id": spec.task_id,
        "project_id": spec.project_id,
        "changes": spec.changes,
        "task": spec.task,
        "task_version": spec.task_version,
        "ends_copy": 1 if spec.type in ENDS_COPY else 0,
        "users": [u for u in audience.users if u is not None],
        "members_of": audience.members_of,
        "minus_users": [u for u in audience.minus_users if u is not None],
        "minus_members_of": audience.minus_members_of,
    }


async def insert(session: AsyncSession, specs: Sequence[EventSpec]) -> None:
    payload = json.dumps(
        [_row(i, spec) for i, spec in enumerate(specs)], separators=(",", ":"), default=str
    )
    # The INSERT also wakes the event streams of every process, at commit: a trigger on
    # `events` notifies (migration 0019, events/wakeup.py).
    await session.execute(_RECORD, {"payload": payload})


# Every task.access_lost of a member leaving a project: one event per task of it, each the
# leaver's alone, in one statement. The tasks are locked first, so a change to one of them that
# is under way (and may have named the leaver) commits before, and its version is the one the
# tombstone carries.
_LOST_PROJECT: Final = text(
    """
WITH locked AS MATERIALIZED (
    SELECT id, version FROM tasks WHERE project_id = :project_id ORDER BY id FOR UPDATE
), input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('events', 'id')) AS event_id, id, version
    FROM locked ORDER BY id
), inserted AS (
    INSERT INTO events (id, type, actor_id, task_id, project_id, task, task_version, ends_copy)
    SELECT event_id, 'task.access_lost', :actor_id, id, :project_id,
           jsonb_build_object('id', id, 'version', version), version, 1
    FROM input ORDER BY event_id
)
INSERT INTO event_recipients (user_id, xid, event_id)
SELECT :user_id, pg_current_xact_id(), event_id FROM input
"""
)


async def insert_project_access_lost(
    session: AsyncSession, actor_id: int | None, project_id: int, user_id: int
) -> None:
    await session.execute(
        _LOST_PROJECT, {"actor_id": actor_id, "project_id": project_id, "user_id": user_id}
    )


# The horizon: the oldest transaction still running, the reader's own left out. Public, as FEED:
# `make bench`'s ceiling app (scripts/bench/ceiling.py) runs these two statements as they are.
HORIZON: Final = """
    SELECT coalesce(
        (SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
        pg_snapshot_xmax(pg_current_snapshot())
    )::text AS horizon, now() AS now
"""


# A page of one reader's feed, below the horizon. An event is left out when the reader got,
# at an earlier position, an event of the same task that supersedes it (a higher version, or
# the same version ending the copy): transaction ids are taken before row locks are waited for,
# so a change can sit after the change that overwrote it; served after a list that already
# shows the newer state, it would resurrect a deleted or lost task (docs/sync.md, "stale
# events"). Such an event never changes a copy kept by the version rule anyway.
# The event is read per recipient row (a LATERAL with LIMIT 1, which PostgreSQL keeps as a nested
# loop), so the page is the reader's rows in index order, stopping at the limit: as a plain join,
# for a reader holding most of a small log, PostgreSQL hashed the whole log, checked every event
# past the cursor and sorted them (5,000 events: 39 ms a page, against 1.2 ms this way).
def superseded(reader: str, event: str, position: str) -> str:
    """SQL, true when `reader` got, before `position`, an event of the same task that supersedes
    `event` (the rule above, written once: the feed and the webhooks' fan-out both apply it)."""
    return f"""({event}.task_id IS NOT NULL AND EXISTS (
      SELECT 1 FROM events s
      JOIN event_recipients sr ON sr.user_id = {reader} AND sr.xid = s.xid AND sr.event_id = s.id
      WHERE s.task_id = {event}.task_id AND (s.xid, s.id) < {position}
        AND (s.task_version, s.ends_copy) > ({event}.task_version, {event}.ends_copy)))"""  # noqa: S608  (constants, no input)


FEED: Final = text(
    f"""
SELECT e.id, e.type, e.occurred_at, e.actor_id, e.task_id, e.project_id, e.changes, e.task,
       r.xid::text AS xid
FROM event_recipients r
CROSS JOIN LATERAL (SELECT * FROM events WHERE events.id = r.event_id LIMIT 1) e
WHERE r.user_id = :user_id
  AND (r.xid, r.event_id) > (CAST(:after_xid AS xid8), :after_id)
  AND r.xid < CAST(:horizon AS xid8)
  AND NOT {superseded(":user_id", "e", "(r.xid, r.event_id)")}
ORDER BY r.xid, r.event_id
LIMIT :limit
"""  # noqa: S608  (constants, no input)
)


async def horizon(session: AsyncSession) -> tuple[int, datetime]:
    row = (await session.execute(text(HORIZON))).one()
    return int(row.horizon), row.now


async def feed_page(
    session: AsyncSession, user_id: int, after: tuple[int, int], below: int, limit: int
) -> list[Any]:
    result = await session.execute(
        FEED,
        {
            "user_id": user_id,
            "after_xid": int(after[0]),
            "after_id": after[1],
            "horizon": int(below),
            "limit": limit,
        },
    )
    return list(result.mappings().all())


# A task's events the reader got, newest first (`before`: the position of the last one shown).
# Whether the reader got each one is a LATERAL with LIMIT 1, which PostgreSQL keeps as a nested
# loop under the task's events read newest first, stopping at the page: as a plain join it
# underestimated how many events the reader got (it multiplies the selectivities of `xid` and
# `event_id`, which go together) and read all of a long-lived task's events, then sorted them
# (2,000 events: 17-34 ms, a parallel worker included, against 0.2 ms).
ACTIVITY: Final = text(
    """
SELECT e.id, e.type, e.occurred_at, e.actor_id, e.task_id, e.project_id, e.changes, e.task,
       e.xid::text AS xid
FROM events e
CROSS JOIN LATERAL (
    SELECT 1 FROM event_recipients r
    WHERE r.user_id = :user_id AND r.xid = e.xid AND r.event_id = e.id
    LIMIT 1
) AS received
WHERE e.task_id = :task_id
  AND (e.xid, e.id) < (CAST(:before_xid AS xid8), :before_id)
ORDER BY e.xid DESC, e.id DESC
LIMIT :limit
"""
)

MAX_POSITION: Final = (2**63 - 1, 2**63 - 1)


async def activity_page(
    session: AsyncSession, user_id: int, task_id: int, before: tuple[int, int], limit: int
) -> list[Any]:
    result = await session.execute(
        ACTIVITY,
        {
            "user_id": user_id,
            "task_id": task_id,
            "before_xid": int(before[0]),
            "before_id": before[1],
            "limit": limit,
        },
    )
    return list(result.mappings().all())


_PURGE_EVENTS: Final = text(
    """
DELETE FROM events WHERE id IN (
    SELECT id FROM events WHERE occurred_at < :older_than ORDER BY occurred_at LIMIT :batch
)
"""
)
# Recipients below the oldest event left are orphans (the log is purged oldest first). A scan
# of the table, once per purge run: cheaper than a second index every write would maintain.
_PURGE_RECIPIENTS: Final = text(
    """
DELETE FROM event_recipients WHERE xid < coalesce(
    (SELECT min(xid) FROM events), pg_snapshot_xmin(pg_current_snapshot()))
"""
)


async def purge_events(session: AsyncSession, older_than: datetime, batch: int) -> int:
    """Delete up to `batch` events that occurred before `older_than`."""
    result = await session.execute(_PURGE_EVENTS, {"older_than": older_than, "batch": batch})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def purge_recipients(session: AsyncSession) -> int:
    result = await session.execute(_PURGE_RECIPIENTS)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
