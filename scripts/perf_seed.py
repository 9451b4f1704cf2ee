"""The databases of scripts/perf_tasks.py: one per size, the measured users' data identical in each.

Two users are measured (issue 21): user1, a heavy user with no projects (10,000 personal tasks
of their own, 214 of other people's assigned to them: sees 10,214), and user2, a member of 50
projects of 1,000 tasks each (admin of 10, editor of 30, viewer of 10), who also owns 100
personal tasks and is assigned 50 (sees 50,150). Their rows (`MEASURED`, 60,364 tasks) are
generated first with a fixed random seed, so titles, words, tags, statuses, dates and creation
times are the same at every size. Everything else grows with the size: the other 998 users' personal
tasks and the tasks of projects 51..10,000, half each, created over the same 12 days as the
measured rows and inserted in creation order together with them, so the measured users' rows are
spread through the table as they would be (one in ~16 rows at 1M, one in ~80 at 5M), not
packed at its start.

The indexes of `tasks` are dropped for the load and built again after it (5M rows load in a
third of the time), from their own definitions as the migrations made them.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from argon2 import PasswordHasher

SERVER = "postgresql://postgres@127.0.0.1:5432"
PASSWORD = "perf-password"
HEAVY, MEMBER = 1, 2  # the measured users
OTHERS = "3 + floor(random() * 998)::int"  # a random other user: 3..1000
WORDS = (  # noqa: SIM905
    "alpha api async backend billing bug build cache cafe calendar client cloud cluster config "
    "customer dashboard data database debug deploy design docs email error export feature fix "
    "frontend gateway graph import index invoice kafka kubernetes latency layout login logging "
    "meeting metrics migration mobile monitor network notify oauth onboarding payment pipeline "
    "planning postgres profile python query queue redis refactor release report review roadmap "
    "search security server session sprint sqlalchemy storage support sync test ticket token "
    "upgrade upload user vendor webhook widget worker"
).split()
TAGS = "backend frontend urgent docs ops bug feature research design infra".split()  # noqa: SIM905
# A rare word (in 1 task of 4,999; every seeded word is in ~6% of tasks).
RARE_WORD = "zeppelin"
SPAN_SECONDS = 1_000_000  # creation times: the last ~12 days, measured rows and others alike

SEED_USERS = """
INSERT INTO users (username, email, password_hash)
SELECT 'user' || g, 'user' || g || '@example.com', $1 FROM generate_series(1, 1000) g
"""

# Projects 1..10,000; member k (0..4) of project p is user 3 + (7p + 131k) % 998 (five distinct
# users, never a measured one), k = 0 its creator and admin, k = 1 an editor, the rest viewers.
# user2 joins projects 1..50 too: admin of 1..10, editor of 11..40, viewer of 41..50.
MEMBER_PROJECTS = 50
PROJECTS = 10_000
PROJECT_MEMBER = "3 + ((7 * {p} + 131 * {k}) % 998)"
SEED_PROJECTS = f"""
INSERT INTO projects (id, owner_id, name, description, created_at, updated_at)
SELECT p, {PROJECT_MEMBER.format(p="p", k=0)}, 'Project ' || p, 'Seeded by scripts/perf_seed.py',
       now() - interval '30 days', now() - interval '30 days'
FROM generate_series(1, {PROJECTS}) p
"""  # noqa: S608
SEED_MEMBERS = f"""
INSERT INTO project_members (project_id, user_id, role)
SELECT p, {PROJECT_MEMBER.format(p="p", k="k")},
       (CASE k WHEN 0 THEN 'admin' WHEN 1 THEN 'editor' ELSE 'viewer' END)::project_role
FROM generate_series(1, {PROJECTS}) p, generate_series(0, 4) k
UNION ALL
SELECT p, {MEMBER},
       (CASE WHEN p <= 10 THEN 'admin' WHEN p <= 40 THEN 'editor' ELSE 'viewer' END)::project_role
