"""The delivery queue's statements (the dispatcher's side): claiming due deliveries with the
events and secrets to send, and recording each attempt's outcome. The fan-out and the API's
statements are in repository.py. Times come from the caller's clock, never from `now()`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

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


# Successful attempts, any number in one statement: the dispatcher writes the outcomes that
# arrived while its previous write was committing together (one commit, and one update of each
# webhook's row instead of one per delivery, which every delivery to that webhook waited on).
# The webhooks' rows are locked in id order, so two dispatchers writing overlapping sets of
# webhooks wait for each other instead of deadlocking.
_DELIVERED: Final = text(
    """
WITH done AS (
    UPDATE webhook_deliveries d SET status = 1, locked_until = NULL,
           response_status = o.status, duration_ms = o.duration_ms, last_error = NULL
    FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS integer[]),
                CAST(:durations AS integer[])) AS o(id, status, duration_ms)
    WHERE d.id = o.id AND d.status = 0
    RETURNING d.webhook_id
), targets AS (
    SELECT w.id FROM webhooks w
    WHERE w.id IN (SELECT webhook_id FROM done)
      AND (w.last_delivery_at IS NULL OR w.last_delivery_at < :now
           OR w.failing_since IS NOT NULL)
    ORDER BY w.id
    FOR NO KEY UPDATE
)
UPDATE webhooks w SET last_delivery_at = :now, failing_since = NULL
FROM targets WHERE w.id = targets.id
"""
)


async def mark_delivered(
    session: AsyncSession, outcomes: Sequence[tuple[int, int, int]], now: datetime
) -> None:
    """Record successful attempts: (delivery id, response status, duration in ms) each."""
    await session.execute(
        _DELIVERED,
        {
            "ids": [delivery_id for delivery_id, _, _ in outcomes],
            "statuses": [status for _, status, _ in outcomes],
            "durations": [duration_ms for _, _, duration_ms in outcomes],
            "now": now,
        },
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


async def purge_pings(session: AsyncSession, older_than: datetime) -> int:
    result = await session.execute(
        text("DELETE FROM webhook_deliveries WHERE event_id IS NULL AND created_at < :older_than"),
        {"older_than": older_than},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
