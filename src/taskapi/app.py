"""The composition root: `create_app()` wires the process's services (built by the lifespan,
`running_services`), middleware and routes."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from taskapi import __version__
from taskapi.attachments.router import MULTIPART_OVERHEAD
from taskapi.attachments.router import router as attachments_router
from taskapi.auth.personal_tokens import PERSONAL_TOKENS, PersonalTokens
from taskapi.auth.principal_cache import PRINCIPAL_CACHE, PrincipalCache
from taskapi.auth.router import router as auth_router
from taskapi.auth.service import AUTH_SERVICE, AuthService
from taskapi.auth.tokens_router import router as tokens_router
from taskapi.events.router import router as events_router
from taskapi.events.stream import router as event_stream_router
from taskapi.events.wakeup import EVENT_WAKER, EventWaker
from taskapi.jobs.worker import Worker
from taskapi.kit.cache import RedisGuard, create_redis
from taskapi.kit.config import Settings, get_settings
from taskapi.kit.db import create_engine, create_sessionmaker, read_only_engine
from taskapi.kit.dispatch import MethodAndMediaTypeMiddleware
from taskapi.kit.errors import install_error_handlers
from taskapi.kit.flat_routes import add_routes
from taskapi.kit.idempotency import install_idempotency
from taskapi.kit.idempotency.middleware import TOKEN_OWNER
from taskapi.kit.limits import UPLOAD_ROUTE, BodySizeLimitMiddleware, RouteLimit
from taskapi.kit.logs import configure_logging
from taskapi.kit.metrics import instrument_pool, process_exiting
from taskapi.kit.middleware import RequestContextMiddleware
from taskapi.kit.openapi import Problem, finish_schema, operation_id
from taskapi.kit.pagination import CursorCodec
from taskapi.kit.ratelimit import RateLimiter
from taskapi.kit.security import PasswordHashing, TokenCodec
from taskapi.kit.services import Services, install_services
from taskapi.notifications.router import router as notifications_router
from taskapi.ops.docs import install_docs
from taskapi.ops.router import router as ops_router
from taskapi.projects.router import router as projects_router
from taskapi.storage import STORAGE
from taskapi.storage.factory import create_storage
from taskapi.tasks.activity import router as task_activity_router
from taskapi.tasks.router import router as tasks_router
from taskapi.tasks.stats_cache import STATS_CACHE, StatsCache
from taskapi.tasks.trash_router import router as trash_router
from taskapi.users.router import router as users_router
from taskapi.webhooks.dispatcher import WebhookDispatcher
from taskapi.webhooks.router import router as webhooks_router
from taskapi.wiring import JOBS, connect_domains

API_PREFIX = "/api/v1"
# Every router under API_PREFIX, in the order routes are matched: the busiest first (no two
# routers' paths overlap).
API_ROUTERS: Final = (
    tasks_router,
    attachments_router,
    auth_router,
    users_router,
    projects_router,
    trash_router,
    notifications_router,
    events_router,
    event_stream_router,
    task_activity_router,
    webhooks_router,
    tokens_router,
)

DESCRIPTION = """
A multi-user task-management API.

