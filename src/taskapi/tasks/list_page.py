"""GET /tasks, step 5 of 5: the page from the rows and its next cursor (the router then only
serialises it and points the Link header at the next page)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from taskapi.kit.pagination import CursorCodec
from taskapi.models import TaskPriority, TaskStatus
from taskapi.tasks.list_plan import ListPlan, OrderKey
from taskapi.tasks.queries import LIST_ITEM_COLUMNS
from taskapi.tasks.schemas import TaskPageRows


def build_page(plan: ListPlan, rows: list[Any], total: int, cursors: CursorCodec) -> TaskPageRows:
    """`rows` are the plan's page plus, when another page follows, one row more."""
    page = rows[: plan.limit]
    next_cursor = None
    if len(rows) > plan.limit and page:
        values = [_cursor_value(key, page[-1]) for key in plan.shape.order]
        next_cursor = cursors.encode(values, plan.fingerprint)
    return {
        "items": [dict(zip(LIST_ITEM_COLUMNS, row, strict=False)) for row in page],  # type: ignore[misc]
        "total": total,
        "limit": plan.limit,
        "offset": plan.offset,
        "next_cursor": next_cursor,
    }


def _cursor_value(key: OrderKey, row: Any) -> Any:
    """The row's value of one order key, as JSON (taskapi.tasks.list_plan reads it back)."""
    # `title` is the raw title: PostgreSQL lower-cases it when comparing, as when sorting.
    value = row[key.name]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, TaskStatus | TaskPriority):
        return value.value
    return value
