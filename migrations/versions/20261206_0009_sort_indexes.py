"""Indexes in list order for sorting by due date, priority and title (either direction).

The list reads each visible part in list order and cuts it at the page's reach
(taskapi.tasks.queries: the owner's personal tasks, then each member project through a LATERAL):
with an index whose order is the statement's ORDER BY, a project yields its first rows instead
of being read whole and sorted. For a member of 50 projects of 1,000 tasks (docs/
projects-performance.md) `sort=due_date` fell from ~70 ms to ~11 ms in PostgreSQL.

* due date: the list orders by `(due_date IS NULL), due_date, id` (missing dates last in either
  direction), so descending is `(due_date IS NULL), due_date DESC, id DESC`: not the backward
  scan of the ascending index (that would put missing dates first). Hence a pair, per project
  and per personal owner.
* priority: `(priority, id)`, read backwards for `-priority`; `-priority,title` uses it too (an
  incremental sort of each priority's few hundred rows by title).
* title: `(lower(title), id)`, either way.

Built CONCURRENTLY (as revision 0005), so a live `tasks` is not locked meanwhile.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERSONAL = "project_id IS NULL AND deleted_at IS NULL"
PROJECT = "project_id IS NOT NULL AND deleted_at IS NULL"
DUE_FIRST = sa.text("(due_date IS NULL)")
ASCENDING_DUE = [DUE_FIRST, "due_date", "id"]
DESCENDING_DUE = [DUE_FIRST, sa.text("due_date DESC"), sa.text("id DESC")]
LOWER_TITLE = sa.text("lower(title)")  # the list compares titles lower-cased

# (name, columns, where): the same definitions as taskapi.models.tasks.Task.__table_args__.
INDEXES: tuple[tuple[str, list[str | sa.TextClause], str], ...] = (
    ("ix_tasks_project_due", ["project_id", *ASCENDING_DUE], PROJECT),
    ("ix_tasks_project_due_desc", ["project_id", *DESCENDING_DUE], PROJECT),
    ("ix_tasks_project_priority", ["project_id", "priority", "id"], PROJECT),
    ("ix_tasks_project_title", ["project_id", LOWER_TITLE, "id"], PROJECT),
    ("ix_tasks_personal_owner_due", ["owner_id", *ASCENDING_DUE], PERSONAL),
    ("ix_tasks_personal_owner_due_desc", ["owner_id", *DESCENDING_DUE], PERSONAL),
    ("ix_tasks_personal_owner_priority", ["owner_id", "priority", "id"], PERSONAL),
    ("ix_tasks_personal_owner_title", ["owner_id", LOWER_TITLE, "id"], PERSONAL),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, columns, where in INDEXES:
            op.create_index(
                name,
                "tasks",
                columns,
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, *_ in reversed(INDEXES):
            op.drop_index(name, table_name="tasks", postgresql_concurrently=True, if_exists=True)
