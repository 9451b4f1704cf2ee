"""`make bench`: throughput and latency of a real `taskapi serve`, next to a bare ceiling.

    make bench [BENCH_ARGS="--markdown reports/bench.md"]
    .venv/bin/python scripts/bench.py [--workers 1,2] [--duration 6] [--warmup 2]
        [--connections 32] [--storm-logins 32] [--storm-list 8] [--quick] [--markdown FILE] [--keep]

Once per worker count (default 1, then 2), and within it once per size (default the typical
user, then the heavy one; `--sizes`):

1. A fresh database. A template is migrated and seeded once per run with SQL (1,000 users sharing
   one password, hashed once by the API's own PasswordHashing; the user `bench` owns 10,000 tasks
   and is assigned 500 more; every other user owns 20; `bench_projects` has a copy of `bench`'s
   tasks and is a member of 3 projects, one of 5,000 tasks shared by 20 users; the typical user
   `bench_typical` owns a copy of 200 of `bench`'s tasks and is assigned 20 of other users';
   `bench_typical_projects` has a copy of those and is a member of 3 projects of 200, 200 and 100
   tasks; 20,000 events in 1,000 transactions, every fourth about one of 1,000 of `bench`'s
   tasks), then vacuumed and analysed. Each worker count and size gets its own clone of it, its
   own storage directory and its own Redis key prefix.
2. `taskapi serve --workers N` from the working tree, configured as in production (JSON access
   log, into a log file), rate limits on with buckets no run can empty; beside it the bare
   ceiling app (scripts/bench/ceiling.py: Starlette + asyncpg + orjson) and, for one scenario,
   a second API server with STATS_CACHE_TTL_SECONDS=0 for the stats cache miss.
3. Every scenario is checked with one request first (the expected success status; the ceiling's
   body must equal the API's), warmed up, then driven by wrk on loopback: one thread (the
   generator shares the two cores with the servers and PostgreSQL), fixed connections, fixed
   duration, replaying prepared requests (scripts/bench/requests.lua). Reads run before writes, so
   they see the seeded data. Patch and transition give each task its own cycle of requests (there
   and back again) and never have one task in flight twice, so every request is a real change
   and none waits on another's row lock; they warm up on pools of their own. The stats cache is
   verified through /ops/metrics: all hits in the hit scenario, none in the miss scenario.
   Each scenario with a ratio to the ceiling is paired with a ceiling run of its own, just before
   its measured run (same connections and duration): this machine's speed drifts by tens of
   percent within minutes, and a single ceiling measured at the start made ratios drift with it.
4. The login storm: the list at 8 connections alone, then again while 32 connections log in.

Sizes (issue 21): the typical user's size measures the reads whose cost follows how many tasks
the caller sees (TYPICAL_READS, each with its paired ceiling); the heavy size measures every
scenario. The list's goals hold at both.

Projects (issue 17): `list with 3 projects` (bench_projects' first page) and `project list`
(`?project_id=` of the 5,000-task project) each run against a ceiling answering that same page,
byte for byte; the first must keep its ratio within 10% of the list's. `list with If-None-Match
(304)` is the first page again with its current ETag: what a polling client that already has the
page costs (the query and the hash still run; no body goes out). `--only KEYS` measures
just some scenarios (and the ceilings they need), for trying one out.

The change feed (issue 18): `feed page` is GET /events?since=<cursor>&limit=100 from a fixed
cursor (right after `bench`'s 2,000th of 5,000 events), so every request reads the same full
page (has_more); its ceiling runs the API's own statements (taskapi.events.repository.HORIZON
and FEED) and cursor code, and must answer the same body (next_cursor compared as the position
it encodes, should it ever carry the time).

Webhooks (issue 19): `webhooks` (last, after the worker counts) runs scripts/bench/webhooks.py,
whose docstring has the details: one `taskapi worker` delivering to a receiver on loopback in a
process of its own, on a database of its own; deliveries/s from a backlog (to 1 webhook, then
6), and commit->arrival p50/p99 of events made one per transaction at 50/s (goal: every
throughput run >= 300 deliveries/s). `--only webhooks` runs it alone (no template, no servers).

Batch writes (issue 20): `batch` (last too) runs scripts/bench/batch.py: on a database and one
`taskapi serve` worker of its own, 500 creates in one POST /tasks/batch against 500 single
POST /tasks (sequential, then from 8 clients), 500 updates in one batch against 500
sequential PATCHes, and a batch each of 500 transitions and 500 deletes, median wall times and
ratios side by side (goal: every batch of 500 operations under 1 s). `--only batch` runs it alone.

SSE fan-out (issue 21): `sse` (last) runs scripts/bench/sse.py: one `taskapi serve` worker, 100
open GET /events/stream connections of 50 project members, tasks written into their project at
10/s and then as one batch of 500; every event checked on every stream exactly once, commit ->
arrival p50/p99/max (goal: p99 under 1 s) and the burst's deliveries/s. `--only sse` runs it
alone.

Reading the table: `req/s` counts completed requests; p50/p99 are wrk's latency percentiles;
`errors` counts connect/read/write errors, timeouts and every response of 400 or more. A scenario
with errors (or a failed check) did not measure what it claims: it is listed at the end and the
exit status is 1. `vs ceiling` is the scenario's req/s as a share of its paired ceiling run's
(`ceiling req/s`: same run, connections, duration and worker count, a few seconds apart) and, for
the lists and the feed, its p99 as a multiple of that run's p99.
Figures vary by about 25% between runs of a shared 2-core machine, more when anything else runs
(the report says how busy the CPU was between phases): compare within one run. The goals are
PASS/FAIL per worker count; missing one does not change the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import asyncpg
import httpx
import redis
from sqlalchemy.engine import make_url

from taskapi.events.service import FEED_FINGERPRINT
from taskapi.kit.config import Settings
from taskapi.kit.pagination import CursorCodec, InvalidCursor
from taskapi.kit.security import PasswordHashing

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv this script runs in (make bench: .venv/bin)
BENCH_DIR = ROOT / "scripts" / "bench"
WRK_SCRIPT = BENCH_DIR / "requests.lua"
# Scenarios that are scripts of their own (a database and processes of their own), run after
# the worker counts: key -> (script, what it measures).
SIDE_SCRIPTS = {
    "webhooks": (BENCH_DIR / "webhooks.py", "webhook delivery"),
    "batch": (BENCH_DIR / "batch.py", "batch writes"),
    "sse": (BENCH_DIR / "sse.py", "SSE fan-out"),
}
API = "/api/v1"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/taskapi"
TEMPLATE_DATABASE = "taskapi_bench_seed"
DATABASE = "taskapi_bench"

# The data set.
USERS = 1000
BENCH_USER = "bench"  # user id 1: owns BENCH_TASKS tasks and is assigned about 500 more
BENCH_TASKS = 10_000
TASKS_PER_OTHER_USER = 20
PASSWORD = "bench-password-0123"
# The heavy user with projects (issue 17): the same personal tasks as `bench` (a copy of its
# 10,000 owned and ~500 assigned) plus three projects: TEAM_PROJECT with TEAM_PROJECT_TASKS
# tasks shared by TEAM_PROJECT_MEMBERS users (the project list scenario reads it) and two more
# of SMALL_PROJECT_TASKS each. Its list next to `bench`'s shows what the projects cost.
PROJECTS_USER = "bench_projects"  # user id USERS + 1
TEAM_PROJECT = "Platform team"
TEAM_PROJECT_TASKS = 5000
TEAM_PROJECT_MEMBERS = 20
SMALL_PROJECTS = (("Mobile app", 8), ("Operations", 8))  # (name, members)
SMALL_PROJECT_TASKS = 1000
# The typical user (issue 21): what most users have, where the list's count is cheap and what
# the API adds around its queries shows. A copy of 200 of `bench`'s personal tasks, and 20 of
# other users' tasks assigned to it; its projects twin has those plus three small projects.
TYPICAL_USER = "bench_typical"  # user id USERS + 2
TYPICAL_TASKS = 200
TYPICAL_ASSIGNED = 20
TYPICAL_PROJECTS_USER = "bench_typical_projects"  # user id USERS + 3
TYPICAL_TEAM_PROJECT = "Typical team"
TYPICAL_PROJECTS = ((TYPICAL_TEAM_PROJECT, 8, 200), ("Typical design", 8, 200),
                    ("Typical support", 6, 100))  # (name, members, tasks)  # fmt: skip
TYPICAL_FIRST_MEMBER = 100  # its projects' other members: users 100, 101, ...
SEARCH_TERM = "invoice"  # one of 30 task objects: a few hundred of the bench user's tasks
# The change feed (issue 18): EVENTS events, FEED_BATCH per transaction (so positions span many
# transaction ids, as when the API writes them a change at a time); every FEED_SHARE-th is about
# one of FEED_TASKS of the bench user's tasks (its feed: EVENTS / FEED_SHARE events, about 5 per
# task, so the feed's check for superseded events has work), the others about other users'
# personal tasks. The feed scenario reads the FEED_PAGE events after the bench user's
# FEED_START-th. (With the bench user's events nearly the whole log, PostgreSQL reads the feed
# with a hash join and a sort of everything after the cursor, ~40 ms a page instead of ~1 ms:
# docs/performance.md; a quarter is the share scripts/perf_events.py gives its user, 30%.)
EVENTS = 20_000
FEED_SHARE = 4
FEED_TASKS = 1000
FEED_BATCH = 20
FEED_START = 2000
FEED_PAGE = 100
FEED_SPACING_S = 8  # between two events' occurred_at: 20,000 span ~44 h, within the retention
FILTER = "status=in_progress&priority=high"

# Pools of the bench user's tasks, disjoint, so no write scenario sees another's changes; each
# write scenario warms up on a pool of its own, so its measured run starts from seeded rows.
TRANSITION_POOL = (
    3000  # todo tasks; more than the connections, or requests.lua must reuse busy ones
)
TRANSITION_WARMUP_POOL = 1000
PATCH_POOL = 1500  # in_progress tasks
PATCH_WARMUP_POOL = 500
UPLOAD_POOL = 500  # done tasks
GET_POOL = 2000  # any visible task
UPLOAD_BYTES = 10 * 1024
DOWNLOAD_BYTES = 1024 * 1024

# One signing key per run; production refuses to start without a strong one.
SECRET_KEY = secrets.token_urlsafe(48)
CURSORS = CursorCodec(SECRET_KEY)  # the API's cursors: the feed's fixed `since`, its next_cursor
HUGE = str(10**9)  # rate-limit buckets no run can empty (the limiter still runs on every request)
WRK_TIMEOUT_S = 10  # a response slower than this counts as a timeout error
LOGIN_MIN_SECONDS = 5  # 32 connections at ~20-100 logins/s: each login waits 0.3-1.6 s
FEW_REQUESTS = 200  # fewer completed requests than this: p99 rests on a handful of samples
STORM_LEAD_S = 1  # the login storm runs this long before (and after) the list is measured

# Goals per worker count (issue 8): share of the ceiling's req/s.
LIST_GOAL = 0.50
LIST_P99_GOAL = 2.0  # list p99 at most this multiple of the ceiling's
READ_GOAL = 0.40
CREATE_GOAL = 0.25
STORM_GOAL = 3.0  # list p99 during the login storm at most this multiple of the list alone
BUSY_WARNING = 0.10  # CPU share used by others, between phases, above which figures are suspect
READ_SCENARIOS = ("filtered", "search", "get", "stats-hit", "stats-miss", "download")
# Issue 17: the list with three projects within 10% of the list's ratio (1 - this share).
PROJECTS_LIST_DRIFT = 0.10
# Each extra list scenario and the ceiling run it is paired with.
PAIRED_CEILINGS = {
    "list-projects": "ceiling-projects",
    "project": "ceiling-project",
    "feed": "ceiling-feed",
}


class BenchError(RuntimeError):
    """The run cannot go on; the message says why."""


@dataclass(frozen=True)
class Size:
    """Whose data the reads are measured on: the list's cost follows how many tasks its
    caller sees (the page, and the count of the visible total)."""

    key: str
    label: str
    user: str
    projects_user: str
    team_project: str
    # Only the heavy size runs the feed, the login storm and the writes: their cost does not
    # depend on how many tasks the caller sees, and their pools need thousands of tasks.
    full: bool
    # The ceiling's plan_cache_mode (ceiling.PLAN_CACHE_MODE): PostgreSQL re-planned the bare
    # list on every request, its generic plan estimated dearer than the custom ones (typical
    # user: 0.94 ms a statement, generic plan 0.25 ms; heavy user, since its total sums the
    # trigger-kept counts: 1.06 ms against 0.36).
    ceiling_plan_cache_mode: str | None = None

    def ceiling_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The ceiling app's environment for this size."""
        mode = self.ceiling_plan_cache_mode
        return {**env, "CEILING_PLAN_CACHE_MODE": mode} if mode else dict(env)


