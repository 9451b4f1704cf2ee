"""Reading and folding the per-user task counts that triggers keep in `task_stat_deltas`.

The triggers (migrations 0006, 0007) append signed rows in every transaction that changes what
a user sees; the counts are the sums per key. Rows pile up with writes, so `fold` replaces one
user's rows by their sums: in a single statement, so a concurrent reader sees all of the rows or
all of the sums (the same totals), and a writer's rows inserted meanwhile are simply left for
the next fold. Two folds of one user at once are harmless too: the second deletes only what the
first did not, and re-inserts exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Final

from sqlalchemy import bindparam, func, not_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.db import CompiledQuery
from taskapi.models import TaskPriority, TaskStatDelta, TaskStatus
from taskapi.tasks.overdue import is_overdue

# A stats read folds its user's rows once this many are unfolded: enough that folding (a write)
# is rare next to reads, few enough that a read never sums more than a few hundred rows.
READ_FOLD_THRESHOLD: Final = 256

# Grouped so a read returns one row per key: (status, priority) pairs, tags, and per status the
# (status, due date) rows, summed where the overdue rule holds on the day of the read.
_D = TaskStatDelta
_READ: Final = CompiledQuery.of(
    select(
        _D.status,
        _D.priority,
        _D.tag,
        func.sum(_D.n).filter(_D.due_date.is_(None)).label("n"),
        func.sum(_D.n).filter(is_overdue(_D.due_date, _D.status, bindparam("today"))),
        func.count().filter(not_(_D.folded)).label("unfolded"),
    )
    .where(_D.user_id == bindparam("user_id"))
    .group_by(_D.status, _D.priority, _D.tag)
)

# Keys whose sum is zero (a tag nobody uses any more, every term of a deleted account) vanish.
_FOLD: Final = text(
    """
    WITH gone AS (
        DELETE FROM task_stat_deltas WHERE user_id = :user_id
        RETURNING status, priority, due_date, tag, n
    )
    INSERT INTO task_stat_deltas (user_id, status, priority, due_date, tag, n, folded)
    SELECT :user_id, status, priority, due_date, tag, sum(n), true
    FROM gone
    GROUP BY status, priority, due_date, tag
    HAVING sum(n) <> 0
    """
)

_USERS_TO_FOLD: Final = text(
    """
    SELECT user_id FROM task_stat_deltas
    WHERE NOT folded
    GROUP BY user_id
    HAVING count(*) >= :at_least
    ORDER BY count(*) DESC
    LIMIT :limit
    """
)

_FORGET: Final = text("DELETE FROM task_stat_deltas WHERE user_id = :user_id")


@dataclass(slots=True)
class StatCounts:
    by_status: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in TaskStatus})
    by_priority: dict[str, int] = field(default_factory=lambda: {p.value: 0 for p in TaskPriority})
    # Most used first, then by name; tags no visible task carries any more are left out.
    by_tag: dict[str, int] = field(default_factory=dict)
    overdue: int = 0
    unfolded: int = 0


async def read(session: AsyncSession, user_id: int, today: date) -> StatCounts:
    """The counts over the tasks `user_id` can see; overdue as of `today`."""
    counts = StatCounts()
    tags: list[tuple[str, int]] = []
    for status, priority, tag, n, overdue, unfolded in await _READ.fetch(
        session, {"user_id": user_id, "today": today}
    ):
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


async def fold(session: AsyncSession, user_id: int) -> None:
    """Replace `user_id`'s rows by one row per key holding its sum."""
    await session.execute(_FOLD, {"user_id": user_id})


async def fold_busiest(session: AsyncSession, *, at_least: int, limit: int) -> int:
    """Fold every user with at least `at_least` unfolded rows (most first, `limit` of them);
    how many users were folded. For the periodic job: writers who never read their stats."""
    user_ids = (await session.scalars(_USERS_TO_FOLD, {"at_least": at_least, "limit": limit})).all()
    for user_id in user_ids:
        await fold(session, user_id)
    return len(user_ids)


async def forget(session: AsyncSession, user_id: int) -> None:
    """Drop a deleted account's rows (after its tasks are gone: their deletion wrote some)."""
    await session.execute(_FORGET, {"user_id": user_id})
