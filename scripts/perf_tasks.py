"""Task queries at 1M and 5M rows: the same queries of the same two users at each size.

    .venv/bin/python scripts/perf_tasks.py [--sizes 1M,5M] [--reseed] [--rounds 30]
        [--only WORD] [--explain] [--drop]

Each size has its own database (`taskapi_perf_1m`, `taskapi_perf_5m`), seeded once by
scripts/perf_seed.py and reused by later runs until --reseed (--drop removes them after the
run). The two measured users' data is identical at every size: user1, a heavy user (10,000
personal tasks, 214 more assigned: sees 10,214), and user2, a member of 50 projects (sees
50,150); only the other 998 users' tasks grow. Each database also holds as many events as
tasks (scripts/perf_events.py), 150,000 of them each measured user's, the same at every size.

Requests go through the real application in-process (httpx over ASGITransport), so the figures
include routing, auth, validation, SQL and serialisation, but no network or HTTP parsing. A
table per size, then, with two sizes, each query's p95 side by side: PASS when the larger
size's p95 is within 20% of the smaller's and under 50 ms (issue 21: a query's cost follows
the caller's own data, not the table's).

--explain prints EXPLAIN (ANALYZE, BUFFERS) of the statements the application itself runs for
each scenario: the page statement `taskapi.tasks.queries.list_statement(shape)` for the shape
and values `taskapi.tasks.list_plan.plan_list` makes of the request's parameters, the stats
read of `taskapi.tasks.stat_counts` (GET /tasks/stats, every visible task), and the feed's and
activity's statements (scripts/perf_events.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import perf_events
import perf_seed
from perf_seed import HEAVY, MEMBER, PASSWORD, RARE_WORD, SERVER

from taskapi.app import create_app
from taskapi.kit.config import Settings
from taskapi.kit.pagination import CursorCodec
from taskapi.kit.services import services_of
from taskapi.tasks import queries, stat_counts
from taskapi.tasks.list_params import TaskListParams
from taskapi.tasks.list_plan import plan_list
from taskapi.tasks.overdue import today
from taskapi.tasks.stats_cache import STATS_CACHE

SIZES = {"1M": 1_000_000, "5M": 5_000_000}
USERS = {HEAVY: "heavy user", MEMBER: "member of 50 projects"}
RATIO_LIMIT = 1.2


Params = dict[str, Any]
# (name, path, params, explain?): every measured user on every one of them.
SCENARIOS: list[tuple[str, str, Params, bool]] = [
    ("list, first page", "/api/v1/tasks", {}, True),
    ("list, offset 5000", "/api/v1/tasks", {"offset": 5000}, False),
    ("list, cursor 5000 deep", "/api/v1/tasks", {"limit": 20, "cursor": "<deep>"}, True),
    (
        "sort -due_date, cursor 5000 deep",
        "/api/v1/tasks",
        {"sort": "-due_date", "limit": 20, "cursor": "<deep>"},
        True,
    ),
    (
        "filter status+priority",
        "/api/v1/tasks",
        {"status": "todo,in_progress", "priority": "high,urgent"},
        True,
    ),
    ("filter tags (all of 2)", "/api/v1/tasks", {"tags": "backend,bug"}, True),
    ("filter overdue", "/api/v1/tasks", {"overdue": "true"}, True),
    ("filter one project", "/api/v1/tasks", {"project_id": 7}, True),  # the member only
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
    ("search one letter d", "/api/v1/tasks", {"search": "d"}, False),
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
    statement for the plan of these parameters (taskapi.tasks.queries.list_statement), or the
    stats read (taskapi.tasks.stat_counts) for every visible task."""
    if path.endswith("/stats"):
        read = stat_counts._READS[None]  # the module's own statement for project=None
        values = {"user_id": user_id, "today": today(), "project_id": None}
        return read.sql, read.arguments(values)
    list_params = TaskListParams.model_validate({k: str(v) for k, v in params.items()})
    plan = plan_list(list_params, user_id, today(), cursors)
    page = queries.list_statement(plan.shape)
    return page.sql, page.arguments(plan.values)


@dataclass(frozen=True, slots=True)
class Timing:
    p50: float
    p95: float
    max: float
    total: Any


Results = dict[tuple[int, str], Timing]  # (user id, scenario) -> its timing


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="1M", help="comma-separated: 1M, 5M (default 1M)")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", help="only scenarios whose name contains this")
    parser.add_argument("--user", type=int, choices=sorted(USERS), help="only this user")
    parser.add_argument("--explain", action="store_true", help="print the plans (see above)")
    parser.add_argument("--drop", action="store_true", help="drop the databases at the end")
    parser.add_argument("--seed-only", action="store_true", help="seed, measure nothing")
    args = parser.parse_args()
    sizes = [size.strip().upper() for size in args.sizes.split(",")]
    results: dict[str, Results] = {}
    try:
        for size in sizes:
            database = f"taskapi_perf_{size.lower()}"
            print(f"=== {size} tasks ({database})", flush=True)
            await perf_seed.seed(database, SIZES[size], args.reseed)
            await _seed_events(database, SIZES[size])
        if not args.seed_only:
            results = await measure(args, sizes)
    finally:
        if args.drop:
            for size in sizes:
                await perf_seed.drop(f"taskapi_perf_{size.lower()}")
                print(f"dropped taskapi_perf_{size.lower()}")
    for size, timings in results.items():
        _print_table(size, timings)
    if len(results) > 1:
        _print_comparison(results)


