"""Task queries. `visible_tasks` is the one place that decides which tasks a user may see;
every read and write of tasks starts from it."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Task, User


def visible_to(user_id: int) -> ColumnElement[bool]:
    return or_(Task.owner_id == user_id, Task.assignee_id == user_id)


def visible_tasks(user_id: int) -> Select[Task]:
    return select(Task).where(visible_to(user_id))


async def get_visible(
    session: AsyncSession, user_id: int, task_id: int, *, for_update: bool = False
) -> Task | None:
    query = visible_tasks(user_id).where(Task.id == task_id)
    if for_update:
        # Serialises writers of one task: the workflow check and If-Match see the latest row.
        query = query.with_for_update()
    return await session.scalar(query)


async def list_page(
    session: AsyncSession, user_id: int, *, limit: int, offset: int
) -> tuple[list[Task], int]:
    visible = visible_tasks(user_id)
    page = visible.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit).offset(offset)
    items = list((await session.scalars(page)).all())
    total = await session.scalar(
        select(func.count()).select_from(visible.with_only_columns(Task.id).subquery())
    )
    return items, int(total or 0)


async def user_exists(session: AsyncSession, user_id: int) -> bool:
    return await session.get(User, user_id) is not None
