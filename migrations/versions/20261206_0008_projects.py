"""Projects with members and roles; tasks may belong to a project.

* `projects`, `project_members` (role `viewer` < `editor` < `admin`), `tasks.project_id` (null:
  a personal task; every existing task stays personal), `notifications.project_id` and the
  notification kind `project_shared`.
* Who sees a task (taskapi.tasks.visibility) gains the project grant: `task_viewers` as
  `python -m taskapi.tasks.functions` renders it for this revision, copied in.
* Stats: a project task's counts are kept once, for its project (`task_stat_deltas.project_id`,
  new function `task_stat_subjects`), not once per member: a write costs the same however many
  members the project has, and joining or leaving a project moves no count (a member's stats
  add up their projects' rows at read time). Existing rows are all personal and stay valid.
* The personal parts of visibility get partial indexes (`WHERE project_id IS NULL`), so the
  owner's and the assignee's lists and totals stay index(-only) scans; the project part its own
  (project_id, created_at DESC, id DESC) and (project_id, status, priority, due_date).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 08:00:00+00:00
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWERS = """
CREATE OR REPLACE FUNCTION task_viewers(t tasks) RETURNS SETOF bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT t.owner_id AS user_id
WHERE t.project_id IS NULL AND t.deleted_at IS NULL AND t.owner_id IS NOT NULL UNION ALL SELECT t.assignee_id AS user_id
WHERE t.project_id IS NULL AND t.deleted_at IS NULL AND t.assignee_id IS NOT NULL AND (t.project_id IS NOT NULL OR t.deleted_at IS NOT NULL OR t.owner_id != t.assignee_id) UNION ALL SELECT project_members.user_id AS user_id
FROM project_members
WHERE project_members.project_id = t.project_id AND t.deleted_at IS NULL AND (t.project_id IS NOT NULL OR t.deleted_at IS NOT NULL OR t.owner_id != project_members.user_id) AND (t.project_id IS NOT NULL OR t.deleted_at IS NOT NULL OR t.assignee_id IS DISTINCT FROM project_members.user_id)
$$
"""  # noqa: E501

SUBJECTS = """
CREATE OR REPLACE FUNCTION task_stat_subjects(t tasks) RETURNS TABLE (user_id bigint, project_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT t.owner_id AS user_id, CAST(NULL AS BIGINT) AS project_id
WHERE t.project_id IS NULL AND t.deleted_at IS NULL AND t.owner_id IS NOT NULL UNION ALL SELECT t.assignee_id AS user_id, CAST(NULL AS BIGINT) AS project_id
WHERE t.project_id IS NULL AND t.deleted_at IS NULL AND t.assignee_id IS NOT NULL AND (t.project_id IS NOT NULL OR t.deleted_at IS NOT NULL OR t.owner_id != t.assignee_id) UNION ALL SELECT CAST(NULL AS BIGINT) AS user_id, t.project_id AS project_id
WHERE t.project_id IS NOT NULL AND t.deleted_at IS NULL
$$
"""  # noqa: E501

# As 0007's, with the subject (a user or a project) in place of the viewer.
CONTRIBUTIONS = """
CREATE FUNCTION task_stat_contributions(t tasks, p_sign integer)
RETURNS TABLE (
    user_id bigint, project_id bigint, status task_status, priority task_priority,
    due_date date, tag varchar, n integer
) LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT subject.user_id, subject.project_id, term.status, term.priority, term.due_date,
           term.tag, p_sign
    FROM task_stat_subjects(t) AS subject
    CROSS JOIN (
        SELECT t.status, t.priority, NULL::date, NULL::varchar
        UNION ALL
        SELECT t.status, NULL, t.due_date, NULL WHERE t.due_date IS NOT NULL
        UNION ALL
        SELECT NULL, NULL, NULL, tag FROM unnest(t.tags) AS tag
    ) AS term (status, priority, due_date, tag)
$$
"""

ROW = "ROW(t.*)::tasks"  # see 0007: a whole-row reference PostgreSQL 15 can plan
KEY = "c.user_id, c.project_id, c.status, c.priority, c.due_date, c.tag"


def _statement_trigger_function(name: str, tasks: str, sign: int) -> str:
    """Only ever given the literals below."""
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_stat_deltas (user_id, project_id, status, priority, due_date, tag, n)
    SELECT {KEY}, sum(c.n)
    FROM {tasks} AS t CROSS JOIN LATERAL task_stat_contributions({ROW}, {sign}) AS c
    GROUP BY {KEY};
    RETURN NULL;
END
$$
"""  # noqa: S608


AFTER_INSERT = _statement_trigger_function("task_stat_deltas_after_insert", "inserted_tasks", 1)
AFTER_DELETE = _statement_trigger_function("task_stat_deltas_after_delete", "deleted_tasks", -1)
AFTER_UPDATE = f"""
CREATE OR REPLACE FUNCTION task_stat_deltas_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_stat_deltas (user_id, project_id, status, priority, due_date, tag, n)
    SELECT {KEY}, sum(c.n)
    FROM (
        SELECT * FROM task_stat_contributions(OLD, -1)
        UNION ALL
        SELECT * FROM task_stat_contributions(NEW, 1)
    ) AS c
    GROUP BY {KEY}
    HAVING sum(c.n) <> 0;
    RETURN NULL;
END
$$
"""  # noqa: S608

COUNTED = "owner_id, assignee_id, project_id, deleted_at, status, priority, due_date, tags"
UPDATE_TRIGGER = f"""
CREATE TRIGGER task_stat_deltas_after_update AFTER UPDATE OF {COUNTED} ON tasks
FOR EACH ROW
WHEN (({", ".join(f"OLD.{c}" for c in COUNTED.split(", "))})
      IS DISTINCT FROM
      ({", ".join(f"NEW.{c}" for c in COUNTED.split(", "))}))
EXECUTE FUNCTION task_stat_deltas_after_update()
"""

# (name, columns, where) of the task indexes replaced by partial ones, and those.
OLD_INDEXES = (
    ("ix_tasks_owner_created", ["owner_id", sa.text("created_at DESC"), sa.text("id DESC")], None),
    (
        "ix_tasks_assignee_created",
        ["assignee_id", sa.text("created_at DESC"), sa.text("id DESC")],
        "assignee_id IS NOT NULL",
    ),
    ("ix_tasks_owner_due_date", ["owner_id", "due_date"], None),
)
OLD_COVERING = (
    ("ix_tasks_owner_status_priority", "owner_id", ["tags"], None),
    (
        "ix_tasks_assignee_status_priority",
        "assignee_id",
        ["owner_id", "tags"],
        "assignee_id IS NOT NULL",
    ),
)
PERSONAL = "project_id IS NULL AND deleted_at IS NULL"
NEW_INDEXES = (
    (
        "ix_tasks_personal_owner_created",
        ["owner_id", sa.text("created_at DESC"), sa.text("id DESC")],
        [],
        PERSONAL,
    ),
    (
        "ix_tasks_personal_assignee_created",
        ["assignee_id", sa.text("created_at DESC"), sa.text("id DESC")],
        [],
        f"assignee_id IS NOT NULL AND {PERSONAL}",
    ),
    ("ix_tasks_personal_owner_due_date", ["owner_id", "due_date"], [], PERSONAL),
    (
        "ix_tasks_personal_owner_status_priority",
        ["owner_id", "status", "priority", "due_date"],
        [],
        PERSONAL,
    ),
    (
        "ix_tasks_personal_assignee_status_priority",
        ["assignee_id", "status", "priority", "due_date"],
        ["owner_id"],
        f"assignee_id IS NOT NULL AND {PERSONAL}",
    ),
    (
        "ix_tasks_project_created",
        ["project_id", sa.text("created_at DESC"), sa.text("id DESC")],
        [],
        "project_id IS NOT NULL AND deleted_at IS NULL",
    ),
    (
        "ix_tasks_project_status_priority",
        ["project_id", "status", "priority", "due_date"],
        [],
        "project_id IS NOT NULL AND deleted_at IS NULL",
    ),
    (
        "ix_tasks_trash_personal",
        ["owner_id", sa.text("deleted_at DESC"), sa.text("id DESC")],
        [],
        "deleted_at IS NOT NULL AND project_id IS NULL",
    ),
    (
        "ix_tasks_trash_project",
        ["project_id", sa.text("deleted_at DESC"), sa.text("id DESC")],
        [],
        "deleted_at IS NOT NULL AND project_id IS NOT NULL",
    ),
    ("ix_tasks_trash_deleted_at", ["deleted_at"], [], "deleted_at IS NOT NULL"),
)


def upgrade() -> None:
    # ADD VALUE commits on its own in the autocommit block; nothing here uses it yet.
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE notification_kind ADD VALUE IF NOT EXISTS 'project_shared'")
    role = postgresql.ENUM("viewer", "editor", "admin", name="project_role")
    role.create(op.get_bind())
    op.create_table(
        "projects",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("archived", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("member_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 100", name=op.f("ck_projects_name_length")
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_projects_owner_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    op.create_index(
        "uq_projects_owner_name_lower",
        "projects",
        ["owner_id", sa.text("lower(name)")],
        unique=True,
    )
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("role", postgresql.ENUM(name="project_role", create_type=False), nullable=False),
        sa.Column(
            "added_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_members_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_project_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "user_id", name=op.f("pk_project_members")),
    )
    op.create_index(
        "ix_project_members_user_project", "project_members", ["user_id", "project_id", "role"]
    )
    op.add_column("tasks", sa.Column("project_id", sa.BigInteger(), nullable=True))
    op.add_column("tasks", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tasks", sa.Column("deleted_by", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_tasks_project_id_projects"),
        "tasks",
        "projects",
        ["project_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.add_column("notifications", sa.Column("project_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_notifications_project_id_projects"),
        "notifications",
        "projects",
        ["project_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(op.f("ix_notifications_project_id"), "notifications", ["project_id"])

    for name, columns, include, where in NEW_INDEXES:
        op.create_index(
            name,
            "tasks",
            columns,
            postgresql_include=include,
            postgresql_where=sa.text(where),
        )
    for name, *_ in OLD_INDEXES:
        op.drop_index(name, table_name="tasks")
    for name, *_ in OLD_COVERING:
        op.drop_index(name, table_name="tasks")

    # Stats: a subject is a user or a project. Writers wait until this commits (no change falls
    # between the old triggers and the new ones).
    op.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
    op.alter_column("task_stat_deltas", "user_id", nullable=True)
    op.add_column("task_stat_deltas", sa.Column("project_id", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("ck_task_stat_deltas_one_subject"),
        "task_stat_deltas",
        "num_nonnulls(user_id, project_id) = 1",
    )
    op.drop_index("ix_task_stat_deltas_user_id", table_name="task_stat_deltas")
    op.drop_index("ix_task_stat_deltas_unfolded_user_id", table_name="task_stat_deltas")
    for subject in ("user_id", "project_id"):
        op.create_index(
            f"ix_task_stat_deltas_{subject}",
            "task_stat_deltas",
            [subject],
            postgresql_where=sa.text(f"{subject} IS NOT NULL"),
        )
        op.create_index(
            f"ix_task_stat_deltas_unfolded_{subject}",
            "task_stat_deltas",
            [subject],
            postgresql_where=sa.text(f"NOT folded AND {subject} IS NOT NULL"),
        )
    op.execute(VIEWERS)
    op.execute(SUBJECTS)
    # The return type changes: drop and create. The trigger functions (PL/pgSQL) look it up
    # when they run, and are replaced right after.
    op.execute("DROP FUNCTION task_stat_contributions(tasks, integer)")
    op.execute(CONTRIBUTIONS)
    for statement in (AFTER_INSERT, AFTER_DELETE, AFTER_UPDATE):
        op.execute(statement)
    op.execute("DROP TRIGGER task_stat_deltas_after_update ON tasks")
    op.execute(UPDATE_TRIGGER)


# --- back to 0007: project tasks become their owners' personal tasks ----------------------------


def _revision_0007() -> Any:
    """0007's module, for its statements (a migration never changes, so they are what it ran)."""
    path = Path(__file__).with_name("20261122_0007_task_rule_functions.py")
    spec = importlib.util.spec_from_file_location("taskapi_migration_0007", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD_COUNTED = "owner_id, assignee_id, status, priority, due_date, tags"
OLD_UPDATE_TRIGGER = (
    UPDATE_TRIGGER.replace(COUNTED, OLD_COUNTED)
    .replace("OLD.project_id, OLD.deleted_at, ", "")
    .replace("NEW.project_id, NEW.deleted_at, ", "")
)
OLD_VIEWERS = """
CREATE OR REPLACE FUNCTION task_viewers(t tasks) RETURNS SETOF bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT t.owner_id AS user_id
WHERE t.owner_id IS NOT NULL UNION ALL SELECT t.assignee_id AS user_id
WHERE t.assignee_id IS NOT NULL AND t.owner_id != t.assignee_id
$$
"""


def downgrade() -> None:
    old = _revision_0007()
    op.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
    op.execute("DROP TRIGGER task_stat_deltas_after_update ON tasks")
    op.execute(OLD_UPDATE_TRIGGER)
    # Trashed tasks have no equivalent before 0008: gone for good (their objects with them).
    op.execute(
        "INSERT INTO jobs (kind, payload) SELECT 'delete_objects', "
        "jsonb_build_object('keys', jsonb_agg(a.storage_key)) FROM attachments a "
        "JOIN tasks t ON t.id = a.task_id WHERE t.deleted_at IS NOT NULL HAVING count(*) > 0"
    )
    op.execute("DELETE FROM tasks WHERE deleted_at IS NOT NULL")
    op.execute("UPDATE tasks SET project_id = NULL WHERE project_id IS NOT NULL")
    op.execute("DELETE FROM notifications WHERE kind = 'project_shared'")
    op.execute(OLD_VIEWERS)
    op.execute("DROP FUNCTION task_stat_contributions(tasks, integer)")
    op.execute(old.CONTRIBUTIONS)
    for statement in (old.AFTER_INSERT, old.AFTER_DELETE, old.AFTER_UPDATE):
        op.execute(statement)
    op.execute("DROP FUNCTION task_stat_subjects(tasks)")
    op.execute("DELETE FROM task_stat_deltas")
    for subject in ("user_id", "project_id"):
        op.drop_index(f"ix_task_stat_deltas_{subject}", table_name="task_stat_deltas")
        op.drop_index(f"ix_task_stat_deltas_unfolded_{subject}", table_name="task_stat_deltas")
    op.drop_constraint(op.f("ck_task_stat_deltas_one_subject"), "task_stat_deltas", type_="check")
    op.drop_column("task_stat_deltas", "project_id")
    op.alter_column("task_stat_deltas", "user_id", nullable=False)
    op.create_index("ix_task_stat_deltas_user_id", "task_stat_deltas", ["user_id"])
    op.create_index(
        "ix_task_stat_deltas_unfolded_user_id",
        "task_stat_deltas",
        ["user_id"],
        postgresql_where=sa.text("NOT folded"),
    )
    old._rebuild(old.REBUILD, old.ONE_DIMENSION)

    for name, columns, where in OLD_INDEXES:
        op.create_index(name, "tasks", columns, postgresql_where=sa.text(where) if where else None)
    for name, column, include, where in OLD_COVERING:
        op.create_index(
            name,
            "tasks",
            [column, "status", "priority", "due_date"],
            postgresql_include=include,
            postgresql_where=sa.text(where) if where else None,
        )
    for name, *_ in NEW_INDEXES:
        op.drop_index(name, table_name="tasks")
    op.drop_index(op.f("ix_notifications_project_id"), table_name="notifications")
    op.drop_constraint(
        op.f("fk_notifications_project_id_projects"), "notifications", type_="foreignkey"
    )
    op.drop_column("notifications", "project_id")
    op.drop_constraint(op.f("fk_tasks_project_id_projects"), "tasks", type_="foreignkey")
    op.drop_column("tasks", "project_id")
    op.drop_column("tasks", "deleted_by")
    op.drop_column("tasks", "deleted_at")
    op.drop_index("ix_project_members_user_project", table_name="project_members")
    op.drop_table("project_members")
    op.drop_index("uq_projects_owner_name_lower", table_name="projects")
    op.drop_table("projects")
    postgresql.ENUM(name="project_role").drop(op.get_bind())
    # `project_shared` stays a value of notification_kind: PostgreSQL cannot drop an enum value,
    # and no row uses it any more.