async def _seed_events(database: str, count: int) -> None:
    conn = await asyncpg.connect(f"{SERVER}/{database}")
    try:
        measured = [
            [row["id"] for row in await conn.fetch(perf_seed.MEASURED_TASKS, user)]
            for user in USERS
        ]
        await perf_events.seed_events(conn, count, measured)
    finally:
        await conn.close()


def _print_table(size: str, timings: Results) -> None:
    print(f"\n{size} tasks: {'scenario':40} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'total':>8}")
    for (user, name), t in timings.items():
        verdict = "ok" if t.p95 < GOAL_P95_MS else "OVER"
        label = f"user{user} {name}"
        print(f"{'':10}{label:40} {t.p50:8.1f} {t.p95:8.1f} {t.max:8.1f} {t.total!s:>8}  {verdict}")


def _print_comparison(results: dict[str, Results]) -> None:
    (small, first), (large, second) = list(results.items())[:2]
    print(f"\n{'p95 ms':50} {small:>7} {large:>7} {'ratio':>6}  verdict")
    passed = 0
    for key, before in first.items():
        after = second.get(key)
        if after is None:
            continue
        ratio = after.p95 / before.p95
        ok = ratio <= RATIO_LIMIT and after.p95 < GOAL_P95_MS and before.p95 < GOAL_P95_MS
        passed += ok
        label = f"user{key[0]} {key[1]}"
        verdict = "PASS" if ok else "FAIL"
        print(f"{label:50} {before.p95:7.1f} {after.p95:7.1f} {ratio:6.2f}  {verdict}")
    print(f"{passed} of {len(first)} within {RATIO_LIMIT - 1:.0%} and under {GOAL_P95_MS:.0f} ms")


@dataclass
class Target:
    """One size's database, the application serving it, and each user's set-up there."""

    size: str
    conn: asyncpg.Connection
    app: Any
    client: httpx.AsyncClient
    cursors: CursorCodec
    headers: dict[int, dict[str, str]]
    scenarios: dict[int, dict[str, tuple[str, Params, bool]]]  # user -> name -> scenario


async def measure(args: argparse.Namespace, sizes: list[str]) -> dict[str, Results]:
    """Every scenario of every user at every size, the sizes taking turns round by round: the
    shared machine's load then weighs on each size alike, and the ratios compare like with
    like (one size after the other, a busy minute made either look slower)."""
    results: dict[str, Results] = {size: {} for size in sizes}
    plans: list[tuple[str, str, list[str], float]] = []
    async with contextlib.AsyncExitStack() as stack:
        targets = [await _target(args, size, stack) for size in sizes]
        for user in USERS:
            if args.user and user != args.user:
                continue
            for name in targets[0].scenarios[user]:
                if args.only and args.only not in name:
                    continue
                timings: dict[str, list[float]] = {t.size: [] for t in targets}
                totals: dict[str, Any] = {}
                for _ in range(args.rounds):
                    for target in targets:
                        ms, totals[target.size] = await _request(target, user, name)
                        timings[target.size].append(ms)
                line = [f"user{user} {name:32}"]
                for target in targets:
                    ordered = sorted(timings[target.size])
                    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
                    timing = Timing(
                        statistics.median(ordered), p95, ordered[-1], totals[target.size]
                    )
                    results[target.size][(user, name)] = timing
                    line.append(f"{target.size} {timing.p50:6.1f} {p95:6.1f}")
                print("  ".join(line), flush=True)
                if args.explain and targets[0].scenarios[user][name][2]:
                    for target in targets:
                        plans.append(await _plan(target, user, name))
    for name, text, findings, ms in plans:
        verdict = "; ".join(findings) or "no Seq Scan on tasks, no Sort over the visible set"
        print(f"\n--- {name}: {ms:.1f} ms in PostgreSQL; {verdict}\n{text}")
    return results


