"""Measure the event log's costs (docs/sync.md, "Fan-out"): what recording one event costs the
writer for a personal task (2 recipients) and for a task of a project of N members (N
recipients, resolved by the INSERT), and what a feed page costs a reader with many events.

    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python scripts/measure_event_fanout.py [--members 1000] [--events 200000]

Creates a scratch database next to DATABASE_URL's (migrated to head), drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from taskapi.events import repository as events_repository
from taskapi.events import service as events
from taskapi.events.schemas import TASK_UPDATED, Audience
from taskapi.kit.config import Settings
from taskapi.kit.db import create_engine, create_sessionmaker


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(False)


def _migrate(url: str) -> None:
    config = Config("alembic.ini")
    config.attributes["database_url"] = url
    command.upgrade(config, "head")


def _ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    return f"median {statistics.median(samples) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


async def _populate(conn: asyncpg.Connection, members: int) -> tuple[int, int]:
    await conn.execute(
        "INSERT INTO users (username, email, password_hash) "
        "SELECT 'u' || g, 'u' || g || '@example.com', 'x' FROM generate_series(1, $1) g",
        members,
    )
    project = await conn.fetchval(
        "INSERT INTO projects (owner_id, name, member_count) VALUES (1, 'big', $1) RETURNING id",
        members,
    )
    await conn.execute(
        "INSERT INTO project_members (project_id, user_id, role) "
        "SELECT $1, id, 'editor' FROM users",
        project,
    )
    return project, members


def _task(task_id: int, version: int, project_id: int | None) -> dict[str, Any]:
    return {"id": task_id, "version": version, "project_id": project_id, "title": "t"}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    base = Settings().database_url
    name = f"taskapi_fanout_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_plain(str(make_url(base).set(database="postgres"))))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(False)
    try:
        await asyncio.to_thread(_migrate, url)
        conn = await asyncpg.connect(_plain(url))
        project, members = await _populate(conn, args.members)
        await conn.close()
        engine = create_engine(Settings(database_url=url, _env_file=None))
        make = create_sessionmaker(engine)
        for label, audience, project_id in (
            ("personal task (owner + assignee)", Audience(users=[1, 2]), None),
            (f"project task ({members} members)", Audience(members_of=project), project),
        ):
            samples = []
            for i in range(args.rounds):
                async with make() as session:
                    await session.execute(text("SELECT 1"))
                    spec = events.spec(
                        TASK_UPDATED,
                        1,
                        audience,
                        task=_task(1, i + 2, project_id),
                        changes={"title": ["a", "b"]},
                    )
                    started = time.perf_counter()
                    await events_repository.insert(session, [spec])
                    samples.append(time.perf_counter() - started)
                    await session.commit()
            print(f"record one event, {label}: {_ms(samples)}")
        # A reader with many events: user 1 gets every event of the big project.
        async with make() as session:
            await session.execute(
                text(
                    "INSERT INTO events (type, actor_id, task_id, project_id, task, task_version)"
                    " SELECT 'task.updated', 2, g % 5000, :p,"
                    " jsonb_build_object('id', g % 5000, 'version', g), g"
                    " FROM generate_series(1, :n) g"
                ),
                {"p": project, "n": args.events},
            )
            await session.execute(
                text(
                    "INSERT INTO event_recipients (user_id, xid, event_id)"
                    " SELECT 1, xid, id FROM events ON CONFLICT DO NOTHING"
                )
            )
            await session.commit()
        async with make() as session:
            await session.execute(text("ANALYZE events"))
            await session.execute(text("ANALYZE event_recipients"))
            await session.commit()
        samples = []
        async with make() as session:
            horizon, _ = await events_repository.horizon(session)
            first = await session.scalar(text("SELECT min(xid)::text FROM events"))
            for _ in range(args.rounds // 4):
                started = time.perf_counter()
                rows = await events_repository.feed_page(session, 1, (int(first), 0), horizon, 101)
                samples.append(time.perf_counter() - started)
            assert len(rows) == 101
        print(f"feed page of 100 events ({args.events} events for the reader): {_ms(samples)}")
        await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
