"""Full-text search over tasks, notifications, username prefix index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 05:40:20.735632+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Search is case- and accent-insensitive with English stemming: unaccent runs before the
    # stemmer. unaccent is a trusted extension, so a database owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    op.execute("CREATE TEXT SEARCH CONFIGURATION taskapi_search (COPY = pg_catalog.english)")
    op.execute(
        "ALTER TEXT SEARCH CONFIGURATION taskapi_search "
        "ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem"
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("task_assigned", "task_updated", "task_due_soon", name="notification_kind"),
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_notifications_task_id_tasks"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(op.f("ix_notifications_task_id"), "notifications", ["task_id"], unique=False)
    op.create_index(
        "ix_notifications_user_created",
        "notifications",
        ["user_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_notifications_user_unread",
        "notifications",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text("read_at IS NULL"),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('taskapi_search'::regconfig, coalesce(title, '')), 'A') || "
                "setweight(to_tsvector('taskapi_search'::regconfig, "
                "coalesce(description, '')), 'B')",
                persisted=True,
            ),
            nullable=True,
        ),
    )
    op.create_index(
        "ix_tasks_search_vector", "tasks", ["search_vector"], unique=False, postgresql_using="gin"
    )
    op.create_index(
        "ix_users_username_prefix",
        "users",
        [sa.literal_column("lower(username)").label("username_lower")],
        unique=False,
        postgresql_ops={"username_lower": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index(
        "ix_users_username_prefix",
        table_name="users",
        postgresql_ops={"username_lower": "text_pattern_ops"},
    )
    op.drop_index("ix_tasks_search_vector", table_name="tasks", postgresql_using="gin")
    op.drop_column("tasks", "search_vector")
    op.drop_index(
        "ix_notifications_user_unread",
        table_name="notifications",
        postgresql_where=sa.text("read_at IS NULL"),
    )
    op.drop_index("ix_notifications_user_created", table_name="notifications")
    op.drop_index(op.f("ix_notifications_task_id"), table_name="notifications")
    op.drop_table("notifications")
    op.execute("DROP TYPE IF EXISTS notification_kind")
    op.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS taskapi_search")
