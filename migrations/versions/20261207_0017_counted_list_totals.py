"""Each subject's (status, priority) counts indexed apart, for the list's `total` (issue 21,
point 5).

GET /tasks now sums its `total` from `task_stat_deltas` where its only filters are project,
status, priority and completed (taskapi.tasks.list_filters.counted): the (status, priority)
rows of the caller and of each of their projects, a handful per subject once folded. Through
the subject indexes those rows sit among the subject's due-date and tag rows (for a project of
1,000 tasks, one row per distinct due date and status, one per tag); these partial indexes hold
the pair rows alone, with the columns the sum reads, so it is an index(-only) scan of a few
entries per subject.

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

# (name, subject column): as taskapi.models.tasks.TaskStatDelta.__table_args__.
INDEXES = (
    ("ix_task_stat_deltas_user_pairs", "user_id"),
    ("ix_task_stat_deltas_project_pairs", "project_id"),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, column in INDEXES:
            op.create_index(
                name,
                "task_stat_deltas",
                [column],
                postgresql_include=["status", "priority", "n"],
                postgresql_where=sa.text(f"priority IS NOT NULL AND {column} IS NOT NULL"),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _ in INDEXES:
            op.drop_index(
                name, table_name="task_stat_deltas", postgresql_concurrently=True, if_exists=True
            )