async def _target(args: argparse.Namespace, size: str, stack: contextlib.AsyncExitStack) -> Target:
    database = f"taskapi_perf_{size.lower()}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        secret_key="perf-secret-key-that-is-long-enough-0123456789",
        rate_limit_enabled=False,
        # Requests only: the periodic jobs (the due-soon scan of every task, the stats fold, the
        # event purge) belong to `taskapi worker`, and in-process they ran between the timed
        # requests.
        worker_embedded=False,
    )
    # Its EXPLAINs run as the API's statements do: without JIT (taskapi.kit.db).
    conn = await asyncpg.connect(f"{SERVER}/{database}", server_settings={"jit": "off"})
    stack.push_async_callback(conn.close)
    tasks = await conn.fetchval("SELECT count(*) FROM tasks")
    print(f"{size}: {tasks:,} tasks")
    app = create_app(settings)
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url="http://perf")
    )
    target = Target(size, conn, app, client, CursorCodec(settings.signing_key), {}, {})
    for user in USERS:
        if not args.user or user == args.user:
            await _set_up_user(target, user)
    return target


async def _set_up_user(target: Target, user: int) -> None:
    """Log in, walk a cursor 5,000 rows deep, and fill in the scenarios' parameters."""
    visible = await target.conn.fetchrow(VISIBLE_SQL, user)
    print(
        f"{target.size}: user{user} ({USERS[user]}) sees {visible['total']:,} tasks: "
        f"{visible['owned']:,} owned, {visible['assigned']:,} assigned, "
        f"{visible['projects']:,} in {visible['memberships']} projects",
        flush=True,
    )
    client = target.client
    login = {"username": f"user{user}", "password": PASSWORD}
    tokens = (await client.post("/api/v1/auth/login", json=login)).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    # A project's id: the member's only (anyone else gets 404).
    scenarios = [s for s in SCENARIOS if user == MEMBER or s[2].get("project_id") in (None, "none")]
    scenarios += await perf_events.scenarios(target.conn, target.cursors, user)
    now_cursor = (await client.get("/api/v1/events", headers=headers)).json()["next_cursor"]
    target.headers[user] = headers
    target.scenarios[user] = {}
    for name, path, template, wants_plan in scenarios:
        params = dict(template)
        if params.get("cursor") == "<deep>":
            params["cursor"] = await _deep_cursor(client, headers, params)
        if params.get("since") == "<now>":
            params["since"] = now_cursor
        target.scenarios[user][name] = (path, params, wants_plan)


async def _deep_cursor(client: httpx.AsyncClient, headers: Params, params: Params) -> str:
    """The cursor 5,000 rows into the list `params` ask for (their other parameters kept). A
    cursor is bound to limit-free parameters: walked 100 at a time, it is valid with limit=20."""
    walk = {k: v for k, v in params.items() if k not in ("cursor", "limit")} | {"limit": 100}
    cursor = None
    for _ in range(50):
        at = walk if cursor is None else walk | {"cursor": cursor}
        page = await client.get("/api/v1/tasks", params=at, headers=headers)
        cursor = page.json()["next_cursor"]
        assert cursor is not None, "the list ended before 5,000 rows"
    return str(cursor)


async def _request(target: Target, user: int, name: str) -> tuple[float, Any]:
    """One timed request of the scenario: its time in ms, and the total it answered."""
    path, template, _ = target.scenarios[user][name]
    params = dict(template)
    if params.pop("_invalidate", False):
        await services_of(target.app).get(STATS_CACHE).invalidate([user])
    started = time.perf_counter()
    response = await target.client.get(path, params=params, headers=target.headers[user])
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    body = response.json()
    return elapsed, body.get("total", len(body.get("items", ())))


async def _plan(target: Target, user: int, name: str) -> tuple[str, str, list[str], float]:
    path, template, _ = target.scenarios[user][name]
    params = {k: v for k, v in template.items() if k != "_invalidate"}
    if not path.endswith(("/events", "/activity")):
        sql, arguments = app_statement(path, params, user, target.cursors)
    else:
        horizon = await target.conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
        sql, arguments = perf_events.statement(path, params, user, target.cursors, int(horizon))
    text, findings, ms = await explain(target.conn, sql, arguments)
    return f"{target.size} user{user} {name}", text, findings, ms


VISIBLE_SQL = """
SELECT (SELECT count(*) FROM tasks WHERE project_id IS NULL AND owner_id = $1) AS owned,
       (SELECT count(*) FROM tasks
        WHERE project_id IS NULL AND assignee_id = $1 AND owner_id <> $1) AS assigned,
       (SELECT count(*) FROM tasks JOIN project_members m USING (project_id)
        WHERE m.user_id = $1) AS projects,
       (SELECT count(*) FROM project_members WHERE user_id = $1) AS memberships,
       (SELECT count(*) FROM tasks WHERE project_id IS NULL AND owner_id = $1)
       + (SELECT count(*) FROM tasks
          WHERE project_id IS NULL AND assignee_id = $1 AND owner_id <> $1)
       + (SELECT count(*) FROM tasks JOIN project_members m USING (project_id)
          WHERE m.user_id = $1) AS total
"""


if __name__ == "__main__":
    asyncio.run(main())
