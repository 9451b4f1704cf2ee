"""The rules of projects: membership, the last admin, what a project's deletion takes with it.

Services take the session first and never commit. Who may call them is decided before they run,
by the role dependencies of taskapi.projects.dependencies; a write gets its project locked
(`SELECT ... FOR UPDATE`), so membership changes to one project happen one at a time and the
"at least one admin" check below always reads the committed state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, or_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events import service as events
from taskapi.events.schemas import (
    PROJECT_DELETED,
    PROJECT_MEMBER_ADDED,
    PROJECT_MEMBER_REMOVED,
    PROJECT_MEMBER_ROLE_CHANGED,
    PROJECT_UPDATED,
    TASK_UPDATED,
    Audience,
)
from taskapi.kit.pagination import CursorCodec, InvalidCursor, query_fingerprint
from taskapi.kit.project_errors import LastAdmin, MemberNotFound, ProjectNameTaken, UserNotFound
from taskapi.models import Project, ProjectMember, ProjectRole, Task, User
from taskapi.notifications import service as notifications
from taskapi.projects import repository
from taskapi.projects.schemas import (
    MemberOut,
    ProjectCreate,
    ProjectListParams,
    ProjectOut,
    ProjectPage,
    ProjectPatch,
)
from taskapi.tasks import audit, stat_counts, trash
from taskapi.tasks import repository as tasks_repository
from taskapi.tasks.conditional import IfMatch
from taskapi.tasks.stats_cache import mark_stats_stale


@dataclass(frozen=True, slots=True)
class ProjectAccess:
    """A project as seen by the caller: loaded (and locked, for a write) with their role."""

    project: Project
    role: ProjectRole
    user: User

    def out(self) -> ProjectOut:
        return ProjectOut.of(self.project, self.role)


def _now() -> datetime:
    return datetime.now(UTC)


async def _flush_named(session: AsyncSession) -> None:
    """Flush, turning a clash on the per-owner name index (only that one) into a 409."""
    try:
        await session.flush()
    except IntegrityError as error:
        if repository.violates_unique_name(error):
            raise ProjectNameTaken(
                "Its owner already has a project with this name (names ignore case)."
            ) from error
        raise


# --- projects ------------------------------------------------------------------------------------


def _fingerprint(params: ProjectListParams) -> str:
    return query_fingerprint({"list": "projects", "archived": params.archived, "order": "-id"})


async def list_projects(
    session: AsyncSession, user: User, params: ProjectListParams, cursors: CursorCodec
) -> ProjectPage:
    """The caller's projects, newest first: keyset pagination on the id."""
    fingerprint = _fingerprint(params)
    before_id = None
    if params.cursor is not None:
        values = cursors.decode(params.cursor, fingerprint)
        if len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool):
            raise InvalidCursor()
        before_id = values[0]
    offset = params.offset or 0
    rows, total = await repository.list_page(
        session, user.id, params.archived, params.limit, offset, before_id
    )
    page = rows[: params.limit]
    next_cursor = None
    if len(rows) > params.limit and page:
        next_cursor = cursors.encode([page[-1][0].id], fingerprint)
    return ProjectPage(
        items=[ProjectOut.of(project, role) for project, role in page],
        total=total,
        limit=params.limit,
        offset=None if params.cursor is not None else offset,
        next_cursor=next_cursor,
    )


async def create_project(session: AsyncSession, user: User, data: ProjectCreate) -> ProjectAccess:
    project = Project(
        owner_id=user.id, name=data.name, description=data.description, member_count=1
    )
    session.add(project)
    await _flush_named(session)
    session.add(ProjectMember(project_id=project.id, user_id=user.id, role=ProjectRole.ADMIN))
    await session.flush()
    return ProjectAccess(project, ProjectRole.ADMIN, user)


