"""The webhooks' statements: the fan-out from the event log, the delivery queue, the log.

Times come from the caller (the service's clock), never from `now()`, so retries, the 24-hour
rotation overlap and deactivation can be tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events.repository import HORIZON

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
# (user_id, xid, event_id). ON CONFLICT: a delivery exists at most once per event and webhook.
_FAN_OUT: Final = text(
    """
WITH batch AS MATERIALIZED (
    SELECT e.id, e.xid, e.type, e.task_id, e.project_id FROM events e
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
"""
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


# Due deliveries, leased. A delivery waits while an earlier one about the same task is pending
# for the same webhook (in flight, or waiting for its retry): a healthy receiver gets a task's
# events in order. Per webhook, at most `cap` are in flight in this process (`busy` holds how many
# already are; `full` lists those at the cap, left out of the scan so a slow receiver's backlog
# cannot fill it). The window runs over the first `scan` candidates only, not the whole backlog;
# locking comes last, as FOR UPDATE cannot share a query level with a window function.
_CLAIM: Final = text(
    """
WITH candidates AS (
    SELECT d.id, d.webhook_id, d.next_attempt_at FROM webhook_deliveries d
    JOIN webhooks w ON w.id = d.webhook_id AND w.active
    WHERE d.status = 0 AND d.next_attempt_at <= :now
      AND (d.locked_until IS NULL OR d.locked_until < :now)
      AND d.webhook_id <> ALL(CAST(:full AS bigint[]))
      AND NOT (d.task_id IS NOT NULL AND EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.webhook_id = d.webhook_id AND p.task_id = d.task_id AND p.status = 0
            AND p.id < d.id))
    ORDER BY d.next_attempt_at, d.id
    LIMIT :scan
), ranked AS (
    SELECT c.id, c.next_attempt_at,
           row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.next_attempt_at, c.id) AS rank,
           :cap - coalesce(b.n, 0) AS allowance
    FROM candidates c
    LEFT JOIN unnest(CAST(:busy_ids AS bigint[]), CAST(:busy_counts AS integer[]))
        AS b(webhook_id, n) ON b.webhook_id = c.webhook_id
), due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.id IN (SELECT id FROM ranked WHERE rank <= allowance
                   ORDER BY next_attempt_at, id LIMIT :limit)
      AND d.status = 0 AND (d.locked_until IS NULL OR d.locked_until < :now)
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET locked_until = :lease_until, attempts = d.attempts + 1
FROM due WHERE d.id = due.id
RETURNING d.id, d.webhook_id, d.event_id, d.event_type, d.attempts, d.first_attempt_at,
          d.created_at
"""
)

_EVENTS: Final = text(
    """
SELECT id, type, occurred_at, actor_id, task_id, project_id, changes, task
FROM events WHERE id = ANY(CAST(:ids AS bigint[]))
"""
)

_TARGETS: Final = text(
    """
SELECT id, url, secret_sealed, previous_secret_sealed, previous_secret_expires_at
FROM webhooks WHERE id = ANY(CAST(:ids AS bigint[]))
"""
)


async def claim(
    session: AsyncSession,
    now: datetime,
    lease_until: datetime,
    limit: int,
    cap: int,
    busy: Mapping[int, int],
) -> list[Any]:
    """Lease up to `limit` due deliveries, at most `cap` per webhook counting the `busy` ones
    (webhook id -> deliveries in flight here)."""
    result = await session.execute(
        _CLAIM,
        {
            "now": now,
            "lease_until": lease_until,
            "limit": limit,
            "scan": limit * 4,
            "cap": cap,
            "full": [webhook for webhook, n in busy.items() if n >= cap],
            "busy_ids": list(busy),
            "busy_counts": list(busy.values()),
        },
    )
    return list(result.mappings().all())


async def events_by_id(session: AsyncSession, ids: Sequence[int]) -> dict[int, Any]:
    if not ids:
        return {}
    rows = (await session.execute(_EVENTS, {"ids": list(ids)})).mappings().all()
    return {row["id"]: row for row in rows}


async def targets_by_id(session: AsyncSession, ids: Sequence[int]) -> dict[int, Any]:
    rows = (await session.execute(_TARGETS, {"ids": list(ids)})).mappings().all()
    return {row["id"]: row for row in rows}


_DELIVERED: Final = text(
    """
WITH done AS (
    UPDATE webhook_deliveries SET status = 1, locked_until = NULL, response_status = :status,
           duration_ms = :duration_ms, last_error = NULL
    WHERE id = :id AND status = 0
    RETURNING webhook_id
)
UPDATE webhooks SET last_delivery_at = :now, failing_since = NULL
WHERE id = (SELECT webhook_id FROM done)
  AND (last_delivery_at IS NULL OR last_delivery_at < :now OR failing_since IS NOT NULL)
"""
)


async def mark_delivered(
    session: AsyncSession, delivery_id: int, status: int, duration_ms: int, now: datetime
) -> None:
    await session.execute(
        _DELIVERED,
        {"id": delivery_id, "status": status, "duration_ms": duration_ms, "now": now},
    )


# A failed attempt: retried at `retry_at`, or failed for good (`retry_at` NULL). Returns when the
# webhook has been failing since (set by this failure if it is the first).
_ATTEMPT_FAILED: Final = text(
    """
WITH attempt AS (
    UPDATE webhook_deliveries SET
        status = CASE WHEN CAST(:retry_at AS timestamptz) IS NULL THEN 2 ELSE 0 END,
        next_attempt_at = coalesce(CAST(:retry_at AS timestamptz), next_attempt_at),
        locked_until = NULL, response_status = :status, duration_ms = :duration_ms,
        last_error = :error
    WHERE id = :id AND status = 0
    RETURNING webhook_id
)
UPDATE webhooks SET failing_since = coalesce(failing_since, :now)
WHERE id = (SELECT webhook_id FROM attempt)
RETURNING id, owner_id, url, failing_since, active
"""
)


async def mark_failed(
    session: AsyncSession,
    delivery_id: int,
    *,
    status: int | None,
    duration_ms: int,
    error: str,
    retry_at: datetime | None,
    now: datetime,
) -> Any:
    result = await session.execute(
        _ATTEMPT_FAILED,
        {
            "id": delivery_id,
            "status": status,
            "duration_ms": duration_ms,
            "error": error[:500],
            "retry_at": retry_at,
            "now": now,
        },
    )
    return result.mappings().one_or_none()


_DEACTIVATE: Final = text(
    """
UPDATE webhooks SET active = false, disabled_reason = :reason, version = version + 1
WHERE id = :id AND active
RETURNING id
"""
)
_FAIL_PENDING: Final = text(
    """
UPDATE webhook_deliveries SET status = 2, locked_until = NULL, last_error = :reason
WHERE webhook_id = :id AND status = 0
"""
)


async def deactivate(session: AsyncSession, webhook_id: int, reason: str) -> bool:
    """Turn the webhook off, failing its pending deliveries; False if it already was off."""
    switched = await session.execute(_DEACTIVATE, {"id": webhook_id, "reason": reason})
    if switched.scalar_one_or_none() is None:
        return False
    await session.execute(_FAIL_PENDING, {"id": webhook_id, "reason": "webhook deactivated"})
    return True


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


async def is_member(session: AsyncSession, user_id: int, project_id: int) -> bool:
    result = await session.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM project_members "
            "WHERE project_id = :project_id AND user_id = :user_id)"
        ),
        {"project_id": project_id, "user_id": user_id},
    )
    return bool(result.scalar_one())
