"""When a task is overdue: due before today (UTC) and still open, i.e. neither done nor cancelled.

The one definition, in the two languages the service evaluates it in, side by side and built
from the same `CLOSED` (a test checks them against each other on every status and due date):

* `is_overdue(...)`, SQL: the list's `is_overdue` column and its `overdue=` filter, GET of one
  task, the stats read (over the (status, due date) counts the triggers keep), and, rendered as
  the PostgreSQL function `task_is_overdue(tasks, date)` (taskapi.tasks.functions), SQL running
  inside PostgreSQL: the due-soon job (a task is due soon when it is not overdue today but will
  be the day after tomorrow);
* `is_overdue_now(...)`, Python: the task a write returns, which is already in memory.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, and_

from taskapi.models import TaskStatus

CLOSED: Final = (TaskStatus.DONE, TaskStatus.CANCELLED)


def today() -> date:
    """The day overdue is judged on: today in UTC, wherever the server is."""
    return datetime.now(UTC).date()


def is_overdue(due_date: Any, status: Any, today: Any) -> ColumnElement[bool]:
    """SQL: overdue on `today` (a date or a bind parameter), for the columns `due_date` and
    `status` of a task (or of anything keeping them); never null, so NOT works too."""
    return and_(
        due_date.is_not(None),
        due_date < today,
        # One comparison per closed status rather than NOT IN (...): no list parameter to
        # expand, so statements with it compile once (taskapi.kit.db.CompiledQuery).
        *(status != closed for closed in CLOSED),
    )


def is_overdue_now(due_date: date | None, status: TaskStatus, today: date) -> bool:
    """Python: the same rule for a task already in memory."""
    return due_date is not None and due_date < today and status not in CLOSED
