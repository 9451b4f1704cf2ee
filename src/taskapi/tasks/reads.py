"""The read side of tasks: one task, the list, the stats (no writes but the stats' fold)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.errors import TaskNotFound
from taskapi.kit.pagination import CursorCodec
from taskapi.models import TaskStatus, User
from taskapi.tasks import repository, stat_counts
from taskapi.tasks.list_page import build_page
from taskapi.tasks.list_params import TaskListParams
from taskapi.tasks.list_plan import plan_list
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import TaskItemRow, TaskPageRows, TaskStats
from taskapi.tasks.service import member_or_404
from taskapi.tasks.stats_cache import StatsCache
from taskapi.tasks.visibility import ProjectFilter


async def get_task_item(session: AsyncSession, user: User, task_id: int) -> TaskItemRow:
    """A task the caller can see, as GET /tasks/{id} shows it (read straight from the database,
    no ORM object: this is the busiest single-task read)."""
    item = await repository.get_visible_item(session, user.id, task_id, today())
    if item is None:
        raise TaskNotFound()
    return item  # type: ignore[return-value]


async def list_tasks(
    session: AsyncSession, user: User, params: TaskListParams, cursors: CursorCodec
) -> TaskPageRows:
    """GET /tasks: parameters -> plan -> statements run -> page (one module per step).

    `project_id=` of a project the caller is not in is a 404; only an empty page needs asking
    (the statements only ever return rows of the caller's own projects)."""
    plan = plan_list(params, user.id, today(), cursors)
    rows, total = await repository.list_page(session, plan)
    if not rows and isinstance(params.project_id, int):
        await member_or_404(session, user, params.project_id)
    return build_page(plan, rows, total, cursors)


def _percentage(part: int, whole: int) -> float:
    """One decimal, halves rounded up (1 of 16 is 6.3, as a person would write it)."""
    if not whole:
        return 0.0
    return float((Decimal(part * 100) / Decimal(whole)).quantize(Decimal("0.1"), ROUND_HALF_UP))


async def stats_json(
    session: AsyncSession, cache: StatsCache, user: User, project_id: int | None = None
) -> bytes:
    """The caller's stats as JSON, from the cache when it holds the current generation. One
    project's stats (a member's) are read straight from the counts: a few rows."""
    if project_id is not None:
        await member_or_404(session, user, project_id)
        return (await task_stats(session, user, "id", project_id)).model_dump_json().encode()
    cached = await cache.get(user.id)
    if cached.payload is not None:
        return cached.payload
    payload = (await task_stats(session, user)).model_dump_json().encode()
    if cached.generation is not None:
        await cache.put(user.id, cached.generation, payload)
    return payload


async def task_stats(
    session: AsyncSession,
    user: User,
    project: ProjectFilter = None,
    project_id: int | None = None,
) -> TaskStats:
    """From the counts the `tasks` triggers keep (one indexed read of a few dozen rows per
    subject, however many tasks the user sees); folds them when enough writes have piled up
    since the last fold."""
    counts = await stat_counts.read(session, user.id, today(), project, project_id)
    if counts.unfolded >= stat_counts.READ_FOLD_THRESHOLD:
        await stat_counts.fold_for_reader(
            session, user.id, at_least=stat_counts.READ_FOLD_THRESHOLD // 4
        )
    total = sum(counts.by_status.values())
    completed = counts.by_status[TaskStatus.DONE.value]
    return TaskStats(
        total=total,
        completed=completed,
        incomplete=total - completed,
        completion_rate=_percentage(completed, total),
        overdue=counts.overdue,
        by_status=counts.by_status,
        by_priority=counts.by_priority,
        by_tag=counts.by_tag,
    )
