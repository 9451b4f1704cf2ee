"""Tasks, their stats counts and their files."""

from __future__ import annotations

from datetime import date, datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlalchemy.orm import Mapped, deferred, mapped_column

from taskapi.kit.db import Base
from taskapi.models.enums import (
    SEARCH_VECTOR_SQL,
    TaskPriority,
    TaskStatus,
    enum_values,
)

# (index name prefix, leading column, predicate) of the parts of visibility read in list order.
_SORTED_PARTS = (
    ("project", "project_id", "project_id IS NOT NULL AND deleted_at IS NULL"),
    ("personal_owner", "owner_id", "project_id IS NULL AND deleted_at IS NULL"),
)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    assignee_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    # Null: a personal task. A project's deletion trashes its tasks as their owners' personal
    # tasks first (taskapi.projects), so the foreign key never holds a project back.
    project_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("projects.id", ondelete="RESTRICT")
    )
    # Set: in the trash (taskapi.tasks.trash), invisible to everyone (taskapi.tasks.visibility)
    # and counted nowhere; every index of the visible parts leaves trashed rows out.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_by: Mapped[int | None] = mapped_column(BigInteger)  # no FK: kept after the account
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(
        Enum(TaskStatus, name="task_status", values_callable=enum_values),
        server_default=TaskStatus.TODO.value,
    )
    priority: Mapped[TaskPriority] = mapped_column(
        Enum(TaskPriority, name="task_priority", values_callable=enum_values),
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
        # Visibility (taskapi.tasks.visibility) has three parts, each with its indexes in list
        # order and for filtered totals: a personal task's owner and its assignee (partial: only
        # personal tasks), and a project's tasks (migration 0008).
        Index(
            "ix_tasks_personal_owner_created",
            "owner_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_where=text("project_id IS NULL AND deleted_at IS NULL"),
        ),
        Index(
            "ix_tasks_personal_assignee_created",
            "assignee_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_where=text(
                "assignee_id IS NOT NULL AND project_id IS NULL AND deleted_at IS NULL"
            ),
        ),
        Index(
            "ix_tasks_personal_owner_due_date",
            "owner_id",
            "due_date",
            postgresql_where=text("project_id IS NULL AND deleted_at IS NULL"),
        ),
        # Filters and filtered totals. created_at and id are INCLUDE'd: a filtered part is put
        # in list order from the index alone, and only the page's rows are read (migration 0016).
        Index(
            "ix_tasks_personal_owner_status_priority",
            "owner_id",
            "status",
            "priority",
            "due_date",
            postgresql_include=["created_at", "id"],
            postgresql_where=text("project_id IS NULL AND deleted_at IS NULL"),
        ),
        Index(
            "ix_tasks_personal_assignee_status_priority",
            "assignee_id",
            "status",
            "priority",
            "due_date",
            postgresql_include=["owner_id", "created_at", "id"],
            postgresql_where=text(
                "assignee_id IS NOT NULL AND project_id IS NULL AND deleted_at IS NULL"
            ),
        ),
        Index(
            "ix_tasks_project_created",
            "project_id",
            text("created_at DESC"),
            text("id DESC"),
            postgresql_where=text("project_id IS NOT NULL AND deleted_at IS NULL"),
        ),
        Index(
            "ix_tasks_project_status_priority",
            "project_id",
            "status",
            "priority",
            "due_date",
            postgresql_include=["created_at", "id"],
            postgresql_where=text("project_id IS NOT NULL AND deleted_at IS NULL"),
        ),
        # The list's order for sort=(-)due_date, (-)priority and (-)title, per part (migration
        # 0009): `(due_date IS NULL), due_date, id` puts missing dates last, so descending needs
        # its own index (a backward scan would put them first); the others read backwards.
        *(
            Index(
                f"ix_tasks_{prefix}_due{suffix}",
                column,
                text("(due_date IS NULL)"),
                text(f"due_date{order}"),
                text(f"id{order}"),
                postgresql_where=text(where),
            )
            for prefix, column, where in _SORTED_PARTS
            for suffix, order in (("", ""), ("_desc", " DESC"))
        ),
        *(
            Index(f"ix_tasks_{prefix}_{name}", column, key, "id", postgresql_where=text(where))
            for prefix, column, where in _SORTED_PARTS
            for name, key in (("priority", "priority"), ("title", text("lower(title)")))
        ),
        # sort=-priority,title (most important first, then by name) and, read backwards,
        # priority,-title: mixed directions no index above serves in order (migration 0012).
        *(
            Index(
                f"ix_tasks_{prefix}_priority_desc_title",
                column,
                text("priority DESC"),
                text("lower(title)"),
                "id",
                postgresql_where=text(where),
            )
            for prefix, column, where in _SORTED_PARTS
        ),
        # The trash: what a user may restore, newest first; what the purge job removes.
        Index(
            "ix_tasks_trash_personal",
            "owner_id",
            text("deleted_at DESC"),
            text("id DESC"),
            postgresql_where=text("deleted_at IS NOT NULL AND project_id IS NULL"),
        ),
        Index(
            "ix_tasks_trash_project",
            "project_id",
            text("deleted_at DESC"),
            text("id DESC"),
            postgresql_where=text("deleted_at IS NOT NULL AND project_id IS NOT NULL"),
        ),
        Index(
            "ix_tasks_trash_deleted_at",
            "deleted_at",
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
        # Tags filters and searches, per visible part (migration 0015): each word and tag joined
        # to the part's scope (`task_scoped_terms`), so a search reads the entries of the
        # caller's own scopes, and no one else's matches. No pending list (migration 0020): a
        # search would read every user's recently written entries first.
        *(
            Index(
                f"ix_tasks_{prefix}_scoped",
                text(f"task_scoped_terms({column}, search_vector, tags)"),
                postgresql_using="gin",
                postgresql_where=text(where),
                postgresql_with={"fastupdate": "off"},
            )
            for prefix, column, where in (
                *_SORTED_PARTS,
                (
                    "personal_assignee",
                    "assignee_id",
                    "assignee_id IS NOT NULL AND project_id IS NULL AND deleted_at IS NULL",
                ),
            )
        ),
    )

    @property
    def completed(self) -> bool:
        return self.status == TaskStatus.DONE

    # version_id_col: every UPDATE bumps `version` and carries `WHERE version = <loaded>`, so a
    # write based on a stale read can never silently overwrite a newer one.
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}  # noqa: RUF012