FROM generate_series(1, {MEMBER_PROJECTS}) p
"""  # noqa: S608
# Kept by the code in the transaction of each membership change; here set once from the rows.
SEED_MEMBER_COUNTS = """
UPDATE projects SET member_count = m.n
FROM (SELECT project_id, count(*) AS n FROM project_members GROUP BY project_id) m
WHERE m.project_id = projects.id
"""

# One task's generated columns from (owner, assignee, project, created, n): n numbers the rows of
# one kind, for the rare word (1 in 4,999) and a second tag `bug` (1 in 7).
TASK_COLUMNS = """
SELECT owner, assignee, project,
       initcap(w[1 + floor(random() * nw)::int] || ' ' || w[1 + floor(random() * nw)::int] || ' '
               || w[1 + floor(random() * nw)::int]) AS title,
       nullif(concat_ws(' ',
         CASE WHEN random() < 0.6 THEN
           w[1 + floor(random() * nw)::int] || ' ' || w[1 + floor(random() * nw)::int] || ' then '
           || w[1 + floor(random() * nw)::int] || ' and ' || w[1 + floor(random() * nw)::int] END,
         CASE WHEN n % 4999 = 0 THEN '{rare}' END), '') AS description,
       st AS status,
       (ARRAY['low','medium','high','urgent'])[1 + floor(random() * 4)::int]::task_priority
         AS priority,
       CASE WHEN random() < 0.7 THEN current_date + (floor(random() * 120)::int - 60) END
         AS due_date,
       (CASE WHEN random() < 0.8 THEN ARRAY[t[1 + floor(random() * 10)::int]]::varchar[]
             ELSE '{{}}'::varchar[] END) AS tags0,
       n % 7 = 0 AS second_tag,
       created, CASE WHEN st = 'done' THEN created END AS completed_at
FROM ({rows}) r,
LATERAL (SELECT (ARRAY['todo','in_progress','done','cancelled'])[1 + floor(random() * 4)::int]
                ::task_status AS st) s,
LATERAL (SELECT $1::text[] AS w, array_length($1::text[], 1) AS nw, $2::text[] AS t) c
"""
# (owner, assignee, project, created, n) of each kind of row; `{count}` sizes the grown kinds.
_SOME_MEMBER = PROJECT_MEMBER.format(p="p", k="floor(random() * 5)::int")
_CREATED = f"now() - (random() * {SPAN_SECONDS} || ' seconds')::interval"
MEASURED_ROWS = {
    "heavy's own": f"""SELECT {HEAVY} AS owner,
        CASE WHEN random() < 0.2 THEN {OTHERS} END AS assignee, NULL::bigint AS project,
        {_CREATED} AS created, g AS n FROM generate_series(1, 10000) g""",  # noqa: S608
    "assigned to heavy": f"""SELECT {OTHERS}, {HEAVY}, NULL::bigint, {_CREATED}, g
        FROM generate_series(1, 214) g""",  # noqa: S608
    "member's own": f"""SELECT {MEMBER}, CASE WHEN random() < 0.2 THEN {OTHERS} END,
        NULL::bigint, {_CREATED}, g FROM generate_series(1, 100) g""",  # noqa: S608
    "assigned to member": f"""SELECT {OTHERS}, {MEMBER}, NULL::bigint, {_CREATED}, g
        FROM generate_series(1, 50) g""",  # noqa: S608
    "member's projects": f"""SELECT {_SOME_MEMBER},
        CASE WHEN random() < 0.3 THEN {_SOME_MEMBER}
        END, p, {_CREATED}, g
        FROM (SELECT g, 1 + g % {MEMBER_PROJECTS} AS p
              FROM generate_series(1, {MEMBER_PROJECTS * 1000}) g) x""",  # noqa: S608
}
MEASURED = 10000 + 214 + 100 + 50 + MEMBER_PROJECTS * 1000
GROWN_ROWS = {
    "others' own": f"""SELECT {OTHERS} AS owner,
        CASE WHEN random() < 0.2 THEN {OTHERS} END AS assignee, NULL::bigint AS project,
        {_CREATED} AS created, g AS n FROM generate_series(1, {{count}}) g""",  # noqa: S608
    "others' projects": f"""SELECT {_SOME_MEMBER},
        CASE WHEN random() < 0.3 THEN {_SOME_MEMBER}
        END, p, {_CREATED}, g
        FROM (SELECT g, {MEMBER_PROJECTS + 1} + g % {PROJECTS - MEMBER_PROJECTS} AS p
              FROM generate_series(1, {{count}}) g) x""",  # noqa: S608
}
INSERT_TASKS = """
INSERT INTO tasks (owner_id, assignee_id, project_id, title, description, status, priority,
                   due_date, tags, created_at, updated_at, completed_at)