async def update_project(
    session: AsyncSession, access: ProjectAccess, data: ProjectPatch, if_match: IfMatch
) -> ProjectAccess:
    """Only what differs is written; a change bumps `version` and `updated_at`."""
    project = access.project
    if_match.check(project.version)
    changes = {k: v for k, v in data.changes().items() if getattr(project, k) != v}
    if changes:
        before = {name: getattr(project, name) for name in changes}
        for name, value in changes.items():
            setattr(project, name, value)
        project.updated_at = _now()
        await _flush_named(session)  # bumps `version` (version_id_col)
        await _record(
            session, access.user.id, PROJECT_UPDATED, project.id, events.changes_of(before, changes)
        )
    return access


async def _record(
    session: AsyncSession,
    actor_id: int | None,
    type_: str,
    project_id: int,
    changes: dict[str, list[object]],
    also: tuple[int, ...] = (),
) -> None:
    """A project's event, for its members (as they are now) and `also`."""
    await events.record(
        session,
        type=type_,
        actor_id=actor_id,
        audience=Audience(users=also, members_of=project_id),
        project_id=project_id,
        changes=changes,
    )


async def delete_project(session: AsyncSession, access: ProjectAccess, if_match: IfMatch) -> None:
    if_match.check(access.project.version)
    await _delete_project(session, access.project.id, access.user.id)


async def _delete_project(session: AsyncSession, project_id: int, actor_id: int) -> None:
    """The project's tasks go to the trash, as their owners' personal tasks there (restorable by
    them; their files stay until the trash is purged), then its stats rows and the project (its
    memberships go with it). Every member's stats change."""
    mark_stats_stale(session, *await repository.member_ids(session, project_id))
    # Its members are told (each task's deletion, then the project's) while they still are.
    tasks = await audit.lock_snapshot(
        session, and_(Task.project_id == project_id, Task.deleted_at.is_(None))
    )
    await audit.tasks_deleted(session, actor_id, tasks)
    await _record(session, actor_id, PROJECT_DELETED, project_id, {})
    await trash.trash_project_tasks(session, actor_id, project_id)
    await stat_counts.forget(session, "project_id", project_id)  # after the tasks wrote theirs
    await repository.delete_project(session, project_id)


# --- members -------------------------------------------------------------------------------------


async def list_members(session: AsyncSession, access: ProjectAccess) -> list[MemberOut]:
    rows = await repository.members(session, access.project.id)
    return [MemberOut.model_validate(row) for row in rows]


async def _check_admin_remains(session: AsyncSession, project_id: int, losing: int) -> None:
    """Refuse a change that takes `losing`'s admin role away if they are the last admin. Read
    under the project's lock: concurrent changes to the project have all committed or wait."""
    admins = await repository.admin_ids(session, project_id)
    if admins == [losing]:
        raise LastAdmin("A project must keep at least one admin: promote another admin first.")


async def put_member(
    session: AsyncSession, access: ProjectAccess, user_id: int, role: ProjectRole
) -> MemberOut:
    """Add `user_id` with `role` (they are told: `project_shared`), or change their role."""
    project = access.project
    target = await repository.user(session, user_id)
    if target is None:
        raise UserNotFound()
    member = await repository.member(session, project.id, user_id)
    if member is None:
        member = ProjectMember(project_id=project.id, user_id=user_id, role=role)
        session.add(member)
        project.member_count += 1
        project.updated_at = _now()
        await session.flush()
        mark_stats_stale(session, user_id)  # the project's tasks now count in their stats
        await notifications.project_shared(session, access.user, project, user_id, role)
        await _record(
            session,
            access.user.id,
            PROJECT_MEMBER_ADDED,
            project.id,
            {"user_id": [None, user_id], "role": [None, role.value]},
        )
    elif member.role != role:
        if member.role == ProjectRole.ADMIN:
            await _check_admin_remains(session, project.id, user_id)
        old_role = member.role
        member.role = role
        project.updated_at = _now()
        await session.flush()
        await _record(
            session,
            access.user.id,
            PROJECT_MEMBER_ROLE_CHANGED,
            project.id,
            {"user_id": [user_id, user_id], "role": [old_role.value, role.value]},
        )
    return MemberOut(
        user_id=user_id, username=target.username, role=member.role, added_at=member.added_at
    )


