"""Task queries. Every read and write of tasks starts from the visible ones
(taskapi.tasks.visibility)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Final, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    func,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.db import CompiledQuery
from taskapi.models import Task, TaskStatus, User
from taskapi.tasks.listing import (
    TODAY,
    ListShape,
    OrderPart,
    after_parameters,
    filter_conditions,
    keyset_condition,
    order_parts,
)
from taskapi.tasks.overdue import is_overdue
from taskapi.tasks.visibility import USER_ID, visible_halves, visible_to


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


# What a list row carries: every column but the search vector, plus the two derived flags, so a
# page is built from plain rows without loading (and tracking) ORM objects.
_LIST_COLUMNS: tuple[ColumnElement[Any], ...] = (
    *(column for column in Task.__table__.c if column.key != "search_vector"),
    (Task.status == TaskStatus.DONE).label("completed"),
    is_overdue(Task.due_date, Task.status, TODAY).label("is_overdue"),
)


def _count_visible(conditions: Sequence[ColumnElement[bool]]) -> ColumnElement[int]:
    # One count per half: each is an index(-only) scan, where a count over the OR would be a
    # bitmap heap scan of the user's whole visible set.
    counts = [
        select(func.count()).select_from(Task).where(half, *conditions).scalar_subquery()
        for half in visible_halves(USER_ID)
    ]
    total: ColumnElement[int] = counts[0]
    for count in counts[1:]:
        total = total + count
    return total


# The columns of a list item, in TaskOut's order.
LIST_ITEM_COLUMNS: Final = (
    "id", "title", "description", "status", "completed", "priority", "due_date", "is_overdue",
    "tags", "owner_id", "assignee_id", "attachment_count", "created_at", "updated_at",
    "completed_at", "version",
)  # fmt: skip


class ListStatements(NamedTuple):
    page: CompiledQuery
    total: CompiledQuery
    order_parts: tuple[OrderPart, ...]


@lru_cache(maxsize=512)
def list_statements(shape: ListShape) -> ListStatements:
    """The page and total statements for one shape of list request, built and compiled once
    (they only hold bind parameters).

    The page is one statement that also returns the filtered total. Each half of the visible set
    is read in list order and cut at offset + limit + 1 rows, so with the default order the
    owner's and the assignee's index each yield a few rows instead of the user's whole set being
    fetched and sorted; the halves are then merged and cut again. Rows carry the item columns,
    `total`, and `rank` when ordered by relevance. Searches take `_search_statements`.
    """
    parts = order_parts(shape.sort, shape.relevance)
    conditions = filter_conditions(shape)
    sort_keys = [part.expression.label(f"sort_{i}") for i, part in enumerate(parts)]
    if shape.search == "query":
        return _search_statements(shape, parts, conditions, sort_keys)
    order_by = [clause for part in parts for clause in part.order_by()]
    halves = []
    for half in visible_halves(USER_ID):
        branch = select(*_LIST_COLUMNS, *sort_keys).where(half, *conditions)
        if shape.after_nulls is not None:
            branch = branch.where(
                keyset_condition(parts, after_parameters(parts, shape.after_nulls))
            )
        halves.append(branch.order_by(*order_by).limit(bindparam("reach")))
    merged = union_all(*halves).subquery("visible_page")
    merged_parts = [replace(part, expression=merged.c[f"sort_{i}"]) for i, part in enumerate(parts)]
    total = _count_visible(conditions)
    outputs = [merged.c[name] for name in LIST_ITEM_COLUMNS]
    if shape.relevance:
        # The rank is the first order part: computed once, as sort_0.
        outputs.append(merged.c.sort_0.label("rank"))
    page = (
        select(*outputs, total.label("total"))
        .order_by(*[clause for part in merged_parts for clause in part.order_by()])
        .limit(bindparam("page_limit"))
        .offset(bindparam("page_offset"))
    )
    return ListStatements(
        page=CompiledQuery.of(page), total=CompiledQuery.of(select(total)), order_parts=parts
    )


def _search_statements(
    shape: ListShape,
    parts: tuple[OrderPart, ...],
    conditions: Sequence[ColumnElement[bool]],
    sort_keys: Sequence[ColumnElement[Any]],
) -> ListStatements:
    """A search matches through the full-text index, not in list order, and ranking needs every
    match anyway: the matches are found once (materialised) with only their ids and sort keys,
    then counted and paged, and only the page's rows are read whole. Materialising every
    match's full row (descriptions included) cost twice the whole statement; reading each half
    in order and counting it again would walk the text index four times."""
    matched = (
        select(Task.id.label("id"), *sort_keys)
        .where(visible_to(USER_ID), *conditions)
        .cte("matched")
        .prefix_with("MATERIALIZED")
    )
    matched_parts = tuple(
        replace(part, expression=matched.c[f"sort_{i}"]) for i, part in enumerate(parts)
    )
    chosen = select(matched.c.id, *(matched.c[f"sort_{i}"] for i in range(len(parts))))
    if shape.after_nulls is not None:
        chosen = chosen.where(
            keyset_condition(matched_parts, after_parameters(parts, shape.after_nulls))
        )
    chosen_page = (
        chosen.order_by(*[clause for part in matched_parts for clause in part.order_by()])
        .limit(bindparam("page_limit"))
        .offset(bindparam("page_offset"))
        .subquery("chosen")
    )
    page_parts = tuple(
        replace(part, expression=chosen_page.c[f"sort_{i}"]) for i, part in enumerate(parts)
    )
    total = select(func.count()).select_from(matched).scalar_subquery()
    outputs = [_ITEM_COLUMNS_BY_NAME[name] for name in LIST_ITEM_COLUMNS]
    if shape.relevance:
        outputs.append(chosen_page.c.sort_0.label("rank"))  # the first order part
    page = (
        select(*outputs, total.label("total"))
        .select_from(chosen_page.join(Task, Task.id == chosen_page.c.id))
        .order_by(*[clause for part in page_parts for clause in part.order_by()])
    )
    # Past the end (or after the last cursor row) the page is empty: the total on its own.
    alone = select(func.count()).where(visible_to(USER_ID), *conditions)
    return ListStatements(
        page=CompiledQuery.of(page), total=CompiledQuery.of(alone), order_parts=parts
    )


# GET /tasks/{id}: the task as a list item, if the caller can see it.
_ITEM_COLUMNS_BY_NAME = {column.key: column for column in _LIST_COLUMNS}
_VISIBLE_ITEM: Final = CompiledQuery.of(
    select(*(_ITEM_COLUMNS_BY_NAME[name] for name in LIST_ITEM_COLUMNS)).where(
        Task.id == bindparam("task_id"), visible_to(USER_ID)
    )
)


async def get_visible_item(
    session: AsyncSession, user_id: int, task_id: int, today: date
) -> dict[str, Any] | None:
    """The read-only counterpart of `get_visible`: a plain row in `LIST_ITEM_COLUMNS`, without
    loading an ORM object."""
    rows = await _VISIBLE_ITEM.fetch(
        session, {"task_id": task_id, "user_id": user_id, "today": today}
    )
    return dict(zip(LIST_ITEM_COLUMNS, rows[0], strict=False)) if rows else None


async def list_page(
    session: AsyncSession, shape: ListShape, values: dict[str, Any], *, limit: int, offset: int
) -> tuple[list[Any], int]:
    """One page plus one row (to know whether another page follows), and the filtered total:
    asyncpg records with the `LIST_ITEM_COLUMNS`, `total` and, when ranked, `rank`."""
    statements = list_statements(shape)
    bound = {
        **values,
        "reach": offset + limit + 1,
        "page_limit": limit + 1,
        "page_offset": offset,
    }
    rows = await statements.page.fetch(session, bound)
    if rows:
        return rows, int(rows[0]["total"])
    # Nothing on this page (past the end, or nothing matches): the total needs its own query.
    (row,) = await statements.total.fetch(session, values)
    return rows, int(row[0] or 0)


async def user_exists(session: AsyncSession, user_id: int) -> bool:
    return await session.get(User, user_id) is not None
