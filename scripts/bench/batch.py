"""Batch writes (issue 20): 500 creates in one `POST /tasks/batch` against 500 single
`POST /tasks`, sequential and from 8 concurrent clients, side by side; the same for 500 updates
(one batch against 500 sequential `PATCH /tasks/{id}`); and one batch each of 500 transitions and
500 deletes. Goal: every batch of 500 operations under 1 s (issue 20).

    .venv/bin/python scripts/bench/batch.py [--operations 500] [--clients 8] [--repeat 5]
        [--quick] [--json FILE] [--keep]
    make bench BENCH_ARGS="--only batch"       # the same, inside `make bench`'s report

On a database of its own (created and migrated with `taskapi migrate`, dropped at the end), one
`taskapi serve` (one worker, configured as in production: JSON access log into a file, rate
limits on with buckets no run can empty), driven over loopback by httpx from this process, one
keep-alive connection per client. One user does everything; a warm-up of each kind of request
comes first (connections open, statements prepared). Each scenario runs `--repeat` times in
turn with the others (so a drift of the machine's speed touches them alike) and reports its
median wall time: from the first request sent to the last answer read, every answer checked
(status, and each batch result a success). `vs batch` is that time as a multiple of the batch's
of the same kind. The figures share the machine's two cores with PostgreSQL, the server and this
script (the client's own time is in them: one request's worth for the batch, 500 for the
singles).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import (
    BIN,
    BenchError,
    check,
    database_url,
    free_port,
    fresh_database,
    run_scratch,
    table_text,
)
from webhook_scenarios import Process

DATABASE = "taskapi_bench_batch"
SECRET_KEY = secrets.token_urlsafe(48)
HUGE = str(10**9)  # rate-limit buckets no run can empty
TASKS = "/api/v1/tasks"
GOAL_SECONDS = 1.0  # any batch of 500 operations (issue 20)
HEADER = ("scenario", "requests", "median ms", "min ms", "tasks/s", "vs batch")
ALIGN = "lrrrrr"


@dataclass(frozen=True)
class Options:
    operations: int
    clients: int
    repeat: int
    json_path: Path | None
    keep: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/batch.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--operations", type=int, default=500, help="per scenario (max 500)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent single-POST clients")
    parser.add_argument("--repeat", type=int, help="runs per scenario, median kept (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 runs per scenario")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the table here")
    parser.add_argument("--keep", action="store_true", help="keep the database and the log")
    args = parser.parse_args(argv)
    if not 1 <= args.operations <= 500:
        parser.error("--operations: 1 to 500 (a batch's limit)")
    if args.clients < 1:
        parser.error("--clients: at least 1")
    return Options(
        operations=args.operations,
        clients=args.clients,
        repeat=args.repeat or (3 if args.quick else 5),
        json_path=args.json_path,
        keep=args.keep,
    )


# --- the server --------------------------------------------------------------------------------


def server_env(url: str, workdir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "S3_", "STORAGE_", "PROMETHEUS_"))
    }
    env.update(
        ENVIRONMENT="production",
        DATABASE_URL=url,
        SECRET_KEY=SECRET_KEY,
        STORAGE_BACKEND="local",
        STORAGE_DIR=str(workdir / "storage"),
        WEB_CONCURRENCY="1",
        REDIS_KEY_PREFIX=f"bench-batch:{secrets.token_hex(4)}:",
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_USER_BURST=HUGE,
        RATE_LIMIT_USER_PER_MINUTE=HUGE,
        RATE_LIMIT_AUTH_BURST=HUGE,
        RATE_LIMIT_AUTH_PER_MINUTE=HUGE,
        LOG_LEVEL="INFO",
    )
    env.pop("LOG_FORMAT", None)
    return env


def wait_for_server(server: Process, base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        server.check("taskapi serve")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/ops/health", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError("taskapi serve was not ready within 60 s")


# --- the scenarios -----------------------------------------------------------------------------


@dataclass
class Scenario:
    label: str
    kind: str  # "create", "update", ...: what its `vs batch` compares with
    requests: int
    run: Callable[[], Awaitable[None]]
    seconds: list[float]

    def cells(self, batch_median: float, operations: int) -> list[str]:
        median = statistics.median(self.seconds)
        return [
            self.label,
            f"{self.requests:,}",
            f"{median * 1000:,.0f}",
            f"{min(self.seconds) * 1000:,.0f}",
            f"{operations / median:,.0f}",
            f"{median / batch_median:.1f}x",
        ]


class Bench:
    def __init__(self, base: str, options: Options) -> None:
        self.base = base
        self.options = options
        self.clients = [
            httpx.AsyncClient(base_url=base, timeout=60) for _ in range(options.clients)
        ]
        self.headers: dict[str, str] = {}
        self.targets: list[int] = []  # tasks the update and transition scenarios change
        self.status = "todo"  # the targets' status, which the transitions toggle
        self.created: list[int] = []  # the last batch of creates' tasks, which the deletes take
        self.round = 0

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def login(self) -> None:
        client = self.clients[0]
        account = {"username": "bench_batch", "email": "bench_batch@example.com"}
        password = secrets.token_urlsafe(16)
        check(
            await client.post("/api/v1/auth/register", json={**account, "password": password}), 201
        )
        tokens = check(
            await client.post(
                "/api/v1/auth/login", json={"username": account["username"], "password": password}
            ),
            200,
        ).json()
        self.headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    def creates(self) -> list[dict[str, object]]:
        self.round += 1
        return [
            {"title": f"r{self.round} task {i}", "priority": "high", "tags": ["bench", f"t{i % 7}"]}
            for i in range(self.options.operations)
        ]

    async def batch(self, operations: list[dict[str, object]]) -> list[dict[str, object]]:
        answer = check(
            await self.clients[0].post(
                f"{TASKS}/batch", json={"operations": operations}, headers=self.headers
            ),
            200,
        ).json()
        results: list[dict[str, object]] = answer["results"]
        if len(results) != len(operations) or not all(r["success"] for r in results):
            raise BenchError(f"a batch operation failed: {json.dumps(results)[:300]}")
        return results

    async def batch_creates(self) -> None:
        results = await self.batch([{"op": "create", "task": task} for task in self.creates()])
        self.created = [int(str(r["task_id"])) for r in results]

    async def batch_transitions(self) -> None:
        self.status = "in_progress" if self.status == "todo" else "todo"
        await self.batch(
            [
                {"op": "transition", "task_id": task_id, "status": self.status}
                for task_id in self.targets
            ]
        )

    async def batch_deletes(self) -> None:
        await self.batch([{"op": "delete", "task_id": task_id} for task_id in self.created])

    async def single_creates(self, clients: int) -> None:
        bodies = self.creates()

        async def client_loop(client: httpx.AsyncClient, share: list[dict[str, object]]) -> None:
            for body in share:
                check(await client.post(TASKS, json=body, headers=self.headers), 201)

        await asyncio.gather(
            *(client_loop(self.clients[n], bodies[n::clients]) for n in range(clients))
        )

    async def batch_updates(self) -> None:
        self.round += 1
        await self.batch(
            [
                {"op": "update", "task_id": task_id, "changes": {"title": f"r{self.round} {i}"}}
                for i, task_id in enumerate(self.targets)
            ]
        )

    async def single_updates(self) -> None:
        self.round += 1
        client = self.clients[0]
        for i, task_id in enumerate(self.targets):
            body = {"title": f"r{self.round} {i}"}
            check(await client.patch(f"{TASKS}/{task_id}", json=body, headers=self.headers), 200)

    async def warm_up(self) -> None:
        """Every kind of request once over every connection; the update scenarios' tasks."""
        results = await self.batch([{"op": "create", "task": t} for t in self.creates()])
        self.targets = [int(str(r["task_id"])) for r in results]
        for client in self.clients:
            check(await client.post(TASKS, json={"title": "warm"}, headers=self.headers), 201)
            body = {"title": "warm"}
            check(
                await client.patch(f"{TASKS}/{self.targets[0]}", json=body, headers=self.headers),
                200,
            )
        await self.batch_updates()
        await self.batch_transitions()
        await self.batch_creates()
        await self.batch_deletes()

    def scenarios(self) -> list[Scenario]:
        n, k = self.options.operations, self.options.clients
        return [
            Scenario(f"{n} creates, 1 batch", "create", 1, self.batch_creates, []),
            Scenario(
                f"{n} creates, sequential POST /tasks",
                "create",
                n,
                lambda: self.single_creates(1),
                [],
            ),
            Scenario(
                f"{n} creates, POST /tasks from {k} clients",
                "create",
                n,
                lambda: self.single_creates(k),
                [],
            ),
            Scenario(f"{n} updates, 1 batch", "update", 1, self.batch_updates, []),
            Scenario(
                f"{n} updates, sequential PATCH /tasks/{{id}}", "update", n, self.single_updates, []
            ),
            Scenario(f"{n} transitions, 1 batch", "transition", 1, self.batch_transitions, []),
            # (the tasks this round's batch of creates made)
            Scenario(f"{n} deletes, 1 batch", "delete", 1, self.batch_deletes, []),
        ]


