"""The rules of tasks: who may change what, the workflow, versions, notifications.

Services take the session first and never commit. A change is checked (everything that can
refuse it, with no write and no mutation: `check_*`) before it is applied (`apply_*`, which
refuses nothing), so a refused change never leaves a half-updated object or a row behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.errors import (
    TagNotFound,
    TaskNotFound,
    UnknownAssignee,
    ValidationFailed,
)
from taskapi.kit.project_errors import ProjectNotFound
from taskapi.models import Task, TaskStatus, User
from taskapi.notifications import service as notifications
from taskapi.tasks import access, audit, files, repository
from taskapi.tasks.access import Membership
from taskapi.tasks.conditional import IfMatch
from taskapi.tasks.schemas import (
    MAX_TAGS,
    TaskCreate,
    TaskPatch,
    TaskReplace,
    normalize_tag,
)
from taskapi.tasks.stats_cache import mark_stats_stale
from taskapi.tasks.workflow import check_transition

# Fields anyone who sees a task may set; assignment is the owner's alone.
FIELD_COLUMNS = ("title", "description", "priority", "due_date", "tags")


def utc_now() -> datetime:
    return datetime.now(UTC)


async def check_assignee_exists(session: AsyncSession, assignee_id: int | None) -> None:
    if assignee_id is not None and not await repository.user_exists(session, assignee_id):
        raise UnknownAssignee(
            errors=[{"loc": ["body", "assignee_id"], "msg": "no such user", "type": "unknown_user"}]
        )


def plan_changes(
    task: Task,
    user: User,
    changes: dict[str, Any],
    now: datetime,
    members: dict[int, Membership],
    *,
    explicit_status: bool = False,
) -> dict[str, Any]:
    """The column values that would change, or an error (403, 404, 409) — without touching
    `task`. `members`: the caller's memberships of the task's project and of a target one."""
    planned: dict[str, Any] = {}
    source = members.get(task.project_id) if task.project_id is not None else None
    access.check_edit(task, source)
    if "project_id" in changes and changes["project_id"] != task.project_id:
        access.check_manage(task, user, source, "move it")
        target = changes["project_id"]
        if target is not None:
            access.check_target(members.get(target))
        else:
            planned["owner_id"] = user.id  # a project task taken out becomes the mover's own
        planned["project_id"] = target
    if "assignee_id" in changes and changes["assignee_id"] != task.assignee_id:
        access.check_manage(task, user, source, "assign it")
        planned["assignee_id"] = changes["assignee_id"]
    if "status" in changes and (explicit_status or changes["status"] != task.status):
        check_transition(task.status, changes["status"])
        planned["status"] = changes["status"]
        planned["completed_at"] = now if changes["status"] == TaskStatus.DONE else None
    for name in FIELD_COLUMNS:
        if name in changes and changes[name] != getattr(task, name):
            planned[name] = changes[name]
    return planned


async def apply_change(session: AsyncSession, user: User, change: Change) -> Task:
    """Write a checked change: the task's columns, its version, its event and notifications.
    Refuses nothing (everything that can be refused was checked by `check_change`)."""
    task, planned, now = change.task, change.planned, change.now
    if not planned:
        return task
    await stats_change(session, [task], planned)
    before = audit.before_values(task, planned)
    for name, value in planned.items():
        setattr(task, name, value)
    task.updated_at = now
    await session.flush()  # bumps `version` (version_id_col) and reads the row back
    await audit.task_changed(session, user, task, before, planned)
    if "assignee_id" in planned:
        await notifications.task_assigned(session, user, [task])
    else:
        await notifications.task_updated(session, user, [task])
    return task


async def stats_change(
    session: AsyncSession, tasks: Iterable[Task], planned: dict[str, Any] | None = None
) -> None:
    """Whose cached stats a change of `tasks` (to `planned`) makes stale: the viewers of a
    personal task, the members of a project's, before and after."""
    users: set[int | None] = set()
    projects: set[int | None] = set()
    for task in tasks:
        for values in (task.__dict__, planned or {}):
            users.update(values.get(name) for name in ("owner_id", "assignee_id"))
            projects.add(values.get("project_id"))
    projects.discard(None)
    members = await repository.project_member_ids(session, projects) if projects else []
    mark_stats_stale(session, *users, *members)


async def check_new_task(session: AsyncSession, user: User, data: TaskCreate) -> None:
    """What a new task must satisfy (404, 403, 409, 422), checked without writing anything."""
    await check_assignee_exists(session, data.assignee_id)
    if data.project_id is not None:
        await access.hold_target(session, data.project_id)
        members = await access.memberships(session, user.id, [data.project_id])
        access.check_target(members.get(data.project_id))
        await access.check_assignee_is_member(session, data.project_id, data.assignee_id)


