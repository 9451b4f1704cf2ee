"""Task queries at two million rows: seeds a database once, then times list/search/stats requests.

    .venv/bin/python scripts/perf_tasks.py [--reseed] [--database taskapi_perf] [--rounds 30]
        [--only WORD] [--explain] [--drop]

Requests go through the real application in-process (httpx over ASGITransport), so the figures
include routing, auth, validation, SQL and serialisation, but no network or HTTP parsing.
Seeding (once, into its own database, reused by later runs until --reseed; --drop removes it
after the run): 1,000 users; 1,000,000 personal tasks, of which user1 owns 10,000 and ~20% are
assigned; 10,000 projects with 5 members each (roles mixed) holding 1,000,000 more tasks. user1
is a member of projects 1..50 (1,000 tasks each); the other 9,950 share the rest (~95 each).
So user1, the one measured, sees ~60,000 tasks: 10,000 owned, ~200 assigned, 50,000 in projects.

--explain prints EXPLAIN (ANALYZE, BUFFERS) of the statements the application itself runs for
each scenario: the page statement `taskapi.tasks.queries.list_statements(shape)` for the shape
and values `taskapi.tasks.list_plan.plan_list` makes of the request's parameters, and the stats
read of `taskapi.tasks.stat_counts` (GET /tasks/stats, every visible task).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
import httpx
import perf_events
from argon2 import PasswordHasher

from taskapi.app import create_app
from taskapi.kit.config import Settings
from taskapi.kit.pagination import CursorCodec
from taskapi.kit.services import services_of
from taskapi.tasks import queries, stat_counts
from taskapi.tasks.list_params import TaskListParams
from taskapi.tasks.list_plan import plan_list
from taskapi.tasks.overdue import today
from taskapi.tasks.stats_cache import STATS_CACHE

SERVER = "postgresql://postgres@127.0.0.1:5432"
PASSWORD = "perf-password"
WORDS = (  # noqa: SIM905
    "alpha api async backend billing bug build cache cafe calendar client cloud cluster config "
    "customer dashboard data database debug deploy design docs email error export feature fix "
    "frontend gateway graph import index invoice kafka kubernetes latency layout login logging "
    "meeting metrics migration mobile monitor network notify oauth onboarding payment pipeline "
    "planning postgres profile python query queue redis refactor release report review roadmap "
    "search security server session sprint sqlalchemy storage support sync test ticket token "
    "upgrade upload user vendor webhook widget worker"
).split()
TAGS = [
    "backend",
    "frontend",
    "urgent",
    "docs",
    "ops",
    "bug",
    "feature",
    "research",
    "design",
    "infra",
]

SEED_USERS = """
INSERT INTO users (username, email, password_hash)
SELECT 'user' || g, 'user' || g || '@example.com', $1 FROM generate_series(1, 1000) g
"""

SEED_TASKS = """
INSERT INTO tasks (owner_id, assignee_id, title, description, status, priority, due_date, tags,
                   created_at, updated_at)
SELECT owner,
       CASE WHEN random() < 0.2 THEN 1 + floor(random() * 1000)::int END,
       initcap(w[1 + floor(random() * n)::int] || ' ' || w[1 + floor(random() * n)::int] || ' '
               || w[1 + floor(random() * n)::int]),
       CASE WHEN random() < 0.6 THEN
         w[1 + floor(random() * n)::int] || ' ' || w[1 + floor(random() * n)::int] || ' then '
         || w[1 + floor(random() * n)::int] || ' and ' || w[1 + floor(random() * n)::int] END,
       (ARRAY['todo','in_progress','done','cancelled'])[1 + floor(random() * 4)::int]::task_status,
       (ARRAY['low','medium','high','urgent'])[1 + floor(random() * 4)::int]::task_priority,
       CASE WHEN random() < 0.7 THEN current_date + (floor(random() * 120)::int - 60) END,
       CASE WHEN random() < 0.8 THEN
         ARRAY[t[1 + floor(random() * 10)::int]]::varchar[] ELSE '{}'::varchar[] END,
       created, created
