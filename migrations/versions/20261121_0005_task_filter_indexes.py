"""Covering indexes for filtered lists and stats: (owner | assignee, status, priority, due_date)
including the tags.

A filtered list's total and the stats aggregates (tag counts too) then read only these indexes
(index-only scans) instead of every visible row; built CONCURRENTLY so a live table is not
locked meanwhile.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 08:50:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_tasks_owner_status_priority",
            "tasks",
            ["owner_id", "status", "priority", "due_date"],
            unique=False,
            postgresql_include=["tags"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_tasks_assignee_status_priority",
            "tasks",
            ["assignee_id", "status", "priority", "due_date"],
            unique=False,
            postgresql_include=["owner_id", "tags"],
            postgresql_where=sa.text("assignee_id IS NOT NULL"),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_tasks_assignee_status_priority",
            table_name="tasks",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.drop_index(
            "ix_tasks_owner_status_priority",
            table_name="tasks",
            postgresql_concurrently=True,
            if_exists=True,
        )
