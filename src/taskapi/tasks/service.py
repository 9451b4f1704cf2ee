"""The rules of tasks: who may change what, the workflow, versions. Never commits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.errors import Forbidden, UnknownAssignee
from taskapi.models import Task, TaskStatus, User
from taskapi.tasks import repository
from taskapi.tasks.conditional import IfMatch
from taskapi.tasks.schemas import TaskCreate, TaskOut, TaskPage, TaskPatch, TaskReplace
from taskapi.tasks.workflow import change_status

# Fields that anyone who sees a task may set; assignment is the owner's alone.
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
    return task


async def _apply(
    session: AsyncSession, user: User, task: Task, changes: dict[str, Any], if_match: IfMatch
) -> Task:
    if_match.check(task.version)
    if "assignee_id" in changes and changes["assignee_id"] != task.assignee_id:
        ensure_owner(task, user, "assign it")
        await _check_assignee(session, changes["assignee_id"])
        task.assignee_id = changes["assignee_id"]
    now = _now()
    if "status" in changes:
        change_status(task, changes["status"], now, explicit=False)
    for name in _FIELD_COLUMNS:
        if name in changes and changes[name] != getattr(task, name):
            setattr(task, name, changes[name])
    if session.is_modified(task):
        task.updated_at = now
        await session.flush()  # bumps `version` (version_id_col) and returns the new row
    return task


async def update_task(
    session: AsyncSession, user: User, task: Task, data: TaskPatch, if_match: IfMatch
) -> Task:
    return await _apply(session, user, task, data.changes(), if_match)


async def replace_task(
    session: AsyncSession, user: User, task: Task, data: TaskReplace, if_match: IfMatch
) -> Task:
    changes = data.model_dump(exclude={"completed", "status"})
    changes["status"] = data.resolved_status
    return await _apply(session, user, task, changes, if_match)


async def transition_task(
    session: AsyncSession, user: User, task: Task, target: TaskStatus, if_match: IfMatch
) -> Task:
    if_match.check(task.version)
    now = _now()
    change_status(task, target, now, explicit=True)
    task.updated_at = now
    await session.flush()
    return task


async def delete_task(session: AsyncSession, user: User, task: Task, if_match: IfMatch) -> None:
    ensure_owner(task, user, "delete it")
    if_match.check(task.version)
    await session.execute(delete(Task).where(Task.id == task.id))


async def list_tasks(session: AsyncSession, user: User, *, limit: int, offset: int) -> TaskPage:
    items, total = await repository.list_page(session, user.id, limit=limit, offset=offset)
    return TaskPage(
        items=[TaskOut.model_validate(task) for task in items],
        total=total,
        limit=limit,
        offset=offset,
        next_cursor=None,
    )
