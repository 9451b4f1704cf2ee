"""The delivery log's retention: a delivery goes with its event when the log's retention removes
it (a foreign key); pings, which have no event, are removed here after the same time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from taskapi.jobs.queue import utcnow
from taskapi.jobs.registry import JobContext
from taskapi.webhooks import queue

PURGE_PINGS: Final = "purge_webhook_pings"


async def purge_pings(ctx: JobContext, payload: dict[str, Any]) -> None:
    older_than = utcnow() - timedelta(days=ctx.settings.event_retention_days)
    async with ctx.sessionmaker() as session:
        await queue.purge_pings(session, older_than)
        await session.commit()