async def remove_member(session: AsyncSession, access: ProjectAccess, user_id: int) -> None:
    """Remove a member (or, with their own id, leave). The project's tasks assigned to them lose
    their assignee; from the commit on they see none of the project (404)."""
    member = await repository.member(session, access.project.id, user_id)
    if member is None:
        raise MemberNotFound()
    await _remove(session, access.project, member, access.user.id)


async def _remove(
    session: AsyncSession, project: Project, member: ProjectMember, actor_id: int
) -> None:
    if member.role == ProjectRole.ADMIN:
        await _check_admin_remains(session, project.id, member.user_id)
    leaver = member.user_id
    # Their tombstones first: this locks the project's tasks (in id order, the project being
    # locked already: the lock order, taskapi.tasks.access), so a change under way that named
    # them commits before, and none after it can (they are no longer a member by then). No task
    # can join the project meanwhile (that needs the project's lock), so the statements below
    # lock no task this one did not.
    await events.record_project_access_lost(session, actor_id, project.id, leaver)
    unassigned = await tasks_repository.unassign_in_project(session, project.id, leaver)
    await repository.remove_member(session, project.id, leaver)
    project.member_count -= 1
    project.updated_at = _now()
    await session.flush()
    mark_stats_stale(session, leaver)
    await _tasks_updated(session, actor_id, project.id, unassigned, "assignee_id", leaver, None)
    await _record(
        session,
        actor_id,
        PROJECT_MEMBER_REMOVED,
        project.id,
        {"user_id": [leaver, None], "role": [member.role.value, None]},
        also=(leaver,),
    )


async def _tasks_updated(
    session: AsyncSession,
    actor_id: int,
    project_id: int,
    task_ids: list[int],
    field: str,
    old: int | None,
    new: int | None,
) -> None:
    """A `task.updated` for each of the project's tasks one statement changed, for its members."""
    if not task_ids:
        return
    tasks = await audit.lock_snapshot(session, Task.id.in_(task_ids))
    await events.record_many(
        session,
        [
            events.spec(
                TASK_UPDATED,
                actor_id,
                Audience(members_of=project_id),
                task=audit.snapshot(t),
                changes={field: [old, new]},
            )
            for t in tasks
        ],
    )


# --- account deletion ----------------------------------------------------------------------------


async def leave_all_projects(session: AsyncSession, user: User) -> None:
    """Before `user`'s account is deleted, for each project they are in (all locked first, then
    every task the deletion changes): the only member -> the project is deleted as by DELETE
    /projects/{id}; the last admin with other members -> 409 `last_admin`; otherwise their tasks
    there pass to the earliest-added remaining admin and they leave. Tasks they own in a project
    they already left pass to its earliest admin too (the account's own tasks are deleted with
    it; a project's are not)."""
    projects = await repository.lock_projects_of(session, user.id)
    # The tasks in one statement, in id order (the lock order, taskapi.tasks.access): those of
    # these projects and the account's personal ones (its own, and others' assigned to it).
    # Locked project by project as the loop below goes, a bulk change or a batch holding tasks
    # of two of them (locked in id order across projects) could hold one the deletion waited
    # for while waiting for one it held. No task can join these projects meanwhile.
    await tasks_repository.lock_in_order(
        session,
        or_(
            Task.project_id.in_([project.id for project in projects]),
            and_(
                Task.project_id.is_(None),
                or_(Task.owner_id == user.id, Task.assignee_id == user.id),
            ),
        ),
    )
    for project in projects:
        member = await repository.member(session, project.id, user.id)
        others = [m for m in await repository.member_ids(session, project.id) if m != user.id]
        if member is not None and not others:
            await _delete_project(session, project.id, user.id)
            continue
        admins = [a for a in await repository.admin_ids(session, project.id) if a != user.id]
        if not admins:
            raise LastAdmin(
                f"You are the last admin of the project “{project.name}” (id {project.id}): "
                "promote another admin first."
            )
        moved = await tasks_repository.reassign_owner_in_project(
            session, project.id, user.id, admins[0]
        )
        await _tasks_updated(session, user.id, project.id, moved, "owner_id", user.id, admins[0])
        if member is not None:
            await _remove(session, project, member, user.id)