SIZES = {
    "typical": Size("typical", f"typical user ({TYPICAL_TASKS} own + {TYPICAL_ASSIGNED} "
                    "assigned)", TYPICAL_USER, TYPICAL_PROJECTS_USER, TYPICAL_TEAM_PROJECT,
                    full=False, ceiling_plan_cache_mode="force_generic_plan"),
    "heavy": Size("heavy", f"heavy user ({BENCH_TASKS:,} own + ~500 assigned)", BENCH_USER,
                  PROJECTS_USER, TEAM_PROJECT, full=True,
                  ceiling_plan_cache_mode="force_generic_plan"),
}  # fmt: skip
# What the typical size measures (each with its ceiling): the reads whose cost follows the user.
TYPICAL_READS = ("list", "list-304", "list-projects", "project", "filtered", "search", "get",
                 "stats-hit", "stats-miss")  # fmt: skip


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    workers: tuple[int, ...]
    duration: int
    warmup: int
    connections: int
    storm_logins: int
    storm_list: int
    markdown: Path | None
    keep: bool
    only: frozenset[str] | None = None  # measure just these scenarios (and their ceilings)
    quick: bool = False
    sizes: tuple[str, ...] = ("typical", "heavy")


def _worker_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Benchmark a real `taskapi serve` with wrk against a bare ceiling app.",
    )
    parser.add_argument(
        "--workers",
        type=_worker_list,
        default=(1, 2),
        help="worker counts to measure, in order (default: 1,2)",
    )
    parser.add_argument("--duration", type=_positive, help="seconds per scenario (default: 6)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per scenario (default: 2)")
    parser.add_argument(
        "--connections",
        type=_positive,
        default=32,
        help="wrk connections for the main scenarios (default: 32)",
    )
    parser.add_argument(
        "--storm-logins",
        type=_positive,
        default=32,
        help="connections logging in during the login storm (default: 32)",
    )
    parser.add_argument(
        "--storm-list",
        type=_positive,
        default=8,
        help="connections listing, alone and during the login storm (default: 8)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 s per scenario after a 1 s warm-up (unless given explicitly)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: frozenset(part.strip() for part in text.split(",") if part.strip()),
        help="measure only these scenarios, a comma list of keys (e.g. list,list-projects,"
        "project,feed; the ceilings they are compared with always run; webhooks, batch, sse: those "
        "scripts alone): for trying one scenario",
    )
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        default=("typical", "heavy"),
        help="user sizes to measure, in order (default: typical,heavy)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the databases, server logs and stored files (their paths are printed)",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (2 if args.quick else 6)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if warmup < 0:
        parser.error("--warmup must be 0 or more")
    if not args.sizes or set(args.sizes) - SIZES.keys():
        parser.error(f"--sizes: a comma list of {', '.join(SIZES)}")
    return Options(
        workers=args.workers,
        duration=duration,
        warmup=warmup,
        connections=args.connections,
        storm_logins=args.storm_logins,
        storm_list=args.storm_list,
        markdown=args.markdown,
        keep=args.keep,
        only=args.only,
        quick=args.quick,
        sizes=args.sizes,
    )


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    | " + line[:300] for line in text[-lines:])


class Server:
    """A server process on a free loopback port, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._command = [part.replace("{port}", str(self.port)) for part in command]
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str, headers: Mapping[str, str] | None = None) -> None:
        with open(self.log, "ab") as out:
            self._process = subprocess.Popen(  # noqa: S603 - our own venv's executables
                self._command,
                cwd=ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with status {self._process.returncode} "
                        f"while starting:\n{log_tail(self.log)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(ready_path, headers=headers).status_code == 200:
                        return
                time.sleep(0.2)
        self.stop()
        raise BenchError(f"{self.name} was not ready within 60 s:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM (uvicorn drains, then exits), then SIGKILL if it takes over 30 s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not stop within 30 s; killing it", flush=True)
            process.kill()
            process.wait()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchError(f"{self.name} is not running")
        return self._process.pid

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing; installing it with apt-get ...", flush=True)
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if _quiet(install) != 0:  # the package lists may be missing or stale
            _quiet(["apt-get", "update", "-q"])
            _quiet(install)
        found = shutil.which("wrk")
        if found:
            return found
    raise BenchError("wrk is not installed; install it (Debian/Ubuntu: apt-get install wrk).")


def _quiet(command: list[str]) -> int:
    return subprocess.run(  # noqa: S603 - fixed apt-get commands
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False
    ).returncode


# --- the machine -----------------------------------------------------------------------------


def _first_match(path: str, pattern: str) -> str | None:
    with contextlib.suppress(OSError):
        match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def describe_machine(wrk: str, postgres_version: str, redis_version: str) -> list[str]:
    mem_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+) kB")
    wrk_banner = subprocess.run(  # noqa: S603 - the wrk found on PATH
        [wrk, "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("fastapi", "starlette", "pydantic", "sqlalchemy", "asyncpg", "uvicorn")
    )
    cpu = _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor()
    return [
        f"CPU: {cpu}, {os.cpu_count()} logical cores",
        f"RAM: {int(mem_kib) / 1024**2:.1f} GiB" if mem_kib else "RAM: unknown",
        f"Kernel: {platform.system()} {platform.release()}",
        f"Python: {platform.python_version()} ({platform.python_implementation()}); {versions}",
        f"PostgreSQL: {postgres_version}",
        f"Redis: {redis_version}",
        f"wrk: {wrk_banner[0].split(' Copyright')[0] if wrk_banner else 'unknown'}",
    ]


# --- the databases ---------------------------------------------------------------------------


def database_urls(database: str) -> tuple[str, str]:
    """(the app's DATABASE_URL for `database`, an asyncpg DSN for the same server's `postgres`
    database), on the server DATABASE_URL names (default: local, user postgres)."""
    url = make_url(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    app = url.set(drivername="postgresql+asyncpg", database=database)
    admin = url.set(drivername="postgresql", database="postgres")
    return app.render_as_string(hide_password=False), admin.render_as_string(hide_password=False)


def asyncpg_dsn(app_url: str) -> str:
    return app_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(statements: Sequence[str]) -> str:
    """Run statements on the `postgres` database; returns the server's version."""
    _, admin_dsn = database_urls("postgres")
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        raise BenchError(
            f"PostgreSQL is not reachable ({type(error).__name__}: {error}); start it "
            "(`make services`) or set DATABASE_URL to a running server."
        ) from error
    try:
        for statement in statements:
            await conn.execute(statement)
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


def drop_databases() -> None:
    asyncio.run(
        _admin(
            [
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                for name in (DATABASE, TEMPLATE_DATABASE)
            ]
        )
    )


# Deterministic (setseed) and fast: one INSERT ... SELECT for all tasks. The bench user's statuses
# come from the row number, so the pools of todo/in_progress/done tasks have known sizes (45%,
# 25%, 20%, 10% cancelled); everything else is random: due dates (70% have one, from 30 days ago
# to 60 days ahead, so open ones in the past are overdue), priorities (20/45/25/10%), 0-3 tags,
# titles "<verb> <object>" (30 objects), 80% with 1-3 sentences of description, creation times
# over the last year.
# Every tenth task of the bench user is assigned to someone else; every 40th task of the others
# is assigned to the bench user, every fifth to another user.
SEED_USERS_SQL = """
INSERT INTO users (id, username, email, full_name, password_hash, created_at, updated_at)
SELECT g, name, name || '@example.com', 'Bench User ' || g, $1,
       now() - interval '400 days', now() - interval '400 days'
FROM generate_series(1, $2::int) AS g,
     LATERAL (SELECT CASE WHEN g = 1 THEN $3 ELSE 'user' || g END AS name) AS n
"""
SEED_TASKS_SQL = """
INSERT INTO tasks (owner_id, assignee_id, title, description, status, priority, due_date, tags,
                   created_at, updated_at, completed_at)
SELECT owner_id, assignee_id,
       verbs[1 + floor(r_verb * cardinality(verbs))::int] || ' '
           || objects[1 + floor(r_object * cardinality(objects))::int],
       CASE WHEN r_description < 0.8 THEN array_to_string(ARRAY(
           SELECT d FROM unnest(details) AS d ORDER BY random() LIMIT 1 + n_sentences), ' ') END,
       status::task_status, priority::task_priority,
       CASE WHEN r_due < 0.7 THEN current_date + (floor(r_due_day * 91)::int - 30) END,
       ARRAY(SELECT t FROM unnest(tag_words) AS t ORDER BY random() LIMIT n_tags)::varchar[],
       created_at, updated_at,
       CASE WHEN status = 'done' THEN updated_at END
FROM (
    SELECT owner_id, assignee_id, status, r_verb, r_object, r_description, n_sentences, r_due,
           r_due_day, n_tags, created_at,
           created_at + (now() - created_at) * r_update AS updated_at,
           CASE WHEN r_priority < 0.20 THEN 'low' WHEN r_priority < 0.65 THEN 'medium'
                WHEN r_priority < 0.90 THEN 'high' ELSE 'urgent' END AS priority
    FROM (
        SELECT owner_id, assignee_id, status,
               random() AS r_verb, random() AS r_object, random() AS r_description,
               floor(random() * 3)::int AS n_sentences, random() AS r_due,
               random() AS r_due_day, floor(random() * 4)::int AS n_tags,
               random() AS r_priority, random() AS r_update,
               now() - random() * interval '365 days' AS created_at
        FROM (
            SELECT 1 AS owner_id,
                   CASE WHEN g % 10 = 3 THEN 2 + floor(random() * ($1::int - 1))::int END
                       AS assignee_id,
                   CASE WHEN g % 20 < 9 THEN 'todo' WHEN g % 20 < 14 THEN 'in_progress'
                        WHEN g % 20 < 18 THEN 'done' ELSE 'cancelled' END AS status
            FROM generate_series(1, $2::int) AS g
            UNION ALL
            SELECT 2 + (g - 1) / $3::int,
                   CASE WHEN g % 40 = 7 THEN 1
                        WHEN g % 5 = 1 THEN 2 + floor(random() * ($1::int - 1))::int END,
                   (ARRAY['todo', 'todo', 'todo', 'todo', 'in_progress', 'in_progress', 'done',
                          'done', 'done', 'cancelled'])[1 + floor(random() * 10)::int]
            FROM generate_series(1, ($1::int - 1) * $3::int) AS g
        ) AS base
    ) AS draws
) AS task_rows,
LATERAL (SELECT
    ARRAY['Write', 'Review', 'Fix', 'Update', 'Migrate', 'Draft', 'Test', 'Document', 'Plan',
          'Refactor', 'Benchmark', 'Prepare'] AS verbs,
    ARRAY['release notes for v2.4', 'the onboarding checklist', 'login rate limiting',
          'quarterly budget spreadsheet', 'PostgreSQL backup restore drill',
          'customer interview notes', 'the CI pipeline cache', 'SQLAlchemy session handling',
          'invoice PDF export', 'mobile push notifications', 'the pricing page copy',
          'S3 lifecycle rules', 'search relevance', 'on-call runbook',
          'accessibility audit findings', 'Redis failover test', 'team offsite agenda',
          'API pagination docs', 'Kubernetes node upgrade', 'dashboard latency graphs',
          'the vendor contract renewal', 'Android crash reports', 'GDPR data export',
          'webhook retry policy', 'design system tokens', 'the support macro library',
          'staging database refresh', 'OAuth consent screen', 'sprint retrospective notes',
          'email template rendering'] AS objects,
    ARRAY['Agreed in Monday''s planning; see the thread for context.',
          'Blocked until the design review is done.',
          'Keep the scope small: ship the first version, iterate afterwards.',
          'Customers asked for this twice this month.',
          'Check with the security team before merging.',
          'Numbers from last quarter are in the shared drive.',
          'Pair with someone from support to reproduce it.',
          'Needs a migration; announce the maintenance window.'] AS details,
    ARRAY['backend', 'frontend', 'docs', 'ops', 'bug', 'feature', 'q4', 'customer', 'security',
          'research'] AS tag_words
) AS vocabulary
"""

# A user with projects: user USERS + 1 (the heavy one) or USERS + 3 (the typical one), with a
# copy of the personal tasks of the user of its size (owned and assigned, that user swapped for
# it), so its personal part of the list is the same.
SEED_EXTRA_USER_SQL = """
INSERT INTO users (id, username, email, full_name, password_hash, created_at, updated_at)
VALUES ($2::int, $3::text, $3::text || '@example.com', 'Bench User ' || $3::text, $1,
        now() - interval '400 days', now() - interval '400 days')
"""
SEED_PROJECTS_USER_TASKS_SQL = """
INSERT INTO tasks (owner_id, assignee_id, title, description, status, priority, due_date, tags,
                   created_at, updated_at, completed_at)
SELECT CASE WHEN owner_id = $2 THEN $1 ELSE owner_id END,
       CASE WHEN assignee_id = $2 THEN $1 ELSE assignee_id END,
       title, description, status, priority, due_date, tags, created_at, updated_at, completed_at
FROM tasks WHERE (owner_id = $2 OR assignee_id = $2) AND project_id IS NULL ORDER BY id
"""
# The typical user's own tasks: a copy of the first of `bench`'s unassigned personal tasks; and
# the tasks it is assigned: other users' personal tasks nobody was assigned.
SEED_TYPICAL_TASKS_SQL = """
INSERT INTO tasks (owner_id, title, description, status, priority, due_date, tags, created_at,
                   updated_at, completed_at)
SELECT $1, title, description, status, priority, due_date, tags, created_at, updated_at,
       completed_at
FROM tasks WHERE owner_id = 1 AND assignee_id IS NULL AND project_id IS NULL ORDER BY id LIMIT $2
"""
SEED_TYPICAL_ASSIGNED_SQL = """
UPDATE tasks SET assignee_id = $1
WHERE id IN (SELECT id FROM tasks
             WHERE owner_id BETWEEN 2 AND $3 AND assignee_id IS NULL AND project_id IS NULL
             ORDER BY id DESC LIMIT $2)
"""
SEED_PROJECT_SQL = """
INSERT INTO projects (owner_id, name, description, member_count, created_at, updated_at)
VALUES ($1, $2, 'Seeded by make bench.', cardinality($3::bigint[]),
        now() - interval '300 days', now() - interval '300 days')
RETURNING id
"""
SEED_PROJECT_MEMBERS_SQL = """
INSERT INTO project_members (project_id, user_id, role, added_at)
SELECT $1, member, role::project_role, now() - interval '300 days'
FROM unnest($2::bigint[], $3::text[]) AS m (member, role)
"""
# A project's tasks: the content of other users' personal tasks (the same generator), owned by
# one of its members, 30% assigned to one.
SEED_PROJECT_TASKS_SQL = """
INSERT INTO tasks (owner_id, assignee_id, project_id, title, description, status, priority,
                   due_date, tags, created_at, updated_at, completed_at)
SELECT ($2::bigint[])[1 + floor(random() * cardinality($2::bigint[]))::int],
       CASE WHEN random() < 0.3
            THEN ($2::bigint[])[1 + floor(random() * cardinality($2::bigint[]))::int] END,
       $1, title, description, status, priority, due_date, tags, created_at, updated_at,
       completed_at
FROM (SELECT * FROM tasks WHERE owner_id BETWEEN 2 AND $3 AND project_id IS NULL
      ORDER BY id OFFSET $4 LIMIT $5) AS source
"""


def _project_roles(members: Sequence[int]) -> list[str]:
    """The first member (the heavy user) and the next are admins, half the rest editors, the
    rest viewers."""
    editors = (len(members) - 2) // 2
    return ["admin", "admin"] + ["editor"] * editors + ["viewer"] * (len(members) - 2 - editors)


async def _seed_projects(
    conn: asyncpg.Connection,
    password_hash: str,
    user_id: int,
    username: str,
    source_user: int,
    projects: Sequence[tuple[str, int, int]],
    first_member: int,
    offset: int,
) -> int:
    """A user with projects (see SEED_EXTRA_USER_SQL); their tasks' content is other users'
    personal tasks from `offset` on. Returns the offset after them."""
    await conn.execute(SEED_EXTRA_USER_SQL, password_hash, user_id, username)
    await conn.execute(SEED_PROJECTS_USER_TASKS_SQL, user_id, source_user)
    for name, count, tasks in projects:
        members = [user_id, *range(first_member, first_member + count - 1)]
        first_member += count - 1
        project_id = await conn.fetchval(SEED_PROJECT_SQL, user_id, name, members)
        await conn.execute(SEED_PROJECT_MEMBERS_SQL, project_id, members, _project_roles(members))
        await conn.execute(SEED_PROJECT_TASKS_SQL, project_id, members, USERS, offset, tasks)
        offset += tasks
    return offset


async def _seed_users_with_projects(conn: asyncpg.Connection, password_hash: str) -> None:
    heavy = [(TEAM_PROJECT, TEAM_PROJECT_MEMBERS, TEAM_PROJECT_TASKS)]
    heavy += [(name, members, SMALL_PROJECT_TASKS) for name, members in SMALL_PROJECTS]
    offset = await _seed_projects(
        conn, password_hash, USERS + 1, PROJECTS_USER, 1, heavy, first_member=2, offset=0
    )
    typical_id = USERS + 2
    await conn.execute(SEED_EXTRA_USER_SQL, password_hash, typical_id, TYPICAL_USER)
    await conn.execute(SEED_TYPICAL_TASKS_SQL, typical_id, TYPICAL_TASKS)
    await conn.execute(SEED_TYPICAL_ASSIGNED_SQL, typical_id, TYPICAL_ASSIGNED, USERS)
    await _seed_projects(
        conn, password_hash, USERS + 3, TYPICAL_PROJECTS_USER, typical_id, TYPICAL_PROJECTS,
        first_member=TYPICAL_FIRST_MEMBER, offset=offset,
    )  # fmt: skip


# The change feed's events, one batch per transaction, each about a task ($1), written as the
# API writes it (ids from the identity, the task as GET /tasks/{id} shows it, with the event's
# version; the recipients are the task's viewers, from `task_viewers` as the API's own INSERT
# resolves them). A task's first event is its
# `task.created`, the next ones `task.updated` with a change; occurred_at is spread over the last
# two days (a feed cursor carries its events' age, refused past the retention period).
SEED_EVENTS_SQL = """
WITH picked AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id, p.task_id, p.version,
           p.changes, p.n
    FROM unnest($1::bigint[], $2::int[], $3::text[]) WITH ORDINALITY AS p(task_id, version,
                                                                          changes, n)
    ORDER BY p.n
), inserted AS (
    INSERT INTO events (id, type, occurred_at, actor_id, task_id, project_id, changes, task,
                        task_version, ends_copy)
    SELECT i.id, CASE WHEN i.version = 1 THEN 'task.created' ELSE 'task.updated' END,
           now() - make_interval(secs => ($4::int - $5::int - i.n) * $6::int),
           t.owner_id, t.id, t.project_id, CAST(i.changes AS jsonb),
           jsonb_build_object(
               'id', t.id, 'title', t.title, 'description', t.description, 'status', t.status,
               'completed', t.status = 'done', 'priority', t.priority, 'due_date', t.due_date,
               'is_overdue', coalesce(t.due_date < current_date
                                      AND t.status IN ('todo', 'in_progress'), false),
               'tags', t.tags, 'owner_id', t.owner_id, 'assignee_id', t.assignee_id,
               'project_id', t.project_id, 'attachment_count', t.attachment_count,
               'created_at', t.created_at, 'updated_at', t.updated_at,
               'completed_at', t.completed_at, 'version', i.version),
           i.version, 0
    FROM picked i JOIN tasks t ON t.id = i.task_id
    ORDER BY i.id
)
INSERT INTO event_recipients (user_id, xid, event_id)
SELECT v.user_id, pg_current_xact_id(), i.id
FROM picked i JOIN tasks t ON t.id = i.task_id CROSS JOIN LATERAL task_viewers(t) AS v(user_id)
"""
FEED_CHANGES = (
    '{"status": ["todo", "in_progress"]}',
    '{"priority": ["medium", "high"]}',
    '{"title": ["Draft the plan", "Draft the plan for Q3"]}',
    '{"tags": [["backend"], ["backend", "customer"]]}',
    '{"due_date": [null, "2026-12-24"]}',
)


