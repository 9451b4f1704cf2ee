"""The task rules as PostgreSQL functions, for SQL that runs inside PostgreSQL (the stats
triggers, the due-soon job): rendered from taskapi.tasks.visibility and taskapi.tasks.overdue,
never written by hand.

A migration installs them with their text copied in (migrations never change after the fact):
0007 the first time, and one more each time a rule changes (`python -m taskapi.tasks.functions`
prints the statements). tests/internals/test_task_rules.py fails while the installed bodies differ
from
what is rendered here, so a rule cannot change in Python alone.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import ClauseElement, literal_column
from sqlalchemy.dialects import postgresql

from taskapi.models import Task
from taskapi.tasks import overdue, visibility


def render(statement: ClauseElement) -> str:
    """PostgreSQL text with every value inlined (a function body has no bind parameters)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    text = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return "\n".join(line.rstrip() for line in text.splitlines())


# The columns of the function argument `t tasks`.
_ROW: Final[visibility.Columns] = {
    column.key: literal_column(f"t.{column.key}", column.type) for column in Task.__table__.c
}

VIEWERS_BODY: Final = render(visibility.viewers(_ROW))
SUBJECTS_BODY: Final = render(visibility.stat_subjects(_ROW))
OVERDUE_BODY: Final = "SELECT " + render(
    overdue.is_overdue(_ROW["due_date"], _ROW["status"], literal_column("today"))
)


def _function(signature: str, returns: str, volatility: str, body: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {signature} RETURNS {returns}\n"
        f"LANGUAGE sql {volatility} PARALLEL SAFE AS $$\n{body}\n$$"
    )


# STABLE, not IMMUTABLE: a grant may come to read another table (see visibility).
VIEWERS_FUNCTION: Final = _function("task_viewers(t tasks)", "SETOF bigint", "STABLE", VIEWERS_BODY)
SUBJECTS_FUNCTION: Final = _function(
    "task_stat_subjects(t tasks)",
    "TABLE (user_id bigint, project_id bigint)",
    "STABLE",
    SUBJECTS_BODY,
)
OVERDUE_FUNCTION: Final = _function(
    "task_is_overdue(t tasks, today date)", "boolean", "IMMUTABLE", OVERDUE_BODY
)
# name -> the body PostgreSQL must hold (pg_proc.prosrc), for the test.
BODIES: Final[dict[str, str]] = {
    "task_viewers": f"\n{VIEWERS_BODY}\n",
    "task_stat_subjects": f"\n{SUBJECTS_BODY}\n",
    "task_is_overdue": f"\n{OVERDUE_BODY}\n",
}


def _print(*statements: Any) -> None:
    for statement in statements:
        print(f"{statement};\n")


if __name__ == "__main__":
    _print(VIEWERS_FUNCTION, SUBJECTS_FUNCTION, OVERDUE_FUNCTION)
