"""Task queries. `visible_to` / `visible_tasks` is the one place that decides which tasks a user
may see; every read and write of tasks starts from it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Task, User
from taskapi.tasks.listing import OrderPart, keyset_condition


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
    task: Task | None = await session.scalar(query)
    return task


async def get_visible_many(
    session: AsyncSession, user_id: int, task_ids: Sequence[int]
) -> list[Task]:
    """Lock the visible ones among `task_ids` (in id order, so concurrent bulks can't deadlock)."""
    query = visible_tasks(user_id).where(Task.id.in_(task_ids)).order_by(Task.id).with_for_update()
    return list((await session.scalars(query)).all())


async def update_many(
    session: AsyncSession, task_ids: Sequence[int], values: dict[str, Any], now: datetime
) -> list[Task]:
    """One UPDATE for many locked rows; bumps each version and refreshes the loaded objects."""
    statement = (
        update(Task)
        .where(Task.id.in_(task_ids))
        .values(**values, version=Task.version + 1, updated_at=now)
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return list((await session.scalars(statement)).all())


async def list_page(
    session: AsyncSession,
    user_id: int,
    *,
    conditions: Sequence[ColumnElement[bool]],
    order_parts: Sequence[OrderPart],
    after: list[Any] | None,
    rank: ColumnElement[Any] | None,
    limit: int,
    offset: int,
) -> tuple[list[tuple[Task, float | None]], int]:
    """One page (plus one row, to know whether another page follows) and the filtered total."""
    filtered = visible_tasks(user_id).where(*conditions)
    page = filtered.add_columns(rank) if rank is not None else filtered
    if after is not None:
        page = page.where(keyset_condition(list(order_parts), after))
    order_by = [clause for part in order_parts for clause in part.order_by()]
    page = page.order_by(*order_by).limit(limit + 1).offset(offset)
    result = await session.execute(page)
    rows: list[tuple[Task, float | None]] = [
        (row[0], row[1] if rank is not None else None) for row in result
    ]
    total = await session.scalar(
        select(func.count()).select_from(filtered.with_only_columns(Task.id).subquery())
    )
    return rows, int(total or 0)


async def user_exists(session: AsyncSession, user_id: int) -> bool:
    return await session.get(User, user_id) is not None
