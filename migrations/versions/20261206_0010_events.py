"""The event log (issue 18): `events`, `event_recipients`.

* `events`: one row per change, written in the change's own transaction; `xid` is that
  transaction's id (`pg_current_xact_id()`), the order is `(xid, id)` and a reader serves only
  events of transactions older than every one still running (docs/sync.md: why that is exact).
* `event_recipients (user_id, xid, event_id)`: who may read each event, written with it (fan-out
  on write); a feed page is a range scan of one user's rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 10:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskapi.models.events import Xid8

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("xid", Xid8(), server_default=sa.text("pg_current_xact_id()"), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column(
            "occurred_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("changes", postgresql.JSONB(), nullable=True),
        sa.Column("task", postgresql.JSONB(), nullable=True),
        sa.Column("task_version", sa.Integer(), nullable=True),
        sa.Column("ends_copy", sa.SmallInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_xid_id", "events", ["xid", "id"])
    op.create_index("ix_events_task_id_xid", "events", ["task_id", "xid", "id"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])
    op.create_table(
        "event_recipients",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("xid", Xid8(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "xid", "event_id", name=op.f("pk_event_recipients")),
    )


def downgrade() -> None:
    op.drop_table("event_recipients")
    op.drop_index("ix_events_occurred_at", table_name="events")
    op.drop_index("ix_events_task_id_xid", table_name="events")
    op.drop_index("ix_events_xid_id", table_name="events")
    op.drop_table("events")