**Try it:** register with `POST /api/v1/auth/register`, then press **Authorize** and log in with
your username (or email) and password.

Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`.
"""


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    """The process's services, and the embedded job worker if configured, for as long as the
    block runs; everything is closed on the way out."""
    engine = create_engine(settings)
    instrument_pool(engine)
    hashing = PasswordHashing(settings)
    tokens = TokenCodec(settings)
    redis_client = create_redis(settings)
    guard = RedisGuard(redis_client, settings.redis_retry_cooldown_seconds)
    stats_cache = StatsCache(guard, settings.redis_key_prefix, settings.stats_cache_ttl_seconds)
    principal_cache = PrincipalCache(
        guard, settings.redis_key_prefix, settings.principal_cache_ttl_seconds
    )
    services = Services(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        read_sessionmaker=create_sessionmaker(read_only_engine(engine)),
        redis=guard,
        rate_limiter=RateLimiter(guard, settings),
        tokens=tokens,
        password_hashing=hashing,
        cursor_codec=CursorCodec(settings.signing_key),
        after_commit=[principal_cache.after_commit, stats_cache.after_commit],
    )
    services.provide(AUTH_SERVICE, AuthService(hashing, tokens))
    services.provide(PRINCIPAL_CACHE, principal_cache)
    personal_tokens = PersonalTokens(settings.signing_key, lambda: services.sessionmaker)
    services.provide(PERSONAL_TOKENS, personal_tokens)
    services.provide(TOKEN_OWNER, personal_tokens.user_id_of)
    services.provide(STATS_CACHE, stats_cache)
    storage = await create_storage(settings)
    services.provide(STORAGE, storage)
    # One listening connection per process wakes its event streams (GET /events/stream).
    event_waker = EventWaker(settings)
    await event_waker.start()
    services.provide(EVENT_WAKER, event_waker)
    stop_worker = asyncio.Event()
    worker_tasks: list[asyncio.Task[None]] = []
    if settings.worker_embedded:
        worker = Worker(services.sessionmaker, storage, settings, JOBS)
        dispatcher = WebhookDispatcher(services.sessionmaker, settings, wake=event_waker.signal)
        worker_tasks = [
            asyncio.create_task(worker.run(stop_worker), name="taskapi-worker"),
            asyncio.create_task(dispatcher.run(stop_worker), name="taskapi-webhooks"),
        ]
    token_uses = asyncio.create_task(personal_tokens.run(), name="taskapi-token-uses")
    try:
        yield services
    finally:
        stop_worker.set()
        # The job in hand and the deliveries in flight are finished first.
        await asyncio.gather(*worker_tasks)
        personal_tokens.stop()
        await token_uses
        await event_waker.stop()
        await storage.close()
        hashing.close()
        await redis_client.aclose()
        await engine.dispose()
        process_exiting()


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings) as services:
            install_services(app, services)
            yield

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="taskapi",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan(settings),
        # Served by ops/docs.py with their assets; FastAPI's own pages load them from a CDN.
        docs_url=None,
        redoc_url=None,
        license_info={"name": "MIT", "identifier": "MIT"},
        swagger_ui_parameters={"persistAuthorization": True},
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    connect_domains()

    for router in API_ROUTERS:
        add_routes(app, router, API_PREFIX)
    add_routes(app, ops_router)
    install_docs(app)

    # Innermost of ours: replays and its errors still get the size limit, CORS, request ids and
    # security headers.
    install_idempotency(app)
    # Outside idempotency: a request refused for its method or media type claims no key.
    app.add_middleware(MethodAndMediaTypeMiddleware)
    # Outside everything that reads a body, so no middleware or handler ever buffers more than
    # the limit; inside CORS, so browsers can read the 413.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        route_limits=[
            RouteLimit("POST", UPLOAD_ROUTE, settings.max_upload_bytes + MULTIPART_OVERHEAD)
        ],
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "ETag",
                "Location",
                "Link",
                "X-Request-ID",
                "RateLimit",
                "RateLimit-Policy",
                "Retry-After",
                "Idempotent-Replayed",
            ],
        )
    # Added last, so it is the outermost of ours: ids and headers on every response, 500s included.
    app.add_middleware(RequestContextMiddleware)

    _register_problem_schema(app)
    return app


def create_served_app() -> FastAPI:
    """The factory `taskapi serve` gives uvicorn. Worker processes are spawned fresh and inherit
    no logging setup from the parent, so each configures its own before building the app."""
    settings = get_settings()
    configure_logging(settings)
    app = create_app(settings)
    tune_garbage_collector()
    return app


# Requests allocate many short-lived objects (ORM states, models, dicts) but few cycles: with
# CPython's default first threshold (700 allocations) the collector runs every few requests.
GC_FIRST_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """For a serving process: what was built at start-up (routes, schemas, compiled SQL) is
    moved out of the collector's way for good, and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_THRESHOLD, second, third)


def _register_problem_schema(app: FastAPI) -> None:
    """Make `#/components/schemas/Problem`, referenced by documented error responses, exist, and
    document what the handlers and dependencies add to every operation (`finish_schema`)."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in problem_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["Problem"] = problem_schema
            finish_schema(schema, api_prefix=API_PREFIX)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