FROM (
  SELECT CASE WHEN g <= 10000 THEN 1 ELSE 2 + (g % 999) END AS owner,
         now() - (g || ' seconds')::interval AS created
  FROM generate_series(1, 1000000) g
) s,
LATERAL (SELECT $1::text[] AS w, array_length($1::text[], 1) AS n, $2::text[] AS t) c
"""

# Projects 1..10,000; member k (0..4) of project p is user 2 + (7p + 131k) % 999 (five distinct
# users other than user1), k = 0 its creator and admin, k = 1 an editor, the rest viewers.
# user1 joins projects 1..50 too: admin of 1..10, editor of 11..40, viewer of 41..50.
MEMBER_PROJECTS = 50
PROJECTS = 10_000
MEMBER = "2 + ((7 * {p} + 131 * {k}) % 999)"
SEED_PROJECTS = f"""
INSERT INTO projects (id, owner_id, name, description, created_at, updated_at)
SELECT p, {MEMBER.format(p="p", k=0)}, 'Project ' || p, 'Seeded by scripts/perf_tasks.py',
       now() - interval '30 days', now() - interval '30 days'
FROM generate_series(1, {PROJECTS}) p
"""  # noqa: S608 - constants only
SEED_MEMBERS = f"""
INSERT INTO project_members (project_id, user_id, role)
SELECT p, {MEMBER.format(p="p", k="k")},
       (CASE k WHEN 0 THEN 'admin' WHEN 1 THEN 'editor' ELSE 'viewer' END)::project_role
FROM generate_series(1, {PROJECTS}) p, generate_series(0, 4) k
UNION ALL
SELECT p, 1, (CASE WHEN p <= 10 THEN 'admin' WHEN p <= 40 THEN 'editor' ELSE 'viewer' END)
             ::project_role
FROM generate_series(1, {MEMBER_PROJECTS}) p
"""  # noqa: S608 - constants only
# Kept by the code in the transaction of each membership change; here set once from the rows.
SEED_MEMBER_COUNTS = """
UPDATE projects SET member_count = m.n
FROM (SELECT project_id, count(*) AS n FROM project_members GROUP BY project_id) m
WHERE m.project_id = projects.id
"""
# 1,000,000 project tasks: 1,000 in each of user1's 50 projects, ~95 in each other one. Owners and
# assignees (30%) are members of the task's project; creation times interleave with the
# personal tasks' (the last ~12 days).
SEED_PROJECT_TASKS = f"""
INSERT INTO tasks (owner_id, assignee_id, project_id, title, description, status, priority,
                   due_date, tags, created_at, updated_at)
SELECT {MEMBER.format(p="project", k="floor(random() * 5)::int")},
       CASE WHEN random() < 0.3 THEN {MEMBER.format(p="project", k="floor(random() * 5)::int")}
       END,
       project,
       initcap(w[1 + floor(random() * n)::int] || ' ' || w[1 + floor(random() * n)::int] || ' '
               || w[1 + floor(random() * n)::int]),
       CASE WHEN random() < 0.6 THEN
         w[1 + floor(random() * n)::int] || ' ' || w[1 + floor(random() * n)::int] || ' then '
         || w[1 + floor(random() * n)::int] || ' and ' || w[1 + floor(random() * n)::int] END,
       (ARRAY['todo','in_progress','done','cancelled'])[1 + floor(random() * 4)::int]::task_status,
       (ARRAY['low','medium','high','urgent'])[1 + floor(random() * 4)::int]::task_priority,
       CASE WHEN random() < 0.7 THEN current_date + (floor(random() * 120)::int - 60) END,
       CASE WHEN random() < 0.8 THEN
         ARRAY[t[1 + floor(random() * 10)::int]]::varchar[] ELSE '{{}}'::varchar[] END,
       created, created
