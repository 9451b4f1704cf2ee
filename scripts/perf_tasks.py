"""Task queries at a million rows: seeds a database once, then times list/search/stats requests.

    .venv/bin/python scripts/perf_tasks.py [--reseed] [--database taskapi_perf] [--rounds 30]

Requests go through the real application in-process (httpx over ASGITransport), so the figures
include routing, auth, validation, SQL and serialisation, but no network or HTTP parsing.
Seeding: 1,000 users, 1,000,000 tasks; user1 owns 10,000 of them; ~20% of tasks are assigned.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
import httpx
from argon2 import PasswordHasher

from taskapi.app import create_app
from taskapi.kit.config import Settings
from taskapi.kit.services import services_of
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


async def seed(database: str, reseed: bool) -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    if exists and not reseed:
        await admin.close()
        return
    if exists:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    proc = await asyncio.create_subprocess_exec(
        ".venv/bin/alembic",
        "upgrade",
        "head",
        env={
            "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert await proc.wait() == 0
    conn = await asyncpg.connect(f"{SERVER}/{database}")
    started = time.perf_counter()
    hashed = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    await conn.execute("SET synchronous_commit = off")
    await conn.execute(SEED_USERS, hashed)
    await conn.execute(SEED_TASKS, WORDS, TAGS)
    await conn.execute("UPDATE tasks SET completed_at = updated_at WHERE status = 'done'")
    # A second tag on every seventh task, so "all of two tags" has something to find.
    await conn.execute(
        "UPDATE tasks SET tags = tags || 'bug'::varchar WHERE id % 7 = 0 AND NOT 'bug' = ANY(tags)"
    )
    await conn.execute("VACUUM ANALYZE")
    print(f"seeded in {time.perf_counter() - started:.0f} s")
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--database", default="taskapi_perf")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    await seed(args.database, args.reseed)

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{args.database}",
        secret_key="perf-secret-key-that-is-long-enough-0123456789",
        rate_limit_enabled=False,
    )
    app = create_app(settings)
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
            scenarios: list[tuple[str, str, dict[str, object]]] = [
                ("list, first page", "/api/v1/tasks", {}),
                ("list, offset 5000", "/api/v1/tasks", {"offset": 5000}),
                ("list, cursor 5000 deep", "/api/v1/tasks", {"limit": 20, "cursor": cursor}),
                (
                    "filter status+priority",
                    "/api/v1/tasks",
                    {"status": "todo,in_progress", "priority": "high,urgent"},
                ),
                ("filter tags (all of 2)", "/api/v1/tasks", {"tags": "backend,bug"}),
                ("filter overdue", "/api/v1/tasks", {"overdue": "true"}),
                ("sort due_date", "/api/v1/tasks", {"sort": "due_date"}),
                ("sort -priority,title", "/api/v1/tasks", {"sort": "-priority,title"}),
                ("search common word", "/api/v1/tasks", {"search": "postgres"}),
                ("search prefix", "/api/v1/tasks", {"search": "sql"}),
                ("search phrase", "/api/v1/tasks", {"search": '"redis cache"'}),
                ("search absent word", "/api/v1/tasks", {"search": "zyzzyva"}),
                (
                    "search + sort -created_at",
                    "/api/v1/tasks",
                    {"search": "webhook", "sort": "-created_at"},
                ),
                ("stats (cache hit)", "/api/v1/tasks/stats", {}),
                ("stats (cache miss)", "/api/v1/tasks/stats", {"_invalidate": True}),
                ("users search", "/api/v1/users", {"search": "user12"}),
            ]
            print(f"{'scenario':32} {'p50 ms':>8} {'p95 ms':>8} {'total':>8}")
            for name, path, params in scenarios:
                timings = []
                total = None
                invalidate = bool(params.pop("_invalidate", False))
                for _ in range(args.rounds):
                    if invalidate:
                        await services_of(app).get(STATS_CACHE).invalidate([1])
                    started = time.perf_counter()
                    response = await client.get(path, params=params, headers=headers)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
                    total = response.json().get("total")
                timings.sort()
                p95 = timings[int(len(timings) * 0.95) - 1]
                print(f"{name:32} {statistics.median(timings):8.1f} {p95:8.1f} {total!s:>8}")


if __name__ == "__main__":
    asyncio.run(main())
