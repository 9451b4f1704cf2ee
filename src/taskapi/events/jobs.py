"""The event log's retention: events older than EVENT_RETENTION_DAYS are deleted."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from taskapi.events import service
from taskapi.jobs.queue import utcnow
from taskapi.jobs.registry import JobContext

logger = logging.getLogger("taskapi.jobs")

PURGE_EVENTS = "purge_events"
PURGE_BATCH = 10_000
# Kept a day beyond the retention: an event is dated by its transaction's start, so one may sit
# just after a cursor that is younger than it; a cursor is refused (410) at the retention
# itself, before anything it still needs can be gone.
PURGE_MARGIN = timedelta(days=1)


async def purge_events(ctx: JobContext, payload: dict[str, Any]) -> None:
    older_than = utcnow() - timedelta(days=ctx.settings.event_retention_days) - PURGE_MARGIN
    purged = 0
    while True:
        async with ctx.sessionmaker() as session:
            count = await service.purge(session, older_than, PURGE_BATCH)
            await session.commit()
        purged += count
        if count < PURGE_BATCH:
            break
    async with ctx.sessionmaker() as session:
        await service.purge_orphan_recipients(session)
        await session.commit()
    if purged:
        logger.info("purged %d events older than %s", purged, older_than.isoformat())
