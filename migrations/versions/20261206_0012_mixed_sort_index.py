"""An index for `sort=-priority,title` (and, read backwards, `priority,-title`), per part.

Mixed directions, `priority DESC, lower(title), id`, match neither the priority index of 0009
nor its backward scan, so each project read its first priority's ~250 rows and sorted them by
title (an Incremental Sort per project): 54-83 ms p95 for a member of 50 projects at 2M rows,
over the 50 ms goal; 25-27 ms with this pair (docs/projects-performance.md). About 57 MB each at
that size, the price of two more btree entries per insert.

Built CONCURRENTLY (as 0005 and 0009), so a live `tasks` is not locked meanwhile.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:15:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, part column, where): as taskapi.models.tasks.Task.__table_args__.
INDEXES = (
    (
        "ix_tasks_project_priority_desc_title",
        "project_id",
        "project_id IS NOT NULL AND deleted_at IS NULL",
    ),
    (
        "ix_tasks_personal_owner_priority_desc_title",
        "owner_id",
        "project_id IS NULL AND deleted_at IS NULL",
    ),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, column, where in INDEXES:
            op.create_index(
                name,
                "tasks",
                [column, sa.text("priority DESC"), sa.text("lower(title)"), "id"],
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, *_ in reversed(INDEXES):
            op.drop_index(name, table_name="tasks", postgresql_concurrently=True, if_exists=True)
