"""What a user who sees a task may do with it: the one definition of the task permissions.

* a personal task: its owner and its assignee read and edit it (fields, tags, status, files);
  only its owner manages it (delete, assign, move into a project): 403 `forbidden`;
* a project task: every member reads it; an editor or admin edits and manages it; a viewer
  gets 403 `insufficient_role`; an archived project's tasks are read-only: 409
  `project_archived`.

Who sees a task at all is taskapi.tasks.visibility; a task the caller cannot see is a 404
before any of this is asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.errors import Forbidden, TaskNotFound
from taskapi.kit.project_errors import (
    AssigneeNotMember,
    InsufficientRole,
    ProjectArchived,
    ProjectNotFound,
)
from taskapi.models import Project, ProjectMember, ProjectRole, Task, User

# The least role that may change a project's tasks.
EDIT_ROLE: Final = ProjectRole.EDITOR
_ROLE_RANK: Final = {role: rank for rank, role in enumerate(ProjectRole)}


def role_at_least(role: ProjectRole | None, required: ProjectRole) -> bool:
    """Roles are ordered viewer < editor < admin; None (not a member) is below all of them."""
    return role is not None and _ROLE_RANK[role] >= _ROLE_RANK[required]


@dataclass(frozen=True, slots=True)
class Membership:
    """The caller's place in one project."""

    project_id: int
    role: ProjectRole
    archived: bool


# The lock order. Every transaction that locks rows of both takes them in this order, so no two
# ever wait for each other crosswise (PostgreSQL aborts one of them: 40P01, a 500):
#
#   1. projects, by ascending id: FOR UPDATE by a request that changes a project or its members
#      (taskapi.projects.dependencies, its first statement; an account's deletion locks all of
#      its projects at once), FOR KEY SHARE by a write that puts a task into one (`hold_target`:
#      creates, moves, bulk changes, batches; the foreign key check takes the same lock);
#   2. tasks, by ascending id, FOR UPDATE.
#
# A project is never locked after a task, even one the task is not in yet. A member's removal
# (or the project's deletion) holds the project, then locks every task of it; under READ
# COMMITTED a row that matched when that statement began is locked even if it has left the
# project since (PostgreSQL locks the newest version, then finds it no longer matches). So a
# move that locked such a task first and then waited for the project, to put it back, was
# waited for by the removal it was waiting for.


async def hold_target(session: AsyncSession, project_id: int | None) -> None:
    """Before a task is put into a project (created there or moved there): hold the project row
    (FOR KEY SHARE, what the foreign key check would take) so a deletion or a membership change
    running now finishes first, and the membership read next sees its outcome: a project
    deleted meanwhile is then a 404, never a foreign-key error. Taken before the task is locked
    (the lock order above), once per transaction: a project it holds already is not asked for
    again (a PATCH's move held by its dependency, each move of a batch held at its start)."""
    if project_id is None or project_id in _held(session):
        return
    await session.execute(
        select(Project.id)
        .where(Project.id == project_id)
        .with_for_update(read=True, key_share=True)
    )
    _held(session).add(project_id)  # looked up again: the statement may have begun the transaction


_HELD: Final = "taskapi.projects_held"


def _held(session: AsyncSession) -> set[int]:
    """The projects the session's transaction holds. Kept with the transaction they were held
    in (the innermost: rolling back to a savepoint releases what was locked after it), so a
    later transaction of the same session starts with none."""
    sync = session.sync_session
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    kept: tuple[object, set[int]] | None = session.info.get(_HELD)
    if kept is None or kept[0] is not transaction:
        kept = session.info[_HELD] = (transaction, set())
    return kept[1]


async def memberships(
    session: AsyncSession, user_id: int, project_ids: Iterable[int | None]
) -> dict[int, Membership]:
    """The caller's role in each of `project_ids` they are a member of (one query)."""
    wanted = {p for p in project_ids if p is not None}
    if not wanted:
        return {}
    rows = await session.execute(
        select(ProjectMember.project_id, ProjectMember.role, Project.archived)
        .join(Project, Project.id == ProjectMember.project_id)
        .where(ProjectMember.user_id == user_id, ProjectMember.project_id.in_(wanted))
    )
    return {p: Membership(p, role, archived) for p, role, archived in rows.all()}


def check_edit(task: Task, member: Membership | None) -> None:
    """May the caller change the task's fields, tags, status or files?"""
    if task.project_id is None:
        return  # visible personal task: its owner or its assignee
    _check_project_write(member)


async def require_edit(session: AsyncSession, user: User, task: Task) -> None:
    """`check_edit`, looking up the caller's membership when the task is in a project."""
    if task.project_id is not None:
        members = await memberships(session, user.id, [task.project_id])
        check_edit(task, members.get(task.project_id))


def check_manage(task: Task, user: User, member: Membership | None, action: str) -> None:
    """May the caller delete, (re)assign or move the task?"""
    if task.project_id is None:
        if task.owner_id != user.id:
            raise Forbidden(f"Only the task's owner may {action}.")
        return
    _check_project_write(member)


def check_target(member: Membership | None) -> Membership:
    """May the caller put a task into this project (create it there, or move it there)? A
    project they are not a member of is a 404."""
    if member is None:
        raise ProjectNotFound()
    _check_project_write(member)
    return member


def _check_project_write(member: Membership | None) -> None:
    if member is None:
        # Only when the caller was removed from the project between seeing the task and now:
        # a task they can no longer see, as for any non-member.
        raise TaskNotFound()
    if not role_at_least(member.role, EDIT_ROLE):
        raise InsufficientRole(f"Changing this project's tasks needs the {EDIT_ROLE.value} role.")
    if member.archived:
        raise ProjectArchived()


async def check_assignee_is_member(
    session: AsyncSession, project_id: int | None, assignee_id: int | None
) -> None:
    """A project task's assignee must be a member of its project (422)."""
    if await non_members(session, [(project_id, assignee_id)]):
        raise AssigneeNotMember(
            errors=[
                {
                    "loc": ["body", "assignee_id"],
                    "msg": "not a member of the task's project",
                    "type": "assignee_not_member",
                }
            ]
        )


async def non_members(
    session: AsyncSession, pairs: Iterable[tuple[int | None, int | None]]
) -> set[tuple[int | None, int | None]]:
    """Those (project_id, assignee_id) pairs where the assignee is not a member of the project
    (pairs without a project or without an assignee are fine): one query for all of them."""
    wanted: set[tuple[int | None, int | None]] = {
        (p, u) for p, u in pairs if p is not None and u is not None
    }
    if not wanted:
        return set()
    rows = await session.execute(
        select(ProjectMember.project_id, ProjectMember.user_id).where(
            tuple_(ProjectMember.project_id, ProjectMember.user_id).in_(list(wanted))
        )
    )
    return wanted - {(p, u) for p, u in rows.all()}
