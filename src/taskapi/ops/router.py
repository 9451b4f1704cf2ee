from __future__ import annotations

import asyncio
import logging
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from taskapi.jobs import queue
from taskapi.kit import metrics
from taskapi.kit.cache import RedisGuard
from taskapi.kit.services import services_of
from taskapi.storage import STORAGE, Storage

router = APIRouter(prefix="/ops", tags=["operations"])
logger = logging.getLogger("taskapi.ops")

CHECK_TIMEOUT_SECONDS = 2.0
CheckState = Literal["ok", "unavailable"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessChecks(BaseModel):
    database: CheckState
    redis: CheckState
    storage: CheckState


class Readiness(BaseModel):
    status: Literal["ok", "degraded"]
    checks: ReadinessChecks


@router.get("/health", summary="Liveness")
async def health() -> Health:
    """200 while the process is alive; touches no dependency."""
    return Health()


async def _database_ok(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:  # any failure means "not ready", never a 500
        logger.warning("readiness: database check failed: %s", error)
        return False
    return True


async def _redis_ok(guard: RedisGuard) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await guard.ping()
    except TimeoutError:
        return False


async def _storage_ok(storage: Storage) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await storage.check()
    except TimeoutError:
        return False


def _state(ok: bool) -> CheckState:
    return "ok" if ok else "unavailable"


@router.get(
    "/ready",
    responses={503: {"model": Readiness, "description": "The database is unreachable"}},
    summary="Readiness",
)
async def ready(request: Request, response: Response) -> Readiness:
    """`ok` when every dependency answers; `degraded` when Redis or storage does not (requests are
    still served); 503 only when the database is unreachable."""
    services = services_of(request.app)
    database, redis_ok, storage_ok = await asyncio.gather(
        _database_ok(services.engine),
        _redis_ok(services.redis),
        _storage_ok(services.get(STORAGE)),
    )
    checks = ReadinessChecks(
        database=_state(database), redis=_state(redis_ok), storage=_state(storage_ok)
    )
    if not database:
        response.status_code = 503
    degraded = not (database and redis_ok and storage_ok)
    return Readiness(status="degraded" if degraded else "ok", checks=checks)


async def _update_job_gauges(request: Request) -> None:
    """Queue depth from the database; a scrape still answers (without it) when that is down."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with services_of(request.app).sessionmaker() as session:
                counts = await queue.counts(session)
    except Exception as error:  # metrics matter most during an outage: never fail the scrape
        logger.warning("metrics: job counts unavailable: %s", error)
        return
    metrics.JOBS_QUEUED.set(counts["queued"])
    metrics.JOBS_FAILED.set(counts["failed"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def prometheus_metrics(request: Request) -> Response:
    """Request counts and latency by route template, DB pool use, stats cache hits and misses,
    rate-limit refusals and background jobs, in Prometheus' text format (summed over every
    worker process). No authentication and no rate limit: it is for the scraper."""
    await _update_job_gauges(request)
    # The session above is closed by now, so the pool gauge does not count the scrape itself.
    body = await asyncio.to_thread(metrics.render)
    return Response(content=body, media_type=metrics.CONTENT_TYPE)
