"""Webhook delivery by one `taskapi worker` (issue 19): deliveries per second to a loopback
receiver (goal: at least 300/s), and the time from an event's commit to its arrival, p50/p99.

    .venv/bin/python scripts/bench/webhooks.py [--deliveries 3000] [--endpoints 1,6]
        [--rate 50] [--latency-events 500] [--quick] [--json FILE] [--keep]
    make bench BENCH_ARGS="--only webhooks"       # the same, inside `make bench`'s report

On a database of its own (created and migrated with `taskapi migrate`, dropped at the end):

* a receiver in a process of its own (scripts/bench/webhook_receiver.py under uvicorn: answers
  200 and notes each arrival's time), so its CPU is not the worker's, listening on one port per
  webhook of the largest scenario: each webhook is an origin of its own, as receivers are;
* ONE worker, the real `taskapi worker` (ENVIRONMENT=development for plain http,
  WEBHOOK_ALLOW_PRIVATE_NETWORKS=true for loopback; every other setting its default: 64
  deliveries in flight, 8 per webhook);
* each scenario has a user of its own whose webhooks (subscribed to "*", made by the API's
  own `create_webhook`, each on its own port and path of the receiver) are pinged first: the
  worker is up and its connections are open before anything is timed.

Throughput, once per `--endpoints` count K: one transaction records `--deliveries` / K
`task.created` events (tasks inserted with SQL, each event the task's snapshot, written by the
API's own `events.record_many`, which notifies the worker at commit); each event is for every one
of the K webhooks, and each about another task, so none waits for an earlier delivery about the
same task. Timed from that commit to the last outcome the worker records (the greatest
`webhooks.last_delivery_at`): fan-out, claims, requests and outcome writes all count.

Latency: with the worker idle, `--latency-events` tasks created one per transaction by the API's
own `tasks.service.create_task` at `--rate` per second, to one webhook; per event, from the
moment its commit returned to its arrival at the receiver (both wall-clock times of this
machine).

The table: deliveries, seconds, deliveries/s, commit->arrival p50/p99 (latency only), the
worker's CPU (share of one core over the scenario, and per delivery). Nothing is asserted: the
goal's verdict is a note. The figures share the machine's cores with PostgreSQL, the receiver
and this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import (
    BIN,
    BenchError,
    database_url,
    free_port,
    fresh_database,
    run_scratch,
    table_text,
)
from webhook_scenarios import GOAL, Bench, Process, Row

from taskapi.kit.config import Settings
from taskapi.kit.db import create_engine, create_sessionmaker

HERE = Path(__file__).resolve().parent
DATABASE = "taskapi_bench_webhooks"
SECRET_KEY = secrets.token_urlsafe(48)
HEADER = (
    "scenario",
    "deliveries",
    "seconds",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "worker CPU",
    "CPU ms/delivery",
    "notes",
)
ALIGN = "lrrrrrrrl"


@dataclass(frozen=True)
class Options:
    deliveries: int
    endpoints: tuple[int, ...]
    rate: float
    latency_events: int
    json_path: Path | None
    keep: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/webhooks.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--deliveries", type=int, help="per throughput run (default 3000)")
    parser.add_argument(
        "--endpoints", default="1,6", help="webhooks per throughput run, a comma list (default 1,6)"
    )
    parser.add_argument("--rate", type=float, default=50, help="latency: events/s (default 50)")
    parser.add_argument("--latency-events", type=int, help="latency: events (default 500)")
    parser.add_argument("--quick", action="store_true", help="1000 deliveries, 200 events")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the table here")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    args = parser.parse_args(argv)
    endpoints = tuple(int(part) for part in args.endpoints.split(",") if part.strip())
    if not endpoints or min(endpoints) < 1 or max(endpoints) > 25:  # 25 webhooks per user
        parser.error("--endpoints: counts from 1 to 25")
    return Options(
        deliveries=args.deliveries or (1000 if args.quick else 3000),
        endpoints=endpoints,
        rate=args.rate,
        latency_events=args.latency_events or (200 if args.quick else 500),
        json_path=args.json_path,
        keep=args.keep,
    )


# --- processes -------------------------------------------------------------------------------


def worker_env(url: str, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "STORAGE_"))}
    env.update(
        DATABASE_URL=url,
        SECRET_KEY=SECRET_KEY,
        ENVIRONMENT="development",
        WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
        STORAGE_BACKEND="local",
        STORAGE_DIR=str(workdir / "storage"),
        LOG_LEVEL="INFO",
        REDIS_KEY_PREFIX=f"bench-webhooks:{secrets.token_hex(4)}:",
    )
    return env


# --- the run ---------------------------------------------------------------------------------


async def measure(options: Options, url: str, receivers: list[str], worker: Process) -> list[Row]:
    settings = Settings(
        database_url=url,
        secret_key=SECRET_KEY,
        environment="development",
        webhook_allow_private_networks=True,
    )
    engine = create_engine(settings)
    bench = Bench(create_sessionmaker(engine), settings, receivers, worker)
    rows = []
    try:
        for endpoints in options.endpoints:
            rows.append(await bench.throughput(options.deliveries, endpoints))
            print(f"  {' | '.join(rows[-1].cells())}", flush=True)
        rows.append(await bench.latency(options.latency_events, options.rate))
        print(f"  {' | '.join(rows[-1].cells())}", flush=True)
    finally:
        await bench.receiver.aclose()
        await engine.dispose()
    return rows


def wait_for_receiver(receiver: Process, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        receiver.check("the receiver")
        try:
            if httpx.get(f"{url}/count", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise BenchError("the receiver was not ready within 30 s")


def run(options: Options, workdir: Path) -> list[Row]:
    url = database_url(DATABASE)
    env = worker_env(url, workdir)
    fresh_database(DATABASE, env)
    # One port per webhook of the largest scenario: each its own origin, as receivers are.
    ports = [free_port() for _ in range(max(options.endpoints))]
    command = [str(BIN / "python"), str(HERE / "webhook_receiver.py"), *map(str, ports)]
    receiver = Process(command, env, workdir / "receiver.log")
    worker = None
    try:
        receivers = [f"http://127.0.0.1:{port}" for port in ports]
        wait_for_receiver(receiver, receivers[0])
        worker = Process([str(BIN / "taskapi"), "worker"], env, workdir / "worker.log")
        print(
            f"taskapi worker (pid {worker.popen.pid}, log {worker.log}); receiver on {ports}",
            flush=True,
        )
        return asyncio.run(measure(options, url, receivers, worker))
    finally:
        for process in (worker, receiver):
            if process is not None:
                process.stop()
        if worker is not None and (errors := log_errors(worker.log)):
            print(f"worker log: {len(errors)} ERROR lines, the first: {errors[0]}", flush=True)


def log_errors(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line[:300] for line in lines if " ERROR " in line or line.startswith("Traceback")]


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    rows = run_scratch("webhooks", DATABASE, options.keep, lambda workdir: run(options, workdir))
    if rows is None:
        return 1
    title = "Webhook delivery: one `taskapi worker`, a loopback receiver in its own process"
    notes = [
        "seconds: throughput, from the commit of the events to the last outcome the worker "
        "recorded; latency, the whole paced run. p50/p99: commit returned -> arrival at the "
        "receiver. worker CPU: its user+system time over the scenario, as a share of one core.",
        f"goal (issue 19): >= {GOAL} deliveries/s by one worker.",
    ]
    cells = [row.cells() for row in rows]
    print("\n" + table_text(title, HEADER, ALIGN, cells, notes))
    rates = [row.deliveries / row.seconds for row in rows if row.throughput]
    goal = {"description": f"webhook deliveries/s >= {GOAL} in every throughput run",
            "measured": " / ".join(f"{rate:,.0f}" for rate in rates),
            "passed": bool(rates) and min(rates) >= GOAL}  # fmt: skip
    if options.json_path is not None:
        document = {"title": title, "header": HEADER, "align": ALIGN, "rows": cells,
                    "notes": notes, "goal": goal}  # fmt: skip
        options.json_path.write_text(json.dumps(document, indent=1))
    if invalid := [row.label for row in rows if row.invalid]:
        print(f"INVALID (not every delivery arrived once): {', '.join(invalid)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
