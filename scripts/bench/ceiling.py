"""The benchmark's yardstick: the least a Python server can do to answer GET /api/v1/tasks
and a page of GET /api/v1/events.

    .venv/bin/python -m uvicorn ceiling:app --app-dir scripts/bench --loop uvloop --http httptools \
        --no-access-log --workers N          # with the same environment as `taskapi serve`

Starlette + asyncpg + orjson: no ORM, no validation, no middleware, no rate limit, no user lookup.
It checks the bearer token exactly as the API does (PyJWT, HS256, the same key, audience, issuer
and required claims, `type` = access) and answers the first page of the caller's list with the
same body as the API (`make bench` compares the two before measuring): the 20 most recently
created tasks the caller sees, newest first with ties broken by id, the visible `total`, `limit`,
`offset` and a `next_cursor` signed the way the API signs it; and a page of the change feed.
It answers three requests:

* `GET /api/v1/tasks`: every visible task. The SQL is the best we know for that result, in one
  round trip: the personal tasks the caller owns, the personal tasks they are assigned, and the
  tasks of each project they are a member of, each read in list order from its own index and cut
  at the page (a LATERAL read per project: `project_id IN (...)` would read and sort every task
  of every project), merged; the total summed from the trigger-kept counts, as the API does.
* `GET /api/v1/tasks?project_id=<id>`: one project's tasks, for a member (404 otherwise): one
  index scan in list order, its total from the counts, and the membership as a one-time filter.
* `GET /api/v1/events?since=<cursor>&limit=<n>`: a page of the change feed. Unlike the lists,
  the SQL here is the API's own (taskapi.events.repository.HORIZON and FEED, imported, not
  copied), on one pooled connection: the horizon, then the page below it (two round trips, the
  second needs the first's answer, as in the API). The cursor is decoded and encoded by the API's
  CursorCodec with its fingerprint, checked against the retention period; the body is the API's
  (absent fields left out, `task` and `changes` as stored), byte for byte. So its ratio measures
  what the API adds around the same statements: framework, session, validation, serialisation.

So a ratio to this app measures everything the API adds, its choice of queries included (for
the feed, only what it adds around the same queries). It is not part of the service, and it
answers nothing but those requests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import asyncpg
import jwt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskapi.events import repository as events_repository
from taskapi.events.schemas import DEFAULT_FEED_LIMIT, MAX_FEED_LIMIT
from taskapi.events.service import FEED_FINGERPRINT
from taskapi.kit.config import get_settings
from taskapi.kit.db import CompiledQuery
from taskapi.kit.pagination import CursorCodec, InvalidCursor
from taskapi.tasks.list_params import TaskListParams

PAGE_SIZE = 20
JWT_ALGORITHM = "HS256"  # pinned, as in taskapi.kit.security
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "iss", "aud", "type", "sid"]
CLOSED_STATUSES = frozenset({"done", "cancelled"})

# The page (one row more than shown, to know whether a next page exists) and the visible total.
# Live personal tasks (`project_id IS NULL AND deleted_at IS NULL`, the partial indexes'
# predicate): `owner_id <> $1` on the assignee side keeps a self-assigned task from appearing
# twice. Project tasks: per membership, the project's first rows in order. The totals are
# uncorrelated subqueries, computed once, summing the trigger-kept (status, priority) counts of
# the caller and their projects as the API does (`task_stat_deltas`, migration 0017): counting
# the tasks costs more, and the ceiling must not do more work than the API; an empty first
# page means a total of 0.
COLUMNS = """id, title, description, status, priority, due_date, tags, owner_id, assignee_id,
            project_id, attachment_count, created_at, updated_at, completed_at, version"""
PAGE_SQL = """
SELECT page.*,
       (SELECT coalesce(sum(n), 0) FROM task_stat_deltas
        WHERE user_id = $1 AND priority IS NOT NULL)
       + (SELECT coalesce(sum(d.n), 0) FROM project_members AS m
          JOIN task_stat_deltas AS d ON d.project_id = m.project_id
          WHERE m.user_id = $1 AND d.priority IS NOT NULL) AS total
FROM (
    (SELECT COLUMNS
     FROM tasks WHERE owner_id = $1 AND project_id IS NULL AND deleted_at IS NULL
     ORDER BY created_at DESC, id DESC LIMIT $2)
    UNION ALL
    (SELECT COLUMNS
     FROM tasks
     WHERE assignee_id = $1 AND owner_id <> $1 AND project_id IS NULL AND deleted_at IS NULL
     ORDER BY created_at DESC, id DESC LIMIT $2)
    UNION ALL
    (SELECT project_page.*
     FROM project_members AS m
     CROSS JOIN LATERAL (
         SELECT COLUMNS
         FROM tasks WHERE project_id = m.project_id AND deleted_at IS NULL
         ORDER BY created_at DESC, id DESC LIMIT $2
     ) AS project_page
     WHERE m.user_id = $1)
) AS page
ORDER BY created_at DESC, id DESC
LIMIT $2
"""
# One project's page, when the caller is a member ($1 user, $2 project): no rows otherwise.
PROJECT_PAGE_SQL = """
SELECT COLUMNS,
       (SELECT coalesce(sum(n), 0) FROM task_stat_deltas
        WHERE project_id = $2 AND priority IS NOT NULL) AS total
