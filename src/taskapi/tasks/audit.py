"""The events of task changes (taskapi.events records them): what changed, the task after the
change, and who is told, all derived from the one visibility rule (taskapi.tasks.visibility).

Who is told: whoever sees the task after the change; whoever saw it before and no longer does
gets a `task.access_lost` tombstone instead (the task's id and version only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events import service as events
from taskapi.events.schemas import (
    TASK_ACCESS_LOST,
    TASK_CREATED,
    TASK_DELETED,
    TASK_UPDATED,
    Audience,
    EventSpec,
)
from taskapi.models import Task, User
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import TaskOut
from taskapi.tasks.visibility import GRANTS, PersonalGrant

# The columns that decide who sees a task.
AUDIENCE_COLUMNS = ("owner_id", "assignee_id", "project_id")


def audience_of(values: Mapping[str, Any]) -> Audience:
    """Who sees a task with these column values, grant by grant (the members of a project are
    resolved by the INSERT: no member list goes through Python)."""
    users: list[int | None] = []
    members_of = None
    for grant in GRANTS:
        if isinstance(grant, PersonalGrant):
            if values["project_id"] is None:
                users.append(values[grant.column])
        else:
            members_of = values["project_id"]
    return Audience(users=users, members_of=members_of)


def snapshot(task: Task) -> dict[str, Any]:
    """The task as GET /tasks/{id} shows it, JSON-ready."""
    return TaskOut.of(task, today()).model_dump(mode="json")


def before_values(task: Task, fields: Iterable[str] = ()) -> dict[str, Any]:
    """What an event about to be recorded needs of the task before it changes."""
    return {name: getattr(task, name) for name in (*AUDIENCE_COLUMNS, *fields)}


def _lost(actor: User, task: Task, before: Mapping[str, Any]) -> EventSpec | None:
    after = {name: getattr(task, name) for name in AUDIENCE_COLUMNS}
    if all(before[name] == after[name] for name in AUDIENCE_COLUMNS):
        return None
    was, now = audience_of(before), audience_of(after)
    return events.spec(
        TASK_ACCESS_LOST,
        actor.id,
        Audience(
            users=was.users,
            members_of=was.members_of,
            minus_users=now.users,
            minus_members_of=now.members_of,
        ),
        task={"id": task.id, "version": task.version},
        project_id=before["project_id"],
    )


def change_specs(
    actor: User, task: Task, before: Mapping[str, Any], planned: Mapping[str, Any]
) -> list[EventSpec]:
    """`task.updated` (with `changes` {field: [old, new]}) for who sees the task now, and a
    `task.access_lost` for those who saw it before and no longer do."""
    specs = [
        events.spec(
            TASK_UPDATED,
            actor.id,
            audience_of(task.__dict__),
            task=snapshot(task),
            changes=events.changes_of(before, planned),
        )
    ]
    lost = _lost(actor, task, before)
    if lost is not None:
        specs.append(lost)
    return specs


async def tasks_created(session: AsyncSession, actor: User, tasks: Sequence[Task]) -> None:
    """A `task.created` for each new task, all in one INSERT."""
    await events.record_many(
        session,
        [
            events.spec(TASK_CREATED, actor.id, audience_of(t.__dict__), task=snapshot(t))
            for t in tasks
        ],
    )


async def task_changed(
    session: AsyncSession,
    actor: User,
    task: Task,
    before: Mapping[str, Any],
    planned: Mapping[str, Any],
) -> None:
    await events.record_many(session, change_specs(actor, task, before, planned))


async def tasks_changed(
    session: AsyncSession,
    actor: User,
    changed: Sequence[tuple[Task, Mapping[str, Any], Mapping[str, Any]]],
) -> None:
    """Many tasks changed at once (bulk): every event in one INSERT."""
    specs = [
        s for task, before, planned in changed for s in change_specs(actor, task, before, planned)
    ]
    await events.record_many(session, specs)


async def task_deleted(session: AsyncSession, actor: User, task: Task) -> None:
    """Before the row goes: the task as it was, for who saw it."""
    await events.record(
        session,
        type=TASK_DELETED,
        actor_id=actor.id,
        audience=audience_of(task.__dict__),
        task=snapshot(task),
    )


async def tasks_deleted(session: AsyncSession, actor_id: int | None, tasks: Sequence[Task]) -> None:
    await events.record_many(
        session,
        [
            events.spec(TASK_DELETED, actor_id, audience_of(t.__dict__), task=snapshot(t))
            for t in tasks
        ],
    )


async def task_touched(
    session: AsyncSession,
    actor: User | None,
    type: str,
    task: Task,
    changes: dict[str, list[Any]],
) -> None:
    """Something of the task's other than its columns changed (a file added or deleted)."""
    await events.record(
        session,
        type=type,
        actor_id=actor.id if actor else None,
        audience=audience_of(task.__dict__),
        task=snapshot(task),
        changes=changes,
    )


async def lock_snapshot(session: AsyncSession, which: Any) -> list[Task]:
    """The tasks `which` selects, locked and read afresh (their last version: a tombstone
    recorded from them is newer than any change under way when it was asked)."""
    rows = await session.scalars(
        select(Task)
        .where(which)
        .order_by(Task.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def before_account_deletion(session: AsyncSession, user: User) -> None:
    """An account goes with its personal tasks (a `task.deleted` for whoever saw them), and the
    personal tasks of others assigned to it lose their assignee: done here, a new version each
    with its `task.updated`, rather than silently by the foreign key."""
    owned = await lock_snapshot(session, and_(Task.owner_id == user.id, Task.project_id.is_(None)))
    await tasks_deleted(session, user.id, owned)
    assigned = await lock_snapshot(
        session,
        and_(Task.assignee_id == user.id, Task.owner_id != user.id, Task.project_id.is_(None)),
    )
    if not assigned:
        return
    updated = await session.scalars(
        update(Task)
        .where(Task.id.in_([t.id for t in assigned]))
        .values(assignee_id=None, version=Task.version + 1, updated_at=func.now())
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    await events.record_many(
        session,
        [
            events.spec(
                TASK_UPDATED,
                user.id,
                Audience(users=[t.owner_id]),
                task=snapshot(t),
                changes={"assignee_id": [user.id, None]},
            )
            for t in updated.all()
        ],
    )
