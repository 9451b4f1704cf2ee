"""The rules of tasks: who may change what, the workflow, versions, notifications.

Services take the session first and never commit. Changes are planned (validated, with no
mutation) before they are applied, so a refused change never leaves a half-updated object.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.errors import (
    AppError,
    Forbidden,
    TagNotFound,
    TaskNotFound,
    UnknownAssignee,
    ValidationFailed,
)
from taskapi.kit.pagination import CursorCodec
from taskapi.models import Task, TaskStatus, User
from taskapi.notifications import service as notifications
from taskapi.tasks import files, repository, stat_counts
from taskapi.tasks.conditional import IfMatch
from taskapi.tasks.list_page import build_page
from taskapi.tasks.list_params import TaskListParams
from taskapi.tasks.list_plan import plan_list
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import (
    MAX_TAGS,
    BulkItemResult,
    BulkResult,
    TaskCreate,
    TaskItemRow,
    TaskPageRows,
    TaskPatch,
    TaskReplace,
    TaskStats,
    normalize_tag,
)
from taskapi.tasks.stats_cache import StatsCache, mark_stats_stale
from taskapi.tasks.workflow import check_transition

# Fields anyone who sees a task may set; assignment is the owner's alone.
_FIELD_COLUMNS = ("title", "description", "priority", "due_date", "tags")


def _now() -> datetime:
    return datetime.now(UTC)


def ensure_owner(task: Task, user: User, action: str) -> None:
    if task.owner_id != user.id:
        raise Forbidden(f"Only the task's owner may {action}.")


async def _check_assignee(session: AsyncSession, assignee_id: int | None) -> None:
    if assignee_id is not None and not await repository.user_exists(session, assignee_id):
        raise UnknownAssignee(
            errors=[{"loc": ["body", "assignee_id"], "msg": "no such user", "type": "unknown_user"}]
        )


def plan_changes(
    task: Task, user: User, changes: dict[str, Any], now: datetime, *, explicit_status: bool = False
) -> dict[str, Any]:
    """The column values that would change, or an error (403, 409) — without touching `task`."""
    planned: dict[str, Any] = {}
    if "assignee_id" in changes and changes["assignee_id"] != task.assignee_id:
        ensure_owner(task, user, "assign it")
        planned["assignee_id"] = changes["assignee_id"]
    if "status" in changes and (explicit_status or changes["status"] != task.status):
        check_transition(task.status, changes["status"])
        planned["status"] = changes["status"]
        planned["completed_at"] = now if changes["status"] == TaskStatus.DONE else None
    for name in _FIELD_COLUMNS:
        if name in changes and changes[name] != getattr(task, name):
            planned[name] = changes[name]
    return planned


async def _apply_planned(
    session: AsyncSession, user: User, task: Task, planned: dict[str, Any], now: datetime
) -> Task:
    if not planned:
        return task
    if "assignee_id" in planned:
        await _check_assignee(session, planned["assignee_id"])
    mark_stats_stale(session, task.owner_id, task.assignee_id, planned.get("assignee_id"))
    for name, value in planned.items():
        setattr(task, name, value)
    task.updated_at = now
    await session.flush()  # bumps `version` (version_id_col) and reads the row back
    if "assignee_id" in planned:
        await notifications.task_assigned(session, user, [task])
    else:
        await notifications.task_updated(session, user, [task])
    return task


async def create_task(session: AsyncSession, user: User, data: TaskCreate) -> Task:
    await _check_assignee(session, data.assignee_id)
    status = data.resolved_status
    task = Task(
        owner_id=user.id,
        assignee_id=data.assignee_id,
        title=data.title,
        description=data.description,
        status=status,
        priority=data.priority,
        due_date=data.due_date,
        tags=data.tags,
        completed_at=_now() if status == TaskStatus.DONE else None,
    )
    session.add(task)
    await session.flush()
    mark_stats_stale(session, task.owner_id, task.assignee_id)
    await notifications.task_assigned(session, user, [task])
    return task


async def _change(
    session: AsyncSession,
    user: User,
    task: Task,
    changes: dict[str, Any],
    if_match: IfMatch,
    *,
    explicit_status: bool = False,
) -> Task:
    if_match.check(task.version)
    now = _now()
    planned = plan_changes(task, user, changes, now, explicit_status=explicit_status)
    return await _apply_planned(session, user, task, planned, now)


async def update_task(
    session: AsyncSession, user: User, task: Task, data: TaskPatch, if_match: IfMatch
) -> Task:
    return await _change(session, user, task, data.changes(), if_match)


async def replace_task(
    session: AsyncSession, user: User, task: Task, data: TaskReplace, if_match: IfMatch
) -> Task:
    changes = data.model_dump(exclude={"completed", "status"})
    changes["status"] = data.resolved_status
    return await _change(session, user, task, changes, if_match)


async def transition_task(
    session: AsyncSession, user: User, task: Task, target: TaskStatus, if_match: IfMatch
) -> Task:
    """An explicit transition: asking for the current status is itself invalid (409)."""
    return await _change(session, user, task, {"status": target}, if_match, explicit_status=True)


async def assign_task(
    session: AsyncSession, user: User, task: Task, assignee_id: int | None, if_match: IfMatch
) -> Task:
    ensure_owner(task, user, "assign it")
    return await _change(session, user, task, {"assignee_id": assignee_id}, if_match)


async def add_tags(
    session: AsyncSession, user: User, task: Task, tags: list[str], if_match: IfMatch
) -> Task:
    merged = list(dict.fromkeys([*task.tags, *tags]))
    if len(merged) > MAX_TAGS:
        raise ValidationFailed(
            f"A task has at most {MAX_TAGS} tags.",
            errors=[{"loc": ["body", "tags"], "msg": "too many tags", "type": "too_long"}],
        )
    return await _change(session, user, task, {"tags": merged}, if_match)


async def remove_tag(
    session: AsyncSession, user: User, task: Task, raw_tag: str, if_match: IfMatch
) -> Task:
    try:
        tag = normalize_tag(raw_tag)
    except ValueError as exc:
        raise TagNotFound() from exc
    if tag not in task.tags:
        raise TagNotFound()
    return await _change(
        session, user, task, {"tags": [t for t in task.tags if t != tag]}, if_match
    )


async def delete_task(session: AsyncSession, user: User, task: Task, if_match: IfMatch) -> None:
    ensure_owner(task, user, "delete it")
    if_match.check(task.version)
    if task.attachment_count:
        await files.release_files(session, Task.id == task.id)
    await session.execute(delete(Task).where(Task.id == task.id))
    mark_stats_stale(session, task.owner_id, task.assignee_id)


# --- bulk ----------------------------------------------------------------------------------------


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(ids))


async def _bulk_apply(
    session: AsyncSession,
    user: User,
    ids: list[int],
    changes: dict[str, Any],
    *,
    explicit_status: bool,
) -> BulkResult:
    """Plan every item, then write each group of identical changes with one UPDATE.

    A bounded number of statements whatever the number of ids: one locking SELECT, at most two
    UPDATEs (items whose status changes, and items whose status stays), one notification INSERT
    per kind.
    """
    ids = _unique(ids)
    if changes.get("assignee_id") is not None:
        await _check_assignee(session, changes["assignee_id"])
    tasks = {t.id: t for t in await repository.get_visible_many(session, user.id, ids)}
    now = _now()
    results: dict[int, BulkItemResult] = {}
    groups: dict[bool, list[int]] = {True: [], False: []}
    reassigned: set[int] = set()  # ids whose assignee really changes: they get task_assigned
    group_values: dict[bool, dict[str, Any]] = {}
    for task_id in ids:
        task = tasks.get(task_id)
        if task is None:
            results[task_id] = BulkItemResult(
                task_id=task_id, success=False, error="task_not_found"
            )
            continue
        try:
            planned = plan_changes(task, user, changes, now, explicit_status=explicit_status)
        except AppError as error:
            results[task_id] = BulkItemResult(
                task_id=task_id, success=False, error=error.code, previous_status=task.status
            )
            continue
        status_changes = "status" in planned
        # The status pair reports a change of status, so an item whose status stays has none.
        results[task_id] = BulkItemResult(
            task_id=task_id,
            success=True,
            previous_status=task.status if status_changes else None,
            new_status=planned.get("status"),
        )
        if planned:
            groups[status_changes].append(task_id)
            if "assignee_id" in planned:
                reassigned.add(task_id)
            # Every item of a group gets the same values: all requested fields (harmless where a
            # field already had that value) plus, in the status group, status and completed_at.
            values = {k: v for k, v in changes.items() if k in (*_FIELD_COLUMNS, "assignee_id")}
            if status_changes:
                values["status"] = planned["status"]
                values["completed_at"] = planned["completed_at"]
            group_values[status_changes] = values
    changed_ids = groups[True] + groups[False]
    mark_stats_stale(
        session,
        changes.get("assignee_id"),
        *(tasks[i].owner_id for i in changed_ids),
        *(tasks[i].assignee_id for i in changed_ids),
    )
    updated: list[Task] = []
    for status_changes, group_ids in groups.items():
        if group_ids:
            updated.extend(
                await repository.update_many(session, group_ids, group_values[status_changes], now)
            )
    if updated:
        # As for a single task: a new assignee is told of the assignment; a task whose assignee
        # stays the same (even if `assignee_id` was sent) is an update.
        await notifications.task_assigned(session, user, [t for t in updated if t.id in reassigned])
        await notifications.task_updated(
            session, user, [t for t in updated if t.id not in reassigned]
        )
    ordered = [results[task_id] for task_id in ids]
    successful = sum(1 for item in ordered if item.success)
    return BulkResult(
        total=len(ordered), successful=successful, failed=len(ordered) - successful, results=ordered
    )


async def bulk_update(
    session: AsyncSession, user: User, task_ids: list[int], data: TaskPatch
) -> BulkResult:
    return await _bulk_apply(session, user, task_ids, data.changes(), explicit_status=False)


async def bulk_status(
    session: AsyncSession, user: User, task_ids: list[int], target: TaskStatus
) -> BulkResult:
    return await _bulk_apply(session, user, task_ids, {"status": target}, explicit_status=True)


# --- list and stats ------------------------------------------------------------------------------


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
    """GET /tasks: parameters -> plan -> statements run -> page (one module per step)."""
    plan = plan_list(params, user.id, today(), cursors)
    rows, total = await repository.list_page(session, plan)
    return build_page(plan, rows, total, cursors)


def _percentage(part: int, whole: int) -> float:
    """One decimal, halves rounded up (1 of 16 is 6.3, as a person would write it)."""
    if not whole:
        return 0.0
    return float((Decimal(part * 100) / Decimal(whole)).quantize(Decimal("0.1"), ROUND_HALF_UP))


async def stats_json(session: AsyncSession, cache: StatsCache, user: User) -> bytes:
    """The caller's stats as JSON, from the cache when it holds the current generation."""
    cached = await cache.get(user.id)
    if cached.payload is not None:
        return cached.payload
    payload = (await task_stats(session, user)).model_dump_json().encode()
    if cached.generation is not None:
        await cache.put(user.id, cached.generation, payload)
    return payload


async def task_stats(session: AsyncSession, user: User) -> TaskStats:
    """From the counts the `tasks` triggers keep (one indexed read of a few dozen rows, however
    many tasks the user sees); folds them when enough writes have piled up since the last fold."""
    counts = await stat_counts.read(session, user.id, today())
    if counts.unfolded >= stat_counts.READ_FOLD_THRESHOLD:
        await stat_counts.fold(session, user.id)
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