FROM tasks
WHERE project_id = $2 AND deleted_at IS NULL
  AND EXISTS (SELECT FROM project_members WHERE user_id = $1 AND project_id = $2)
ORDER BY created_at DESC, id DESC
LIMIT $3
"""
# The column list written once (a plain replace: nothing here comes from a request).
PAGE_SQL = PAGE_SQL.replace("COLUMNS", COLUMNS)
PROJECT_PAGE_SQL = PROJECT_PAGE_SQL.replace("COLUMNS", COLUMNS)
IS_MEMBER_SQL = "SELECT EXISTS (SELECT FROM project_members WHERE user_id = $1 AND project_id = $2)"
# The change feed: the API's statements themselves, FEED compiled by the API's own CompiledQuery
# (SQLAlchemy's `:name` parameters as asyncpg's `$n`, and the order to pass them in).
HORIZON_SQL = events_repository.HORIZON
FEED_QUERY = CompiledQuery.of(events_repository.FEED)

_settings = get_settings()
SIGNING_KEY = _settings.signing_key
ISSUER = _settings.jwt_issuer
AUDIENCE = _settings.jwt_audience
POOL_SIZE = _settings.database_pool_size + _settings.database_max_overflow  # the API's maximum
# asyncpg wants a plain libpq URL; the API's is SQLAlchemy's `postgresql+asyncpg://`.
DSN = _settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
# PostgreSQL plans a prepared statement anew on every run while it estimates its generic plan
# dearer than the custom ones: for the typical user (220 tasks) the bare list's was, 0.7 ms of
# planning in each 0.9 ms statement, where the API's own statement ran its generic plan (0.27
# ms). A ceiling must not pay for work the answer does not need: scripts/bench.py sets
# `force_generic_plan` for the sizes where that is faster (measured in docs/performance.md).
PLAN_CACHE_MODE = os.environ.get("CEILING_PLAN_CACHE_MODE")
# The cursor is the API's own: same key derivation, same query fingerprint (of the default list,
# computed once here by the API's own code so that the two cannot drift apart).
CURSORS = CursorCodec(SIGNING_KEY)
DEFAULT_LIST_FINGERPRINT = TaskListParams().fingerprint
RETENTION = timedelta(days=_settings.event_retention_days)

NOT_FOUND = Response(
    orjson.dumps({"status": 404, "code": "project_not_found"}),
    status_code=404,
    media_type="application/problem+json",
)
INVALID = Response(
    orjson.dumps({"status": 422, "code": "invalid_cursor"}),
    status_code=422,
    media_type="application/problem+json",
)
CURSOR_EXPIRED = Response(
    orjson.dumps({"status": 410, "code": "cursor_expired"}),
    status_code=410,
    media_type="application/problem+json",
)
UNAUTHORIZED = Response(
    orjson.dumps({"status": 401, "code": "not_authenticated"}),
    status_code=401,
    media_type="application/problem+json",
    headers={"WWW-Authenticate": "Bearer"},
)


def user_id_from(request: Request) -> int | None:
    """The caller's id from a valid access token, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        claims = jwt.decode(
            token,
            SIGNING_KEY,
            algorithms=[JWT_ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": REQUIRED_CLAIMS},
        )
        if claims.get("type") != "access":
            return None
        return int(claims["sub"])
    except (jwt.PyJWTError, TypeError, ValueError):
        return None


