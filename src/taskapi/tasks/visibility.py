"""Who sees a task: the one definition, and every form of it the service uses.

A task is visible to the users its grants name; today there are two, its owner and its assignee
(`GRANTS`). Everything that needs the rule is derived from that tuple:

* `visible_to(user)`: "the task is visible to `user`", for statements that look tasks up by id or
  by text (GET, search, totals, writes, attachments);
* `visible_halves(user)`: the same set split into disjoint parts, one per grant, each of which an
  index can answer in list order (the list reads every part in order and merges them);
* `viewers(row)`: every user who sees one task, once each, rendered by taskapi.tasks.functions
  as the SQL function `task_viewers(tasks)` for code running inside PostgreSQL: the stats
  triggers (whose counts a change moves) and the due-soon job (whom to tell). Migrations install
  its text; tests/internals/test_task_rules.py fails while the installed text is not the rendering.

Extending the rule, e.g. to project members (a project task visible to the members of its
project, a personal task to its owner and assignee), is one edit here plus a migration:

1. here: a second kind of grant beside `ColumnGrant`, with the same three methods, e.g.
   `holds` = `project_id IN (SELECT project_id FROM project_members WHERE user_id = u)`,
   `excludes` = its negation, `named` = `SELECT user_id FROM project_members WHERE project_id =
   t.project_id`, and an entry for it in `GRANTS`. The
   list, search, GET, writes, attachments and totals follow by themselves (the list reads one
   more part, so give it an index in list order: project_id, created_at DESC, id DESC).
2. a migration that creates the project tables, installs the new `task_viewers` (its text as
   `python -m taskapi.tasks.functions` prints it, copied in: migrations never change after the
   fact) and, since counts then also move when someone joins or leaves a project, adds stats
   triggers on `project_members` (and `project_id` to the columns the `tasks` update trigger
   watches).

Not derived from here: whose cached stats a write makes stale (tasks/service.py names the owner
and the assignee, before and after); project members would have to be added there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    bindparam,
    or_,
    select,
    union_all,
)

from taskapi.models import Task

# The caller, in statements built once and run with bind values (`user_id` in the values).
USER_ID: BindParameter[int] = bindparam("user_id")

# A tasks row's columns by name: the table's own in queries, a function argument's (`t.title`)
# in the PostgreSQL functions rendered from these rules (taskapi.tasks.functions).
Columns = Mapping[str, ColumnElement[Any]]
TASK_COLUMNS: Final[Columns] = {column.key: column for column in Task.__table__.c}


@dataclass(frozen=True, slots=True)
class ColumnGrant:
    """Visible to the user a column of the task names (none when it is null)."""

    column: str

    def holds(self, tasks: Columns, user: Any) -> ColumnElement[bool]:
        """The task is visible to `user` through this grant."""
        condition: ColumnElement[bool] = tasks[self.column] == user
        return condition

    def excludes(self, tasks: Columns, user: Any) -> ColumnElement[bool]:
        """The task is not visible to `user` (never null) through this grant."""
        column = tasks[self.column]
        if TASK_COLUMNS[self.column].nullable:
            return column.is_distinct_from(user)
        condition: ColumnElement[bool] = column != user
        return condition

    def named(self, tasks: Columns) -> Select[Any]:
        """The users this grant names for one task row, as a one-column `user_id` query."""
        column = tasks[self.column]
        return select(column.label("user_id")).where(column.is_not(None))


GRANTS: Final = (ColumnGrant("owner_id"), ColumnGrant("assignee_id"))


def visible_to(user: Any, tasks: Columns = TASK_COLUMNS) -> ColumnElement[bool]:
    return or_(*(grant.holds(tasks, user) for grant in GRANTS))


def visible_halves(user: Any) -> tuple[ColumnElement[bool], ...]:
    """`visible_to` as disjoint parts whose union is exactly it: part i holds the tasks visible
    through grant i and through none before it (so a self-assigned task is in the owner's part
    only). Each part starts with its grant's condition, which an index in list order answers."""
    return tuple(
        and_(grant.holds(TASK_COLUMNS, user), *(g.excludes(TASK_COLUMNS, user) for g in GRANTS[:i]))
        for i, grant in enumerate(GRANTS)
    )


def viewers(tasks: Columns) -> CompoundSelect[Any]:
    """Every user who sees the task row `tasks`, once each: grant i's users less those an
    earlier grant names (the same partition as `visible_halves`, read the other way round)."""
    parts = []
    for i, grant in enumerate(GRANTS):
        named = grant.named(tasks)
        user = named.selected_columns.user_id
        parts.append(named.where(*(g.excludes(tasks, user) for g in GRANTS[:i])))
    return union_all(*parts)
