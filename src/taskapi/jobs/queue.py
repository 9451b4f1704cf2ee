"""Enqueue (inside the caller's transaction), claim with FOR UPDATE SKIP LOCKED, finish, retry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Job

# Longer than the worker's job timeout, so a running job is never claimed twice.
LEASE = timedelta(minutes=10)
MAX_BACKOFF = timedelta(hours=1)


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
) -> None:
    """Add a job in the session's transaction: it exists exactly when the change does.

    With `dedupe_key`, a job that is already pending under that key makes this a no-op.
    """
    values: dict[str, Any] = {"kind": kind, "payload": payload or {}, "dedupe_key": dedupe_key}
    if run_at is not None:
        values["run_at"] = run_at
    statement = insert(Job).values(**values)
    if dedupe_key is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[Job.dedupe_key])
    await session.execute(statement)


async def claim(session: AsyncSession, limit: int, now: datetime) -> Sequence[Job]:
    """Lease up to `limit` due jobs. SKIP LOCKED lets any number of workers share the queue."""
    due = (
        select(Job.id)
        .where(
            Job.failed_at.is_(None),
            Job.run_at <= now,
            (Job.locked_until.is_(None)) | (Job.locked_until < now),
        )
        .order_by(Job.run_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = await session.scalars(
        update(Job)
        .where(Job.id.in_(due.scalar_subquery()))
        .values(locked_until=now + LEASE, attempts=Job.attempts + 1)
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    return claimed.all()


async def complete(session: AsyncSession, job_id: int) -> None:
    await session.execute(delete(Job).where(Job.id == job_id))


def backoff(attempts: int) -> timedelta:
    """Exponential: 2 s, 4 s, 8 s ... capped at an hour."""
    return min(MAX_BACKOFF, timedelta(seconds=2**attempts))


async def fail(session: AsyncSession, job: Job, error: str, now: datetime) -> None:
    values: dict[str, Any] = {"locked_until": None, "last_error": error[:2000]}
    if job.attempts >= job.max_attempts:
        # Kept, not deleted: a job that keeps failing is something for a person to look at.
        # It is no longer pending, so it releases its dedupe key: otherwise a periodic job that
        # gave up (a long storage outage) would block its kind from ever being scheduled again.
        values["failed_at"] = now
        values["dedupe_key"] = None
    else:
        values["run_at"] = now + backoff(job.attempts)
    await session.execute(update(Job).where(Job.id == job.id).values(**values))


async def counts(session: AsyncSession) -> dict[str, int]:
    row = (
        await session.execute(
            select(
                func.count().filter(Job.failed_at.is_(None)),
                func.count().filter(Job.failed_at.is_not(None)),
            )
        )
    ).one()
    return {"queued": int(row[0]), "failed": int(row[1])}


def utcnow() -> datetime:
    return datetime.now(UTC)