def new_task(user: User, data: TaskCreate) -> Task:
    """The task `data` describes, owned by `user` (checked by `check_new_task`, not yet added)."""
    status = data.resolved_status
    return Task(
        owner_id=user.id,
        assignee_id=data.assignee_id,
        project_id=data.project_id,
        title=data.title,
        description=data.description,
        status=status,
        priority=data.priority,
        due_date=data.due_date,
        tags=data.tags,
        completed_at=utc_now() if status == TaskStatus.DONE else None,
    )


async def add_tasks(session: AsyncSession, user: User, tasks: list[Task]) -> None:
    """Insert new tasks (one INSERT however many), with their events and notifications."""
    session.add_all(tasks)
    await session.flush()
    await stats_change(session, tasks)
    await audit.tasks_created(session, user, tasks)
    await notifications.task_assigned(session, user, tasks)


async def create_task(session: AsyncSession, user: User, data: TaskCreate) -> Task:
    await check_new_task(session, user, data)
    task = new_task(user, data)
    await add_tasks(session, user, [task])
    return task


async def visible_for_update(
    session: AsyncSession, user: User, task_id: int, *, into: int | None = None
) -> Task:
    """The task, locked for a change, if the caller can see it (404 otherwise). A change that
    may put it into a project (`into`: the project it names) holds that project first, before
    the task: the lock order (taskapi.tasks.access)."""
    await access.hold_target(session, into)
    task = await repository.get_visible(session, user.id, task_id, for_update=True)
    if task is None:
        raise TaskNotFound()
    return task


@dataclass(frozen=True)
class Change:
    """A change of one task that passed every check (`check_change`), not written yet."""

    task: Task
    planned: dict[str, Any]  # the columns that change, to their new values
    now: datetime


async def check_change(
    session: AsyncSession,
    user: User,
    task: Task,
    changes: dict[str, Any],
    if_match: IfMatch,
    *,
    explicit_status: bool = False,
) -> Change:
    """Everything that can refuse a change (412, 403, 404, 409, 422), without writing: a batch
    needs no savepoint to leave a refused operation without a trace."""
    if_match.check(task.version)
    now = utc_now()
    if changes.get("project_id") != task.project_id:
        # Held already, before the task was locked (the lock order, taskapi.tasks.access: PATCH
        # by its dependency, a batch for all of its operations at its start): no statement
        # here. A task already there needs no hold: it is locked, as a deletion of that
        # project would lock it.
        await access.hold_target(session, changes.get("project_id"))
    members = await access.memberships(
        session, user.id, [task.project_id, changes.get("project_id")]
    )
    planned = plan_changes(task, user, changes, now, members, explicit_status=explicit_status)
    if "assignee_id" in planned:
        await check_assignee_exists(session, planned["assignee_id"])
    if "assignee_id" in planned or "project_id" in planned:
        await access.check_assignee_is_member(
            session,
            planned.get("project_id", task.project_id),
            planned.get("assignee_id", task.assignee_id),
        )
    return Change(task, planned, now)


async def _change(
    session: AsyncSession, user: User, task: Task, changes: dict[str, Any], if_match: IfMatch
) -> Task:
    return await apply_change(
        session, user, await check_change(session, user, task, changes, if_match)
    )


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


async def check_transition_to(
    session: AsyncSession, user: User, task: Task, target: TaskStatus, if_match: IfMatch
) -> Change:
    """An explicit transition: asking for the current status is itself invalid (409)."""
    return await check_change(
        session, user, task, {"status": target}, if_match, explicit_status=True
    )


async def transition_task(
    session: AsyncSession, user: User, task: Task, target: TaskStatus, if_match: IfMatch
) -> Task:
    checked = await check_transition_to(session, user, task, target, if_match)
    return await apply_change(session, user, checked)


async def assign_task(
    session: AsyncSession, user: User, task: Task, assignee_id: int | None, if_match: IfMatch
) -> Task:
    if task.project_id is None:  # the owner's alone, even to assign it to its assignee again
        access.check_manage(task, user, None, "assign it")
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


async def delete_tasks(session: AsyncSession, which: Any, *, any_files: bool = True) -> None:
    """Delete the tasks `which` selects, their files' objects through the durable job queue.
    (Whose stats go stale is the caller's to say.)"""
    if any_files:
        await files.release_files(session, which)
    await session.execute(delete(Task).where(which))


async def member_or_404(session: AsyncSession, user: User, project_id: int) -> None:
    """404 `project_not_found` unless the user is a member of the project."""
    if not await repository.is_member(session, user.id, project_id):
        raise ProjectNotFound()