FROM (
  SELECT CASE WHEN g <= {MEMBER_PROJECTS * 1000} THEN 1 + g % {MEMBER_PROJECTS}
              ELSE {MEMBER_PROJECTS + 1} + g % {PROJECTS - MEMBER_PROJECTS} END AS project,
         now() - (random() * 1000000 || ' seconds')::interval AS created
  FROM generate_series(1, 1000000) g
) s,
LATERAL (SELECT $1::text[] AS w, array_length($1::text[], 1) AS n, $2::text[] AS t) c
"""  # noqa: S608 - constants only


async def seed(database: str, reseed: bool) -> None:
    """Create and fill `database` unless it exists (or `reseed`). Filled under another name and
    renamed at the end, so an interrupted seed is never taken for a finished one."""
    building = f"{database}_seeding"
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    if exists and not reseed:
        await admin.close()
        return
    for name in (database, building):
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{building}"')
    await admin.close()
    proc = await asyncio.create_subprocess_exec(
        ".venv/bin/alembic",
        "upgrade",
        "head",
        env={
            "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{building}",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert await proc.wait() == 0
    await _fill(building)
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{database}"')
    await admin.close()


async def drop(database: str) -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()


# A rare word (in 1 task of 5,000; every seeded word is in ~6% of tasks): user1 sees ~12 of them.
RARE_WORD = "zeppelin"
RARE_WORD_SQL = f"""
UPDATE tasks SET description = coalesce(description || ' ', '') || '{RARE_WORD}'
WHERE id % 4999 = 0
"""  # noqa: S608 - constants only


async def _fill(database: str) -> None:
    conn = await asyncpg.connect(f"{SERVER}/{database}")
    started = time.perf_counter()
    hashed = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(SEED_USERS, hashed)
    await conn.execute(SEED_TASKS, WORDS, TAGS)
    print(f"personal tasks in {time.perf_counter() - started:.0f} s", flush=True)
    await conn.execute(SEED_PROJECTS)
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('projects', 'id'), (SELECT max(id) FROM projects))"
    )
    await conn.execute(SEED_MEMBERS)
    await conn.execute(SEED_MEMBER_COUNTS)
    await conn.execute(SEED_PROJECT_TASKS, WORDS, TAGS)
    print(f"project tasks in {time.perf_counter() - started:.0f} s", flush=True)
    await conn.execute("UPDATE tasks SET completed_at = updated_at WHERE status = 'done'")
    # A second tag on every seventh task, so "all of two tags" has something to find.
    await conn.execute(
        "UPDATE tasks SET tags = tags || 'bug'::varchar WHERE id % 7 = 0 AND NOT 'bug' = ANY(tags)"
    )
    await conn.execute(RARE_WORD_SQL)
    await conn.execute("VACUUM ANALYZE")
    print(f"seeded in {time.perf_counter() - started:.0f} s")
    await conn.close()


Params = dict[str, Any]
# (name, path, params, explain?): the member of 50 projects (user1) on every one of them.
SCENARIOS: list[tuple[str, str, Params, bool]] = [
    ("list, first page", "/api/v1/tasks", {}, True),
    ("list, offset 5000", "/api/v1/tasks", {"offset": 5000}, False),
    ("list, cursor 5000 deep", "/api/v1/tasks", {"limit": 20, "cursor": "<deep>"}, True),
    (
        "filter status+priority",
        "/api/v1/tasks",
        {"status": "todo,in_progress", "priority": "high,urgent"},
        True,
    ),
    ("filter tags (all of 2)", "/api/v1/tasks", {"tags": "backend,bug"}, True),
    ("filter overdue", "/api/v1/tasks", {"overdue": "true"}, False),
    ("filter one project", "/api/v1/tasks", {"project_id": 7}, True),
    ("filter project_id=none", "/api/v1/tasks", {"project_id": "none"}, False),
    ("sort due_date", "/api/v1/tasks", {"sort": "due_date"}, True),
    ("sort -due_date", "/api/v1/tasks", {"sort": "-due_date"}, True),
    ("sort priority", "/api/v1/tasks", {"sort": "priority"}, False),
    ("sort -priority,title", "/api/v1/tasks", {"sort": "-priority,title"}, True),
    ("sort title", "/api/v1/tasks", {"sort": "title"}, False),
    ("search common word", "/api/v1/tasks", {"search": "postgres"}, True),
    ("search prefix", "/api/v1/tasks", {"search": "sql"}, False),
    ("search rare word", "/api/v1/tasks", {"search": RARE_WORD}, True),
    ("search phrase", "/api/v1/tasks", {"search": '"redis cache"'}, False),
    ("search absent word", "/api/v1/tasks", {"search": "zyzzyva"}, False),
    ("search, sort -created", "/api/v1/tasks", {"search": "webhook", "sort": "-created_at"}, False),
    ("search two words", "/api/v1/tasks", {"search": "postgres cache"}, False),
    ("search one letter", "/api/v1/tasks", {"search": "p"}, True),
    ("search + tags", "/api/v1/tasks", {"search": "redis", "tags": "backend"}, False),
    ("stats (cache hit)", "/api/v1/tasks/stats", {}, False),
    ("stats (cache miss)", "/api/v1/tasks/stats", {"_invalidate": True}, True),
    ("stats 1 project (miss)", "/api/v1/tasks/stats", {"project_id": 7, "_invalidate": 1}, False),
    ("users search", "/api/v1/users", {"search": "user12"}, False),
]  # fmt: skip
GOAL_P95_MS = 50.0
# A Sort node over more rows than this sorts (part of) the whole visible set, not a page's reach.
BIG_SORT_ROWS = 5000


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _walk(child)


def plan_findings(plan: dict[str, Any]) -> list[str]:
    """Sequential scans of tasks, and sorts of more than BIG_SORT_ROWS rows (per loop)."""
    found = []
    for node in _walk(plan["Plan"]):
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "tasks":
            found.append(f"Seq Scan on tasks ({node.get('Actual Rows', 0):,} rows)")
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            child_rows = node["Plans"][0].get("Actual Rows", 0) if node.get("Plans") else 0
            if child_rows > BIG_SORT_ROWS:
                found.append(f"{node['Node Type']} of {child_rows:,} rows")
    return found


async def explain(
    conn: asyncpg.Connection, sql: str, arguments: Sequence[Any]
) -> tuple[str, list[str], float]:
    """The statement's EXPLAIN ANALYZE text, its findings, and its execution time in ms."""
    (row,) = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *arguments)
    document = row[0]
    plan = (json.loads(document) if isinstance(document, str) else document)[0]
    text_rows = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", *arguments)
    return (
        "\n".join(r[0] for r in text_rows),
        plan_findings(plan),
        float(plan["Execution Time"]),
    )


