"""The status/priority/due-date indexes also hold `created_at` and `id` (issue 21, point 5).

A filtered list (`status=`, `priority=`, `overdue=`, due-date bounds) reads each visible part
through its `(scope, status, priority, due_date)` index, then needs each match's `created_at`
and `id` to put the part in list order and keep its first `reach` rows. With only those four
columns in the index, every match was fetched from the table for its two sort keys: a member
of 50 projects filtering on two statuses and two priorities read 499 rows of each project from
the heap (3.4 ms per project at 1M tasks, more as the table grew and the same rows spread over
more pages: 52 → 248 ms p95 from 1M to 5M). INCLUDE-ing the two keys makes that read an
index-only scan of the project's own index entries, which sit together however large the table
is (0.27 ms per project), and only the page's rows are then read whole
(taskapi.tasks.queries: lists carry ids and sort keys until the page is cut).

Each index is built beside the old one, which is then dropped and its name given to the new
one, so no moment is without an index and the names the planner tests look for stay.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 20:45:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, scope column, columns INCLUDE'd before this revision, where): as
# taskapi.models.tasks.Task.__table_args__.
INDEXES = (
    (
        "ix_tasks_personal_owner_status_priority",
        "owner_id",
        [],
        "project_id IS NULL AND deleted_at IS NULL",
    ),
    (
        "ix_tasks_personal_assignee_status_priority",
        "assignee_id",
        ["owner_id"],
        "assignee_id IS NOT NULL AND project_id IS NULL AND deleted_at IS NULL",
    ),
    (
        "ix_tasks_project_status_priority",
        "project_id",
        [],
        "project_id IS NOT NULL AND deleted_at IS NULL",
    ),
)
ORDER_KEYS = ["created_at", "id"]


def _rebuild(include_order_keys: bool) -> None:
    with op.get_context().autocommit_block():
        for name, column, included, where in INDEXES:
            op.create_index(
                f"{name}_new",
                "tasks",
                [column, "status", "priority", "due_date"],
                postgresql_include=included + (ORDER_KEYS if include_order_keys else []),
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )
            op.drop_index(name, table_name="tasks", postgresql_concurrently=True, if_exists=True)
            op.execute(f"ALTER INDEX {name}_new RENAME TO {name}")


def upgrade() -> None:
    _rebuild(include_order_keys=True)


def downgrade() -> None:
    _rebuild(include_order_keys=False)
