"""Notifications: written in the same transaction as the change that causes them, or by the
periodic due-soon job."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.errors import NotFound
from taskapi.models import Notification, NotificationKind, Project, ProjectRole, Task, User
from taskapi.notifications.schemas import NotificationListParams, NotificationOut, NotificationPage


class NotificationNotFound(NotFound):
    code, title = "notification_not_found", "Notification not found"
    default_detail = "No notification with this id exists for you."


def _short(title: str) -> str:
    return title if len(title) <= 80 else title[:77] + "..."


async def notify(
    session: AsyncSession, rows: Iterable[tuple[int, NotificationKind, int | None, str]]
) -> None:
    """Insert many notifications with one statement: (user_id, kind, task_id, message)."""
    values = [
        {"user_id": user_id, "kind": kind, "task_id": task_id, "message": message}
        for user_id, kind, task_id, message in rows
    ]
    if values:
        await session.execute(insert(Notification), values)


async def task_assigned(session: AsyncSession, actor: User, tasks: Iterable[Task]) -> None:
    await notify(
        session,
        (
            (
                task.assignee_id,
                NotificationKind.TASK_ASSIGNED,
                task.id,
                f"{actor.username} assigned you the task “{_short(task.title)}”.",
            )
            for task in tasks
            if task.assignee_id is not None and task.assignee_id != actor.id
        ),
    )


async def task_updated(session: AsyncSession, actor: User, tasks: Iterable[Task]) -> None:
    """Tell assignees when someone else changes a task assigned to them: the owner of a
    personal task, any editor of a project task."""
    await notify(
        session,
        (
            (
                task.assignee_id,
                NotificationKind.TASK_UPDATED,
                task.id,
                f"{actor.username} updated the task “{_short(task.title)}”.",
            )
            for task in tasks
            if task.assignee_id is not None
            and (task.owner_id == actor.id or task.project_id is not None)
            and task.assignee_id != actor.id
        ),
    )


async def project_shared(
    session: AsyncSession, actor: User, project: Project, user_id: int, role: ProjectRole
) -> None:
    """Tell a new member who added them to which project, and as what."""
    if user_id == actor.id:
        return
    await session.execute(
        insert(Notification),
        [
            {
                "user_id": user_id,
                "kind": NotificationKind.PROJECT_SHARED,
                "project_id": project.id,
                "message": f"{actor.username} shared the project “{_short(project.name)}” "
                f"with you as {role.value}.",
            }
        ],
    )


async def _shown(
    session: AsyncSession, notifications: Sequence[Notification]
) -> list[NotificationOut]:
    """As the API shows them: a task in the trash is no link (its `task_id` is null) until it is
    restored."""
    task_ids = {n.task_id for n in notifications if n.task_id is not None}
    trashed: set[int] = set()
    if task_ids:
        trashed = set(
            (
                await session.scalars(
                    select(Task.id).where(Task.id.in_(task_ids), Task.deleted_at.is_not(None))
                )
            ).all()
        )
    shown = [NotificationOut.model_validate(n) for n in notifications]
    for item in shown:
        if item.task_id in trashed:
            item.task_id = None
    return shown


async def list_notifications(
    session: AsyncSession, user: User, params: NotificationListParams
) -> NotificationPage:
    query = select(Notification).where(Notification.user_id == user.id)
    if params.unread is not None:
        query = query.where(
            Notification.read_at.is_(None) if params.unread else Notification.read_at.is_not(None)
        )
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    page = (
        await session.scalars(
            query.order_by(Notification.created_at.desc(), Notification.id.desc())
            .limit(params.limit)
            .offset(params.offset)
        )
    ).all()
    return NotificationPage(
        items=await _shown(session, page),
        total=int(total or 0),
        limit=params.limit,
        offset=params.offset,
        next_cursor=None,
    )


async def mark_read(session: AsyncSession, user: User, notification_id: int) -> NotificationOut:
    notification: Notification | None = await session.scalar(
        update(Notification)
        .where(Notification.id == notification_id, Notification.user_id == user.id)
        .values(read_at=func.coalesce(Notification.read_at, datetime.now(UTC)))
        .returning(Notification)
    )
    if notification is None:
        raise NotificationNotFound()
    (shown,) = await _shown(session, [notification])
    return shown


async def mark_all_read(session: AsyncSession, user: User) -> None:
    await session.execute(
        update(Notification)
        .where(Notification.user_id == user.id, Notification.read_at.is_(None))
        .values(read_at=datetime.now(UTC))
    )


# Who is told, and what "due soon" means, come from the task rules' SQL functions (migration
# 0007, rendered from taskapi.tasks.visibility and taskapi.tasks.overdue): everyone who sees the
# task, when it is not overdue today but will be the day after tomorrow (due today or tomorrow,
# still open).
_DUE_SOON_SQL = text(
    """
    INSERT INTO notifications (user_id, kind, task_id, message)
    SELECT r.user_id, 'task_due_soon'::notification_kind, t.id,
           'The task “' || left(t.title, 80) || '” is due on ' || t.due_date || '.'
    FROM tasks t
    CROSS JOIN LATERAL task_viewers(t) AS r(user_id)
    WHERE NOT task_is_overdue(t, :today)
      AND task_is_overdue(t, :day_after_tomorrow)
      AND NOT EXISTS (
        SELECT 1 FROM notifications n
        WHERE n.task_id = t.id AND n.user_id = r.user_id
          AND n.kind = 'task_due_soon' AND n.created_at > :since
      )
    """
)


async def notify_due_soon(session: AsyncSession, now: datetime) -> None:
    """Tell owners and assignees about open tasks due within a day, once per due date."""
    today = now.date()
    await session.execute(
        _DUE_SOON_SQL,
        {
            "today": today,
            "day_after_tomorrow": today + timedelta(days=2),
            "since": now - timedelta(days=3),
        },
    )
