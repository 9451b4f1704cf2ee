"""The webhook benchmark's scenarios (scripts/bench/webhooks.py runs them; its docstring says
what they measure): each gets a user of its own with webhooks on the receiver, makes events
through the API's own code, and waits for the worker to record every outcome."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import ROOT, BenchError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.events import service as events
from taskapi.events.schemas import TASK_CREATED
from taskapi.kit.config import Settings
from taskapi.models import Task, User
from taskapi.tasks import audit
from taskapi.tasks import service as tasks
from taskapi.tasks.schemas import TaskCreate
from taskapi.webhooks import service as webhooks
from taskapi.webhooks.schemas import WebhookCreate

GOAL = 300  # deliveries per second by one worker (issue 19)


class Process:
    """A child process, its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - our own venv's executables
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.log = log

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (/proc; 0 where there is none)."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check(self, what: str) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchError(f"{what} exited with status {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Row:
    label: str
    deliveries: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_seconds: float = 0.0
    notes: str = ""
    throughput: bool = False  # a backlog run (the goal applies), not the paced latency run
    invalid: bool = False  # not every delivery arrived exactly once

    def cells(self) -> list[str]:
        rate = self.deliveries / self.seconds if self.seconds else 0.0
        ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        per = self.cpu_seconds * 1000 / self.deliveries if self.deliveries else 0.0
        share = self.cpu_seconds / self.seconds if self.seconds else 0.0
        return [
            self.label,
            f"{self.deliveries:,}",
            f"{self.seconds:.2f}",
            f"{rate:,.0f}",
            ms(self.p50_ms),
            ms(self.p99_ms),
            f"{share:.0%}",
            f"{per:.2f}",
            self.notes,
        ]


class Bench:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        receivers: list[str],
        worker: Process,
    ) -> None:
        self.sessions, self.settings = sessions, settings
        self.receivers = receivers  # the same receiver on several ports: one origin each
        self.receiver = httpx.AsyncClient(base_url=receivers[0], timeout=10)
        self.worker = worker
        self.users = 0

    async def subscriber(self, endpoints: int) -> tuple[User, list[int]]:
        """A new user with `endpoints` webhooks on "*", each pinged and delivered: the worker
        is up and has a connection to the receiver for each."""
        self.users += 1
        async with self.sessions() as session:
            name = f"hooks{self.users}"
            user = User(username=name, email=f"{name}@example.com", password_hash="-")
            session.add(user)
            await session.flush()
            ids = []
            for n in range(endpoints):
                url = f"{self.receivers[n % len(self.receivers)]}/hook/{name}-{n}"
                data = WebhookCreate(url=url, events=["*"])
                hook, _ = await webhooks.create_webhook(session, user, data, self.settings)
                await webhooks.ping(session, hook, tasks.utc_now())
                ids.append(hook.id)
            await session.commit()
        await self.settled(ids, endpoints, within=60)
        await self.receiver.post("/reset")
        return user, ids

    async def settled(self, hooks: list[int], expected: int, within: float) -> float:
        """Wait until the `expected` deliveries of `hooks` all have an outcome; the seconds
        waited (a BenchError past `within`)."""
        started = time.monotonic()
        query = text(
            "SELECT count(*) FILTER (WHERE status <> 0) AS done, count(*) AS made "
            "FROM webhook_deliveries WHERE webhook_id = ANY(:ids)"
        )
        while True:
            self.worker.check("taskapi worker")
            async with self.sessions() as session:
                row = (await session.execute(query, {"ids": hooks})).one()
            if row.made >= expected and row.done >= row.made:
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise BenchError(f"{row.done} of {expected} deliveries done after {within:.0f} s")
            await asyncio.sleep(0.2)

    async def outcomes(self, hooks: list[int]) -> tuple[int, float]:
        """(failed deliveries, wall-clock time of the last outcome recorded) of `hooks`."""
        query = text(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 2 "
            "AND webhook_id = ANY(:ids)) AS failed, max(last_delivery_at) AS last "
            "FROM webhooks WHERE id = ANY(:ids)"
        )
        async with self.sessions() as session:
            row = (await session.execute(query, {"ids": hooks})).one()
        return int(row.failed), row.last.timestamp()

    async def arrivals(self) -> list[tuple[str, str, float]]:
        response = await self.receiver.get("/arrivals")
        return [(i, path, t) for i, path, t in response.json()]

    async def throughput(self, deliveries: int, endpoints: int) -> Row:
        user, hooks = await self.subscriber(endpoints)
        count = deliveries // endpoints
        async with self.sessions() as session:
            await session.execute(
                text(
                    "INSERT INTO tasks (owner_id, title, description, priority, tags) "
                    "SELECT :owner, 'Webhook bench task ' || g, 'Made by the webhook bench.', "
                    "'high', ARRAY['bench', 'webhooks'] FROM generate_series(1, :n) AS g"
                ),
                {"owner": user.id, "n": count},
            )
            rows = (await session.scalars(select(Task).where(Task.owner_id == user.id))).all()
            specs = [
                events.spec(
                    TASK_CREATED,
                    user.id,
                    audit.audience_of(task.__dict__),
                    task=audit.snapshot(task),
                )
                for task in rows
            ]
            cpu = self.worker.cpu_seconds()
            await events.record_many(session, specs)
            await session.commit()
            committed = time.time()
        total = count * endpoints
        # Each webhook's ping is a delivery too.
        await self.settled(hooks, total + endpoints, within=max(60.0, total / 20))
        cpu = self.worker.cpu_seconds() - cpu
        failed, last = await self.outcomes(hooks)
        arrived = await self.arrivals()
        first = min((t for *_, t in arrived), default=committed)
        notes = [
            f"{endpoints} webhook(s), {count:,} events in one commit",
            f"first arrival {(first - committed) * 1000:.0f} ms after the commit",
        ]
        problems = self.problems(arrived, total, failed)
        rate = total / (last - committed)
        notes += [*problems, f"goal >= {GOAL}/s: {'PASS' if rate >= GOAL else 'FAIL'}"]
        plural = "s" if endpoints > 1 else ""
        label = f"throughput, {endpoints} webhook{plural}"
        return Row(label, total, last - committed, cpu_seconds=cpu, notes="; ".join(notes),
                   throughput=True, invalid=bool(problems))  # fmt: skip

    async def latency(self, events_count: int, rate: float) -> Row:
        user, hooks = await self.subscriber(1)
        committed: dict[int, float] = {}  # task id -> when its commit returned
        cpu = self.worker.cpu_seconds()
        started = time.monotonic()
        for n in range(events_count):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            async with self.sessions() as session:
                owner = await session.get(User, user.id)
                assert owner is not None
                task = await tasks.create_task(session, owner, TaskCreate(title=f"Latency {n}"))
                await session.commit()
                committed[task.id] = time.time()
        await self.settled(hooks, events_count + 1, within=60)
        seconds = time.monotonic() - started
        cpu = self.worker.cpu_seconds() - cpu
        failed, _ = await self.outcomes(hooks)
        arrived = await self.arrivals()
        async with self.sessions() as session:
            about = dict(
                (
                    await session.execute(
                        text("SELECT id, task_id FROM events WHERE task_id = ANY(:ids)"),
                        {"ids": list(committed)},
                    )
                )
                .tuples()
                .all()
            )
        latencies = sorted(
            (t - committed[about[int(i)]]) * 1000 for i, _, t in arrived if int(i) in about
        )
        notes = [f"1 webhook, {rate:g} tasks/s created one per commit"]
        problems = self.problems(arrived, events_count, failed)
        notes += problems
        if latencies:
            notes.append(f"min {latencies[0]:.1f} ms, max {latencies[-1]:.1f} ms")
        centiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
        return Row(
            f"latency, {rate:g} events/s",
            events_count,
            seconds,
            centiles[49],
            centiles[98],
            cpu,
            "; ".join(notes),
            invalid=bool(problems),
        )

    @staticmethod
    def problems(arrived: list[tuple[str, str, float]], expected: int, failed: int) -> list[str]:
        found = []
        unique = len({(i, path) for i, path, _ in arrived})
        if unique != expected or failed:
            found.append(f"INCOMPLETE: {unique} arrived, {failed} failed of {expected}")
        if unique != len(arrived):
            found.append(f"{len(arrived) - unique} sent twice")
        return found
