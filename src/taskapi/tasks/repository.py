"""Running the statements of taskapi.tasks.queries: I/O only, no SQL is decided here.

GET /tasks, step 4 of 5: `list_page` runs a plan's statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.db import CompiledQuery
from taskapi.models import ProjectMember, Task, User
from taskapi.tasks import queries
from taskapi.tasks.list_plan import ListPlan
from taskapi.tasks.stats_cache import mark_stats_stale


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
    rows = await queries.list_statement(plan.shape).fetch(session, plan.values)
    total = int(rows[0]["total"])
    # Nothing on this page (past the end, or nothing matches): one row of nulls and the total.
    return (rows if rows[0]["id"] is not None else []), total


async def user_exists(session: AsyncSession, user_id: int) -> bool:
    """Whether the account exists; if it does, it stays until this transaction ends (FOR KEY
    SHARE: the lock the foreign key takes anyway, only earlier). An account deleted meanwhile
    is waited for and then not found, where the foreign key would have failed after the check
    had passed (a 500)."""
    found = await session.scalar(
        select(User.id).where(User.id == user_id).with_for_update(read=True, key_share=True)
    )
    return found is not None


async def project_member_ids(session: AsyncSession, project_ids: Iterable[int | None]) -> list[int]:
    """Every member of these projects (whose stats a change of their tasks moves)."""
    rows = await session.scalars(
        select(ProjectMember.user_id)
        .where(ProjectMember.project_id.in_([p for p in project_ids if p is not None]))
        .distinct()
    )
    return list(rows.all())


async def lock_in_order(session: AsyncSession, which: Any) -> None:
    """Lock the tasks `which` selects, in one statement, in id order (the lock order:
    taskapi.tasks.access)."""
    await session.execute(select(Task.id).where(which).order_by(Task.id).with_for_update())


async def unassign_in_project(session: AsyncSession, project_id: int, user_id: int) -> list[int]:
    """The project's tasks assigned to `user_id` (who is leaving it) lose their assignee: a new
    version each. Returns their ids."""
    ids = list(
        (
            await session.scalars(
                update(Task)
                .where(Task.project_id == project_id, Task.assignee_id == user_id)
                .values(assignee_id=None, version=Task.version + 1, updated_at=func.now())
                .returning(Task.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
    )
    if ids:
        # Who sees these tasks: the project's members (and the leaver, for this transaction).
        mark_stats_stale(session, user_id, *await project_member_ids(session, [project_id]))
    return ids


async def reassign_owner_in_project(
    session: AsyncSession, project_id: int, from_user_id: int, to_user_id: int
) -> list[int]:
    """The project's tasks owned by `from_user_id` (whose account goes) become `to_user_id`'s:
    a new version each. A project task's counts are the project's, so no stats move."""
    rows = await session.scalars(
        update(Task)
        .where(Task.project_id == project_id, Task.owner_id == from_user_id)
        .values(owner_id=to_user_id, version=Task.version + 1, updated_at=func.now())
        .returning(Task.id)
        .execution_options(synchronize_session=False)
    )
    return list(rows.all())


# A read of its own (no transaction is begun for it, as for the list it guards).
_IS_MEMBER = CompiledQuery.of(
    select(ProjectMember.user_id).where(
        ProjectMember.user_id == bindparam("user_id"),
        ProjectMember.project_id == bindparam("project_id"),
    )
)


async def is_member(session: AsyncSession, user_id: int, project_id: int) -> bool:
    return bool(await _IS_MEMBER.fetch(session, {"user_id": user_id, "project_id": project_id}))
