"""Bulk changes: many tasks, each planned on its own by the single-task rules
(taskapi.tasks.service.plan_changes), written in a bounded number of statements."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.errors import AppError
from taskapi.kit.project_errors import AssigneeNotMember
from taskapi.models import Task, TaskStatus, User
from taskapi.notifications import service as notifications
from taskapi.tasks import access, audit, repository, service
from taskapi.tasks.schemas import BulkItemResult, BulkResult, TaskPatch
from taskapi.tasks.service import FIELD_COLUMNS


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

    A bounded number of statements whatever the number of ids: one locking SELECT, one read of
    the caller's memberships and one of the assignees' (when projects are involved), at most
    four UPDATEs (by whether the status changes and whether the task moves), one notification
    INSERT per kind.
    """
    ids = _unique(ids)
    if changes.get("assignee_id") is not None:
        await service.check_assignee_exists(session, changes["assignee_id"])
    # Before the tasks are locked: the lock order (taskapi.tasks.access), projects first.
    await access.hold_target(session, changes.get("project_id"))
    tasks = {t.id: t for t in await repository.get_visible_many(session, user.id, ids)}
    members = await access.memberships(
        session, user.id, [*(t.project_id for t in tasks.values()), changes.get("project_id")]
    )
    now = service.utc_now()
    results: dict[int, BulkItemResult] = {}
    plans: dict[int, dict[str, Any]] = {}
    for task_id in ids:
        task = tasks.get(task_id)
        if task is None:
            results[task_id] = BulkItemResult(
                task_id=task_id, success=False, error="task_not_found"
            )
            continue
        try:
            plans[task_id] = service.plan_changes(
                task, user, changes, now, members, explicit_status=explicit_status
            )
        except AppError as error:
            results[task_id] = BulkItemResult(
                task_id=task_id, success=False, error=error.code, previous_status=task.status
            )
    # A project task's assignee must be a member: every pair a plan would create, in one query.
    pairs = {
        task_id: (
            plan.get("project_id", tasks[task_id].project_id),
            plan.get("assignee_id", tasks[task_id].assignee_id),
        )
        for task_id, plan in plans.items()
        if "assignee_id" in plan or "project_id" in plan
    }
    outsiders = await access.non_members(session, pairs.values())
    groups: dict[tuple[bool, bool], list[int]] = {}
    group_values: dict[tuple[bool, bool], dict[str, Any]] = {}
    reassigned: set[int] = set()  # ids whose assignee really changes: they get task_assigned
    for task_id, planned in plans.items():
        task = tasks[task_id]
        if pairs.get(task_id) in outsiders:
            results[task_id] = BulkItemResult(
                task_id=task_id,
                success=False,
                error=AssigneeNotMember.code,
                previous_status=task.status,
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
        if not planned:
            continue
        key = (status_changes, "project_id" in planned)
        groups.setdefault(key, []).append(task_id)
        if "assignee_id" in planned:
            reassigned.add(task_id)
        # Every item of a group gets the same values: all requested fields (harmless where a
        # field already had that value) plus, in the status groups, status and completed_at,
        # and in the moving groups the project (and the owner, for tasks taken out of one).
        values = {k: v for k, v in changes.items() if k in (*FIELD_COLUMNS, "assignee_id")}
        if status_changes:
            values["status"] = planned["status"]
            values["completed_at"] = planned["completed_at"]
        if "project_id" in planned:
            values.update({k: planned[k] for k in ("project_id", "owner_id") if k in planned})
        group_values[key] = values
    changed = [tasks[i] for group_ids in groups.values() for i in group_ids]
    if changed:
        moved: dict[str, Any] = {
            k: changes[k] for k in ("assignee_id", "project_id") if k in changes
        }
        if changes.get("project_id", 0) is None:
            moved["owner_id"] = user.id
        await service.stats_change(session, changed, moved)
    befores = {t.id: audit.before_values(t, plans[t.id]) for t in changed}
    updated: list[Task] = []
    for key, group_ids in groups.items():
        updated.extend(await repository.update_many(session, group_ids, group_values[key], now))
    if updated:
        # One event per changed task, all in one INSERT.
        await audit.tasks_changed(session, user, [(t, befores[t.id], plans[t.id]) for t in updated])
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