async def measure(options: Options, base: str) -> list[list[str]]:
    bench = Bench(base, options)
    try:
        await bench.login()
        await bench.warm_up()
        scenarios = bench.scenarios()
        for round_no in range(options.repeat):
            for scenario in scenarios:
                started = time.perf_counter()
                await scenario.run()
                scenario.seconds.append(time.perf_counter() - started)
            print(
                f"  round {round_no + 1}/{options.repeat}: "
                + ", ".join(f"{s.seconds[-1] * 1000:,.0f} ms" for s in scenarios),
                flush=True,
            )
    finally:
        await bench.aclose()
    batches = {s.kind: statistics.median(s.seconds) for s in scenarios if s.requests == 1}
    return [s.cells(batches[s.kind], options.operations) for s in scenarios]


@contextlib.contextmanager
def serving(env: dict[str, str], workdir: Path) -> Iterator[str]:
    """One `taskapi serve` worker with `env`, its log in `workdir`: its base URL, once ready."""
    port = free_port()
    command = [str(BIN / "taskapi"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = Process([*command, "--workers", "1"], env, workdir / "server.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(server, base)
        print(f"taskapi serve (pid {server.popen.pid}, log {server.log}) on {base}", flush=True)
        yield base
    finally:
        server.stop()


def run(options: Options, workdir: Path) -> list[list[str]]:
    env = server_env(database_url(DATABASE), workdir)
    fresh_database(DATABASE, env)
    with serving(env, workdir) as base:
        return asyncio.run(measure(options, base))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    rows = run_scratch("batch", DATABASE, options.keep, lambda workdir: run(options, workdir))
    if rows is None:
        return 1
    title = "Batch writes: POST /tasks/batch against single requests, one `taskapi serve` worker"
    notes = [
        f"median (and min) wall time of {options.repeat} runs each, first request sent to last "
        "answer read; vs batch: that median over the batch's of the same kind (creates, "
        "updates, ...).",
        f"goal (issue 20): {options.operations} operations of any kind in one batch under "
        f"{GOAL_SECONDS:.0f} s.",
    ]
    print("\n" + table_text(title, HEADER, ALIGN, rows, notes))
    batches = {row[0]: float(row[2].replace(",", "")) for row in rows if row[1] == "1"}
    slowest = max(batches, key=lambda label: batches[label])
    goal = {
        "description": f"any batch of {options.operations} operations < {GOAL_SECONDS:.0f} s",
        "measured": f"slowest: {slowest} {batches[slowest]:,.0f} ms; creates "
        f"{rows[1][5]} faster than sequential POSTs",
        "passed": batches[slowest] < GOAL_SECONDS * 1000,
    }
    if options.json_path is not None:
        document = {
            "title": title,
            "header": HEADER,
            "align": ALIGN,
            "rows": rows,
            "notes": notes,
            "goal": goal,
        }
        options.json_path.write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
