"""Notifications, the job queue and idempotency keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from taskapi.kit.db import Base
from taskapi.models.enums import (
    NotificationKind,
    enum_values,
)


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[NotificationKind] = mapped_column(
        Enum(NotificationKind, name="notification_kind", values_callable=enum_values)
    )
    # SET NULL: the notification stays in the recipient's history after the task is deleted.
    task_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="SET NULL"), index=True
    )
    # The project a `project_shared` notification is about; SET NULL as for tasks.
    project_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    message: Mapped[str] = mapped_column(Text)
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_notifications_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_notifications_user_unread",
            "user_id",
            postgresql_where=text("read_at IS NULL"),
        ),
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012

    @property
    def read(self) -> bool:
        return self.read_at is not None


class Job(Base):
    """A durable background job, written in the transaction of the change that needs it and
    claimed with FOR UPDATE SKIP LOCKED by any worker."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # At most one pending job per key (periodic jobs); NULL for ordinary jobs.
    dedupe_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("20"))
    # A claim is a lease: a worker that dies mid-job lets it go when the lease runs out.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index("ix_jobs_runnable", "run_at", postgresql_where=text("failed_at IS NULL")),
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


class IdempotencyKey(Base):
    """A POST's `Idempotency-Key`: claimed before the request runs, then holding its response
    for replay until `expires_at` (see `taskapi.kit.idempotency`)."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # `user:<id>`, or `ip:<address>` for the unauthenticated auth endpoints.
    scope: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(255))
    # Keyed with the server secret (HMAC-SHA256): bodies hold passwords, and a plain hash of a
    # login body would be an offline-guessable password hash.
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), server_default=text("'in_progress'"))
    # While in progress: a crashed process's claim may be taken over once this has passed.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSONB)
    # Sealed with a key derived from the server secret and the request (tokens are in there).
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("scope", "key"),
        CheckConstraint("state IN ('in_progress', 'completed')", name="state_known"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )
