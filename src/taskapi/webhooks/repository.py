"""The webhooks' statements: the fan-out from the event log, the delivery queue, the log.

Times come from the caller (the service's clock), never from `now()`, so retries, the 24-hour
rotation overlap and deactivation can be tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events.repository import HORIZON, superseded

# The fan-out's cursor, locked: one process at a time advances it; the others skip the round
# (SKIP LOCKED) rather than wait, and the next wake-up finds the work done.
_LOCK_CURSOR: Final = text(
    "SELECT after_xid::text AS xid, after_id FROM webhook_fanout WHERE id = 1 "
    "FOR UPDATE SKIP LOCKED"
)

# One batch of the log past the cursor and below the horizon (so no event can still appear
# before the cursor: the feed's exactness, taskapi.events.repository), each event turned into a
# delivery for every active webhook that matches it and whose owner received it; then the cursor
# moves to the batch's last event. A webhook is probed per event by the recipients' primary key
# (user_id, xid, event_id); the events its owner's feed leaves out as superseded are left out
# too (a webhook gets the feed's events). ON CONFLICT: at most one delivery per event and webhook.
_FAN_OUT: Final = text(
    f"""
WITH batch AS MATERIALIZED (
    SELECT e.id, e.xid, e.type, e.task_id, e.project_id, e.task_version, e.ends_copy
    FROM events e
    WHERE (e.xid, e.id) > (CAST(:after_xid AS xid8), :after_id)
      AND e.xid < CAST(:horizon AS xid8)
    ORDER BY e.xid, e.id
    LIMIT :limit
), delivered AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, task_id,
                                    next_attempt_at, first_attempt_at, created_at)
    SELECT w.id, b.id, b.type, b.task_id, :now, :now, :now
    FROM batch b
    JOIN webhooks w ON w.active AND b.xid >= w.start_xid
        AND (w.project_id IS NULL OR w.project_id = b.project_id)
        AND (b.type = ANY(w.events) OR '*' = ANY(w.events)
             OR split_part(b.type, '.', 1) || '.*' = ANY(w.events))
    WHERE EXISTS (SELECT 1 FROM event_recipients r
                  WHERE r.user_id = w.owner_id AND r.xid = b.xid AND r.event_id = b.id)
      AND NOT {superseded("w.owner_id", "b", "(b.xid, b.id)")}
    ORDER BY b.xid, b.id, w.id
    ON CONFLICT DO NOTHING
    RETURNING 1
), last AS (
    SELECT xid, id FROM batch ORDER BY xid DESC, id DESC LIMIT 1
), moved AS (
    UPDATE webhook_fanout f SET after_xid = last.xid, after_id = last.id
    FROM last WHERE f.id = 1
    RETURNING 1
)
SELECT (SELECT count(*) FROM batch) AS events, (SELECT count(*) FROM delivered) AS deliveries,
       (SELECT count(*) FROM moved) AS moved
"""  # noqa: S608  (constants, no input)
)


async def fan_out(session: AsyncSession, now: datetime, limit: int) -> tuple[int, int] | None:
    """(events read, deliveries made) for one batch; None when another process holds the
    cursor. The caller commits."""
    cursor = (await session.execute(_LOCK_CURSOR)).one_or_none()
    if cursor is None:
        return None
    horizon = (await session.execute(text(HORIZON))).one().horizon
    row = (
        await session.execute(
            _FAN_OUT,
            {
                "after_xid": int(cursor.xid),
                "after_id": cursor.after_id,
                "horizon": int(horizon),
                "limit": limit,
                "now": now,
            },
        )
    ).one()
    return int(row.events), int(row.deliveries)


async def current_horizon(session: AsyncSession) -> int:
    return int((await session.execute(text(HORIZON))).one().horizon)


_PING: Final = text(
    """
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, task_id, next_attempt_at,
                                first_attempt_at, created_at)
VALUES (:webhook_id, NULL, 'ping', NULL, :now, :now, :now)
RETURNING id
"""
)


async def queue_ping(session: AsyncSession, webhook_id: int, now: datetime) -> int:
    return int((await session.execute(_PING, {"webhook_id": webhook_id, "now": now})).scalar_one())


_REDELIVER: Final = text(
    """
UPDATE webhook_deliveries SET status = 0, next_attempt_at = :now, first_attempt_at = :now,
       locked_until = NULL
WHERE id = :id AND webhook_id = :webhook_id
RETURNING id
"""
)


async def redeliver(
    session: AsyncSession, webhook_id: int, delivery_id: int, now: datetime
) -> bool:
    result = await session.execute(
        _REDELIVER, {"id": delivery_id, "webhook_id": webhook_id, "now": now}
    )
    return result.scalar_one_or_none() is not None


_DELIVERIES: Final = text(
    """
SELECT id, event_id, event_type, status, attempts, response_status, duration_ms, last_error,
       next_attempt_at, created_at
FROM webhook_deliveries
WHERE webhook_id = :webhook_id AND id < :before
  AND (CAST(:status AS smallint) IS NULL OR status = CAST(:status AS smallint))
ORDER BY id DESC
LIMIT :limit
"""
)


async def deliveries(
    session: AsyncSession, webhook_id: int, before: int, status: int | None, limit: int
) -> list[Any]:
    result = await session.execute(
        _DELIVERIES,
        {"webhook_id": webhook_id, "before": before, "status": status, "limit": limit},
    )
    return list(result.mappings().all())


async def count_owned(session: AsyncSession, owner_id: int) -> int:
    result = await session.execute(
        text("SELECT count(*) FROM webhooks WHERE owner_id = :owner_id"), {"owner_id": owner_id}
    )
    return int(result.scalar_one())


# The operator's view (taskapi webhooks ...): every webhook's deliveries.
_OPERATOR_DELIVERIES: Final = text(
    """
SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.status, d.attempts, d.response_status,
       d.last_error, d.next_attempt_at, w.url
FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE (CAST(:webhook_id AS bigint) IS NULL OR d.webhook_id = :webhook_id)
  AND (CAST(:status AS smallint) IS NULL OR d.status = CAST(:status AS smallint))
ORDER BY d.id DESC
LIMIT :limit
"""
)


async def operator_deliveries(
    session: AsyncSession, webhook_id: int | None, status: int | None, limit: int
) -> list[Any]:
    result = await session.execute(
        _OPERATOR_DELIVERIES, {"webhook_id": webhook_id, "status": status, "limit": limit}
    )
    return list(result.mappings().all())


_OPERATOR_REDELIVER: Final = text(
    """
UPDATE webhook_deliveries d SET status = 0, next_attempt_at = :now, first_attempt_at = :now,
       locked_until = NULL
FROM webhooks w
WHERE w.id = d.webhook_id
  AND (d.id = ANY(CAST(:ids AS bigint[]))
       OR (:all_failed AND d.status = 2 AND w.active
           AND (CAST(:webhook_id AS bigint) IS NULL OR d.webhook_id = :webhook_id)))
RETURNING d.id
"""
)


async def operator_redeliver(
    session: AsyncSession,
    ids: Sequence[int],
    all_failed: bool,
    webhook_id: int | None,
    now: datetime,
) -> list[int]:
    result = await session.execute(
        _OPERATOR_REDELIVER,
        {"ids": list(ids), "all_failed": all_failed, "webhook_id": webhook_id, "now": now},
    )
    return [int(row[0]) for row in result.all()]
