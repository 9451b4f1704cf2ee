"""What each kind of job does. Every handler is idempotent: a job may run more than once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.jobs.queue import utcnow
from taskapi.kit.config import Settings
from taskapi.models import Attachment
from taskapi.storage import Storage
from taskapi.tasks import stat_counts

logger = logging.getLogger("taskapi.jobs")

DELETE_OBJECTS = "delete_objects"
SWEEP_ORPHANS = "sweep_orphans"
DUE_SOON = "due_soon_notifications"
EXPIRE_IDEMPOTENCY_KEYS = "expire_idempotency_keys"
FOLD_TASK_STATS = "fold_task_stats"


@dataclass(frozen=True, slots=True)
class JobContext:
    sessionmaker: async_sessionmaker[AsyncSession]
    storage: Storage
    settings: Settings


Handler = Callable[[JobContext, dict[str, Any]], Awaitable[None]]


async def delete_objects(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Remove stored objects whose rows are gone (a deleted file, task or account)."""
    for key in payload.get("keys", []):
        await ctx.storage.delete(str(key))


async def sweep_orphans(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Delete objects no attachment refers to: uploads whose commit never happened. Objects
    younger than the grace period are left alone, since they may be uploads in flight."""
    cutoff = utcnow() - timedelta(seconds=ctx.settings.orphan_grace_seconds)
    batch: list[str] = []
    removed = 0

    async def flush() -> int:
        async with ctx.sessionmaker() as session:
            known = set(
                (
                    await session.scalars(
                        select(Attachment.storage_key).where(Attachment.storage_key.in_(batch))
                    )
                ).all()
            )
        orphans = [key for key in batch if key not in known]
        for key in orphans:
            await ctx.storage.delete(key)
        batch.clear()
        return len(orphans)

    async for stored in ctx.storage.list_objects():
        if stored.modified_at < cutoff:
            batch.append(stored.key)
            if len(batch) >= 500:
                removed += await flush()
    if batch:
        removed += await flush()
    if removed:
        logger.info("orphan sweep removed %d objects", removed)


# Who is told, and what "due soon" means, come from the task rules' SQL functions (migration
# 0007, rendered from taskapi.tasks.visibility and taskapi.tasks.overdue): everyone who sees the
# task, when it is not overdue today but will be the day after tomorrow (due today or tomorrow,
# still open).
_DUE_SOON_SQL = text(
    """
    INSERT INTO notifications (user_id, kind, task_id, message)
    SELECT r.user_id, 'task_due_soon'::notification_kind, t.id,
           'The task “' || left(t.title, 80) || '” is due on ' || t.due_date || '.'
    FROM tasks t
    CROSS JOIN LATERAL task_viewers(t) AS r(user_id)
    WHERE NOT task_is_overdue(t, :today)
      AND task_is_overdue(t, :day_after_tomorrow)
      AND NOT EXISTS (
        SELECT 1 FROM notifications n
        WHERE n.task_id = t.id AND n.user_id = r.user_id
          AND n.kind = 'task_due_soon' AND n.created_at > :since
      )
    """
)


async def due_soon_notifications(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Tell owners and assignees about open tasks due within a day, once per due date."""
    now = utcnow()
    today = now.date()
    async with ctx.sessionmaker() as session:
        await session.execute(
            _DUE_SOON_SQL,
            {
                "today": today,
                "day_after_tomorrow": today + timedelta(days=2),
                "since": now - timedelta(days=3),
            },
        )
        await session.commit()


# Batches, so one sweep after a long pause never holds a huge delete (and its locks) at once.
_EXPIRE_IDEMPOTENCY_KEYS_SQL = text(
    """
    DELETE FROM idempotency_keys WHERE id IN (
        SELECT id FROM idempotency_keys WHERE expires_at <= now() LIMIT 5000
    )
    """
)


async def expire_idempotency_keys(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Delete Idempotency-Key records past their 24 hours (they no longer replay anyway)."""
    removed = 0
    while True:
        async with ctx.sessionmaker() as session:
            result = await session.execute(_EXPIRE_IDEMPOTENCY_KEYS_SQL)
            await session.commit()
        count = int(getattr(result, "rowcount", 0) or 0)
        removed += count
        if count < 5000:
            break
    if removed:
        logger.info("removed %d expired idempotency keys", removed)


# A user is folded once this many rows wait; a stats read folds at READ_FOLD_THRESHOLD anyway.
FOLD_AT_LEAST = 32
FOLD_USERS_PER_TRANSACTION = 100


async def fold_task_stats(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Fold the stats counts of every user with enough unfolded rows (see
    taskapi.tasks.stat_counts), so that writers who never read their stats do not pile up rows."""
    folded = 0
    while True:
        async with ctx.sessionmaker() as session:
            count = await stat_counts.fold_busiest(
                session, at_least=FOLD_AT_LEAST, limit=FOLD_USERS_PER_TRANSACTION
            )
            await session.commit()
        folded += count
        if count < FOLD_USERS_PER_TRANSACTION:
            break
    if folded:
        logger.info("folded the stats counts of %d users", folded)


HANDLERS: dict[str, Handler] = {
    DELETE_OBJECTS: delete_objects,
    SWEEP_ORPHANS: sweep_orphans,
    DUE_SOON: due_soon_notifications,
    EXPIRE_IDEMPOTENCY_KEYS: expire_idempotency_keys,
    FOLD_TASK_STATS: fold_task_stats,
}
