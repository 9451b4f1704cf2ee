"""The caller's own account: profile changes, password change, deletion; finding users."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.auth import repository as auth_repository
from taskapi.auth.principal_cache import mark_principal_stale
from taskapi.auth.service import Principal, raise_for_duplicate, utcnow
from taskapi.kit.errors import EmailTaken, InvalidCurrentPassword
from taskapi.kit.security import PasswordHashing
from taskapi.models import Task, User
from taskapi.projects import service as projects
from taskapi.tasks import audit, stat_counts
from taskapi.tasks import files as task_files
from taskapi.tasks.stats_cache import mark_stats_stale
from taskapi.users.schemas import UserSearchPage, UserSummary, UserUpdate


async def update_me(
    session: AsyncSession, hashing: PasswordHashing, principal: Principal, data: UserUpdate
) -> User:
    user = principal.user
    changes = data.model_fields_set
    if data.password is not None:
        assert data.current_password is not None  # guaranteed by UserUpdate
        if not await hashing.verify(user.password_hash, data.current_password):
            raise InvalidCurrentPassword()
        user.password_hash = await hashing.hash(data.password)
        # A new password ends every other login; the one making the change stays signed in.
        await auth_repository.revoke_user_families(
            session, user.id, utcnow(), keep=principal.session_id
        )
    if "full_name" in changes:
        user.full_name = data.full_name or None
    if data.email is not None and data.email.lower() != user.email.lower():
        if await auth_repository.email_exists(session, data.email, except_user_id=user.id):
            raise EmailTaken()
        user.email = data.email
    elif data.email is not None:
        user.email = data.email  # a change of case only
    if session.is_modified(user):
        user.updated_at = func.now()
        mark_principal_stale(session, user.id)
        try:
            await session.flush()
        except IntegrityError as error:
            raise_for_duplicate(error)
    return user


async def delete_me(session: AsyncSession, user: User) -> None:
    """Delete the account; its tasks and logins go with it (ON DELETE CASCADE), and tasks it was
    assigned lose their assignee (ON DELETE SET NULL). Its projects first: one it is alone in is
    deleted, in any other its tasks pass to an admin (409 `last_admin` if it is the last one)."""
    await projects.leave_all_projects(session, user)
    await audit.before_account_deletion(session, user)
    # Assignees of the tasks that disappear with the account see their stats change.
    assignees = await session.scalars(
        select(Task.assignee_id).where(Task.owner_id == user.id, Task.assignee_id.is_not(None))
    )
    mark_stats_stale(session, user.id, *set(assignees))
    # The account's files go with its tasks; their objects are deleted by a durable job.
    await task_files.release_files(session, Task.owner_id == user.id)
    await session.execute(delete(User).where(User.id == user.id))
    await stat_counts.forget(session, "user_id", user.id)
    mark_principal_stale(session, user.id)


async def search_by_username_prefix(
    session: AsyncSession, prefix: str, *, limit: int, offset: int
) -> UserSearchPage:
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matching = select(User).where(func.lower(User.username).like(escaped + "%", escape="\\"))
    users = (
        await session.scalars(
            matching.order_by(func.lower(User.username), User.id).limit(limit).offset(offset)
        )
    ).all()
    total = await session.scalar(
        select(func.count()).select_from(matching.with_only_columns(User.id).subquery())
    )
    return UserSearchPage(
        items=[UserSummary.model_validate(u) for u in users],
        total=int(total or 0),
        limit=limit,
        offset=offset,
    )