# Every word (lexeme) a task's search vector has held, kept by a trigger on `tasks` (migration
# 0011), so the SQL function `task_search_expand` can turn a search's prefix into the words it
# stands for. No key: duplicates are possible (two writers adding one new word at once) and
# harmless; a unique index would make such writers wait on each other.
TASK_SEARCH_LEXEMES: Final = Table(
    "task_search_lexemes",
    Base.metadata,
    Column("lexeme", Text(collation="C"), nullable=False),
    Index("ix_task_search_lexemes_lexeme", "lexeme"),
)


class TaskStatDelta(Base):
    """One signed term of one user's task statistics, written by PostgreSQL triggers on `tasks`
    (migrations 0006, 0007) in the transaction of the change: summed per key, these rows are the
    counts GET /tasks/stats returns, so a stats read costs a few hundred rows however many tasks
    the user sees. Writers only ever INSERT here, so concurrent writes to one user's tasks never
    wait on (or deadlock over) a shared counter row; `taskapi.tasks.stat_counts.fold` later
    replaces a user's rows by their sums.

    Each row counts exactly one thing for one subject, a user or a project (the SQL function
    `task_stat_subjects`: each user who sees a personal task; the project of a project task, so a
    change costs the same whatever the number of members, and a member's stats add up their
    projects' rows at read time): a (status, priority) pair, a (status, due date) pair (the read
    applies the overdue rule to these), or a `tag`. No foreign key: rows for a user deleted in
    the same transaction as their tasks must still be insertable, and account and project
    deletion remove them."""

    __tablename__ = "task_stat_deltas"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    project_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[TaskStatus | None] = mapped_column(
        Enum(TaskStatus, name="task_status", values_callable=enum_values, create_type=False)
    )
    priority: Mapped[TaskPriority | None] = mapped_column(
        Enum(TaskPriority, name="task_priority", values_callable=enum_values, create_type=False)
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
        CheckConstraint("num_nonnulls(user_id, project_id) = 1", name="one_subject"),
        Index(
            "ix_task_stat_deltas_user_id", "user_id", postgresql_where=text("user_id IS NOT NULL")
        ),
        Index(
            "ix_task_stat_deltas_project_id",
            "project_id",
            postgresql_where=text("project_id IS NOT NULL"),
        ),
        Index(
            "ix_task_stat_deltas_unfolded_user_id",
            "user_id",
            postgresql_where=text("NOT folded AND user_id IS NOT NULL"),
        ),
        Index(
            "ix_task_stat_deltas_unfolded_project_id",
            "project_id",
            postgresql_where=text("NOT folded AND project_id IS NOT NULL"),
        ),
        # A list's total: each subject's (status, priority) rows alone, and its (status, due
        # date) rows alone for overdue (migration 0017).
        *(
            Index(
                f"ix_task_stat_deltas_{subject.removesuffix('_id')}_{kind}",
                subject,
                postgresql_include=["status", column, "n"],
                postgresql_where=text(f"{column} IS NOT NULL AND {subject} IS NOT NULL"),
            )
            for subject in ("user_id", "project_id")
            for kind, column in (("pairs", "priority"), ("dates", "due_date"))
        ),
    )


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
