"""Demo data (`taskapi seed`): users user1..N sharing one known password, each with tasks that
look like a real team's backlog, some assigned to colleagues, some overdue, a few with files.

Fast by construction: the password is hashed once and the hash reused (Argon2 is deliberately
slow), and users, tasks, notifications and attachment rows go in with one multi-row INSERT each.
Re-running it skips users that already exist (by username or email) and adds nothing for them.
"""

from __future__ import annotations

import asyncio
import random
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from taskapi.accounts import CommandError, database, describe_validation_error
from taskapi.attachments import service as attachments
from taskapi.attachments.upload import FilePart
from taskapi.auth.schemas import Password
from taskapi.kit.cache import RedisGuard, create_redis
from taskapi.kit.config import Settings
from taskapi.kit.db import create_sessionmaker
from taskapi.kit.security import PasswordHashing
from taskapi.models import Attachment, Notification, NotificationKind, Task, TaskPriority, User
from taskapi.models import TaskStatus as S
from taskapi.seed_projects import ProjectsReport, seed_projects
from taskapi.storage import Storage
from taskapi.storage.factory import create_storage
from taskapi.tasks.stats_cache import StatsCache

EMAIL_DOMAIN = "example.com"
# Objects stored at once; enough to hide S3 latency without opening a connection per file.
STORE_CONCURRENCY = 8
# The Core tables (typed as Table, which insert() wants) behind the mapped classes.
task_table = Task.metadata.tables["tasks"]
notification_table = Notification.metadata.tables["notifications"]
attachment_table = Attachment.metadata.tables["attachments"]

_VERBS = (
    "Write",
    "Review",
    "Fix",
    "Update",
    "Migrate",
    "Draft",
    "Test",
    "Document",
    "Plan",
    "Refactor",
    "Benchmark",
    "Prepare",
)
_OBJECTS = (
    "release notes for v2.4",
    "the onboarding checklist",
    "login rate limiting",
    "quarterly budget spreadsheet",
    "PostgreSQL backup restore drill",
    "customer interview notes",
    "the CI pipeline cache",
    "SQLAlchemy session handling",
    "invoice PDF export",
    "mobile push notifications",
    "the pricing page copy",
    "S3 lifecycle rules",
    "search relevance for tasks",
    "on-call runbook",
    "accessibility audit findings",
    "Redis failover test",
    "team offsite agenda",
    "API pagination docs",
)
_DETAILS = (
    "Agreed in Monday's planning; see the thread for context.",
    "Blocked until the design review is done.",
    "Keep the scope small: ship the first version, iterate afterwards.",
    "Customers asked for this twice this month.",
    "Check with the security team before merging.",
    "Numbers from last quarter are in the shared drive.",
    "Pair with someone from support to reproduce it.",
    "Needs a migration; announce the maintenance window.",
)
_TAGS = (
    "backend",
    "frontend",
    "docs",
    "ops",
    "bug",
    "feature",
    "q4",
    "customer",
    "security",
    "research",
)
# Weighted like a real backlog: mostly open work, medium priority.
_STATUSES = ((S.TODO, 40), (S.IN_PROGRESS, 25), (S.DONE, 25), (S.CANCELLED, 10))
_PRIORITIES = (
    (TaskPriority.LOW, 20),
    (TaskPriority.MEDIUM, 45),
    (TaskPriority.HIGH, 25),
    (TaskPriority.URGENT, 10),
)


@dataclass(frozen=True, slots=True)
class SeedReport:
    created_users: int
    skipped_users: int
    tasks: int
    assigned: int
    overdue: int
    attachments: int
    projects: ProjectsReport


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, int]]) -> Any:
    values, weights = zip(*weighted, strict=True)
    return rng.choices(values, weights=weights)[0]


