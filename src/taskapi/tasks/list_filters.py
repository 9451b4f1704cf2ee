"""GET /tasks: its filters as SQL, on the tasks, and its filtered `total` where the trigger-kept
counts (taskapi.tasks.stat_counts) answer it. Part of step 3 of 5 (taskapi.tasks.queries)."""

from __future__ import annotations

from datetime import date
from typing import Any, Final

from sqlalchemy import BindParameter, ColumnElement, bindparam, false, not_

from taskapi.models import Task, TaskStatus
from taskapi.tasks import stat_counts
from taskapi.tasks.list_plan import ListShape
from taskapi.tasks.overdue import is_overdue
from taskapi.tasks.search_match import TAGS
from taskapi.tasks.visibility import PROJECT_ID, USER_ID

TODAY: BindParameter[date] = bindparam("today")
OVERDUE: Final = is_overdue(Task.due_date, Task.status, TODAY)


def _parameters(name: str, count: int) -> list[BindParameter[Any]]:
    return [bindparam(f"{name}_{i}") for i in range(count)]


def filter_conditions(shape: ListShape) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if shape.project == "none":
        conditions.append(Task.project_id.is_(None))
    elif shape.project == "id":
        conditions.append(Task.project_id == PROJECT_ID)
    if shape.scope == "owned":
        conditions.append(Task.owner_id == USER_ID)
    elif shape.scope == "assigned":
        conditions.append(Task.assignee_id == USER_ID)
    if shape.assignee == "me":
        conditions.append(Task.assignee_id == USER_ID)
    elif shape.assignee == "none":
        conditions.append(Task.assignee_id.is_(None))
    elif shape.assignee == "id":
        conditions.append(Task.assignee_id == bindparam("assignee_id"))
    if shape.status:
        conditions.append(Task.status.in_(_parameters("any_status", shape.status)))
    if shape.priority:
        conditions.append(Task.priority.in_(_parameters("any_priority", shape.priority)))
    if shape.completed is not None:
        is_done = Task.status == TaskStatus.DONE
        conditions.append(is_done if shape.completed else Task.status != TaskStatus.DONE)
    if shape.overdue is not None:
        conditions.append(OVERDUE if shape.overdue else not_(OVERDUE))
    if shape.tags:
        conditions.append(Task.tags.contains(TAGS))
    if shape.due_before:
        conditions.append(Task.due_date <= bindparam("due_before"))
    if shape.due_after:
        conditions.append(Task.due_date >= bindparam("due_after"))
    if shape.created_before:
        conditions.append(Task.created_at < bindparam("created_before"))
    if shape.created_after:
        conditions.append(Task.created_at >= bindparam("created_after"))
    if shape.updated_since:
        conditions.append(Task.updated_at >= bindparam("updated_since"))
    if shape.search == "nothing":
        conditions.append(false())
    # (shape.search == "query": the match itself, in queries._matched_statement)
    return conditions


def counted(shape: ListShape) -> bool:
    """Whether the shape's only filters are keys of the trigger-kept counts (project, status,
    priority, completed; overdue, but not with a priority): then its total is a sum of counted
    rows per subject, not a count of every visible task, which grows with everyone's tasks (see
    stat_counts.counted_total)."""
    flags = (shape.due_before, shape.due_after, shape.created_before, shape.created_after,
             shape.updated_since, shape.tags)  # fmt: skip
    if shape.overdue is not None and shape.priority:
        return False
    return (
        shape.scope == "all" and not any(flags) and shape.assignee is None and shape.search is None
    )


def counted_total(shape: ListShape) -> ColumnElement[int]:
    """The total of a `counted` shape, from the counts (stat_counts.counted_total)."""
    statuses = _parameters("any_status", shape.status)
    priorities = _parameters("any_priority", shape.priority)
    return stat_counts.counted_total(
        shape.project, statuses, priorities, shape.completed, shape.overdue
    )
