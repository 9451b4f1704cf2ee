"""Reading and folding the task counts that triggers keep in `task_stat_deltas`.

The triggers (migrations 0006-0008) append signed rows in every transaction that changes a
count; the counts are the sums per key. Each row belongs to one subject: a user (personal tasks
they see) or a project (its tasks, counted once however many members it has). A user's stats are
their own rows plus those of each project they are a member of (`visibility.member_projects`),
so joining or leaving a project moves no count. Rows pile up with writes, so `fold` replaces one
subject's rows by their sums: in a single statement, so a concurrent reader sees all of the rows
or all of the sums (the same totals), and a writer's rows inserted meanwhile are simply left for
the next fold. Two folds of one subject at once are harmless too: the second deletes only what
the first did not, and re-inserts exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, any_, bindparam, func, not_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.db import CompiledQuery
from taskapi.models import TaskPriority, TaskStatDelta, TaskStatus
from taskapi.tasks.overdue import is_overdue
from taskapi.tasks.visibility import (
    PROJECT_ID,
    USER_ID,
    ProjectFilter,
    member_project_ids,
    member_projects,
)

# A stats read folds its user's rows once this many are unfolded: enough that folding (a write)
# is rare next to reads, few enough that a read never sums more than a few hundred rows.
READ_FOLD_THRESHOLD: Final = 256

# Grouped so a read returns one row per key: (status, priority) pairs, tags, and per status the
# (status, due date) rows, summed where the overdue rule holds on the day of the read. The
# subjects read: the user and their projects, personal tasks only, or one of their projects.
_D = TaskStatDelta
_SUBJECTS: dict[ProjectFilter, ColumnElement[bool]] = {
    # = ANY(ARRAY(...)), not IN (SELECT ...): a BitmapOr of the two subject indexes, where the
    # IN made it a sequential scan of every subject's rows (218 ms against 13 ms for a member
    # of 50 projects among 10,000).
    None: or_(_D.user_id == USER_ID, _D.project_id == any_(member_project_ids(USER_ID))),
    "none": _D.user_id == USER_ID,
    "id": and_(_D.project_id == PROJECT_ID, _D.project_id.in_(member_projects(USER_ID))),
}
_READS: Final = {
    project: CompiledQuery.of(
        select(
            _D.status,
            _D.priority,
            _D.tag,
            func.sum(_D.n).filter(_D.due_date.is_(None)).label("n"),
            func.sum(_D.n).filter(is_overdue(_D.due_date, _D.status, bindparam("today"))),
            func.count().filter(not_(_D.folded)).label("unfolded"),
        )
        .where(subjects)
        .group_by(_D.status, _D.priority, _D.tag)
    )
    for project, subjects in _SUBJECTS.items()
}


def counted_total(
    project: ProjectFilter,
    statuses: Sequence[ColumnElement[Any]] = (),
    priorities: Sequence[ColumnElement[Any]] = (),
    completed: bool | None = None,
    overdue: bool | None = None,
) -> ColumnElement[int]:
    """How many tasks the caller (`user_id`) sees, narrowed by `project`, status, priority and
    overdue (as of `today`; not with priorities: the due-date rows carry no priority), as a
    scalar subquery over these counts: the (status, priority) rows of each of the caller's
    subjects, a few per subject, and for overdue their (status, due date) rows (each kind in a
    partial index of its own, migration 0017). GET /tasks answers its `total` with it where
    those are its only filters: counting the tasks themselves read an index entry per task
    (50,150 for a member of 50 projects), each checked against a visibility map spread over the
    whole table, so the count grew with everyone's tasks. Part of the list's own statement: the
    same snapshot as its page."""
    if overdue is not None and priorities:
        raise ValueError("the due-date rows carry no priority: count overdue without one")
    by_status: list[ColumnElement[bool]] = []
    if statuses:
        by_status.append(_D.status.in_(statuses))
    if completed is not None:
        done = _D.status == TaskStatus.DONE
        by_status.append(done if completed else not_(done))
    pairs = [_SUBJECTS[project], _D.priority.is_not(None), *by_status]
    if priorities:
        pairs.append(_D.priority.in_(priorities))
    every = select(func.coalesce(func.sum(_D.n), 0)).where(*pairs).scalar_subquery()
    if overdue is None:
        return every
    late = is_overdue(_D.due_date, _D.status, bindparam("today"))
    dated = [_SUBJECTS[project], _D.due_date.is_not(None), late, *by_status]
    overdue_ones = select(func.coalesce(func.sum(_D.n), 0)).where(*dated).scalar_subquery()
    return overdue_ones if overdue else every - overdue_ones


# Keys whose sum is zero (a tag nobody uses any more, every term of a deleted account) vanish.
_FOLD_SQL: Final = """
    WITH gone AS (
        DELETE FROM task_stat_deltas WHERE {subject} = :subject_id
        RETURNING status, priority, due_date, tag, n
    )
    INSERT INTO task_stat_deltas ({subject}, status, priority, due_date, tag, n, folded)
    SELECT :subject_id, status, priority, due_date, tag, sum(n), true
    FROM gone
    GROUP BY status, priority, due_date, tag
    HAVING sum(n) <> 0
    """
_FOLD: Final = {s: text(_FOLD_SQL.format(subject=s)) for s in ("user_id", "project_id")}

# Subjects of `user_id` with many unfolded rows (reads fold them as they go).
_BUSY: Final = text(
    """
    SELECT 'user_id', :user_id WHERE (
        SELECT count(*) FROM task_stat_deltas WHERE user_id = :user_id AND NOT folded
    ) >= :at_least
    UNION ALL
    SELECT 'project_id', project_id FROM task_stat_deltas
    WHERE NOT folded AND project_id IN (
        SELECT project_id FROM project_members WHERE user_id = :user_id
    )
    GROUP BY project_id HAVING count(*) >= :at_least
    """
)

_SUBJECTS_TO_FOLD: Final = text(
    """
    SELECT subject, id FROM (
        SELECT 'user_id' AS subject, user_id AS id, count(*) AS n FROM task_stat_deltas
        WHERE NOT folded AND user_id IS NOT NULL GROUP BY user_id HAVING count(*) >= :at_least
        UNION ALL
        SELECT 'project_id', project_id, count(*) FROM task_stat_deltas
        WHERE NOT folded AND project_id IS NOT NULL GROUP BY project_id
        HAVING count(*) >= :at_least
    ) AS busy
    ORDER BY n DESC
    LIMIT :limit
    """
)

_FORGET: Final = {
    s: text(f"DELETE FROM task_stat_deltas WHERE {s} = :subject_id")  # noqa: S608
    for s in ("user_id", "project_id")
}


@dataclass(slots=True)
class StatCounts:
    by_status: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in TaskStatus})
    by_priority: dict[str, int] = field(default_factory=lambda: {p.value: 0 for p in TaskPriority})
    # Most used first, then by name; tags no visible task carries any more are left out.
    by_tag: dict[str, int] = field(default_factory=dict)
    overdue: int = 0
    unfolded: int = 0


async def read(
    session: AsyncSession,
    user_id: int,
    today: date,
    project: ProjectFilter = None,
    project_id: int | None = None,
) -> StatCounts:
    """The counts over the tasks `user_id` can see (narrowed by `project`); overdue as of
    `today`."""
    counts = StatCounts()
    tags: list[tuple[str, int]] = []
    values = {"user_id": user_id, "today": today, "project_id": project_id}
    for status, priority, tag, n, overdue, unfolded in await _READS[project].fetch(session, values):
        counts.unfolded += unfolded
        if priority is not None:
            counts.by_status[status] += n
            counts.by_priority[priority] += n
        elif tag is not None:
            if n:
                tags.append((tag, n))
        else:  # the due dates of one status
            counts.overdue += overdue or 0
    tags.sort(key=lambda item: (-item[1], item[0]))
    counts.by_tag = dict(tags)
    return counts


async def fold(session: AsyncSession, subject: str, subject_id: int) -> None:
    """Replace the rows of one subject (`user_id` or `project_id`) by one row per key holding
    its sum."""
    await session.execute(_FOLD[subject], {"subject_id": subject_id})


async def fold_for_reader(session: AsyncSession, user_id: int, *, at_least: int) -> None:
    """Fold each subject a user's stats read (the user, their projects) with at least
    `at_least` unfolded rows."""
    busy = await session.execute(_BUSY, {"user_id": user_id, "at_least": at_least})
    for subject, subject_id in busy.all():
        await fold(session, subject, subject_id)


async def fold_busiest(session: AsyncSession, *, at_least: int, limit: int) -> int:
    """Fold every subject with at least `at_least` unfolded rows (most first, `limit` of them);
    how many were folded. For the periodic job: writers who never read their stats."""
    busy = await session.execute(_SUBJECTS_TO_FOLD, {"at_least": at_least, "limit": limit})
    rows = busy.all()
    for subject, subject_id in rows:
        await fold(session, subject, subject_id)
    return len(rows)


async def forget(session: AsyncSession, subject: str, subject_id: int) -> None:
    """Drop a deleted account's or project's rows (after its tasks are gone: their deletion
    wrote some)."""
    await session.execute(_FORGET[subject], {"subject_id": subject_id})
