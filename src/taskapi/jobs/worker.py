"""The job worker: claims due jobs, runs them with the registry's handlers, retries failures with
backoff, and keeps the registry's periodic jobs scheduled. Runs inside the API process
(`WORKER_EMBEDDED`) or alone (`taskapi worker`); any number of them can share the queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.jobs import queue
from taskapi.jobs.registry import JobContext, JobRegistry
from taskapi.kit import metrics
from taskapi.kit.config import Settings
from taskapi.models import Job
from taskapi.storage import Storage

logger = logging.getLogger("taskapi.worker")

JOB_TIMEOUT_SECONDS = 300
BATCH_SIZE = 10


class Worker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: Storage,
        settings: Settings,
        jobs: JobRegistry,
    ) -> None:
        self.context = JobContext(sessionmaker, storage, settings)
        self.handlers = jobs.handlers
        self.periodic = jobs.periodic
        self.settings = settings
        self.done = 0
        self.failed = 0

    async def schedule_periodic(self) -> None:
        """Keep one pending job of each periodic kind (the dedupe key makes this a no-op when
        one is already waiting)."""
        now = queue.utcnow()
        async with self.context.sessionmaker() as session:
            for periodic in self.periodic:
                await queue.enqueue(
                    session,
                    periodic.kind,
                    run_at=now + timedelta(seconds=periodic.every(self.settings)),
                    dedupe_key=f"periodic:{periodic.kind}",
                )
            await session.commit()

    async def run_once(self) -> int:
        """Claim and run one batch of due jobs; returns how many ran."""
        async with self.context.sessionmaker() as session:
            jobs = await queue.claim(session, BATCH_SIZE, queue.utcnow())
            await session.commit()
        for job in jobs:
            await self._execute(job)
        return len(jobs)

    async def _execute(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            async with asyncio.timeout(JOB_TIMEOUT_SECONDS):
                await handler(self.context, job.payload)
        except Exception as error:
            self.failed += 1
            metrics.JOBS.labels(kind=job.kind, outcome="failed").inc()
            logger.warning(
                "job %s (%s) failed, attempt %d: %s", job.id, job.kind, job.attempts, error
            )
            async with self.context.sessionmaker() as session:
                await queue.fail(session, job, f"{type(error).__name__}: {error}", queue.utcnow())
                await session.commit()
            return
        self.done += 1
        metrics.JOBS.labels(kind=job.kind, outcome="done").inc()
        async with self.context.sessionmaker() as session:
            await queue.complete(session, job.id)
            await session.commit()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; the job in hand is always finished before returning."""
        logger.info("worker started")
        while not stop.is_set():
            try:
                await self.schedule_periodic()
                ran = await self.run_once()
            except Exception:
                # The database is down or restarting: wait and try again, never die.
                logger.exception("worker loop error")
                ran = 0
            if ran == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.job_poll_interval_seconds)
        logger.info("worker stopped")