def task_json(row: asyncpg.Record, today: date) -> dict[str, Any]:
    """A row in the API's field order and formats (orjson renders dates as the API does)."""
    status = row["status"]
    due_date = row["due_date"]
    return {
        "id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "status": status,
        "completed": status == "done",
        "priority": row["priority"],
        "due_date": due_date,
        "is_overdue": due_date is not None and due_date < today and status not in CLOSED_STATUSES,
        "tags": row["tags"],
        "owner_id": row["owner_id"],
        "assignee_id": row["assignee_id"],
        "project_id": row["project_id"],
        "attachment_count": row["attachment_count"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "completed_at": row["completed_at"],
        "version": row["version"],
    }


@lru_cache(maxsize=64)
def project_fingerprint(project_id: int) -> str:
    """The fingerprint the API binds a `?project_id=` list's cursor to (its own code)."""
    return TaskListParams(project_id=project_id).fingerprint


async def list_tasks(request: Request) -> Response:
    user_id = user_id_from(request)
    if user_id is None:
        return UNAUTHORIZED
    pool: asyncpg.Pool = request.app.state.pool
    project = request.query_params.get("project_id")
    if project is not None:
        try:
            project_id = int(project)
        except ValueError:
            return NOT_FOUND
        rows = await pool.fetch(PROJECT_PAGE_SQL, user_id, project_id, PAGE_SIZE + 1)
        if not rows and not await pool.fetchval(IS_MEMBER_SQL, user_id, project_id):
            return NOT_FOUND
        fingerprint = project_fingerprint(project_id)
    else:
        rows = await pool.fetch(PAGE_SQL, user_id, PAGE_SIZE + 1)
        fingerprint = DEFAULT_LIST_FINGERPRINT
    today = datetime.now(UTC).date()
    next_cursor = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        last = rows[-1]
        # Exactly what the API puts in a cursor for the default sort (-created_at, then -id).
        next_cursor = CURSORS.encode([last["created_at"].isoformat(), last["id"]], fingerprint)
    body = {
        "items": [task_json(row, today) for row in rows],
        "total": rows[0]["total"] if rows else 0,
        "limit": PAGE_SIZE,
        "offset": 0,
        "next_cursor": next_cursor,
    }
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


def feed_cursor(xid: int, event_id: int, issued: datetime) -> str:
    """A feed position as the API encodes it (taskapi.events.service: xid, event id, the age)."""
    return CURSORS.encode([xid, event_id, int(issued.timestamp())], FEED_FINGERPRINT)


def feed_position(since: str) -> tuple[int, int, int]:
    """(xid, event id, issued) of a `since` cursor; InvalidCursor as the API refuses it."""
    values = CURSORS.decode(since, FEED_FINGERPRINT)
    if len(values) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in values
    ):
        raise InvalidCursor()
    return values[0], values[1], values[2]


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    """An event as the API writes it: EventOut's fields in order, the absent (None) ones left
    out (the route's response_model_exclude_none)."""
    event = {
        "id": row["id"],
        "type": row["type"],
        "occurred_at": row["occurred_at"],
        "actor_id": row["actor_id"],
        "task_id": row["task_id"],
        "project_id": row["project_id"],
        "changes": row["changes"],
        "task": row["task"],
    }
    return {name: value for name, value in event.items() if value is not None}


async def feed(request: Request) -> Response:
    user_id = user_id_from(request)
    if user_id is None:
        return UNAUTHORIZED
    query = request.query_params
    since = query.get("since")
    try:
        limit = int(query.get("limit", DEFAULT_FEED_LIMIT))
        position = feed_position(since) if since is not None else None
    except (ValueError, InvalidCursor):
        return INVALID
    if not 1 <= limit <= MAX_FEED_LIMIT:
        return INVALID
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        horizon_row = await conn.fetchrow(HORIZON_SQL)
        horizon, now = int(horizon_row["horizon"]), horizon_row["now"]
        if position is None:
            body = {"items": [], "next_cursor": feed_cursor(horizon, 0, now), "has_more": False}
            return Response(orjson.dumps(body), media_type="application/json")
        after_xid, after_id, issued = position
        if issued < (now - RETENTION).timestamp():
            return CURSOR_EXPIRED
        arguments = {
            "user_id": user_id,
            "after_xid": after_xid,
            "after_id": after_id,
            "horizon": horizon,
            "limit": limit + 1,
        }
        rows = await conn.fetch(FEED_QUERY.sql, *FEED_QUERY.arguments(arguments))
    has_more = len(rows) > limit
    rows = rows[:limit]
    if has_more:
        last = rows[-1]
        next_cursor = feed_cursor(int(last["xid"]), last["id"], last["occurred_at"])
    else:
        next_cursor = feed_cursor(*max((after_xid, after_id), (horizon, 0)), now)
    body = {"items": [event_json(row) for row in rows], "next_cursor": next_cursor,
            "has_more": has_more}  # fmt: skip
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb as the API's SQLAlchemy dialect reads it: decoded (here by orjson)."""
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # The API's sessions run without JIT (taskapi.kit.db): so does the ceiling's.
    settings = {"jit": "off"}
    if PLAN_CACHE_MODE:
        settings["plan_cache_mode"] = PLAN_CACHE_MODE
    app.state.pool = await asyncpg.create_pool(
        DSN, min_size=1, max_size=POOL_SIZE, init=init_connection, server_settings=settings
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(
    routes=[Route("/api/v1/tasks", list_tasks), Route("/api/v1/events", feed)], lifespan=lifespan
)

if __name__ == "__main__":  # a convenience for trying it by hand; `make bench` runs uvicorn itself
    import uvicorn

    uvicorn.run(
        "ceiling:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8001")),
        loop="uvloop",
        http="httptools",
        access_log=False,
        workers=int(os.environ.get("WEB_CONCURRENCY", "1")),
    )
