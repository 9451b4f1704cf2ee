"""The benchmark's yardstick: the least a Python server can do to answer GET /api/v1/tasks.

    .venv/bin/python -m uvicorn ceiling:app --app-dir scripts/bench --loop uvloop --http httptools \
        --no-access-log --workers N          # with the same environment as `taskapi serve`

Starlette + asyncpg + orjson: no ORM, no validation, no middleware, no rate limit, no user lookup.
It checks the bearer token exactly as the API does (PyJWT, HS256, the same key, audience, issuer
and required claims, `type` = access) and answers the first page of the caller's list with the
same body as the API (`make bench` compares the two before measuring): the 20 most recently
created tasks the caller sees, newest first with ties broken by id, the visible `total`, `limit`,
`offset` and a `next_cursor` signed the way the API signs it. It answers two requests:

* `GET /api/v1/tasks`: every visible task. The SQL is the best we know for that result, in one
  round trip: the personal tasks the caller owns, the personal tasks they are assigned, and the
  tasks of each project they are a member of, each read in list order from its own index and cut
  at the page (a LATERAL read per project: `project_id IN (...)` would read and sort every task
  of every project), merged; the total counted from the same indexes.
* `GET /api/v1/tasks?project_id=<id>`: one project's tasks, for a member (404 otherwise): one
  index scan in list order, its count, and the membership as a one-time filter.

So a ratio to this app measures everything the API adds, its choice of queries included. It is
not part of the service, and it answers nothing but those requests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import asyncpg
import jwt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskapi.kit.config import get_settings
from taskapi.kit.pagination import CursorCodec
from taskapi.tasks.list_params import TaskListParams

PAGE_SIZE = 20
JWT_ALGORITHM = "HS256"  # pinned, as in taskapi.kit.security
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "iss", "aud", "type", "sid"]
CLOSED_STATUSES = frozenset({"done", "cancelled"})

# The page (one row more than shown, to know whether a next page exists) and the visible total.
# Live personal tasks (`project_id IS NULL AND deleted_at IS NULL`, the partial indexes'
# predicate): `owner_id <> $1` on the assignee side keeps a self-assigned task from appearing
# twice. Project tasks: per membership, the project's first rows in order. The totals are
# uncorrelated subqueries, computed once; an empty first page means a total of 0.
COLUMNS = """id, title, description, status, priority, due_date, tags, owner_id, assignee_id,
            project_id, attachment_count, created_at, updated_at, completed_at, version"""
PAGE_SQL = """
SELECT page.*,
       (SELECT count(*) FROM tasks
        WHERE owner_id = $1 AND project_id IS NULL AND deleted_at IS NULL)
       + (SELECT count(*) FROM tasks
          WHERE assignee_id = $1 AND owner_id <> $1 AND project_id IS NULL AND deleted_at IS NULL)
       + (SELECT count(*) FROM project_members AS m JOIN tasks AS t ON t.project_id = m.project_id
          WHERE m.user_id = $1 AND t.deleted_at IS NULL) AS total
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
SELECT COLUMNS, (SELECT count(*) FROM tasks WHERE project_id = $2 AND deleted_at IS NULL) AS total
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

_settings = get_settings()
SIGNING_KEY = _settings.signing_key
ISSUER = _settings.jwt_issuer
AUDIENCE = _settings.jwt_audience
POOL_SIZE = _settings.database_pool_size + _settings.database_max_overflow  # the API's maximum
# asyncpg wants a plain libpq URL; the API's is SQLAlchemy's `postgresql+asyncpg://`.
DSN = _settings.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
# The cursor is the API's own: same key derivation, same query fingerprint (of the default list,
# computed once here by the API's own code so that the two cannot drift apart).
CURSORS = CursorCodec(SIGNING_KEY)
DEFAULT_LIST_FINGERPRINT = TaskListParams().fingerprint

NOT_FOUND = Response(
    orjson.dumps({"status": 404, "code": "project_not_found"}),
    status_code=404,
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


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(DSN, min_size=1, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(routes=[Route("/api/v1/tasks", list_tasks)], lifespan=lifespan)

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