SELECT owner, assignee, project, title, description, status, priority, due_date,
       CASE WHEN second_tag AND NOT 'bug' = ANY(tags0) THEN tags0 || 'bug'::varchar ELSE tags0 END,
       created, created, completed_at
FROM seeded ORDER BY created
"""


async def seed(database: str, tasks: int, reseed: bool) -> None:
    """Create and fill `database` with `tasks` tasks unless it exists (or `reseed`). Filled under
    another name and renamed at the end, so an interrupted seed is never taken for a finished
    one."""
    building = f"{database}_seeding"
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
    if exists and not reseed:
        await admin.close()
        await _migrate(database)  # a database seeded before a new migration gets it
        return
    for name in (database, building):
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{building}"')
    await admin.close()
    await _migrate(building)
    await _fill(building, tasks)
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{database}"')
    await admin.close()


async def _migrate(database: str) -> None:
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


async def drop(database: str) -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()


def _rows(kinds: dict[str, str], count: int = 0) -> str:
    query = " UNION ALL ".join(f"({rows.format(count=count)})" for rows in kinds.values())
    return TASK_COLUMNS.format(rare=RARE_WORD, rows=query)


async def _fill(database: str, tasks: int) -> None:
    conn = await asyncpg.connect(f"{SERVER}/{database}")
    started = time.perf_counter()

    def step(what: str) -> None:
        print(f"  {what}: {time.perf_counter() - started:.0f} s", flush=True)

    hashed = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    for setting in ("synchronous_commit = off", "work_mem = '1GB'", "maintenance_work_mem = '2GB'"):
        await conn.execute(f"SET {setting}")
    await conn.execute(SEED_USERS, hashed)
    await conn.execute(SEED_PROJECTS)
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('projects', 'id'), (SELECT max(id) FROM projects))"
    )
    await conn.execute(SEED_MEMBERS)
    await conn.execute(SEED_MEMBER_COUNTS)
    # The measured rows: the same random sequence at every size (one process, one statement).
    await conn.execute("SELECT setseed(0.21)")
    await conn.execute(f"CREATE TEMP TABLE seeded AS {_rows(MEASURED_ROWS)}", WORDS, TAGS)
    await conn.execute("SELECT setseed(0.42)")
    grown = (tasks - MEASURED) // 2
    await conn.execute(f"INSERT INTO seeded {_rows(GROWN_ROWS, grown)}", WORDS, TAGS)
    step(f"{MEASURED:,} measured and {2 * grown:,} other tasks generated")
    definitions = [
        row["indexdef"]
        for row in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'tasks' AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = 'tasks'::regclass)"
        )
    ]
    names = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks' AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = 'tasks'::regclass)"
    )
    for row in names:
        await conn.execute(f'DROP INDEX "{row["indexname"]}"')
    await conn.execute(INSERT_TASKS)
    await conn.execute("DROP TABLE seeded")
    step("tasks inserted")
    for definition in definitions:
        await conn.execute(definition)
    step(f"{len(definitions)} indexes built")
    await conn.execute("VACUUM ANALYZE")
    step("vacuumed")
    await conn.close()


MEASURED_TASKS = """
SELECT id FROM tasks
WHERE deleted_at IS NULL AND (
    (project_id IS NULL AND (owner_id = $1 OR assignee_id = $1))
    OR project_id IN (SELECT project_id FROM project_members WHERE user_id = $1))
ORDER BY id
"""