def app_statement(
    path: str, params: Params, user_id: int, cursors: CursorCodec
) -> tuple[str, list[Any]]:
    """The SQL the application runs for this request, and its arguments: the list's page
    statement for the plan of these parameters (taskapi.tasks.queries.list_statements), or the
    stats read (taskapi.tasks.stat_counts) for every visible task."""
    if path.endswith("/stats"):
        read = stat_counts._READS[None]  # the module's own statement for project=None
        values = {"user_id": user_id, "today": today(), "project_id": None}
        return read.sql, read.arguments(values)
    list_params = TaskListParams.model_validate({k: str(v) for k, v in params.items()})
    plan = plan_list(list_params, user_id, today(), cursors)
    page = queries.list_statements(plan.shape).page
    return page.sql, page.arguments(plan.values)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--database", default="taskapi_perf")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", help="only scenarios whose name contains this")
    parser.add_argument("--explain", action="store_true", help="print the plans (see above)")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the log (scripts/perf_events.py)"
    )
    args = parser.parse_args()
    await seed(args.database, args.reseed)
    if args.events:
        conn = await asyncpg.connect(f"{SERVER}/{args.database}")
        try:
            await perf_events.seed_events(conn, args.events)
        finally:
            await conn.close()
    try:
        await measure(args)
    finally:
        if args.drop:
            await drop(args.database)
            print(f"dropped {args.database}")


