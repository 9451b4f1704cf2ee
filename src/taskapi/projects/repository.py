"""The SQL of projects and memberships: I/O only, the rules are taskapi.projects.service's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Project, ProjectMember, ProjectRole, Task, User

NAME_INDEX = "uq_projects_owner_name_lower"


def violates_unique_name(error: IntegrityError) -> bool:
    """Whether `error` is the per-owner unique name index (and no other constraint)."""
    cause = getattr(error.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None)
    if name is not None:
        return bool(name == NAME_INDEX)
    return NAME_INDEX in str(error.orig)


async def project_with_role(
    session: AsyncSession, project_id: int, user_id: int, *, for_update: bool
) -> tuple[Project, ProjectRole] | None:
    """The project and the caller's role in it, or None when they are not a member: one query.

    For a write, the project row is locked (every membership change takes this lock first, so
    they run one after the other) and so is the caller's membership row, locked second: a
    request that waited for the lock reads the caller's role as the previous holder left it
    (an inner join to a row it did not lock would give the role read before the wait)."""
    query = (
        select(Project, ProjectMember.role)
        .join(
            ProjectMember,
            and_(ProjectMember.project_id == Project.id, ProjectMember.user_id == user_id),
        )
        .where(Project.id == project_id)
    )
    if for_update:
        query = query.with_for_update(of=[Project.__table__, ProjectMember.__table__])
    row = (await session.execute(query)).first()
    return None if row is None else (row[0], row[1])


async def list_page(
    session: AsyncSession,
    user_id: int,
    archived: bool | None,
    limit: int,
    offset: int,
    before_id: int | None,
) -> tuple[list[tuple[Project, ProjectRole]], int]:
    """Up to `limit` + 1 of the user's projects, newest (highest id) first, and their total."""
    conditions: list[Any] = [ProjectMember.user_id == user_id]
    if archived is not None:
        conditions.append(Project.archived.is_(archived))
    mine = (
        select(Project, ProjectMember.role)
        .join(ProjectMember, ProjectMember.project_id == Project.id)
        .where(*conditions)
    )
    total = await session.scalar(
        select(func.count())
        .select_from(ProjectMember)
        .join(Project, Project.id == ProjectMember.project_id)
        .where(*conditions)
    )
    page = mine if before_id is None else mine.where(Project.id < before_id)
    rows = await session.execute(page.order_by(Project.id.desc()).limit(limit + 1).offset(offset))
    return [(project, role) for project, role in rows.all()], int(total or 0)


async def members(session: AsyncSession, project_id: int) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(ProjectMember.user_id, User.username, ProjectMember.role, ProjectMember.added_at)
        .join(User, User.id == ProjectMember.user_id)
        .where(ProjectMember.project_id == project_id)
        .order_by(ProjectMember.added_at, ProjectMember.user_id)
    )
    return [dict(row._mapping) for row in rows.all()]


async def member(session: AsyncSession, project_id: int, user_id: int) -> ProjectMember | None:
    found: ProjectMember | None = await session.get(ProjectMember, (project_id, user_id))
    return found


async def member_ids(session: AsyncSession, project_id: int) -> list[int]:
    rows = await session.scalars(
        select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)
    )
    return list(rows.all())


async def admin_ids(session: AsyncSession, project_id: int) -> list[int]:
    """The project's admins, earliest added first."""
    rows = await session.scalars(
        select(ProjectMember.user_id)
        .where(ProjectMember.project_id == project_id, ProjectMember.role == ProjectRole.ADMIN)
        .order_by(ProjectMember.added_at, ProjectMember.user_id)
    )
    return list(rows.all())


async def user(session: AsyncSession, user_id: int) -> User | None:
    found: User | None = await session.get(User, user_id)
    return found


async def remove_member(session: AsyncSession, project_id: int, user_id: int) -> None:
    await session.execute(
        delete(ProjectMember).where(
            ProjectMember.project_id == project_id, ProjectMember.user_id == user_id
        )
    )


async def lock_projects_of(session: AsyncSession, user_id: int) -> list[Project]:
    """Every project `user_id` is a member of or owns tasks in, locked in id order (so two
    account deletions never wait on each other's locks crosswise)."""
    involved = (
        select(ProjectMember.project_id)
        .where(ProjectMember.user_id == user_id)
        .union(
            select(Task.project_id).where(Task.owner_id == user_id, Task.project_id.is_not(None))
        )
    )
    rows = await session.scalars(
        select(Project).where(Project.id.in_(involved)).order_by(Project.id).with_for_update()
    )
    return list(rows.all())


async def delete_project(session: AsyncSession, project_id: int) -> None:
    await session.execute(delete(Project).where(Project.id == project_id))