def tiny_png(rng: random.Random, size: int = 16) -> bytes:
    """A real, decodable PNG (one colour), so the upload sniffing accepts it like any image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    colour = bytes(rng.randrange(256) for _ in range(3))
    rows = b"".join(b"\x00" + colour * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _demo_file(rng: random.Random, title: str, n: int) -> tuple[str, str, bytes]:
    if n % 2:
        return f"screenshot-{n}.png", "image/png", tiny_png(rng)
    lines = [f"# Notes: {title}", "", *rng.sample(_DETAILS, 3), ""]
    return f"notes-{n}.md", "text/markdown", "\n".join(lines).encode()


def _task_rows(
    rng: random.Random,
    owner_id: int,
    colleagues: Sequence[int],
    count: int,
    with_files: int,
    now: datetime,
) -> list[dict[str, Any]]:
    today = now.date()
    rows = []
    for i in range(count):
        status = _pick(rng, _STATUSES)
        due: date | None = None
        if i % 5 == 1:
            # Every fifth task is open and past due, so "overdue" filters and stats show something.
            status = rng.choice((S.TODO, S.IN_PROGRESS))
            due = today - timedelta(days=rng.randint(1, 20))
        elif rng.random() < 0.7:
            due = today + timedelta(days=rng.randint(-10, 45))
        created = now - timedelta(days=rng.randint(1, 60), minutes=rng.randint(0, 1440))
        updated = created + (now - created) * rng.random()
        # Every fourth task is someone else's job, when there is someone else.
        assignee = rng.choice(colleagues) if colleagues and i % 4 == 2 else None
        title = f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        rows.append(
            {
                "owner_id": owner_id,
                "assignee_id": assignee,
                "title": title,
                "description": " ".join(rng.sample(_DETAILS, rng.randint(1, 3)))
                if rng.random() < 0.8
                else None,
                "status": status,
                "priority": _pick(rng, _PRIORITIES),
                "due_date": due,
                "tags": sorted(rng.sample(_TAGS, rng.randint(0, 3))),
                "attachment_count": 1 if i < with_files else 0,
                "created_at": created,
                "updated_at": updated,
                "completed_at": updated if status == S.DONE else None,
            }
        )
    return rows


async def _store(storage: Storage, filename: str, content_type: str, data: bytes) -> Any:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    # Through the upload path itself: the same type checks, hashing and atomic write.
    return await attachments.store_upload(
        storage, FilePart(filename, content_type), chunks(), len(data)
    )


async def seed(
    settings: Settings,
    *,
    users: int,
    tasks_per_user: int,
    password: str,
    attachments_per_user: int = 2,
) -> SeedReport:
    try:
        TypeAdapter(Password).validate_python(password)
    except ValidationError as error:
        raise CommandError(f"Invalid password: {describe_validation_error(error)}.") from error
    if users < 1 or tasks_per_user < 0 or attachments_per_user < 0:
        raise CommandError("--users must be at least 1; --tasks-per-user and --attachments ≥ 0.")

    hashing = PasswordHashing(settings)
    try:
        password_hash = await hashing.hash(password)
    finally:
        hashing.close()

    names = [f"user{n}" for n in range(1, users + 1)]
    now = datetime.now(UTC)
    storage = await create_storage(settings)
    stored_keys: list[str] = []
    committed = False
    try:
        async with database(settings) as engine, create_sessionmaker(engine)() as session:
            taken = set(
                (
                    await session.scalars(
                        select(func.lower(User.username)).where(
                            func.lower(User.username).in_(names)
                            | func.lower(User.email).in_([f"{n}@{EMAIL_DOMAIN}" for n in names])
                        )
                    )
                ).all()
            )
            # The check above keeps re-runs from burning identity values on conflicts; ON CONFLICT
            # DO NOTHING still covers a concurrent seed, and RETURNING lists only the new rows.
            created = []
            if missing := [name for name in names if name not in taken]:
                created = list(
                    (
                        await session.execute(
                            pg_insert(User)
                            .values(
                                [
                                    {
                                        "username": name,
                                        "email": f"{name}@{EMAIL_DOMAIN}",
                                        "full_name": f"Demo User {name[4:]}",
                                        "password_hash": password_hash,
                                    }
                                    for name in missing
                                ]
                            )
                            .on_conflict_do_nothing()
                            .returning(User.id, User.username)
                        )
                    ).all()
                )
            new_users = {row.id: row.username for row in created}
            # Colleagues include seeded users from earlier runs, so new tasks reach them too.
            everyone = dict(
                (
                    await session.execute(
                        select(User.id, User.username).where(func.lower(User.username).in_(names))
                    )
                ).all()
            )

            rows: list[dict[str, Any]] = []
            for user_id, username in new_users.items():
                # Seeded per user: the same demo data on every machine, not secrets.
                rng = random.Random(f"taskapi-seed:{username}")  # noqa: S311
                colleagues = [other for other in everyone if other != user_id]
                rows += _task_rows(
                    rng,
                    user_id,
                    colleagues,
                    tasks_per_user,
                    min(attachments_per_user, tasks_per_user),
                    now,
                )
            tasks: Sequence[Any] = []
            if rows:
                tasks = (
                    await session.execute(
                        # Core, not the ORM's bulk insert: with RETURNING the ORM sends a
                        # statement per row here; Core batches 1,000 rows per statement.
                        insert(task_table).returning(
                            task_table.c.id,
                            task_table.c.owner_id,
                            task_table.c.assignee_id,
                            task_table.c.title,
                        ),
                        rows,
                    )
                ).all()

            notifications = [
                {
                    "user_id": task.assignee_id,
                    "kind": NotificationKind.TASK_ASSIGNED,
                    "task_id": task.id,
                    "message": f"{everyone[task.owner_id]} assigned you the task “{task.title}”.",
                }
                for task in tasks
                if task.assignee_id is not None
            ]
            if notifications:
                await session.execute(insert(notification_table), notifications)
            # Shared projects among all seeded users, a quarter of a user's tasks per writer.
            projects = await seed_projects(session, everyone, tasks_per_user // 4, now, _task_rows)

            with_files = [
                task for task, row in zip(tasks, rows, strict=True) if row["attachment_count"]
            ]
            limit = asyncio.Semaphore(STORE_CONCURRENCY)

            async def store_one(n: int, task: Any) -> dict[str, Any]:
                rng = random.Random(f"taskapi-seed-file:{task.id}")  # noqa: S311
                filename, content_type, data = _demo_file(rng, task.title, n)
                async with limit:
                    stored = await _store(storage, filename, content_type, data)
                stored_keys.append(stored.key)
                return {
                    "task_id": task.id,
                    "uploader_id": task.owner_id,
                    "storage_key": stored.key,
                    "filename": stored.filename,
                    "content_type": stored.content_type,
                    "size": stored.size,
                    "sha256": stored.sha256,
                }

            # A TaskGroup, not gather: on a failure the other stores are cancelled and awaited,
            # so every key that was stored is in `stored_keys` before the cleanup below runs.
            async with asyncio.TaskGroup() as group:
                pending = [
                    group.create_task(store_one(n, task))
                    for n, task in enumerate(with_files, start=1)
                ]
            files = [done.result() for done in pending]
            if files:
                await session.execute(insert(attachment_table), files)
            await session.commit()
            committed = True
    finally:
        if not committed:
            # Objects of a seed that did not commit belong to no row: take them back now
            # rather than leave them to the orphan sweep.
            for key in stored_keys:
                await storage.delete(key)
        await storage.close()

    # Users who just gained tasks (as owner or assignee) may have stats cached from before.
    await _forget_cached_stats(
        settings, {t.owner_id for t in tasks} | {t.assignee_id for t in tasks} | projects.member_ids
    )
    return SeedReport(
        created_users=len(new_users),
        skipped_users=users - len(new_users),
        tasks=len(tasks),
        assigned=len(notifications),
        overdue=sum(
            1
            for row in rows
            if row["due_date"] is not None
            and row["due_date"] < now.date()
            and row["status"] in (S.TODO, S.IN_PROGRESS)
        ),
        attachments=len(files),
        projects=projects,
    )


async def _forget_cached_stats(settings: Settings, user_ids: set[int | None]) -> None:
    ids = [user_id for user_id in user_ids if user_id is not None]
    if not ids:
        return
    client = create_redis(settings)
    try:
        guard = RedisGuard(client, settings.redis_retry_cooldown_seconds)
        # Never fails: with Redis down the API's cache is bypassed and expires by TTL anyway.
        await StatsCache(
            guard, settings.redis_key_prefix, settings.stats_cache_ttl_seconds
        ).invalidate(ids)
    finally:
        await client.aclose()
