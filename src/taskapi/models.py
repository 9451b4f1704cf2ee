"""Every table of the service, in one module so Alembic sees them all.

Relationships are `lazy="raise"`: loading related rows is always an explicit decision.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Date,
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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import Mapped, deferred, mapped_column

from taskapi.kit.db import Base


class TaskStatus(enum.StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


class TaskPriority(enum.StrEnum):
    # Declaration order is the PostgreSQL enum order, so ORDER BY priority is semantic.
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"


class NotificationKind(enum.StrEnum):
    TASK_ASSIGNED = "task_assigned"
    TASK_UPDATED = "task_updated"
    TASK_DUE_SOON = "task_due_soon"


# Full-text search configuration created by migration 0002: English stemming over unaccented words.
SEARCH_CONFIG = "taskapi_search"
SEARCH_VECTOR_SQL = (
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(title, '')), 'A') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(description, '')), 'B')"
)


def _enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in enum_cls]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(320))
    full_name: Mapped[str | None] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # Case-insensitive uniqueness; the lower() expressions are also what lookups use.
        Index("uq_users_username_lower", func.lower(username), unique=True),
        Index("uq_users_email_lower", func.lower(email), unique=True),
        # Prefix search (`lower(username) LIKE 'pre%'`) needs pattern ops under a non-C collation.
        Index(
            "ix_users_username_prefix",
            func.lower(username).label("username_lower"),
            postgresql_ops={"username_lower": "text_pattern_ops"},
        ),
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


class RefreshToken(Base):
    """One refresh token of a login ("family"); rotation adds a row to the same family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    # SHA-256 of the token: a database leak yields no usable refresh tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    assignee_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(
        Enum(TaskStatus, name="task_status", values_callable=_enum_values),
        server_default=TaskStatus.TODO.value,
    )
    priority: Mapped[TaskPriority] = mapped_column(
        Enum(TaskPriority, name="task_priority", values_callable=_enum_values),
        server_default=TaskPriority.MEDIUM.value,
    )
    due_date: Mapped[date | None] = mapped_column(Date)
    tags: Mapped[list[str]] = mapped_column(
        ARRAY(String(50)), server_default=text("'{}'::varchar[]")
    )
    # Maintained in the same transaction as attachment rows, so lists need no join or count.
    attachment_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Maintained by PostgreSQL; deferred so no task load ever ships it over the wire.
    search_vector: Mapped[str | None] = deferred(
        mapped_column(TSVECTOR, Computed(SEARCH_VECTOR_SQL, persisted=True))
    )

    __table_args__ = (
        CheckConstraint("char_length(title) BETWEEN 1 AND 200", name="title_length"),
        CheckConstraint("cardinality(tags) <= 20", name="tags_count"),
        CheckConstraint("attachment_count >= 0", name="attachment_count_non_negative"),
        # Visibility is "owner or assignee"; each side has its own index in list order.
        Index("ix_tasks_owner_created", "owner_id", text("created_at DESC"), text("id DESC")),
        Index(
            "ix_tasks_assignee_created",
            "assignee_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_where=text("assignee_id IS NOT NULL"),
        ),
        Index("ix_tasks_owner_due_date", "owner_id", "due_date"),
        # Filtered totals are index-only scans of these (migration 0005). Stats no longer read
        # them (task_stat_deltas, migration 0006), so their INCLUDE (tags) is now dead weight that
        # a later migration can drop.
        Index(
            "ix_tasks_owner_status_priority",
            "owner_id",
            "status",
            "priority",
            "due_date",
            postgresql_include=["tags"],
        ),
        Index(
            "ix_tasks_assignee_status_priority",
            "assignee_id",
            "status",
            "priority",
            "due_date",
            postgresql_include=["owner_id", "tags"],
            postgresql_where=text("assignee_id IS NOT NULL"),
        ),
        Index("ix_tasks_tags", "tags", postgresql_using="gin"),
        Index("ix_tasks_search_vector", "search_vector", postgresql_using="gin"),
    )

    @property
    def completed(self) -> bool:
        return self.status == TaskStatus.DONE

    # version_id_col: every UPDATE bumps `version` and carries `WHERE version = <loaded>`, so a
    # write based on a stale read can never silently overwrite a newer one.
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}  # noqa: RUF012


class TaskStatDelta(Base):
    """One signed term of one user's task statistics, written by PostgreSQL triggers on `tasks`
    (migrations 0006, 0007) in the transaction of the change: summed per key, these rows are the
    counts GET /tasks/stats returns, so a stats read costs a few hundred rows however many tasks
    the user sees. Writers only ever INSERT here, so concurrent writes to one user's tasks never
    wait on (or deadlock over) a shared counter row; `taskapi.tasks.stat_counts.fold` later
    replaces a user's rows by their sums.

    Each row counts exactly one thing for `user_id` (each user who sees the task: the SQL
    function `task_viewers`): a (status, priority) pair, a (status, due date) pair (the read
    applies the overdue rule to these), or a `tag`. No foreign key: rows for a user deleted in
    the same transaction as their tasks must still be insertable, and account deletion removes
    them."""

    __tablename__ = "task_stat_deltas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[TaskStatus | None] = mapped_column(
        Enum(TaskStatus, name="task_status", values_callable=_enum_values, create_type=False)
    )
    priority: Mapped[TaskPriority | None] = mapped_column(
        Enum(TaskPriority, name="task_priority", values_callable=_enum_values, create_type=False)
    )
    due_date: Mapped[date | None] = mapped_column(Date)
    tag: Mapped[str | None] = mapped_column(String(50))
    n: Mapped[int] = mapped_column(Integer)
    # False until a fold has summed the row; the partial index finds the users worth folding.
    folded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        CheckConstraint(
            "(status IS NOT NULL AND priority IS NOT NULL AND due_date IS NULL AND tag IS NULL)"
            " OR (status IS NOT NULL AND priority IS NULL AND due_date IS NOT NULL AND tag IS NULL)"
            " OR (status IS NULL AND priority IS NULL AND due_date IS NULL AND tag IS NOT NULL)",
            name="one_dimension",
        ),
        Index("ix_task_stat_deltas_user_id", "user_id"),
        Index(
            "ix_task_stat_deltas_unfolded_user_id",
            "user_id",
            postgresql_where=text("NOT folded"),
        ),
    )


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[NotificationKind] = mapped_column(
        Enum(NotificationKind, name="notification_kind", values_callable=_enum_values)
    )
    # SET NULL: the notification stays in the recipient's history after the task is deleted.
    task_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="SET NULL"), index=True
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


class Attachment(Base):
    """A file attached to a task; the bytes live in storage under `storage_key` (random)."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    uploader_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    storage_key: Mapped[str] = mapped_column(String(200), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("size > 0", name="size_positive"),)
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


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