async def _seed_events(conn: asyncpg.Connection) -> None:
    """EVENTS events, every FEED_SHARE-th about one of FEED_TASKS of the bench user's visible
    tasks (evenly spaced by id: owned and assigned ones, open and closed), the rest about other
    users' personal tasks, each task drawn at random (a fixed seed)."""
    visible = [
        row["id"]
        for row in await conn.fetch(
            "SELECT id FROM tasks WHERE owner_id = 1 OR assignee_id = 1 ORDER BY id"
        )
    ]
    others = [
        row["id"]
        for row in await conn.fetch(
            "SELECT id FROM tasks WHERE owner_id <> 1 AND assignee_id IS DISTINCT FROM 1 "
            "AND project_id IS NULL ORDER BY id"
        )
    ]
    step = max(1, len(visible) // FEED_TASKS)
    feed_tasks = visible[::step][:FEED_TASKS]
    rng = random.Random(18)  # noqa: S311 - a repeatable draw, not a secret
    versions: dict[int, int] = {}  # each task's events so far: the next one's version
    for start in range(0, EVENTS, FEED_BATCH):
        picks = [
            rng.choice(feed_tasks if n % FEED_SHARE == 0 else others)
            for n in range(start, min(start + FEED_BATCH, EVENTS))
        ]
        batch_versions = []
        for task_id in picks:
            versions[task_id] = versions.get(task_id, 0) + 1
            batch_versions.append(versions[task_id])
        changes = [
            None if version == 1 else FEED_CHANGES[version % len(FEED_CHANGES)]
            for version in batch_versions
        ]
        async with conn.transaction():
            await conn.execute(
                SEED_EVENTS_SQL, picks, batch_versions, changes, EVENTS, start, FEED_SPACING_S
            )


async def _seed(app_url: str, password_hash: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(asyncpg_dsn(app_url))
    try:
        async with conn.transaction():
            await conn.execute("SELECT setseed(0.42)")
            await conn.execute(SEED_USERS_SQL, password_hash, USERS, BENCH_USER)
            await conn.execute(SEED_TASKS_SQL, USERS, BENCH_TASKS, TASKS_PER_OTHER_USER)
            await _seed_users_with_projects(conn, password_hash)
            # Explicit ids were inserted: move the identity past them for registrations.
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))"
            )
        await _seed_events(conn)
        # Index-only scans need the visibility map; a live database's autovacuum would have
        # done this long ago.
        await conn.execute("VACUUM ANALYZE")
        users = await conn.fetchval("SELECT count(*) FROM users")
        tasks = await conn.fetchval("SELECT count(*) FROM tasks")
        events = await conn.fetchval("SELECT count(*) FROM events")
        return int(users), int(tasks), int(events)
    finally:
        await conn.close()


async def _max_connections() -> int:
    _, admin_dsn = database_urls("postgres")
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


# Up to three servers hold connections at once (the API, the ceiling app beside it, and the
# uncached-stats API during its scenario), each with `workers` processes that keep what they
# opened; PostgreSQL refuses clients past max_connections. The bench's own connections and the
# superuser reserve take the rest.
SERVERS_AT_ONCE = 3
SPARE_CONNECTIONS = 10


def pool_per_process(workers: int, max_connections: int) -> int:
    """Database connections each server process may open: the API's default (32 + 8 overflow)
    when the server allows that many, else an equal share, the same for the API and the
    ceiling app (which sizes its pool from the same settings)."""
    share = (max_connections - SPARE_CONNECTIONS) // (SERVERS_AT_ONCE * workers)
    fields = Settings.model_fields
    default = int(fields["database_pool_size"].default + fields["database_max_overflow"].default)
    return max(4, min(default, share))


