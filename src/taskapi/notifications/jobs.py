"""The notifications' background job: due-soon reminders."""

from __future__ import annotations

from typing import Any

from taskapi.jobs.queue import utcnow
from taskapi.jobs.registry import JobContext
from taskapi.notifications import service

DUE_SOON = "due_soon_notifications"


async def due_soon_notifications(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Tell owners and assignees about open tasks due within a day, once per due date."""
    async with ctx.sessionmaker() as session:
        await service.notify_due_soon(session, utcnow())
        await session.commit()
