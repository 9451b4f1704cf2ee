"""The attachments' background jobs: deleting the stored objects of deleted files, and sweeping
objects no file refers to."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from taskapi.attachments import service
from taskapi.jobs.queue import utcnow
from taskapi.jobs.registry import JobContext

logger = logging.getLogger("taskapi.jobs")

SWEEP_ORPHANS = "sweep_orphans"
SWEEP_BATCH = 500


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
            known = await service.referenced_keys(session, batch)
        orphans = [key for key in batch if key not in known]
        for key in orphans:
            await ctx.storage.delete(key)
        batch.clear()
        return len(orphans)

    async for stored in ctx.storage.list_objects():
        if stored.modified_at < cutoff:
            batch.append(stored.key)
            if len(batch) >= SWEEP_BATCH:
                removed += await flush()
    if batch:
        removed += await flush()
    if removed:
        logger.info("orphan sweep removed %d objects", removed)