async def measure(args: argparse.Namespace) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{args.database}",
        secret_key="perf-secret-key-that-is-long-enough-0123456789",
        rate_limit_enabled=False,
        # Requests only: the periodic jobs (the due-soon scan of two million tasks, the stats
        # fold, the event purge) belong to `taskapi worker`, and in-process they ran between
        # the timed requests.
        worker_embedded=False,
    )
    conn = await asyncpg.connect(f"{SERVER}/{args.database}")
    visible = await conn.fetchrow(VISIBLE_SQL)
    print(
        f"user1 sees {visible['total']:,} tasks: {visible['owned']:,} owned, "
        f"{visible['assigned']:,} assigned, {visible['projects']:,} in "
        f"{visible['memberships']} projects"
    )
    app = create_app(settings)
    cursors = CursorCodec(settings.signing_key)
    plans: list[tuple[str, str, list[str], float]] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://perf") as client:
            tokens = (
                await client.post(
                    "/api/v1/auth/login", json={"username": "user1", "password": PASSWORD}
                )
            ).json()
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            page = (
                await client.get("/api/v1/tasks", params={"limit": 100}, headers=headers)
            ).json()
            cursor = page["next_cursor"]
            for _ in range(49):  # 5,000 rows deep
                cursor = (
                    await client.get(
                        "/api/v1/tasks", params={"limit": 100, "cursor": cursor}, headers=headers
                    )
                ).json()["next_cursor"]
            # The cursor above is bound to limit-free parameters: valid with limit=20 too.
            scenarios = list(SCENARIOS)
            if args.events:
                scenarios += await perf_events.scenarios(conn, cursors)
                now = await client.get("/api/v1/events", headers=headers)
                now_cursor = now.json()["next_cursor"]
            print(f"{'scenario':32} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'total':>8}  goal")
            for name, path, template, wants_plan in scenarios:
                if args.only and args.only not in name:
                    continue
                params = dict(template)
                if params.get("cursor") == "<deep>":
                    params["cursor"] = cursor
                if params.get("since") == "<now>":
                    params["since"] = now_cursor
                invalidate = bool(params.pop("_invalidate", False))
                timings = []
                total = None
                for _ in range(args.rounds):
                    if invalidate:
                        await services_of(app).get(STATS_CACHE).invalidate([1])
                    started = time.perf_counter()
                    response = await client.get(path, params=params, headers=headers)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
                    body = response.json()
                    total = body.get("total", len(body.get("items", ())))
                timings.sort()
                p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
                verdict = "ok" if p95 < GOAL_P95_MS else "OVER"
                print(
                    f"{name:32} {statistics.median(timings):8.1f} {p95:8.1f} "
                    f"{timings[-1]:8.1f} {total!s:>8}  {verdict}",
                    flush=True,
                )
                if wants_plan and args.explain:
                    if not path.endswith(("/events", "/activity")):
                        sql, arguments = app_statement(path, params, 1, cursors)
                    else:
                        horizon = await conn.fetchval(
                            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"
                        )
                        sql, arguments = perf_events.statement(
                            path, params, 1, cursors, int(horizon)
                        )
                    text, findings, ms = await explain(conn, sql, arguments)
                    plans.append((name, text, findings, ms))
    await conn.close()
    for name, text, findings, ms in plans:
        verdict = "; ".join(findings) or "no Seq Scan on tasks, no Sort over the visible set"
        print(f"\n--- {name}: {ms:.1f} ms in PostgreSQL; {verdict}\n{text}")


VISIBLE_SQL = """
SELECT (SELECT count(*) FROM tasks WHERE project_id IS NULL AND owner_id = 1) AS owned,
       (SELECT count(*) FROM tasks
        WHERE project_id IS NULL AND assignee_id = 1 AND owner_id <> 1) AS assigned,
       (SELECT count(*) FROM tasks JOIN project_members m USING (project_id)
        WHERE m.user_id = 1) AS projects,
       (SELECT count(*) FROM project_members WHERE user_id = 1) AS memberships,
       (SELECT count(*) FROM tasks WHERE project_id IS NULL AND owner_id = 1)
       + (SELECT count(*) FROM tasks
          WHERE project_id IS NULL AND assignee_id = 1 AND owner_id <> 1)
       + (SELECT count(*) FROM tasks JOIN project_members m USING (project_id)
          WHERE m.user_id = 1) AS total
"""


if __name__ == "__main__":
    asyncio.run(main())
