"""Webhooks (issue 19): subscriptions, and their deliveries, which are also the delivery queue.

A delivery is written by the fan-out (taskapi.webhooks.repository) for every event of the log
that the webhook's owner received and its filter matches: the event log stays the one source of
truth, a delivery only names an event and records its attempts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from taskapi.kit.db import Base
from taskapi.models.events import Xid8


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    # Exact types ("task.created"), a family ("task.*") or everything ("*").
    events: Mapped[list[str]] = mapped_column(ARRAY(String(60)))
    # No FK: a filter on a project the owner later leaves or that is deleted just matches nothing.
    project_id: Mapped[int | None] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(String(500), server_default="")
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # The signing secret(s), sealed with a key derived from the server secret (never stored or
    # logged in the clear). After a rotation the previous one signs beside the new one until
    # `previous_secret_expires_at`.
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Events of transactions from this one on are delivered (the log's horizon at creation).
    start_xid: Mapped[int] = mapped_column(Xid8())
    # Since when every attempt has failed (None after any success): deactivation after 3 days.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_delivery_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_webhooks_owner_id", "owner_id", "id"),)
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}  # noqa: RUF012


class WebhookDelivery(Base):
    """One event (or ping) for one webhook, and the state of getting it there."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    webhook_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    # NULL for a ping. Deliveries go with their event when the log's retention removes it.
    event_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("events.id", ondelete="CASCADE")
    )
    event_type: Mapped[str] = mapped_column(String(40))
    # Deliveries about one task go out in event order (see the claim in webhooks/repository.py).
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    # 0 pending, 1 delivered, 2 failed (webhooks/schemas.py names them).
    status: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # When this round of attempts began (creation, or a redelivery): retries end 24 h+ after it.
    first_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # Held by the worker sending it; a crashed worker's lease runs out and another takes it.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    response_status: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # One delivery per event and webhook: the fan-out may run again without duplicating.
        Index("uq_webhook_deliveries_webhook_event", "webhook_id", "event_id", unique=True),
        Index("ix_webhook_deliveries_webhook_id", "webhook_id", text("id DESC")),
        # The queue: due pending deliveries.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 0"),
        ),
        # Is an earlier delivery about the same task still pending? (ordering per task)
        Index(
            "ix_webhook_deliveries_pending_task",
            "webhook_id",
            "task_id",
            "id",
            postgresql_where=text("status = 0"),
        ),
        Index("ix_webhook_deliveries_event_id", "event_id"),
    )


class WebhookFanout(Base):
    """The fan-out's one cursor over the event log: every event up to it has its deliveries.
    A single row; the fan-out locks it, so one process at a time advances it."""

    __tablename__ = "webhook_fanout"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    after_xid: Mapped[int] = mapped_column(Xid8())
    after_id: Mapped[int] = mapped_column(BigInteger)
