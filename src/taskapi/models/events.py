"""The event log (issue 18): one row per change, written in the change's own transaction, and
who may read each event (`EventRecipient`, fan-out on write).

Order: `(xid, id)`; a reader serves only events of transactions older than the oldest one still
running (taskapi.events.repository), so no event can later appear before one already served.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, SmallInteger, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from taskapi.kit.db import Base


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`): read and written as text by the log's own
    statements (taskapi.events.repository), never through the ORM."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    xid: Mapped[int] = mapped_column(Xid8(), server_default=func.pg_current_xact_id())
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    actor_id: Mapped[int | None] = mapped_column(BigInteger)  # no FK: events outlive accounts
    task_id: Mapped[int | None] = mapped_column(BigInteger)  # no FK: ... and tasks
    project_id: Mapped[int | None] = mapped_column(BigInteger)
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    task: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The task's version after the change and whether the event ends a reader's copy
    # (1: task.deleted, task.access_lost): what supersedes what (taskapi.events.repository).
    task_version: Mapped[int | None] = mapped_column(Integer)
    ends_copy: Mapped[int] = mapped_column(SmallInteger, server_default="0")

    __table_args__ = (
        Index("ix_events_xid_id", "xid", "id"),
        Index("ix_events_task_id_xid", "task_id", "xid", "id"),
        Index("ix_events_occurred_at", "occurred_at"),
    )


class EventRecipient(Base):
    """Who may read an event: written with it (fan-out on write). A feed page is a range scan
    of one user's rows in `(xid, event_id)` order."""

    __tablename__ = "event_recipients"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    xid: Mapped[int] = mapped_column(Xid8(), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