def build_template(env: Mapping[str, str]) -> str:
    """Create, migrate and seed the template database; returns the PostgreSQL version."""
    version = asyncio.run(
        _admin(
            [
                f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
                f'DROP DATABASE IF EXISTS "{TEMPLATE_DATABASE}" WITH (FORCE)',
                f'CREATE DATABASE "{TEMPLATE_DATABASE}"',
            ]
        )
    )
    app_url, _ = database_urls(TEMPLATE_DATABASE)
    migrate = subprocess.run(  # noqa: S603 - our own venv's executable
        [str(BIN / "taskapi"), "migrate"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": app_url, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode != 0:
        raise BenchError(f"taskapi migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
    # The API's own hashing with the server's settings (same environment), so logins verify the
    # way they will in the server and never need a rehash.
    hashing = PasswordHashing(Settings())
    try:
        password_hash = asyncio.run(hashing.hash(PASSWORD))
    finally:
        hashing.close()
    started = time.monotonic()
    users, tasks, events = asyncio.run(_seed(app_url, password_hash))
    print(
        f"seeded {users:,} users, {tasks:,} tasks and {events:,} events in "
        f"{time.monotonic() - started:.1f} s (template database {TEMPLATE_DATABASE})",
        flush=True,
    )
    return version


def clone_database() -> str:
    """A fresh copy of the seeded template; returns its DATABASE_URL."""
    asyncio.run(
        _admin(
            [
                f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
                f'CREATE DATABASE "{DATABASE}" TEMPLATE "{TEMPLATE_DATABASE}"',
            ]
        )
    )
    return database_urls(DATABASE)[0]


@dataclass(frozen=True)
class Fixtures:
    """Ids of the bench user's tasks, by the pool each scenario uses, and every username."""

    user_id: int
    usernames: list[str]
    visible: list[int]
    todo: list[int]
    in_progress: list[int]
    done: list[int]
    cancelled: list[int]
    team_project_id: int  # the size's team project, which its projects user is in
    feed_since: str  # a feed cursor right after the bench user's FEED_START-th event
    feed_events: int  # the events in the bench user's feed


async def _fixtures(app_url: str, size: Size) -> Fixtures:
    conn = await asyncpg.connect(asyncpg_dsn(app_url))
    try:
        user_id = await conn.fetchval("SELECT id FROM users WHERE username = $1", size.user)
        usernames = [row["username"] for row in await conn.fetch("SELECT username FROM users")]
        visible = [
            row["id"]
            for row in await conn.fetch(
                "SELECT id FROM tasks WHERE owner_id = $1 OR assignee_id = $1 ORDER BY id", user_id
            )
        ]
        team_project_id = await conn.fetchval(
            "SELECT id FROM projects WHERE name = $1", size.team_project
        )
        feed_events = await conn.fetchval(
            "SELECT count(*) FROM event_recipients WHERE user_id = $1", user_id
        )
        # The cursor the API would have handed out after that event: its position and age.
        start = await conn.fetchrow(
            "SELECT r.xid::text AS xid, r.event_id, e.occurred_at FROM event_recipients r "
            "JOIN events e ON e.id = r.event_id WHERE r.user_id = $1 "
            "ORDER BY r.xid, r.event_id OFFSET $2 LIMIT 1",
            user_id,
            FEED_START - 1,
        )
        if size.full and (start is None or feed_events < FEED_START + FEED_PAGE + 1):
            raise BenchError(
                f"the bench user's feed has {feed_events} events; the feed scenario needs "
                f"{FEED_START + FEED_PAGE + 1}"
            )
        feed_since = (
            CURSORS.encode(
                [int(start["xid"]), start["event_id"], int(start["occurred_at"].timestamp())],
                FEED_FINGERPRINT,
            )
            if start is not None
            else ""
        )
        by_status: dict[str, list[int]] = {}
        for row in await conn.fetch(
            "SELECT id, status::text FROM tasks WHERE owner_id = $1 ORDER BY id", user_id
        ):
            by_status.setdefault(row["status"], []).append(row["id"])
    finally:
        await conn.close()
    return Fixtures(
        user_id=int(user_id),
        usernames=usernames,
        visible=visible,
        todo=by_status.get("todo", []),
        in_progress=by_status.get("in_progress", []),
        done=by_status.get("done", []),
        cancelled=by_status.get("cancelled", []),
        team_project_id=int(team_project_id),
        feed_since=feed_since,
        feed_events=int(feed_events),
    )


# --- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    body: bytes = b""


@dataclass(frozen=True)
class Workload:
    """What wrk replays: one cycle of requests shared by all connections, or one cycle per task
    ("slots") of which no two requests are ever in flight at once (see requests.lua)."""

    cycles: tuple[tuple[Req, ...], ...]
    exclusive: bool = False

    @classmethod
    def cycle(cls, requests: Sequence[Req]) -> Workload:
        return cls((tuple(requests),))

    @classmethod
    def per_task(cls, pool: Sequence[int], steps: Sequence[tuple[str, str, bytes]]) -> Workload:
        """For each task of the pool, its own cycle of `steps` (method, path with {id}, body)."""
        cycles = tuple(
            tuple(Req(method, path.format(id=task_id), body) for method, path, body in steps)
            for task_id in pool
        )
        return cls(cycles, exclusive=True)

    @property
    def first(self) -> Req:
        return self.cycles[0][0]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    # Slot workloads only: requests sent to a task still in flight, answers matching no task.
    overlaps: int = 0
    unmatched: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def describe_errors(self) -> str:
        if not self.error_count:
            return "0"
        parts = ", ".join(f"{kind} {n}" for kind, n in self.errors.items() if n)
        return f"{self.error_count} ({parts})"


def write_requests(path: Path, headers: Mapping[str, str], workload: Workload) -> None:
    """The file scripts/bench/requests.lua replays (its format is described there)."""
    with open(path, "wb") as out:
        for name, value in headers.items():
            out.write(f"H {name}: {value}\n".encode())
        for cycle in workload.cycles:
            if workload.exclusive:
                out.write(b"S\n")
            for request in cycle:
                out.write(f"R {request.method} {request.path} {len(request.body)}\n".encode())
                out.write(request.body + b"\n")


class Wrk:
    def __init__(self, executable: str, workdir: Path) -> None:
        self._executable = executable
        self._workdir = workdir
        self._files = 0

    def start(
        self,
        base_url: str,
        headers: Mapping[str, str],
        workload: Workload,
        connections: int,
        seconds: int,
    ) -> subprocess.Popen[str]:
        self._files += 1
        path = self._workdir / f"requests-{self._files}.txt"
        write_requests(path, headers, workload)
        command = [
            self._executable,
            "-t1",  # one generator thread: it shares the two cores with the server
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "-s",
            str(WRK_SCRIPT),
            base_url,
            "--",
            str(path),
        ]
        return subprocess.Popen(  # noqa: S603 - wrk with our own arguments
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @staticmethod
    def result(process: subprocess.Popen[str]) -> WrkResult:
        stdout, stderr = process.communicate()
        line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if process.returncode != 0 or line is None:
            raise BenchError(f"wrk failed (status {process.returncode}):\n{stdout}\n{stderr}")
        data = json.loads(line.removeprefix("BENCH_RESULT "))
        return WrkResult(
            requests=data["requests"],
            duration_s=data["duration_us"] / 1e6,
            errors={kind: int(n) for kind, n in data["errors"].items()},
            p50_ms=data["latency_us"]["p50"] / 1000,
            p99_ms=data["latency_us"]["p99"] / 1000,
            overlaps=data["slots"]["overlaps"],
            unmatched=data["slots"]["unmatched"],
        )

    def run(
        self,
        base_url: str,
        headers: Mapping[str, str],
        workload: Workload,
        connections: int,
        seconds: int,
    ) -> WrkResult:
        return self.result(self.start(base_url, headers, workload, connections, seconds))


# --- scenarios -------------------------------------------------------------------------------

Target = Literal["api", "ceiling", "api-nocache"]


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    workload: Workload
    headers: Mapping[str, str]
    expect: int  # the status of a successful response
    target: Target = "api"
    # Stateful scenarios warm up on a pool of their own, so the measured run starts from seeded
    # rows (a transition pool must start with every task in `todo`).
    warmup: Workload | None = None
    # The request checked before the run; stateful scenarios use one outside their pools.
    probe: Req | None = None
    connections: int | None = None  # default: --connections
    detail: str = ""  # what exactly is requested, for the table's notes
    # A floor under --duration, for requests slower than a short (--quick) run: a run shorter
    # than the latency completes next to nothing.
    min_seconds: int = 0


@dataclass
class Outcome:
    scenario: Scenario
    connections: int
    result: WrkResult | None = None
    warmup_errors: int = 0
    notes: list[str] = field(default_factory=list)
    broken: str | None = None  # why it could not be measured, or why the figures are invalid
    # The ceiling measured just before this scenario's run (same connections and duration):
    # what its ratios are taken against, so both sides see the machine in the same state.
    ceiling: WrkResult | None = None

    def problems(self) -> list[str]:
        """Why the figures do not mean what they say; empty for a valid measurement."""
        found = [self.broken] if self.broken else []
        if self.result is None:
            found = found or ["not measured"]
        elif not self.result.requests:
            found.append("no request completed during the run")
        elif self.result.error_count:
            found.append(f"{self.result.describe_errors()} errors")
        if self.warmup_errors:
            found.append(f"{self.warmup_errors} errors in the warm-up")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()


def _take(pool: list[int], count: int, what: str) -> list[int]:
    if len(pool) < count:
        raise BenchError(f"the seed has {len(pool)} {what}, the benchmark needs {count}")
    taken = pool[:count]
    del pool[:count]
    return taken


def create_requests() -> list[Req]:
    """The create scenario's requests (scripts/profile_api.py --create profiles the same)."""
    due = (datetime.now(UTC).date() + timedelta(days=14)).isoformat()
    return [
        Req("POST", f"{API}/tasks", json.dumps({
            "title": f"Benchmark task {n}",
            "description": "Created by make bench.",
            "priority": ("low", "medium", "high", "urgent")[n % 4],
            "due_date": due,
            "tags": ["bench", ("backend", "ops", "docs")[n % 3]],
        }).encode())
        for n in range(12)
    ]  # fmt: skip


def upload_body(name: str, size: int, boundary: str) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog; benchmark notes, line by line.\n"
    content = (line * (size // len(line) + 1))[:size]
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode()


def build_scenarios(
    fixtures: Fixtures,
    token: str,
    projects_token: str,
    download_id: int,
    options: Options,
    list_etag: str = "*",
    size: Size = SIZES["heavy"],
) -> dict[str, Scenario]:
    auth = {"Authorization": f"Bearer {token}"}
    projects_auth = {"Authorization": f"Bearer {projects_token}"}
    json_auth = {**auth, "Content-Type": "application/json"}
    boundary = "bench" + secrets.token_hex(8)
    upload_headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}

    def pool(count: int) -> int:
        return count if size.full else 0  # (a size that runs no write needs no pool)

    todo, in_progress = list(fixtures.todo), list(fixtures.in_progress)
    transition_probe = _take(todo, 1, "todo tasks")[0]
    transition_warmup = _take(todo, pool(TRANSITION_WARMUP_POOL), "todo tasks")
    transition_pool = _take(todo, pool(TRANSITION_POOL), "todo tasks")
    patch_probe = _take(in_progress, 1, "in_progress tasks")[0]
    patch_warmup = _take(in_progress, pool(PATCH_WARMUP_POOL), "in_progress tasks")
    patch_pool = _take(in_progress, pool(PATCH_POOL), "in_progress tasks")
    upload_pool = _take(list(fixtures.done), pool(UPLOAD_POOL), "done tasks")
    # Spread over the whole visible set (owned and assigned), not only the newest rows.
    step = max(1, len(fixtures.visible) // GET_POOL)
    get_pool = fixtures.visible[::step][:GET_POOL]

    # Per task: there and back again, so every request is a real change (a repeated title
    # would be a no-op, a repeated status a 409).
    transitions = [
        ("POST", f"{API}/tasks/{{id}}/transition", b'{"status": "in_progress"}'),
        ("POST", f"{API}/tasks/{{id}}/transition", b'{"status": "todo"}'),
    ]
    patches = [
        ("PATCH", f"{API}/tasks/{{id}}", b'{"title": "Renamed by the benchmark (a)"}'),
        ("PATCH", f"{API}/tasks/{{id}}", b'{"title": "Renamed by the benchmark (b)"}'),
    ]
    creates = create_requests()
    logins = [
        Req("POST", f"{API}/auth/login",
            json.dumps({"username": name, "password": PASSWORD}).encode())
        for name in fixtures.usernames
    ]  # fmt: skip
    uploads = [
        Req("POST", f"{API}/tasks/{task_id}/files",
            upload_body(f"notes-{task_id}.txt", UPLOAD_BYTES, boundary))
        for task_id in upload_pool
    ]  # fmt: skip
    gets = [Req("GET", f"{API}/tasks/{task_id}") for task_id in get_pool]
    user, projects_user = size.user, size.projects_user

    def single(method: str, path: str) -> Workload:
        return Workload.cycle([Req(method, path)])

    first_page = single("GET", f"{API}/tasks")
    project_page = single("GET", f"{API}/tasks?project_id={fixtures.team_project_id}")
    feed_page = single("GET", f"{API}/events?since={fixtures.feed_since}&limit={FEED_PAGE}")
    feed_detail = (
        f"{FEED_PAGE} events after the {FEED_START:,}th of {fixtures.feed_events:,}, fixed cursor"
    )
    stats = single("GET", f"{API}/tasks/stats")
    team = next(
        f"{tasks:,} tasks, {members} members"
        for name, members, tasks in (
            (TEAM_PROJECT, TEAM_PROJECT_MEMBERS, TEAM_PROJECT_TASKS),
            *TYPICAL_PROJECTS,
        )
        if name == size.team_project
    )
    scenarios = [
        Scenario("ceiling", "ceiling (bare list)", first_page, auth, 200, target="ceiling",
                 detail="Starlette + asyncpg + orjson"),
        Scenario("ceiling-projects", "ceiling (list with 3 projects)", first_page, projects_auth,
                 200, target="ceiling", detail=f"as {projects_user}"),
        Scenario("ceiling-project", "ceiling (project list)", project_page, projects_auth, 200,
                 target="ceiling", detail=f"one project: {team}"),
        Scenario("ceiling-feed", "ceiling (feed page)", feed_page, auth, 200, target="ceiling",
                 detail="the API's HORIZON and FEED statements"),
        Scenario("list", "list", first_page, auth, 200, detail="first page of 20"),
        Scenario("list-304", "list with If-None-Match (304)", first_page,
                 {**auth, "If-None-Match": list_etag}, 304,
                 detail="the first page's current ETag: same query, no body, no token spent"),
        Scenario("list-projects", "list with 3 projects", first_page, projects_auth, 200,
                 detail=f"first page of 20 as {projects_user}: {user}'s tasks + 3 projects"),
        Scenario("project", "project list", project_page, projects_auth, 200,
                 detail=f"project_id=, first page of 20; {team}"),
        Scenario("feed", "feed page", feed_page, auth, 200, detail=feed_detail),
        Scenario("filtered", "filtered list", single("GET", f"{API}/tasks?{FILTER}"), auth, 200,
                 detail=FILTER),
        Scenario("search", "search", single("GET", f"{API}/tasks?search={SEARCH_TERM}"), auth,
                 200, detail=f"search={SEARCH_TERM}"),
        Scenario("get", "get one", Workload.cycle(gets), auth, 200,
                 detail=f"{len(gets):,} ids round-robin"),
        Scenario("stats-hit", "stats (cache hit)", stats, auth, 200),
        Scenario("stats-miss", "stats (cache miss)", stats, auth, 200, target="api-nocache",
                 detail="STATS_CACHE_TTL_SECONDS=0"),
        Scenario("download", "download 1 MiB", single("GET", f"{API}/files/{download_id}"), auth,
                 200, detail="one file: from memory after its first read (STORAGE_CACHE_BYTES)"),
        Scenario("login", "login", Workload.cycle(logins), {"Content-Type": "application/json"},
                 200, detail=f"{len(logins):,} users round-robin", min_seconds=LOGIN_MIN_SECONDS),
        Scenario("create", "create", Workload.cycle(creates), json_auth, 201),
        Scenario("patch", "patch", Workload.per_task(patch_pool, patches), json_auth, 200,
                 warmup=Workload.per_task(patch_warmup, patches),
                 probe=Req("PATCH", f"{API}/tasks/{patch_probe}", patches[0][2]),
                 detail=f"title, {len(patch_pool):,} tasks, none in flight twice"),
        Scenario("transition", "transition", Workload.per_task(transition_pool, transitions),
                 json_auth, 200, warmup=Workload.per_task(transition_warmup, transitions),
                 probe=Req("POST", f"{API}/tasks/{transition_probe}/transition",
                           transitions[0][2]),
                 detail=f"todo <-> in_progress, {len(transition_pool):,} tasks, none in flight "
                        "twice"),
        Scenario("upload", "upload 10 KiB", Workload.cycle(uploads), upload_headers, 201,
                 detail=f"text/plain, {len(uploads):,} tasks round-robin"),
        Scenario("storm-list", "list alone", first_page, auth, 200,
                 connections=options.storm_list),
    ]  # fmt: skip
    if not size.full:
        wanted = {*TYPICAL_READS, "ceiling", "ceiling-projects", "ceiling-project"}
        scenarios = [scenario for scenario in scenarios if scenario.key in wanted]
    return {scenario.key: scenario for scenario in scenarios}


# --- one worker count ------------------------------------------------------------------------


@dataclass
class Storm:
    list_alone: Outcome
    list_during: WrkResult | None = None
    logins: WrkResult | None = None
    broken: str | None = None

    @property
    def ratio(self) -> float | None:
        alone = self.list_alone.result
        if alone is None or self.list_during is None or not alone.p99_ms:
            return None
        return self.list_during.p99_ms / alone.p99_ms

    @property
    def ok(self) -> bool:
        return (
            self.broken is None
            and self.list_alone.ok
            and self.list_during is not None
            and self.logins is not None
            and not self.list_during.error_count
            and not self.logins.error_count
        )


@dataclass
class Phase:
    workers: int
    size: Size = SIZES["heavy"]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    storm: Storm | None = None
    # ERROR and CRITICAL lines in the servers' logs, by log file name.
    log_errors: dict[str, list[str]] = field(default_factory=dict)
    # CPU busy share with none of our processes running, just before and just after: anything
    # else using the CPU during the phase makes its figures low and noisy.
    busy_before: float = 0.0
    busy_after: float = 0.0

    @property
    def ceiling(self) -> WrkResult | None:
        outcome = self.outcomes.get("ceiling")
        return outcome.result if outcome is not None and outcome.ok else None

    def ceiling_for(self, key: str) -> WrkResult | None:
        """What scenario `key` is compared with: its paired ceiling run, else the first run of
        its ceiling."""
        outcome = self.outcomes.get(key)
        paired = outcome.ceiling if outcome is not None else None
        if paired is not None:
            return paired
        first = self.outcomes.get(PAIRED_CEILINGS.get(key, "ceiling"))
        return first.result if first is not None and first.ok else None


def server_env(workers: int, database_url: str, storage: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "S3_", "STORAGE_", "PROMETHEUS_"))
    }
    env.update(
        ENVIRONMENT="production",
        SECRET_KEY=SECRET_KEY,
        DATABASE_URL=database_url,
        REDIS_KEY_PREFIX=f"bench:{secrets.token_hex(4)}:",
        STORAGE_BACKEND="local",
        STORAGE_DIR=str(storage),
        WEB_CONCURRENCY=str(workers),
        ACCESS_TOKEN_TTL_SECONDS="3600",
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_USER_BURST=HUGE,
        RATE_LIMIT_USER_PER_MINUTE=HUGE,
        RATE_LIMIT_AUTH_BURST=HUGE,
        RATE_LIMIT_AUTH_PER_MINUTE=HUGE,
        # The production default (INFO, JSON lines, an access log line per request) into the
        # server's log file: logging costs what it costs in production, off the terminal.
        LOG_LEVEL="INFO",
    )
    env.pop("LOG_FORMAT", None)
    env.update(extra)
    return env


def api_server(name: str, env: Mapping[str, str], workers: int, log: Path) -> Server:
    command = [str(BIN / "taskapi"), "serve", "--host", "127.0.0.1", "--port", "{port}"]
    return Server(name, [*command, "--workers", str(workers)], env, log)


def ceiling_server(env: Mapping[str, str], workers: int, log: Path) -> Server:
    command = [
        str(BIN / "python"), "-m", "uvicorn", "ceiling:app", "--app-dir", str(BENCH_DIR),
        "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return Server("ceiling app", command, env, log)


def cache_counts(base_url: str) -> tuple[float, float]:
    """(stats cache hits, misses) so far, summed over the server's workers."""
    text = httpx.get(f"{base_url}/ops/metrics", timeout=10).text
    counts = {"hits": 0.0, "misses": 0.0}
    for kind in counts:
        match = re.search(rf"^taskapi_stats_cache_{kind}_total\S* (\S+)$", text, re.MULTILINE)
        if match:
            counts[kind] = float(match.group(1))
    return counts["hits"], counts["misses"]


def login(base_url: str, username: str) -> str:
    response = httpx.post(
        f"{base_url}{API}/auth/login",
        json={"username": username, "password": PASSWORD},
        timeout=30,
    )
    if response.status_code != 200:
        raise BenchError(f"login as {username} failed: {response.status_code} {response.text}")
    token: str = response.json()["access_token"]
    return token


def upload_download_file(base_url: str, token: str, task_id: int) -> int:
    content = (b"0123456789abcdef" * 64 + b"\n") * (DOWNLOAD_BYTES // 1025)
    content += b"x" * (DOWNLOAD_BYTES - len(content))
    response = httpx.post(
        f"{base_url}{API}/tasks/{task_id}/files",
        headers={"Authorization": f"Bearer {token}"},
        files={"file": ("download-1mib.txt", content, "text/plain")},
        timeout=60,
    )
    if response.status_code != 201 or response.json().get("size") != DOWNLOAD_BYTES:
        raise BenchError(f"uploading the 1 MiB file failed: {response.status_code} {response.text}")
    file_id: int = response.json()["id"]
    return file_id


def first_difference(api: object, ceiling: object, where: str = "body") -> str | None:
    """Where two JSON documents first differ: `body.items[3].tags: API [...], ceiling [...]`."""
    if isinstance(api, dict) and isinstance(ceiling, dict):
        if api.keys() != ceiling.keys():
            return f"{where} keys: API {sorted(api)}, ceiling {sorted(ceiling)}"
        for key in api:
            if found := first_difference(api[key], ceiling[key], f"{where}.{key}"):
                return found
        return None
    if isinstance(api, list) and isinstance(ceiling, list):
        if len(api) != len(ceiling):
            return f"{where}: API {len(api)} items, ceiling {len(ceiling)}"
        for index, (left, right) in enumerate(zip(api, ceiling, strict=True)):
            if found := first_difference(left, right, f"{where}[{index}]"):
                return found
        return None
    return None if api == ceiling else f"{where}: API {api!r:.200}, ceiling {ceiling!r:.200}"


def feed_problem(response: httpx.Response) -> str | None:
    """Why a feed scenario's page is not the full page of FEED_PAGE it should be, or None."""
    body = response.json()
    items = body.get("items")
    if not isinstance(items, list) or len(items) != FEED_PAGE or body.get("has_more") is not True:
        count = len(items) if isinstance(items, list) else "no"
        has_more = body.get("has_more")
        return f"the feed page has {count} events (has_more {has_more}), not {FEED_PAGE} and more"
    return None


def comparable(body: object) -> object:
    """A body as API and ceiling must agree on it: a feed page's next_cursor as the position it
    encodes (xid, event id), since its third value is a time (now, on the last page)."""
    if isinstance(body, dict) and isinstance(body.get("next_cursor"), str) and "has_more" in body:
        try:
            values = CURSORS.decode(body["next_cursor"], FEED_FINGERPRINT)
        except InvalidCursor:
            return body
        return {**body, "next_cursor": values[:2]}
    return body


def _short(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:200]}"


class PhaseRunner:
    """Everything measured with one worker count."""

    def __init__(
        self, workers: int, options: Options, wrk: Wrk, workdir: Path, size: Size = SIZES["heavy"]
    ) -> None:
        self.workers = workers
        self.options = options
        self.wrk = wrk
        self.workdir = workdir
        self.size = size
        self.phase = Phase(workers, size)
        self.urls: dict[Target, str] = {}

    def say(self, text: str) -> None:
        print(f"  [{self.workers}w {self.size.key}] {text}", flush=True)

    def probe(self, scenario: Scenario, outcome: Outcome) -> bool:
        """One request, checked; notes what the scenario really measures (totals, cache)."""
        request = scenario.probe or scenario.workload.first
        response = httpx.request(
            request.method,
            self.urls[scenario.target] + request.path,
            headers=dict(scenario.headers),
            content=request.body or None,
            timeout=30,
        )
        if response.status_code != scenario.expect:
            outcome.broken = f"probe: expected {scenario.expect}, got {_short(response)}"
            return False
        if request.path.startswith(f"{API}/tasks") and request.method == "GET" and response.content:
            body = response.json()
            if "total" in body and "items" in body:
                outcome.notes.append(f"total {body['total']:,}")
        if request.path.startswith(f"{API}/events") and (problem := feed_problem(response)):
            outcome.broken = problem
            return False
        if scenario.target == "ceiling":
            api = httpx.get(
                self.urls["api"] + request.path, headers=dict(scenario.headers), timeout=30
            )
            if api.status_code != 200:
                outcome.broken = f"the API's answer failed: {_short(api)}"
                return False
            api_body, ceiling_body = comparable(api.json()), comparable(response.json())
            if difference := first_difference(api_body, ceiling_body):
                outcome.broken = f"the ceiling's body differs from the API's: {difference}"
                return False
            same_bytes = api.content == response.content
            outcome.notes.append("body = API's" + (" (byte for byte)" if same_bytes else ""))
        return True

    def measure(self, scenario: Scenario, paired: bool = False) -> Outcome:
        connections = scenario.connections or self.options.connections
        outcome = Outcome(scenario, connections)
        if scenario.detail:
            outcome.notes.append(scenario.detail)
        self.phase.outcomes[scenario.key] = outcome
        try:
            if not self.probe(scenario, outcome):
                self.say(f"{scenario.label}: BROKEN, {outcome.broken}")
                return outcome
        except httpx.HTTPError as error:
            outcome.broken = f"probe failed: {type(error).__name__}: {error}"
            self.say(f"{scenario.label}: BROKEN, {outcome.broken}")
            return outcome
        url = self.urls[scenario.target]
        if self.options.warmup:
            warm = self.wrk.run(
                url,
                scenario.headers,
                scenario.warmup or scenario.workload,
                connections,
                self.options.warmup,
            )
            outcome.warmup_errors = warm.error_count
            self.check_slots(outcome, warm, "warm-up")
        if paired:
            ceiling_key = PAIRED_CEILINGS.get(scenario.key, "ceiling")
            outcome.ceiling = self.ceiling_alongside(connections, ceiling_key)
            if outcome.ceiling is None:
                outcome.notes.append("the ceiling run alongside failed: vs the first one")
        stats_before = cache_counts(url) if scenario.key.startswith("stats") else None
        seconds = max(self.options.duration, scenario.min_seconds)
        if seconds != self.options.duration:
            outcome.notes.append(f"{seconds} s run")
        result = self.wrk.run(url, scenario.headers, scenario.workload, connections, seconds)
        outcome.result = result
        if 0 < result.requests < FEW_REQUESTS:
            outcome.notes.append(f"only {result.requests} requests: p99 is rough")
        self.check_slots(outcome, result, "run")
        if stats_before is not None:
            self.check_cache(scenario, outcome, stats_before, cache_counts(url))
        if outcome.warmup_errors:
            outcome.notes.append(f"{outcome.warmup_errors} errors in the warm-up")
        status = "ok" if outcome.ok else "INVALID"
        alongside = f" (ceiling just before: {outcome.ceiling.rps:,.0f})" if outcome.ceiling else ""
        self.say(
            f"{scenario.label}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.1f} ms, "
            f"p99 {result.p99_ms:.1f} ms, errors {result.describe_errors()} [{status}]{alongside}"
        )
        return outcome

    def ceiling_alongside(self, connections: int, key: str = "ceiling") -> WrkResult | None:
        """The ceiling (scenario `key`) again, right before a scenario's run. The machine's
        speed drifts by tens of percent within a run (other tenants, frequency): one ceiling
        measured minutes earlier made ratios swing with it, paired runs cancel most of that."""
        ceiling = self.phase.outcomes[key].scenario
        result = self.wrk.run(
            self.urls["ceiling"], ceiling.headers, ceiling.workload, connections,
            self.options.duration,
        )  # fmt: skip
        return result if result.requests and not result.error_count else None

    @staticmethod
    def check_slots(outcome: Outcome, result: WrkResult, run: str) -> None:
        if result.overlaps or result.unmatched:
            outcome.broken = (
                f"{run}: {result.overlaps} requests sent to a task already in flight, "
                f"{result.unmatched} responses matching no task in flight"
            )

    @staticmethod
    def check_cache(
        scenario: Scenario,
        outcome: Outcome,
        before: tuple[float, float],
        after: tuple[float, float],
    ) -> None:
        hits, misses = after[0] - before[0], after[1] - before[1]
        rate = hits / (hits + misses) if hits + misses else 0.0
        outcome.notes.append(f"cache hits {rate:.0%}")
        if scenario.key == "stats-hit" and rate < 0.95:
            outcome.broken = f"only {rate:.0%} of the stats reads were cache hits"
        if scenario.key == "stats-miss" and hits:
            outcome.broken = f"{hits:.0f} stats reads were cache hits with the cache off"

    def storm(self, scenarios: Mapping[str, Scenario]) -> None:
        """The list at a small concurrency alone, then during a storm of logins."""
        list_scenario, logins = scenarios["storm-list"], scenarios["login"]
        storm = Storm(self.measure(list_scenario))
        self.phase.storm = storm
        if not storm.list_alone.ok:
            storm.broken = "the list alone failed"
            return
        api = self.urls["api"]
        seconds = self.options.duration
        storm_process = self.wrk.start(
            api, logins.headers, logins.workload, self.options.storm_logins,
            seconds + 2 * STORM_LEAD_S,
        )  # fmt: skip
        time.sleep(STORM_LEAD_S)  # the storm is in full swing before the list is measured
        try:
            storm.list_during = self.wrk.run(
                api, list_scenario.headers, list_scenario.workload, storm.list_alone.connections,
                seconds,
            )  # fmt: skip
        finally:
            storm.logins = self.wrk.result(storm_process)
        self.say(
            f"login storm: {storm.logins.rps:,.0f} logins/s; list p99 alone "
            f"{storm.list_alone.result.p99_ms if storm.list_alone.result else 0:.1f} ms, "
            f"during {storm.list_during.p99_ms:.1f} ms (x{storm.ratio or 0:.2f}); errors "
            f"{storm.logins.error_count + storm.list_during.error_count}"
        )

    def run(self) -> Phase:
        workers = self.workers
        scratch = self.workdir / f"{workers}-workers-{self.size.key}"
        scratch.mkdir()
        self.phase.busy_before = cpu_busy_share()
        if self.phase.busy_before > BUSY_WARNING:
            self.say(
                f"WARNING: {self.phase.busy_before:.0%} of the CPU is busy before anything of "
                "ours runs: other processes will skew the figures"
            )
        database_url = clone_database()
        pool = pool_per_process(workers, asyncio.run(_max_connections()))
        env = server_env(
            workers, database_url, scratch / "storage",
            DATABASE_POOL_SIZE=str(pool), DATABASE_MAX_OVERFLOW="0",
        )  # fmt: skip
        self.say(f"database pool: {pool} connections per process")
        prefixes = [env["REDIS_KEY_PREFIX"]]
        self.say(f"taskapi serve --workers {workers} (log: {scratch / 'api.log'})")
        try:
            with api_server("taskapi serve", env, workers, scratch / "api.log") as api:
                api.start("/ops/ready")
                self.urls["api"] = api.url
                self.measure_all(env, scratch, prefixes)
        finally:
            delete_redis_keys(prefixes)
            self.phase.busy_after = cpu_busy_share()
            for log in sorted(scratch.glob("*.log")):
                if errors := log_errors(log):
                    self.phase.log_errors[log.name] = errors
                    self.say(f"ERROR lines: {describe_log_errors({log.name: errors})}")
                    if other := [line for line in errors if "ClientDisconnect" not in line]:
                        self.say(f"the first other one: {other[0][:600]}")
        return self.phase

    def measure_all(self, env: dict[str, str], scratch: Path, prefixes: list[str]) -> None:
        api_url = self.urls["api"]
        size = self.size
        fixtures = asyncio.run(_fixtures(env["DATABASE_URL"], size))
        token = login(api_url, size.user)
        projects_token = login(api_url, size.projects_user)
        download_id = (
            upload_download_file(api_url, token, fixtures.cancelled[0]) if size.full else 0
        )
        # The list's current tag, for the conditional list (the seed is not changed before it).
        list_etag = httpx.get(
            f"{api_url}{API}/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).headers.get("etag", "*")
        scenarios = build_scenarios(
            fixtures, token, projects_token, download_id, self.options, list_etag, size
        )
        auth = dict(scenarios["list"].headers)

        # The ceiling app stays up (idle in between): each scenario compared with it is paired
        # with a ceiling run just before its own.
        ceiling_env = size.ceiling_env(env)
        with ceiling_server(ceiling_env, self.workers, scratch / "ceiling.log") as ceiling:
            ceiling.start(f"{API}/tasks", headers=auth)
            self.urls["ceiling"] = ceiling.url
            self.measure(scenarios["ceiling"])
            for key, ceiling_key in PAIRED_CEILINGS.items():
                if self.wanted(key) and key in scenarios:
                    self.measure(scenarios[ceiling_key])
            self.measure_api(env, scratch, prefixes, scenarios)

    def wanted(self, key: str) -> bool:
        return self.options.only is None or key in self.options.only

    def measure_only(self, scenarios: Mapping[str, Scenario]) -> None:
        """What --only asks for beyond the reads (no second server: stats-miss is left out)."""
        if not self.size.full:
            return
        if self.wanted("login"):
            self.measure(scenarios["login"])
        if self.wanted("storm"):
            self.storm(scenarios)
        for key in ("create", "patch", "transition", "upload"):
            if self.wanted(key):
                self.measure(scenarios[key], paired=True)

    def measure_api(
        self,
        env: dict[str, str],
        scratch: Path,
        prefixes: list[str],
        scenarios: Mapping[str, Scenario],
    ) -> None:
        # Reads first: they see the seeded data set, unchanged by the writes below.
        reads = ("list", "list-304", "list-projects", "project", "feed", "filtered", "search",
                 "get", "stats-hit", "download")  # fmt: skip
        for key in reads:
            if self.wanted(key) and key in scenarios:
                self.measure(scenarios[key], paired=True)
        if self.options.only is not None:
            self.measure_only(scenarios)
            return

        # A second server whose stats are never cached, over the same database, started only
        # for this (the first one idles meanwhile).
        nocache_env = {
            **env,
            "STATS_CACHE_TTL_SECONDS": "0",
            "REDIS_KEY_PREFIX": f"bench:{secrets.token_hex(4)}:",
        }
        prefixes.append(nocache_env["REDIS_KEY_PREFIX"])
        nocache = api_server(
            "taskapi serve (STATS_CACHE_TTL_SECONDS=0)",
            nocache_env,
            self.workers,
            scratch / "api-nocache.log",
        )
        try:
            with nocache:
                nocache.start("/ops/ready")
                self.urls["api-nocache"] = nocache.url
                self.measure(scenarios["stats-miss"], paired=True)
        except BenchError as error:
            outcome = Outcome(scenarios["stats-miss"], self.options.connections)
            outcome.broken = str(error).splitlines()[0]
            self.phase.outcomes["stats-miss"] = outcome
            self.say(f"stats (cache miss): BROKEN, {error}")
        if not self.size.full:
            return

        self.measure(scenarios["login"])
        self.storm(scenarios)
        for key in ("create", "patch", "transition", "upload"):
            self.measure(scenarios[key], paired=True)


def cpu_busy_share(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time spent busy over `seconds` (all cores, /proc/stat)."""

    def sample() -> tuple[int, int]:
        # cpu  user nice system idle iowait irq softirq steal (guest time is already in user)
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(values), values[3] + values[4]

    try:
        total_0, idle_0 = sample()
        time.sleep(seconds)
        total_1, idle_1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0  # not Linux: no warning rather than a wrong one
    total = total_1 - total_0
    return 1 - (idle_1 - idle_0) / total if total > 0 else 0.0


def background_note(phase: Phase) -> str:
    busiest = max(phase.busy_before, phase.busy_after)
    note = (
        f"other processes' CPU use with our servers stopped: {phase.busy_before:.0%} before, "
        f"{phase.busy_after:.0%} after"
    )
    if busiest > BUSY_WARNING:
        note += " -- WARNING: the machine was not idle, these figures are low and noisy"
    return note + "."


LOG_ERROR = re.compile(r'"level": "(ERROR|CRITICAL)"|^(ERROR|CRITICAL):')


def log_errors(log: Path) -> list[str]:
    """Errors in a server log: each JSON line at ERROR or above (the API), each uvicorn
    `ERROR:` line (the ceiling) and each bare traceback, summed up by its last lines; a
    traceback right after an error line belongs to it."""
    errors: list[str] = []
    traceback: list[str] | None = None
    previous_was_error = False
    with open(log, errors="replace") as lines:
        for raw in [*lines, "end of log"]:
            line = raw.rstrip()
            if traceback is not None:
                traceback.append(line)
                if line and not line[0].isspace():  # "SomeError: message" ends a traceback
                    summary = " | ".join(traceback[-3:])
                    if previous_was_error:
                        errors[-1] += " | " + summary
                    else:
                        errors.append(summary)
                    traceback, previous_was_error = None, False
            elif line.startswith("Traceback (most recent call last)"):
                traceback = [line]
            else:
                previous_was_error = bool(LOG_ERROR.search(line))
                if previous_was_error:
                    errors.append(line)
    return errors


def describe_log_errors(errors: Mapping[str, list[str]]) -> str:
    parts = []
    for name, lines in errors.items():
        disconnects = sum(1 for line in lines if "ClientDisconnect" in line)
        part = f"{len(lines)} in {name}"
        if disconnects:
            # wrk stops by closing its connections: an upload in flight then loses its client.
            part += f" ({disconnects} of them ClientDisconnect: uploads cut off as wrk stops)"
        parts.append(part)
    return "; ".join(parts)


def delete_redis_keys(prefixes: Sequence[str]) -> None:
    """Remove what the run left in the shared Redis (rate-limit buckets, cached stats)."""
    url = os.environ.get("REDIS_URL") or Settings.model_fields["redis_url"].default
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            for prefix in prefixes:
                batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
                for start in range(0, len(batch), 1000):
                    client.delete(*batch[start : start + 1000])
        finally:
            client.close()


def redis_version() -> str:
    url = os.environ.get("REDIS_URL") or Settings.model_fields["redis_url"].default
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except (redis.RedisError, OSError) as error:
        raise BenchError(
            f"Redis is not reachable at {url} ({error}); start it (`make services`)."
        ) from error


# --- the report ------------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    align: str  # one letter per column: l(eft) for text, r(ight) for numbers
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        columns = range(len(self.header))
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in columns]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(
                cell.rjust(width) if side == "r" else cell.ljust(width)
                for cell, width, side in zip(cells, widths, self.align, strict=True)
            ).rstrip()

        out = [self.title, line(self.header), "  ".join("-" * width for width in widths)]
        out += [line(row) for row in self.rows]
        out += self.notes
        return "\n".join(out)

    def markdown(self) -> str:
        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        rule = "|" + "|".join("---:" if side == "r" else "---" for side in self.align) + "|"
        out = [f"### {self.title}", "", line(self.header), rule, *(line(row) for row in self.rows)]
        if self.notes:
            out += ["", *self.notes]
        return "\n".join(out)


def _share(value: float, base: float | None) -> str:
    return f"{value / base:.0%}" if base else "n/a"


def _times(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


SCENARIO_ORDER = (
    "ceiling", "list", "list-304", "ceiling-projects", "list-projects", "ceiling-project",
    "project", "ceiling-feed", "feed",
    "filtered", "search", "get", "stats-hit", "stats-miss", "download",
    "login", "create", "patch", "transition", "upload",
)  # fmt: skip
NOT_RELATIVE = frozenset(
    {"ceiling", "ceiling-projects", "ceiling-project", "ceiling-feed", "login"}
)  # no ratio to the ceiling: it is the ceiling / no list


# p99 compared with the ceiling's too
LISTS = frozenset({"list", "list-projects", "project", "feed"})


def scenario_table(phase: Phase, options: Options) -> Table:
    rows: list[tuple[str, ...]] = []
    for key in SCENARIO_ORDER:
        outcome = phase.outcomes.get(key)
        if outcome is None:
            continue
        result = outcome.result
        label = outcome.scenario.label
        if result is None:
            rows.append((label, str(outcome.connections), "-", "-", "-", "-", "-", "-", "-",
                         f"BROKEN: {outcome.broken}"))  # fmt: skip
            continue
        paired = phase.ceiling_for(key)
        ceiling_rps = paired.rps if paired else None
        ceiling_p99 = paired.p99_ms if paired else None
        alongside = "" if key in NOT_RELATIVE or paired is None else f"{paired.rps:,.0f}"
        vs_rps = "" if key in NOT_RELATIVE else _share(result.rps, ceiling_rps)
        vs_p99 = _times(result.p99_ms, ceiling_p99) if key in LISTS else ""
        notes = list(outcome.notes)
        if outcome.broken:
            notes.insert(0, f"INVALID: {outcome.broken}")
        errors = result.describe_errors() + ("*" if outcome.warmup_errors else "")
        rows.append((label, str(outcome.connections), f"{result.rps:,.0f}",
                     f"{result.p50_ms:.1f}", f"{result.p99_ms:.1f}", errors, alongside, vs_rps,
                     vs_p99, "; ".join(notes)))  # fmt: skip
    workers = f"{phase.workers} worker{'s' if phase.workers > 1 else ''}, {phase.size.label}"
    log_note = "server log ERROR lines: " + (describe_log_errors(phase.log_errors) or "none.")
    return Table(
        f"{workers}: wrk -t1, {options.duration} s per scenario after a {options.warmup} s "
        "warm-up",
        ("scenario", "conns", "req/s", "p50 ms", "p99 ms", "errors", "ceiling req/s",
         "req/s vs ceiling", "p99 vs ceiling", "notes"),
        rows,
        align="lrrrrrrrrl",
        notes=["ceiling req/s: the ceiling measured again just before this scenario (same "
               "connections and duration; for the list with 3 projects, the project list and the "
               "feed page, the ceiling answering that same page); vs ceiling: the scenario's "
               "req/s as a share of that run's, and for the lists and the feed their p99 as a "
               "multiple of that run's.",
               "errors: connect/read/write errors, timeouts and responses >= 400; "
               "* = errors in the warm-up too.",
               log_note, background_note(phase)],
    )  # fmt: skip


def storm_table(phases: Sequence[Phase], options: Options) -> Table:
    rows: list[tuple[str, ...]] = []
    for phase in phases:
        storm = phase.storm
        if storm is None:
            continue
        alone, during, logins = storm.list_alone.result, storm.list_during, storm.logins
        errors = sum(result.error_count for result in (alone, during, logins) if result)
        rows.append(
            (
                str(phase.workers),
                f"{logins.rps:,.0f}" if logins else "-",
                f"{alone.rps:,.0f}" if alone else "-",
                f"{alone.p99_ms:.1f}" if alone else "-",
                f"{during.rps:,.0f}" if during else "-",
                f"{during.p99_ms:.1f}" if during else "-",
                f"{storm.ratio:.2f}x" if storm.ratio is not None else "-",
                str(errors) if storm.broken is None else f"BROKEN: {storm.broken}",
            )
        )
    return Table(
        f"Login storm: {options.storm_logins} connections logging in while {options.storm_list} "
        f"list; the same list load alone first",
        ("workers", "logins/s", "list req/s alone", "list p99 alone ms", "list req/s in storm",
         "list p99 in storm ms", "p99 in storm / alone", "errors"),
        rows,
        align="rrrrrrrl",
    )  # fmt: skip


def goal_rows(phase: Phase) -> list[tuple[str, ...]]:
    """PASS/FAIL per goal; a scenario that could not be measured validly FAILs its goal."""
    workers = f"{phase.workers} {phase.size.key}"
    rows: list[tuple[str, ...]] = []

    def measured(key: str) -> WrkResult | None:
        outcome = phase.outcomes.get(key)
        return outcome.result if outcome is not None and outcome.ok else None

    def add(goal: str, value: str | None, passed: bool) -> None:
        verdict = "PASS" if passed else "FAIL"
        rows.append((workers, goal, value or "not measured", verdict))

    result, ceiling = measured("list"), phase.ceiling_for("list")
    goal = f"list req/s >= {LIST_GOAL:.0%} of ceiling and p99 <= {LIST_P99_GOAL:g}x ceiling"
    if result and ceiling:
        share, p99 = result.rps / ceiling.rps, result.p99_ms / ceiling.p99_ms
        add(goal, f"{share:.0%}, p99 {p99:.2f}x", share >= LIST_GOAL and p99 <= LIST_P99_GOAL)
    else:
        add(goal, None, False)
    # Issue 17: projects cost the list no more than 10% of its ratio to the ceiling, each list
    # against a ceiling answering its own page.
    plain, plain_ceiling = result, ceiling
    with_projects, projects_ceiling = measured("list-projects"), phase.ceiling_for("list-projects")
    goal = f"list with 3 projects: its ratio >= {1 - PROJECTS_LIST_DRIFT:.0%} of the list's"
    if plain and plain_ceiling and with_projects and projects_ceiling:
        share = plain.rps / plain_ceiling.rps
        projects_share = with_projects.rps / projects_ceiling.rps
        add(goal, f"{projects_share:.0%} vs {share:.0%} (x{projects_share / share:.2f})",
            projects_share >= share * (1 - PROJECTS_LIST_DRIFT))  # fmt: skip
    else:
        add(goal, None, False)
    result, ceiling = measured("project"), phase.ceiling_for("project")
    goal = f"project list req/s >= {LIST_GOAL:.0%} of its ceiling"
    if result and ceiling:
        add(goal, f"{result.rps / ceiling.rps:.0%}", result.rps / ceiling.rps >= LIST_GOAL)
    else:
        add(goal, None, False)
    shares = [(key, READ_GOAL) for key in READ_SCENARIOS] + [("create", CREATE_GOAL)]
    if not phase.size.full:  # (the typical size measures its reads only)
        shares = [(key, minimum) for key, minimum in shares if key in TYPICAL_READS]
    for key, minimum in shares:
        result, ceiling = measured(key), phase.ceiling_for(key)
        label = phase.outcomes[key].scenario.label if key in phase.outcomes else key
        goal = f"{label} req/s >= {minimum:.0%} of ceiling"
        if result and ceiling:
            add(goal, f"{result.rps / ceiling.rps:.0%}", result.rps / ceiling.rps >= minimum)
        else:
            add(goal, None, False)
    storm = phase.storm
    if not phase.size.full:
        return rows
    goal = f"list p99 during the login storm <= {STORM_GOAL:g}x alone"
    if storm is not None and storm.ok and storm.ratio is not None:
        add(goal, f"{storm.ratio:.2f}x", storm.ratio <= STORM_GOAL)
    else:
        add(goal, None, False)
    return rows


def build_report(
    phases: Sequence[Phase],
    options: Options,
    machine: list[str],
    wall_s: float,
    side_runs: Sequence[SideRun] = (),
) -> list[Table]:
    tables = [scenario_table(phase, options) for phase in phases]
    if phases:
        tables.append(storm_table(phases, options))
    goals = [row for phase in phases for row in goal_rows(phase)]
    for side in side_runs:
        if side.table is not None:
            tables.append(side.table)
        description, measured, passed = side.goal or (side.name, None, False)
        goals.append(("1", description, measured or "not measured", "PASS" if passed else "FAIL"))
    busy = [
        f"{p.workers} {p.size.key}"
        for p in phases
        if max(p.busy_before, p.busy_after) > BUSY_WARNING
    ]
    goal_notes = (
        [f"WARNING: other processes used the CPU around the {'/'.join(busy)}-worker run(s): "
         "those verdicts are not trustworthy."]
        if busy else []
    )  # fmt: skip
    header = ("workers", "goal", "measured", "verdict")
    tables.append(Table("Goals", header, goals, "rlrl", notes=goal_notes))
    described = [tuple(line.split(": ", 1)) for line in machine]
    finished = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    tables.append(
        Table(
            "Machine",
            ("", "description"),
            described,
            align="ll",
            notes=[f"Whole run: {wall_s / 60:.1f} min, finished {finished}."],
        )
    )
    return tables


def invalid_measurements(phases: Sequence[Phase], side_runs: Sequence[SideRun]) -> list[str]:
    problems = [f"{side.name}: {side.broken}" for side in side_runs if side.broken]
    for phase in phases:
        for outcome in phase.outcomes.values():
            if found := outcome.problems():
                label = outcome.scenario.label
                problems.append(
                    f"{phase.workers} worker(s) {phase.size.key}, {label}: {'; '.join(found)}"
                )
        if phase.storm is not None and not phase.storm.ok and phase.storm.list_alone.ok:
            problems.append(f"{phase.workers} worker(s), login storm: errors or not measured")
    return problems


# --- scenarios that are scripts of their own ----------------------------------------------------


@dataclass
class SideRun:
    name: str
    table: Table | None = None
    goal: tuple[str, str, bool] | None = None  # (the goal, what was measured, whether it is met)
    broken: str | None = None


def run_side_script(name: str, options: Options, workdir: Path) -> SideRun:
    """One of SIDE_SCRIPTS in a process of its own (its progress passes through), its table
    read back from the JSON it writes."""
    script = SIDE_SCRIPTS[name][0]
    report = workdir / f"{name}.json"
    command = [sys.executable, str(script), "--json", str(report)]
    command += ["--quick"] if options.quick else []
    command += ["--keep"] if options.keep else []
    status = subprocess.run(command, cwd=ROOT, check=False).returncode  # noqa: S603 - our script
    if status != 0 or not report.exists():
        return SideRun(name, broken=f"{script.relative_to(ROOT)} exited with status {status}")
    data = json.loads(report.read_text())
    table = Table(data["title"], tuple(data["header"]), [tuple(row) for row in data["rows"]],
                  data["align"], notes=data["notes"])  # fmt: skip
    goal = data.get("goal")
    if goal is None:
        return SideRun(name, table)
    return SideRun(name, table, (goal["description"], goal["measured"], goal["passed"]))


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.monotonic()
    try:
        wrk_path = ensure_wrk()
        redis_ver = redis_version()
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="taskapi-bench-"))
    wrk = Wrk(wrk_path, workdir)
    phases: list[Phase] = []
    side_runs: list[SideRun] = []
    # `--only webhooks` or `--only batch` alone: no template, no API servers.
    serve = options.only is None or bool(options.only - SIDE_SCRIPTS.keys())
    failed = True
    try:
        base_env = server_env(1, "", workdir / "storage")
        postgres_version = build_template(base_env) if serve else asyncio.run(_admin([]))
        machine = describe_machine(wrk_path, postgres_version, redis_ver)
        for workers in options.workers if serve else ():
            for size in options.sizes:
                print(f"\n== {workers} worker(s), {SIZES[size].label} ==", flush=True)
                phases.append(PhaseRunner(workers, options, wrk, workdir, SIZES[size]).run())
        for name, (script, what) in SIDE_SCRIPTS.items():
            if options.only is None or name in options.only:
                print(f"\n== {what} ({script.relative_to(ROOT)}) ==", flush=True)
                side_runs.append(run_side_script(name, options, workdir))
        failed = False
    except BenchError as error:
        print(f"\nbench: {error}", file=sys.stderr)
    finally:
        if options.keep or failed:
            print(f"\nkept: {workdir} (logs, request files, stored files)", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if not options.keep:
            with contextlib.suppress(BenchError):
                drop_databases()
    if failed:
        return 1

    tables = build_report(phases, options, machine, time.monotonic() - started, side_runs)
    print()
    print("\n\n".join(table.text() for table in tables))
    if options.markdown is not None:
        options.markdown.parent.mkdir(parents=True, exist_ok=True)
        intro = (
            f"# make bench\n\nwrk -t1 on loopback, {options.connections} connections, "
            f"{options.duration} s per scenario after a {options.warmup} s warm-up.\n"
        )
        options.markdown.write_text(
            intro + "\n" + "\n\n".join(table.markdown() for table in tables) + "\n"
        )
        print(f"\nMarkdown report: {options.markdown}")
    problems = invalid_measurements(phases, side_runs)
    if problems:
        print("\nINVALID MEASUREMENTS (the figures above do not mean what they say):")
        print("\n".join(f"  - {problem}" for problem in problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
