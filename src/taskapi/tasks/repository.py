"""Running the statements of taskapi.tasks.queries: I/O only, no SQL is decided here.

GET /tasks, step 4 of 5: `list_page` runs a plan's statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Task, User
from taskapi.tasks import queries
from taskapi.tasks.list_plan import ListPlan


async def get_visible(
    session: AsyncSession, user_id: int, task_id: int, *, for_update: bool = False
) -> Task | None:
    task: Task | None = await session.scalar(
        queries.visible_task(user_id, task_id, for_update=for_update)
    )
    return task


async def get_visible_many(
    session: AsyncSession, user_id: int, task_ids: Sequence[int]
) -> list[Task]:
    """The visible ones among `task_ids`, locked."""
    return list((await session.scalars(queries.visible_tasks_locked(user_id, task_ids))).all())


async def update_many(
    session: AsyncSession, task_ids: Sequence[int], values: dict[str, Any], now: datetime
) -> list[Task]:
    return list((await session.scalars(queries.update_tasks(task_ids, values, now))).all())


async def get_visible_item(
    session: AsyncSession, user_id: int, task_id: int, today: date
) -> dict[str, Any] | None:
    """The read-only counterpart of `get_visible`: a plain row in `LIST_ITEM_COLUMNS`, without
    loading an ORM object."""
    rows = await queries.VISIBLE_ITEM.fetch(
        session, {"task_id": task_id, "user_id": user_id, "today": today}
    )
    return dict(zip(queries.LIST_ITEM_COLUMNS, rows[0], strict=False)) if rows else None


async def list_page(session: AsyncSession, plan: ListPlan) -> tuple[list[Any], int]:
    """The plan's page plus one row (whether another page follows), and the filtered total:
    asyncpg records with the `LIST_ITEM_COLUMNS`, `total` and, when ranked, `rank`."""
    statements = queries.list_statements(plan.shape)
    rows = await statements.page.fetch(session, plan.values)
    if rows:
        return rows, int(rows[0]["total"])
    # Nothing on this page (past the end, or nothing matches): the total needs its own query.
    (row,) = await statements.total.fetch(session, plan.values)
    return rows, int(row[0] or 0)


async def user_exists(session: AsyncSession, user_id: int) -> bool:
    return await session.get(User, user_id) is not None
