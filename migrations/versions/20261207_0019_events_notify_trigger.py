"""Writing events wakes the event streams by itself: a statement-level trigger on `events`.

Every transaction that wrote events also sent `SELECT pg_notify('taskapi_events', '')` as a
statement of its own (events/repository.py), one more round trip per write. The rule "events
written -> the listening processes are told at commit" now lives with the table: one
`pg_notify` per INSERT statement into `events`, whoever runs it (PostgreSQL folds a
transaction's identical notifications into one and delivers none for a rolled-back one, as
before). The channel is `taskapi.events.wakeup.CHANNEL` (a test holds them equal).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 05:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
CREATE FUNCTION events_wake_streams() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskapi_events', '');
    RETURN NULL;
END
$$
"""
    )
    op.execute(
        "CREATE TRIGGER events_wake_streams AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_wake_streams()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER events_wake_streams ON events")
    op.execute("DROP FUNCTION events_wake_streams()")
