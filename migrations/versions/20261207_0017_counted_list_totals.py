"""Each subject's (status, priority) and (status, due date) counts indexed apart, for the
list's `total` (issue 21, point 5).

GET /tasks now sums its `total` from `task_stat_deltas` where its only filters are project,
status, priority, completed and overdue (taskapi.tasks.list_filters.counted): the (status,
priority) rows of the caller and of each of their projects, a handful per subject once folded,
and for overdue their (status, due date) rows. Through the subject indexes those rows sit among
each other and the tag rows; these partial indexes hold each kind alone, with the columns the
sum reads, so it is an index(-only) scan of that kind's entries per subject.

Built CONCURRENTLY: `task_stat_deltas` takes a row on every task write.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, subject column, the kind's own column): as
# taskapi.models.tasks.TaskStatDelta.__table_args__.
INDEXES = (
    ("ix_task_stat_deltas_user_pairs", "user_id", "priority"),
    ("ix_task_stat_deltas_user_dates", "user_id", "due_date"),
    ("ix_task_stat_deltas_project_pairs", "project_id", "priority"),
    ("ix_task_stat_deltas_project_dates", "project_id", "due_date"),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, subject, column in INDEXES:
            op.create_index(
                name,
                "task_stat_deltas",
                [subject],
                postgresql_include=["status", column, "n"],
                postgresql_where=sa.text(f"{column} IS NOT NULL AND {subject} IS NOT NULL"),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _, _ in INDEXES:
            op.drop_index(
                name, table_name="task_stat_deltas", postgresql_concurrently=True, if_exists=True
            )
