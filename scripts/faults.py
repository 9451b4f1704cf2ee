"""Faults under load: break each dependency of a real `taskapi serve` while clients keep working.

    .venv/bin/python scripts/faults.py [--scenarios pg-stop,s3-cut] [--before 3 --fault 3 --after 6]

Starts its own throwaway PostgreSQL cluster (initdb in a temporary directory, a free port), a
redis-server (free port) and a moto S3 server behind a TCP link that can be cut, migrates a
database, and starts `taskapi serve --workers 1` against them (STORAGE_BACKEND=s3 through the
link, rate limits far out of reach). The shared PostgreSQL and Redis are never touched.

For each scenario a few concurrent clients run a steady mixed load (list, create, get, stats, a
small upload, a download) for `--before` seconds, the fault is injected and held for `--fault`
seconds, the dependency is restored, and the load goes on for `--after` seconds. Every response
is recorded and classified:

- 2xx: served (for Redis faults the documented answer is "served, degraded");
- documented 503: `database_unavailable` with Retry-After during a PostgreSQL fault,
  `storage_unavailable` from an attachment endpoint during an S3 fault;
- unexpected 5xx: any other 5xx (every 500 is one);
- other: 4xx and client-side errors (timeouts, connection resets): a hang shows up here.

The table gives, per scenario, the error window (first to last failed response) and the recovery
time (from the dependency's restoration to the first of `--run` consecutive 2xx responses). The
exit status is 1 when any scenario saw an unexpected 5xx or an "other" failure, or did not
recover before the end of its `--after` phase. Everything started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import boto3
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python scripts/faults.py` puts only scripts/ on the path
    sys.path.insert(0, str(ROOT))

from tests.fault_servers import (  # noqa: E402
    Link,
    MotoProcess,
    PostgresCluster,
    RedisServer,
    free_port,
)

BIN = Path(sys.executable).parent  # the venv this script runs in (make faults: .venv/bin)
API = "/api/v1"
DATABASE = "taskapi_faults"
PASSWORD = "faults-password"
SECRET = "faults-secret-key-that-is-long-enough-0123456789"
REQUEST_TIMEOUT = 15.0  # far above any documented wait: a request that takes this long hung
ATTACHMENT_OPS = frozenset({"upload", "download"})
# The load mix: operation -> weight.
MIX = {"list": 3, "create": 2, "get": 3, "stats": 2, "upload": 1, "download": 2}


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    postgres: PostgresCluster
    redis: RedisServer
    moto: MotoProcess
    link: Link
    bucket: str
    workdir: Path
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "S3_", "DATABASE_", "REDIS_", "RATE_LIMIT_"))
        }
        env.update(
            ENVIRONMENT="development",
            SECRET_KEY=SECRET,
            DATABASE_URL=self.postgres.url(DATABASE),
            REDIS_URL=self.redis.url,
            STORAGE_BACKEND="s3",
            S3_ENDPOINT_URL=self.link.url,
            S3_BUCKET=self.bucket,
            S3_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            RATE_LIMIT_USER_BURST="1000000",
            RATE_LIMIT_USER_PER_MINUTE="1000000",
            RATE_LIMIT_AUTH_BURST="100000",
            RATE_LIMIT_AUTH_PER_MINUTE="100000",
            LOG_LEVEL="WARNING",
            LOG_FORMAT="text",
            STORAGE_DIR=str(self.workdir / "storage"),
        )
        return env

    def create_bucket(self) -> None:
        boto3.client(
            "s3",
            endpoint_url=self.moto.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=self.bucket)

    def launch(self) -> None:
        """Start `taskapi serve` (one process); its output goes to serve.log."""
        argv = [str(BIN / "taskapi"), "serve", "--workers", "1", "--host", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.server = subprocess.Popen(  # noqa: S603 - our own venv's executable
                [*argv, "--port", str(self.port)],
                env=self.env(),
                cwd=self.workdir,  # so no developer's .env is read
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, limit: float) -> float:
        """Until /ops/ready says every check is ok; returns the seconds waited."""
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while True:
                self.check_server()
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await client.get("/ops/ready")
                    if response.status_code == 200 and response.json()["status"] == "ok":
                        return time.monotonic() - started
                if time.monotonic() - started > limit:
                    raise RuntimeError(f"the service was not ready within {limit:.0f} s")
                await asyncio.sleep(0.1)

    def check_server(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            raise RuntimeError(f"taskapi serve exited with {self.server.returncode}")

    def stop_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        self.server.terminate()
        try:
            self.server.wait(40)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Record:
    op: str
    start: float  # seconds since the scenario began
    end: float
    status: int  # 0: no HTTP response (timeout, connection error)
    code: str | None = None  # the problem code of a 5xx
    retry_after: bool = False
    error: str | None = None


@dataclass
class Client:
    http: httpx.AsyncClient
    token: str
    task_ids: list[int]
    file_ids: list[int]
    rng: random.Random

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def request(self, op: str) -> httpx.Response:
        http, headers = self.http, self.headers
        if op == "list":
            return await http.get(f"{API}/tasks", params={"limit": 20}, headers=headers)
        if op == "create":
            title = f"load {self.rng.randrange(1_000_000)}"
            response = await http.post(f"{API}/tasks", json={"title": title}, headers=headers)
            if response.status_code == 201:
                self.task_ids.append(response.json()["id"])
            return response
        if op == "get":
            task_id = self.rng.choice(self.task_ids)
            return await http.get(f"{API}/tasks/{task_id}", headers=headers)
        if op == "stats":
            return await http.get(f"{API}/tasks/stats", headers=headers)
        if op == "upload":
            task_id = self.rng.choice(self.task_ids)
            content = f"note {self.rng.randrange(1_000_000)}\n".encode() * 64
            response = await http.post(
                f"{API}/tasks/{task_id}/files",
                files={"file": ("note.txt", content, "text/plain")},
                headers=headers,
            )
            if response.status_code == 201:
                self.file_ids.append(response.json()["id"])
            return response
        if op == "download":
            file_id = self.rng.choice(self.file_ids)
            return await http.get(f"{API}/files/{file_id}", headers=headers)
        raise ValueError(op)


async def make_client(base_url: str, n: int, seed: int) -> Client:
    http = httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT)
    try:
        username = f"faults{n}_{seed}"
        body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        (await http.post(f"{API}/auth/register", json=body)).raise_for_status()
        login = await http.post(
            f"{API}/auth/login", json={"username": username, "password": PASSWORD}
        )
        login.raise_for_status()
        client = Client(http, login.json()["access_token"], [], [], random.Random(seed + n))  # noqa: S311
        for op in ("create", "upload"):
            (await client.request(op)).raise_for_status()
    except BaseException:
        await http.aclose()
        raise
    return client


async def drive(client: Client, t0: float, stop: asyncio.Event, records: list[Record]) -> None:
    ops, weights = list(MIX), list(MIX.values())
    while not stop.is_set():
        op = client.rng.choices(ops, weights)[0]
        start = time.monotonic()
        try:
            response = await client.request(op)
        except Exception as error:  # timeouts, resets, an unreadable body: all recorded
            end = time.monotonic()
            records.append(Record(op, start - t0, end - t0, 0, error=type(error).__name__))
            await asyncio.sleep(0.05)
            continue
        end = time.monotonic()
        code = None
        if response.status_code >= 500:
            with contextlib.suppress(ValueError, AttributeError):
                code = response.json().get("code")
        records.append(
            Record(
                op,
                start - t0,
                end - t0,
                response.status_code,
                code,
                "retry-after" in response.headers,
            )
        )
        if response.status_code >= 400:
            await asyncio.sleep(0.02)  # as a client backing off a little would


# --- scenarios --------------------------------------------------------------------------------


Action = Callable[[Stack], Awaitable[None]]


async def _noop(stack: Stack) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    name: str
    dependency: str  # postgres | redis | s3
    inject: Action
    restore: Action
    hold: bool = True  # False: the fault is its own restoration (a restart)


async def _call(function: Callable[[], object]) -> None:
    function()


SCENARIOS = [
    # pg_ctl stop -m immediate: every backend dies mid-query, new connections are refused.
    Scenario("pg-stop", "postgres", lambda s: s.postgres.stop(), lambda s: s.postgres.start()),
    # pg_ctl stop -m fast then start: backends are terminated, then "the database system is
    # starting up" for a moment.
    Scenario("pg-restart", "postgres", lambda s: s.postgres.restart("fast"), _noop, hold=False),
    # SIGSTOP on the postmaster and its children: connections stay open, nothing answers.
    Scenario(
        "pg-pause",
        "postgres",
        lambda s: _call(s.postgres.pause),
        lambda s: _call(s.postgres.resume),
    ),
    Scenario("redis-kill", "redis", lambda s: s.redis.kill(), lambda s: s.redis.start()),
    Scenario(
        "redis-pause",
        "redis",
        lambda s: _call(s.redis.pause),
        lambda s: _call(s.redis.resume),
    ),
    Scenario("s3-cut", "s3", lambda s: s.link.cut(), lambda s: s.link.restore()),
]
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@dataclass
class Outcome:
    scenario: str
    dependency: str
    fault_at: float
    restored_at: float
    end: float
    requests: int
    ok: int
    ok_before_fault: int  # 2xx answers that ended before the fault was injected
    failed_before_fault: int  # anything else that did (there should be none)
    documented: int
    unexpected_5xx: int
    other: int
    error_window: float | None
    recovery: float | None
    max_latency: float
    failures: dict[str, int]  # "op status code" -> count, for everything not 2xx

    @property
    def passed(self) -> bool:
        return self.unexpected_5xx == 0 and self.other == 0 and self.recovery is not None


def documented(record: Record, dependency: str) -> bool:
    if record.status != 503:
        return False
    if dependency == "postgres":
        return record.code == "database_unavailable" and record.retry_after
    if dependency == "s3":
        return record.code == "storage_unavailable" and record.op in ATTACHMENT_OPS
    return False  # Redis: served, degraded; never a 503


def analyse(
    scenario: Scenario, records: list[Record], fault_at: float, restored_at: float, run: int
) -> Outcome:
    records = sorted(records, key=lambda r: r.end)
    ok = [200 <= r.status < 300 for r in records]
    docs = [documented(r, scenario.dependency) for r in records]
    unexpected = sum(1 for r, d in zip(records, docs, strict=True) if r.status >= 500 and not d)
    other = sum(
        1
        for r, good, d in zip(records, ok, docs, strict=True)
        if not good and not d and r.status < 500
    )
    failed = [r for r, good in zip(records, ok, strict=True) if not good]
    window = failed[-1].end - failed[0].end if failed else None
    recovery = None
    streak = 0
    for record, good in zip(records, ok, strict=True):
        if record.end < restored_at:
            continue
        streak = streak + 1 if good else 0
        if streak == 1:
            first = record
        if streak == run:
            recovery = max(0.0, first.end - restored_at)
            break
    failures = Counter(f"{r.op} {r.status or r.error} {r.code or ''}".strip() for r in failed)
    return Outcome(
        scenario=scenario.name,
        dependency=scenario.dependency,
        fault_at=fault_at,
        restored_at=restored_at,
        end=records[-1].end if records else 0.0,
        requests=len(records),
        ok=sum(ok),
        ok_before_fault=sum(
            1 for r, good in zip(records, ok, strict=True) if good and r.end < fault_at
        ),
        failed_before_fault=sum(1 for r in failed if r.end < fault_at),
        documented=sum(docs),
        unexpected_5xx=unexpected,
        other=other,
        error_window=window,
        recovery=recovery,
        max_latency=max((r.end - r.start for r in records), default=0.0),
        failures=dict(failures.most_common()),
    )


async def run_scenario(
    stack: Stack, scenario: Scenario, clients: list[Client], args: argparse.Namespace
) -> Outcome:
    records: list[Record] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    drivers = [asyncio.create_task(drive(client, t0, stop, records)) for client in clients]
    try:
        await asyncio.sleep(args.before)
        fault_at = time.monotonic() - t0
        await scenario.inject(stack)
        if scenario.hold:
            await asyncio.sleep(args.fault)
        await scenario.restore(stack)
        restored_at = time.monotonic() - t0
        await asyncio.sleep(args.after)
    finally:
        stop.set()
        await asyncio.gather(*drivers, return_exceptions=True)
    stack.check_server()
    if args.records:
        args.records.mkdir(parents=True, exist_ok=True)
        dump = [asdict(r) for r in sorted(records, key=lambda r: r.start)]
        (args.records / f"{scenario.name}.json").write_text(json.dumps(dump))
    return analyse(scenario, records, fault_at, restored_at, args.run)


# --- report -----------------------------------------------------------------------------------

COLUMNS = (
    "scenario",
    "requests",
    "2xx",
    "documented 503",
    "unexpected 5xx",
    "other",
    "error window s",
    "recovery s",
    "max latency s",
)


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.2f}"


def table(outcomes: list[Outcome]) -> str:
    rows = [COLUMNS] + [
        (
            o.scenario,
            str(o.requests),
            str(o.ok),
            str(o.documented),
            str(o.unexpected_5xx),
            str(o.other),
            _seconds(o.error_window, "-"),
            _seconds(o.recovery, "NONE"),
            f"{o.max_latency:.2f}",
        )
        for o in outcomes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def server_errors(log: Path, limit: int = 20) -> list[str]:
    """What the server logged as unhandled: the exceptions ending its tracebacks, with counts."""
    if not log.exists():
        return []
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if "unhandled error while serving" in line:
            counts["unhandled error while serving (a 500)"] += 1
        elif re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout)\b[^ ]*:? ", line):
            counts[line[:200]] += 1
    return [f"{count:5d} x {line}" for line, count in counts.most_common(limit)]


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default=",".join(BY_NAME),
        help=f"comma-separated, from: {', '.join(BY_NAME)} (default: all)",
    )
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load before a fault")
    parser.add_argument("--fault", type=float, default=3.0, help="seconds a fault is held")
    parser.add_argument("--after", type=float, default=6.0, help="seconds of load after restoring")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--run", type=int, default=10, help="consecutive 2xx that mean recovered")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    parser.add_argument("--records", type=Path, help="write every response to DIR/<scenario>.json")
    parser.add_argument("--log", type=Path, help="keep the server's log in this file")
    args = parser.parse_args(argv)
    if args.run < 1 or args.clients < 1:
        parser.error("--run and --clients must be at least 1")
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown or not names:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(BY_NAME)}")
    args.scenario_list = [BY_NAME[name] for name in names]
    return args


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="taskapi-faults-"))
    postgres = PostgresCluster()
    redis_server = RedisServer()
    moto = MotoProcess(str(BIN / "moto_server"))
    link = Link(moto.port)
    stack = Stack(postgres, redis_server, moto, link, f"faults-{os.getpid()}", workdir)
    outcomes: list[Outcome] = []
    errors: list[str] = []
    aborted: str | None = None

    def keep_log() -> None:
        errors.extend(server_errors(stack.log_path))
        if args.log and stack.log_path.exists():
            shutil.copyfile(stack.log_path, args.log)

    # Everything started is stopped (in reverse order) however this ends, even if a step fails.
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.push_async_callback(postgres.destroy)
        cleanup.push_async_callback(redis_server.kill)
        cleanup.callback(moto.stop)
        cleanup.push_async_callback(link.cut)
        cleanup.callback(keep_log)  # after the server stopped: its log is complete
        cleanup.callback(stack.stop_server)
        started = time.monotonic()
        await postgres.start()
        await redis_server.start()
        await asyncio.to_thread(moto.start)
        await link.restore()
        await asyncio.to_thread(stack.create_bucket)
        await postgres.create_database(DATABASE, migrate=True)
        stack.launch()
        await stack.wait_ready(30)
        seed = secrets.randbelow(1_000_000)
        clients = await asyncio.gather(
            *(make_client(stack.base_url, n, seed) for n in range(args.clients))
        )
        for client in clients:
            cleanup.push_async_callback(client.http.aclose)
        print(
            f"stack up in {time.monotonic() - started:.1f} s: PostgreSQL :{postgres.port}, "
            f"Redis :{redis_server.port}, moto :{moto.port} via link :{link.port}, "
            f"taskapi :{stack.port}; {args.clients} clients; phases "
            f"{args.before:g} s / {args.fault:g} s / {args.after:g} s",
            flush=True,
        )
        for scenario in args.scenario_list:
            try:
                outcome = await run_scenario(stack, scenario, list(clients), args)
                outcomes.append(outcome)
                print(
                    f"  {scenario.name}: {outcome.requests} requests, "
                    f"{'ok' if outcome.passed else 'FAILED'}"
                    + (f"; not 2xx: {outcome.failures}" if outcome.failures else ""),
                    flush=True,
                )
                # Every scenario starts from a healthy service.
                await stack.wait_ready(30)
            except RuntimeError as error:  # the server died, or never became ready again
                aborted = f"{scenario.name}: {error}"
                print(f"  ABORTED {aborted}", flush=True)
                break

    print()
    print(table(outcomes))
    if args.json:
        args.json.write_text(
            json.dumps([asdict(o) | {"passed": o.passed} for o in outcomes], indent=2)
        )
    failed = [o for o in outcomes if not o.passed]
    if failed or aborted:
        print()
        if aborted:
            print(f"ABORTED {aborted}")
        for o in failed:
            reasons = []
            if o.unexpected_5xx:
                reasons.append(f"{o.unexpected_5xx} unexpected 5xx")
            if o.other:
                reasons.append(f"{o.other} other failures")
            if o.recovery is None:
                reasons.append(f"no {args.run} consecutive 2xx after restoring")
            print(f"FAILED {o.scenario}: {', '.join(reasons)}; not 2xx: {o.failures}")
        if errors:
            print("\nserver log, unhandled errors and the exceptions behind them:")
            print("\n".join(f"  {line}" for line in errors))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
