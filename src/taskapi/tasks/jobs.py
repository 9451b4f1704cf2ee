"""The tasks' background jobs: folding the stats counts of users who write more than they read,
and purging the trash."""

from __future__ import annotations

import logging
from typing import Any

from taskapi.jobs.registry import JobContext
from taskapi.tasks import stat_counts, trash

logger = logging.getLogger("taskapi.jobs")

FOLD_TASK_STATS = "fold_task_stats"
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


PURGE_TRASH = "purge_trash"
PURGE_TASKS_PER_TRANSACTION = 200


async def purge_trash(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Delete for good the tasks that have been in the trash longer than
    `TRASH_RETENTION_DAYS`, their stored objects through the job queue."""
    purged = 0
    while True:
        async with ctx.sessionmaker() as session:
            count = await trash.purge_expired(
                session, ctx.settings.trash_retention_days, limit=PURGE_TASKS_PER_TRANSACTION
            )
            await session.commit()
        purged += count
        if count < PURGE_TASKS_PER_TRANSACTION:
            break
    if purged:
        logger.info("purged %d tasks from the trash", purged)
