"""The trash: `DELETE /tasks/{id}` moves a task there, `POST /tasks/{id}/restore` brings it
back as it was (files included: their rows and objects never leave), `DELETE /tasks/{id}/force`
and the purge job delete for good (objects through the durable job queue).

A trashed task keeps its row, with `deleted_at` set: the visibility rule leaves it out for
everyone (taskapi.tasks.visibility `live`), so lists, search, gets, files and the due-soon job
never see it, and the stats triggers take its counts away when it goes and give them back when
it returns (`deleted_at` is one of the columns they watch). Who may restore a task is who could
delete it: the owner of a personal task, an editor or admin of a project task's project.
A deleted project's tasks come to the trash as their owners' personal tasks (taskapi.projects).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events import service as events
from taskapi.events.schemas import TASK_PURGED, TASK_RESTORED
from taskapi.kit.errors import TaskNotFound
from taskapi.kit.pagination import CursorCodec, InvalidCursor, query_fingerprint
from taskapi.models import ProjectMember, ProjectRole, Task, User
from taskapi.tasks import access, audit, repository, service
from taskapi.tasks.conditional import IfMatch
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import TaskOut
from taskapi.tasks.trash_schemas import TrashedTaskOut, TrashListParams, TrashPage


def _restorable_by(user_id: int) -> ColumnElement[bool]:
    """Trashed tasks `user_id` may restore (and so list in the trash, and force-delete there)."""
    editable_projects = select(ProjectMember.project_id).where(
        ProjectMember.user_id == user_id,
        ProjectMember.role.in_([ProjectRole.EDITOR, ProjectRole.ADMIN]),
    )
    return and_(
        Task.deleted_at.is_not(None),
        or_(
            and_(Task.project_id.is_(None), Task.owner_id == user_id),
            Task.project_id.in_(editable_projects),
        ),
    )


def purge_at(deleted_at: datetime, retention_days: int) -> datetime:
    return deleted_at + timedelta(days=retention_days)


async def check_trash(session: AsyncSession, user: User, task: Task, if_match: IfMatch) -> None:
    """What can refuse DELETE /tasks/{id} (the owner of a personal task, an editor or more of a
    project's; If-Match), without writing."""
    members = await access.memberships(session, user.id, [task.project_id])
    access.check_manage(task, user, members.get(task.project_id or 0), "delete it")
    if_match.check(task.version)


async def apply_trash(session: AsyncSession, user: User, task: Task) -> None:
    """Put a checked task into the trash (refuses nothing)."""
    await service.stats_change(session, [task])
    task.deleted_at = datetime.now(UTC)
    task.deleted_by = user.id
    await session.flush()  # bumps the version: a trashed copy is not the live one
    await audit.task_deleted(session, user, task)


async def trash_task(session: AsyncSession, user: User, task: Task, if_match: IfMatch) -> None:
    """DELETE /tasks/{id}: into the trash."""
    await check_trash(session, user, task, if_match)
    await apply_trash(session, user, task)


async def _trashed_for_update(session: AsyncSession, user: User, task_id: int) -> Task | None:
    """The task, locked, if it is in the caller's trash."""
    task: Task | None = await session.scalar(
        select(Task).where(Task.id == task_id, _restorable_by(user.id)).with_for_update()
    )
    return task


async def restore_task(session: AsyncSession, user: User, task_id: int) -> Task:
    """POST /tasks/{id}/restore: back as it was, files included. A project task whose assignee
    has left the project meanwhile comes back unassigned (an assignee must be a member)."""
    task = await _trashed_for_update(session, user, task_id)
    if task is None:
        raise TaskNotFound("No task with this id is in your trash.")
    members = await access.memberships(session, user.id, [task.project_id])
    access.check_edit(task, members.get(task.project_id or 0))  # an archived project: 409
    if await access.non_members(session, [(task.project_id, task.assignee_id)]):
        task.assignee_id = None
    task.deleted_at = None
    task.deleted_by = None
    await session.flush()
    await service.stats_change(session, [task])
    await audit.task_touched(session, user, TASK_RESTORED, task, changes={})
    return task


async def force_delete_task(session: AsyncSession, user: User, task_id: int) -> None:
    """DELETE /tasks/{id}/force: gone for good at once, from the trash or not; its stored
    objects are deleted by the durable job queue."""
    task = await _trashed_for_update(session, user, task_id)
    if task is None:
        task = await repository.get_visible(session, user.id, task_id, for_update=True)
        if task is None:
            raise TaskNotFound()
        members = await access.memberships(session, user.id, [task.project_id])
        access.check_manage(task, user, members.get(task.project_id or 0), "delete it")
        await service.stats_change(session, [task])
    # Gone for good: who saw it is told, without the task (the contract's `task.purged`).
    await events.record(
        session,
        type=TASK_PURGED,
        actor_id=user.id,
        audience=audit.audience_of(task.__dict__),
        task_id=task.id,
        project_id=task.project_id,
        task_version=task.version,  # orders it among the task's events (the feed)
    )
    await service.delete_tasks(session, Task.id == task.id, any_files=bool(task.attachment_count))


async def list_trash(
    session: AsyncSession,
    user: User,
    params: TrashListParams,
    cursors: CursorCodec,
    retention_days: int,
) -> TrashPage:
    """GET /trash: what the caller may restore, most recently deleted first (keyset on
    (deleted_at, id))."""
    fingerprint = query_fingerprint({"list": "trash", "order": "-deleted_at,-id"})
    query = select(Task).where(_restorable_by(user.id))
    if params.cursor is not None:
        values = cursors.decode(params.cursor, fingerprint)
        try:
            after_deleted, after_id = datetime.fromisoformat(values[0]), int(values[1])
        except (IndexError, TypeError, ValueError) as exc:
            raise InvalidCursor() from exc
        query = query.where(
            or_(
                Task.deleted_at < after_deleted,
                and_(Task.deleted_at == after_deleted, Task.id < after_id),
            )
        )
    offset = params.offset or 0
    rows = (
        await session.scalars(
            query.order_by(Task.deleted_at.desc(), Task.id.desc())
            .limit(params.limit + 1)
            .offset(offset)
        )
    ).all()
    total = await session.scalar(select(func.count()).where(_restorable_by(user.id)))
    page = rows[: params.limit]
    next_cursor = None
    if len(rows) > params.limit and page:
        last = page[-1]
        assert last.deleted_at is not None
        next_cursor = cursors.encode([last.deleted_at.isoformat(), last.id], fingerprint)
    on = today()
    items = []
    for task in page:
        assert task.deleted_at is not None
        fields: dict[str, Any] = TaskOut.of(task, on).model_dump()
        items.append(
            TrashedTaskOut(
                **fields,
                deleted_at=task.deleted_at,
                purge_at=purge_at(task.deleted_at, retention_days),
            )
        )
    return TrashPage(
        items=items,
        total=int(total or 0),
        limit=params.limit,
        offset=None if params.cursor is not None else offset,
        next_cursor=next_cursor,
    )


async def trash_project_tasks(session: AsyncSession, actor_id: int, project_id: int) -> None:
    """A project being deleted: its live tasks go to the trash, and every task of it (trashed
    before or now) becomes its owner's personal task there, restorable by that owner."""
    now = datetime.now(UTC)
    await session.execute(
        update(Task)
        .where(Task.project_id == project_id)
        .values(
            deleted_at=func.coalesce(Task.deleted_at, now),
            deleted_by=func.coalesce(Task.deleted_by, actor_id),
            project_id=None,
            version=Task.version + 1,
        )
        .execution_options(synchronize_session=False)
    )


async def purge_expired(session: AsyncSession, retention_days: int, *, limit: int) -> int:
    """Delete for good up to `limit` tasks trashed longer than `retention_days` ago (their
    objects through the durable job queue); how many went."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    ids = list(
        (
            await session.scalars(
                select(Task.id)
                .where(Task.deleted_at.is_not(None), Task.deleted_at < cutoff)
                .order_by(Task.deleted_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
    if ids:
        await service.delete_tasks(session, Task.id.in_(ids))
    return len(ids)
