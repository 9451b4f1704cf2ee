"""Task statistics maintained by triggers: `task_stat_deltas`.

GET /tasks/stats used to aggregate every visible task (and unnest every tag array) on each cache
miss: ~25 ms of PostgreSQL for a user with 10,000 tasks. Triggers on `tasks` now append signed
terms per user and key in the writing transaction, and the read sums a few dozen rows.

Inserts and deletes are statement-level triggers over transition tables, so a bulk insert or a
cascade delete of a whole account's tasks writes one grouped row per key, not one per task.
Updates are row-level with a column list and WHEN, since a title or description change, the most
common write, must not pay anything (transition tables cannot be combined with a column list).

Existing tasks are summed into folded rows after the triggers exist; creating the triggers locks
`tasks` against writes until this migration commits, so no write falls between the two.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 11:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What one task adds to its viewers' counts (sign +1) or takes away (-1): for the owner and for
# an assignee who is someone else, its (status, priority), its due date while it is open, and
# each of its tags. Mirrors the visibility rule (taskapi.tasks.repository.visible_halves) and
# the overdue rule (taskapi.tasks.listing.overdue_condition); tests hold them together.
CONTRIBUTIONS = """
CREATE FUNCTION task_stat_contributions(
    p_owner_id bigint, p_assignee_id bigint, p_status task_status, p_priority task_priority,
    p_due_date date, p_tags varchar[], p_sign integer
) RETURNS TABLE (
    user_id bigint, status task_status, priority task_priority, due_date date,
    tag varchar, n integer
) LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT viewer.id, term.status, term.priority, term.due_date, term.tag, p_sign
    FROM (
        SELECT p_owner_id
        UNION ALL
        SELECT p_assignee_id WHERE p_assignee_id IS NOT NULL AND p_assignee_id <> p_owner_id
    ) AS viewer (id)
    CROSS JOIN (
        SELECT p_status, p_priority, NULL::date, NULL::varchar
        UNION ALL
        SELECT NULL, NULL, p_due_date, NULL
        WHERE p_due_date IS NOT NULL AND p_status NOT IN ('done', 'cancelled')
        UNION ALL
        SELECT NULL, NULL, NULL, tag FROM unnest(p_tags) AS tag
    ) AS term (status, priority, due_date, tag)
$$
"""


def _summed_terms(tasks: str, sign: int, *, folded: bool = False) -> str:
    """Every term of the rows of `tasks` (a table or transition table), summed per user and key.
    Only ever given the literals below."""
    return f"""
    INSERT INTO task_stat_deltas (user_id, status, priority, due_date, tag, n, folded)
    SELECT c.user_id, c.status, c.priority, c.due_date, c.tag, sum(c.n), {str(folded).lower()}
    FROM {tasks} AS t
    CROSS JOIN LATERAL task_stat_contributions(
        t.owner_id, t.assignee_id, t.status, t.priority, t.due_date, t.tags, {sign}) AS c
    GROUP BY c.user_id, c.status, c.priority, c.due_date, c.tag
    """  # noqa: S608


def _statement_trigger_function(name: str, body: str) -> str:
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body};
    RETURN NULL;
END
$$
"""


AFTER_INSERT = _statement_trigger_function(
    "task_stat_deltas_after_insert", _summed_terms("inserted_tasks", 1)
)
AFTER_DELETE = _statement_trigger_function(
    "task_stat_deltas_after_delete", _summed_terms("deleted_tasks", -1)
)

# Old terms out, new terms in; what did not change cancels out and is not written at all.
AFTER_UPDATE = """
CREATE FUNCTION task_stat_deltas_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_stat_deltas (user_id, status, priority, due_date, tag, n)
    SELECT c.user_id, c.status, c.priority, c.due_date, c.tag, sum(c.n)
    FROM (
        SELECT * FROM task_stat_contributions(
            OLD.owner_id, OLD.assignee_id, OLD.status, OLD.priority, OLD.due_date, OLD.tags, -1)
        UNION ALL
        SELECT * FROM task_stat_contributions(
            NEW.owner_id, NEW.assignee_id, NEW.status, NEW.priority, NEW.due_date, NEW.tags, 1)
    ) AS c
    GROUP BY c.user_id, c.status, c.priority, c.due_date, c.tag
    HAVING sum(c.n) <> 0;
    RETURN NULL;
END
$$
"""

COUNTED_COLUMNS = "owner_id, assignee_id, status, priority, due_date, tags"

TRIGGERS = (
    """
    CREATE TRIGGER task_stat_deltas_after_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_stat_deltas_after_insert()
    """,
    """
    CREATE TRIGGER task_stat_deltas_after_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS deleted_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION task_stat_deltas_after_delete()
    """,
    f"""
    CREATE TRIGGER task_stat_deltas_after_update AFTER UPDATE OF {COUNTED_COLUMNS} ON tasks
    FOR EACH ROW
    WHEN ((OLD.owner_id, OLD.assignee_id, OLD.status, OLD.priority, OLD.due_date, OLD.tags)
          IS DISTINCT FROM
          (NEW.owner_id, NEW.assignee_id, NEW.status, NEW.priority, NEW.due_date, NEW.tags))
    EXECUTE FUNCTION task_stat_deltas_after_update()
    """,
)

BACKFILL = _summed_terms("tasks", 1, folded=True)


def upgrade() -> None:
    op.create_table(
        "task_stat_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            postgresql.ENUM(name="task_status", create_type=False),
            nullable=True,
        ),
        sa.Column(
            "priority",
            postgresql.ENUM(name="task_priority", create_type=False),
            nullable=True,
        ),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("tag", sa.String(length=50), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("folded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.CheckConstraint(
            "(status IS NOT NULL AND priority IS NOT NULL AND due_date IS NULL AND tag IS NULL)"
            " OR (status IS NULL AND priority IS NULL AND num_nonnulls(due_date, tag) = 1)",
            name=op.f("ck_task_stat_deltas_one_dimension"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_stat_deltas")),
    )
    op.create_index("ix_task_stat_deltas_user_id", "task_stat_deltas", ["user_id"])
    op.create_index(
        "ix_task_stat_deltas_unfolded_user_id",
        "task_stat_deltas",
        ["user_id"],
        postgresql_where=sa.text("NOT folded"),
    )
    for statement in (CONTRIBUTIONS, AFTER_INSERT, AFTER_DELETE, AFTER_UPDATE, *TRIGGERS):
        op.execute(statement)
    op.execute(BACKFILL)


def downgrade() -> None:
    for event in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS task_stat_deltas_after_{event} ON tasks")
        op.execute(f"DROP FUNCTION IF EXISTS task_stat_deltas_after_{event}()")
    op.execute("DROP FUNCTION IF EXISTS task_stat_contributions")
    op.drop_index("ix_task_stat_deltas_unfolded_user_id", table_name="task_stat_deltas")
    op.drop_index("ix_task_stat_deltas_user_id", table_name="task_stat_deltas")
    op.drop_table("task_stat_deltas")
