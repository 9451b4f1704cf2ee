"""The task rules as SQL functions; the stats triggers use them and apply "overdue" at read time.

`task_viewers(tasks)` (who sees a task) and `task_is_overdue(tasks, date)` are rendered from
taskapi.tasks.visibility and taskapi.tasks.overdue (`python -m taskapi.tasks.functions`); their
text is copied here as it was rendered for this revision, and tests/test_task_rules.py holds the
installed bodies equal to the current rendering.

The stats triggers (0006) spelled both rules out themselves: the viewers as "the owner, and the
assignee if someone else", and "overdue" split in two, the trigger keeping due dates of open
tasks only and the read comparing them with today. Now a task's viewers come from
`task_viewers`, and the due-date counts are kept per (status, due date) for every task with a
due date, so the read applies the whole overdue rule (taskapi.tasks.stat_counts). The counts are
rebuilt from `tasks` under a lock that holds writers back until this migration commits, so none
falls between the rebuild and the new triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWERS = """
CREATE OR REPLACE FUNCTION task_viewers(t tasks) RETURNS SETOF bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT t.owner_id AS user_id
WHERE t.owner_id IS NOT NULL UNION ALL SELECT t.assignee_id AS user_id
WHERE t.assignee_id IS NOT NULL AND t.owner_id != t.assignee_id
$$
"""

IS_OVERDUE = """
CREATE OR REPLACE FUNCTION task_is_overdue(t tasks, today date) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT t.due_date IS NOT NULL AND t.due_date < today AND t.status != 'done' AND t.status != 'cancelled'
$$
"""  # noqa: E501

# What one task adds to its viewers' counts (sign +1) or takes away (-1): its (status, priority),
# its (status, due date) when it has one, and each of its tags.
CONTRIBUTIONS = """
CREATE FUNCTION task_stat_contributions(t tasks, p_sign integer)
RETURNS TABLE (
    user_id bigint, status task_status, priority task_priority, due_date date,
    tag varchar, n integer
) LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT viewer.id, term.status, term.priority, term.due_date, term.tag, p_sign
    FROM task_viewers(t) AS viewer (id)
    CROSS JOIN (
        SELECT t.status, t.priority, NULL::date, NULL::varchar
        UNION ALL
        SELECT t.status, NULL, t.due_date, NULL WHERE t.due_date IS NOT NULL
        UNION ALL
        SELECT NULL, NULL, NULL, tag FROM unnest(t.tags) AS tag
    ) AS term (status, priority, due_date, tag)
$$
"""

ONE_DIMENSION = (
    "(status IS NOT NULL AND priority IS NOT NULL AND due_date IS NULL AND tag IS NULL)"
    " OR (status IS NOT NULL AND priority IS NULL AND due_date IS NOT NULL AND tag IS NULL)"
    " OR (status IS NULL AND priority IS NULL AND due_date IS NULL AND tag IS NOT NULL)"
)


# The row is passed as ROW(t.*)::tasks, not as `t`: PostgreSQL 15 fails to plan a whole-row
# reference inlined into the function's UNION ALL ("variable not found in subplan target list").
ROW = "ROW(t.*)::tasks"


def _summed_terms(tasks: str, sign: int, *, folded: bool = False) -> str:
    """Every term of the rows of `tasks` (a table or transition table), summed per user and key.
    Only ever given the literals below. Folded rows (the rebuild) are written user by user, so a
    stats read finds one user's rows together instead of on a page each."""
    return f"""
    INSERT INTO task_stat_deltas (user_id, status, priority, due_date, tag, n, folded)
    SELECT c.user_id, c.status, c.priority, c.due_date, c.tag, sum(c.n), {str(folded).lower()}
    FROM {tasks} AS t CROSS JOIN LATERAL task_stat_contributions({ROW}, {sign}) AS c
    GROUP BY c.user_id, c.status, c.priority, c.due_date, c.tag
    {"ORDER BY c.user_id" if folded else ""}
    """  # noqa: S608


def _statement_trigger_function(name: str, body: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION task_stat_deltas_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_stat_deltas (user_id, status, priority, due_date, tag, n)
    SELECT c.user_id, c.status, c.priority, c.due_date, c.tag, sum(c.n)
    FROM (
        SELECT * FROM task_stat_contributions(OLD, -1)
        UNION ALL
        SELECT * FROM task_stat_contributions(NEW, 1)
    ) AS c
    GROUP BY c.user_id, c.status, c.priority, c.due_date, c.tag
    HAVING sum(c.n) <> 0;
    RETURN NULL;
END
$$
"""

REBUILD = ("DELETE FROM task_stat_deltas", _summed_terms("tasks", 1, folded=True))


def upgrade() -> None:
    # Writers wait from here until the commit: the counts are rebuilt with no change missed.
    op.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
    for statement in (VIEWERS, IS_OVERDUE, CONTRIBUTIONS, AFTER_INSERT, AFTER_DELETE, AFTER_UPDATE):
        op.execute(statement)
    op.execute(
        "DROP FUNCTION task_stat_contributions("
        "bigint, bigint, task_status, task_priority, date, varchar[], integer)"
    )
    _rebuild(REBUILD, ONE_DIMENSION)


def _rebuild(statements: Sequence[str], check: str) -> None:
    """Rebuild the counts under the row shape `check` allows (the old rows may not fit it)."""
    op.drop_constraint(op.f("ck_task_stat_deltas_one_dimension"), "task_stat_deltas", type_="check")
    for statement in statements:
        op.execute(statement)
    op.create_check_constraint(op.f("ck_task_stat_deltas_one_dimension"), "task_stat_deltas", check)


# --- back to 0006: its functions, its row shape, its counts ---------------------------------------

OLD_CONTRIBUTIONS = """
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
OLD_ARGUMENTS = "{t}.owner_id, {t}.assignee_id, {t}.status, {t}.priority, {t}.due_date, {t}.tags"
OLD_ONE_DIMENSION = (
    "(status IS NOT NULL AND priority IS NOT NULL AND due_date IS NULL AND tag IS NULL)"
    " OR (status IS NULL AND priority IS NULL AND num_nonnulls(due_date, tag) = 1)"
)


def _old(statement: str) -> str:
    """A statement above as 0006 wrote it: the contributions from the task's columns."""
    for row, columns_of in ((ROW, "t"), ("OLD", "OLD"), ("NEW", "NEW")):
        for sign in ("1", "-1"):
            statement = statement.replace(
                f"task_stat_contributions({row}, {sign})",
                f"task_stat_contributions({OLD_ARGUMENTS.format(t=columns_of)}, {sign})",
            )
    return statement


def downgrade() -> None:
    op.execute("LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE")
    op.execute(OLD_CONTRIBUTIONS)
    for statement in (AFTER_INSERT, AFTER_DELETE, AFTER_UPDATE):
        op.execute(_old(statement))
    op.execute("DROP FUNCTION task_stat_contributions(tasks, integer)")
    op.execute("DROP FUNCTION task_is_overdue(tasks, date)")
    op.execute("DROP FUNCTION task_viewers(tasks)")
    _rebuild([_old(statement) for statement in REBUILD], OLD_ONE_DIMENSION)
