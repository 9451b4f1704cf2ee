"""The composition root's wiring: which function runs each kind of background job, which kinds
recur, and who lets go of the files of deleted tasks.

`taskapi.jobs` (queue, worker) knows no domain, and tasks do not know attachments (which build on
tasks); each domain keeps its part beside its service. This module, used by app.py and cli.py
only, puts them together.
"""

from __future__ import annotations

from typing import Any, Final

from taskapi.attachments import jobs as attachment_jobs
from taskapi.attachments import service as attachments
from taskapi.attachments.service import DELETE_OBJECTS
from taskapi.events import jobs as event_jobs
from taskapi.jobs.queue import utcnow
from taskapi.jobs.registry import JobContext, JobRegistry, Periodic
from taskapi.kit import idempotency
from taskapi.notifications import jobs as notification_jobs
from taskapi.tasks import files as task_files
from taskapi.tasks import jobs as task_jobs
from taskapi.webhooks import jobs as webhook_jobs

EXPIRE_IDEMPOTENCY_KEYS = "expire_idempotency_keys"


async def expire_idempotency_keys(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Delete Idempotency-Key records past their 24 hours (they no longer replay anyway)."""
    async with ctx.sessionmaker() as session:
        await idempotency.expire_keys(session, utcnow())


JOBS: Final = JobRegistry(
    handlers={
        DELETE_OBJECTS: attachment_jobs.delete_objects,
        attachment_jobs.SWEEP_ORPHANS: attachment_jobs.sweep_orphans,
        notification_jobs.DUE_SOON: notification_jobs.due_soon_notifications,
        EXPIRE_IDEMPOTENCY_KEYS: expire_idempotency_keys,
        task_jobs.FOLD_TASK_STATS: task_jobs.fold_task_stats,
        task_jobs.PURGE_TRASH: task_jobs.purge_trash,
        event_jobs.PURGE_EVENTS: event_jobs.purge_events,
        webhook_jobs.PURGE_PINGS: webhook_jobs.purge_pings,
    },
    periodic=(
        Periodic(attachment_jobs.SWEEP_ORPHANS, lambda s: s.orphan_sweep_interval_seconds),
        Periodic(notification_jobs.DUE_SOON, lambda s: s.due_soon_interval_seconds),
        Periodic(EXPIRE_IDEMPOTENCY_KEYS, lambda s: s.idempotency_sweep_interval_seconds),
        Periodic(task_jobs.FOLD_TASK_STATS, lambda s: s.stats_fold_interval_seconds),
        Periodic(task_jobs.PURGE_TRASH, lambda s: s.trash_purge_interval_seconds),
        Periodic(event_jobs.PURGE_EVENTS, lambda s: s.event_purge_interval_seconds),
        Periodic(webhook_jobs.PURGE_PINGS, lambda s: s.event_purge_interval_seconds),
    ),
)


def connect_domains() -> None:
    """Connect what one domain triggers in another that builds on it (idempotent)."""
    task_files.connect(attachments.release_objects_of_tasks)
