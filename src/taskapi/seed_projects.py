"""Demo projects for `taskapi seed` (taskapi.seed): three shared projects among the seeded users,
so the demo data shows sharing.

Each project has an admin who created it (and owns it), a few members of each role, and tasks
written by its admins and editors, a quarter of them assigned to another member (assignees of a
project task must be members). `member_count` is written with the member rows, in the same
transaction; each member other than the creator gets the `project_shared` notification the API
sends, and each assignee a `task_assigned` one. Once any seeded user owns a demo project (a
re-run), no project is created or changed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import (
    Notification,
    NotificationKind,
    Project,
    ProjectMember,
    ProjectRole,
    Task,
)

task_table = Task.metadata.tables["tasks"]
notification_table = Notification.metadata.tables["notifications"]

# (name, description, how many members at most): members are consecutive seeded users from a
# different first one per project, so users share some projects and not others.
PROJECTS = (
    ("Website relaunch", "New marketing site: copy, design system and the pricing page.", 6),
    ("Mobile app", "The iOS and Android apps: crashes, push notifications, releases.", 4),
    ("Platform operations", "Backups, on-call, CI and the database: everyone pitches in.", 10),
)
# Roles by position: the creator, then a second admin in larger projects, editors, viewers.
_ROLES = {
    1: (ProjectRole.ADMIN,),
    2: (ProjectRole.ADMIN, ProjectRole.EDITOR),
    3: (ProjectRole.ADMIN, ProjectRole.EDITOR, ProjectRole.VIEWER),
}

# The row builder of taskapi.seed (rng, owner, colleagues, count, with_files, now) -> rows.
TaskRows = Callable[[random.Random, int, Sequence[int], int, int, datetime], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class ProjectsReport:
    projects: int
    memberships: int
    tasks: int
    member_ids: frozenset[int]  # whose stats the new tasks moved

    def __str__(self) -> str:
        """As `taskapi seed` reports it."""
        if not self.projects:
            return "no new projects"
        return (
            f"{self.projects} shared projects ({self.memberships} memberships, "
            f"{self.tasks} project tasks)"
        )


def roles(count: int) -> list[ProjectRole]:
    """Roles for `count` members in order: admin first, at least one of each role from three
    members on, a second admin from six, about half the rest editors."""
    if count in _ROLES:
        return list(_ROLES[count])
    admins = 2 if count >= 6 else 1
    editors = (count - admins) // 2 + (count - admins) % 2
    viewers = count - admins - editors
    return (
        [ProjectRole.ADMIN] * admins
        + [ProjectRole.EDITOR] * editors
        + [ProjectRole.VIEWER] * viewers
    )


def members_of(index: int, users: Sequence[int], size: int) -> list[int]:
    """`size` consecutive users (wrapping) starting at a different one per project."""
    start = (2 * index) % len(users)
    count = min(size, len(users))
    return [users[(start + i) % len(users)] for i in range(count)]


async def seed_projects(
    session: AsyncSession,
    usernames: dict[int, str],
    tasks_per_member: int,
    now: datetime,
    task_rows: TaskRows,
) -> ProjectsReport:
    """Create the demo projects among `usernames` (id -> name, every seeded user) with
    `tasks_per_member` tasks per admin and editor. Runs in the caller's transaction."""
    users = sorted(usernames)
    names = [name for name, _, _ in PROJECTS]
    if not users or await session.scalar(
        select(func.count())
        .select_from(Project)
        .where(Project.owner_id.in_(users), Project.name.in_(names))
    ):
        return ProjectsReport(0, 0, 0, frozenset())  # seeded before: added to nothing
    created = memberships = tasks = 0
    touched: set[int] = set()
    for index, (name, description, size) in enumerate(PROJECTS):
        members = members_of(index, users, size)
        owner = members[0]
        project_id = await session.scalar(
            pg_insert(Project)
            .values(owner_id=owner, name=name, description=description, member_count=len(members))
            .on_conflict_do_nothing(index_elements=[Project.owner_id, func.lower(Project.name)])
            .returning(Project.id)
        )
        if project_id is None:
            continue  # seeded before: leave it as it is
        created += 1
        member_roles = roles(len(members))
        await session.execute(
            insert(ProjectMember),
            [
                {"project_id": project_id, "user_id": user_id, "role": role}
                for user_id, role in zip(members, member_roles, strict=True)
            ],
        )
        memberships += len(members)
        rows = []
        for user_id, role in zip(members, member_roles, strict=True):
            if role == ProjectRole.VIEWER:
                continue  # viewers read; admins and editors write the tasks
            rng = random.Random(f"taskapi-seed-project:{name}:{usernames[user_id]}")  # noqa: S311
            colleagues = [other for other in members if other != user_id]
            rows += task_rows(rng, user_id, colleagues, tasks_per_member, 0, now)
        for row in rows:
            row["project_id"] = project_id
        inserted: Sequence[Any] = []
        if rows:
            inserted = (
                await session.execute(
                    insert(task_table).returning(
                        task_table.c.id,
                        task_table.c.owner_id,
                        task_table.c.assignee_id,
                        task_table.c.title,
                    ),
                    rows,
                )
            ).all()
        tasks += len(inserted)
        touched.update(members)
        notes = [
            {
                "user_id": user_id,
                "kind": NotificationKind.PROJECT_SHARED,
                "task_id": None,
                "project_id": project_id,
                # As taskapi.notifications.service.project_shared words it.
                "message": f"{usernames[owner]} shared the project “{name}” with you as "
                f"{role.value}.",
            }
            for user_id, role in zip(members[1:], member_roles[1:], strict=True)
        ]
        notes += [
            {
                "user_id": task.assignee_id,
                "kind": NotificationKind.TASK_ASSIGNED,
                "task_id": task.id,
                "project_id": project_id,
                "message": f"{usernames[task.owner_id]} assigned you the task “{task.title}”.",
            }
            for task in inserted
            if task.assignee_id is not None
        ]
        if notes:
            await session.execute(insert(notification_table), notes)
    return ProjectsReport(created, memberships, tasks, frozenset(touched))
