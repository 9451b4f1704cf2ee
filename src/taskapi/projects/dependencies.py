"""Who may do what to a project: the one place the projects endpoints check it.

`require_role(role)` is a dependency per required role: it loads the project and the caller's
membership in one query (locking the project row for a write: every membership change takes
that lock first), answers 404 `project_not_found` to a non-member and 403 `insufficient_role` to a
member whose role is below `role`, and hands the handler a `ProjectAccess`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Path

from taskapi.auth.dependencies import CurrentUser
from taskapi.kit.db import DbSession
from taskapi.kit.project_errors import InsufficientRole, ProjectNotFound
from taskapi.kit.validation import MAX_ID
from taskapi.models import ProjectRole
from taskapi.projects import repository
from taskapi.projects.service import ProjectAccess
from taskapi.tasks.access import role_at_least
from taskapi.tasks.conditional import IfMatch

ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="The project's id")]
MemberUserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The member's user id")]

RoleCheck = Callable[[ProjectId, CurrentUser, DbSession], Awaitable[ProjectAccess]]


def require_role(required: ProjectRole, *, for_update: bool = False) -> RoleCheck:
    """The dependency that lets through members with at least `required`; with `for_update`,
    the project row stays locked until the request's transaction ends."""

    async def check(project_id: ProjectId, user: CurrentUser, session: DbSession) -> ProjectAccess:
        found = await repository.project_with_role(
            session, project_id, user.id, for_update=for_update
        )
        if found is None:
            raise ProjectNotFound()
        project, role = found
        if not role_at_least(role, required):
            raise InsufficientRole(f"This needs the {required.value} role in the project.")
        return ProjectAccess(project, role, user)

    check.__name__ = f"require_{required.value}{'_for_update' if for_update else ''}"
    return check


async def _admin_or_self(
    user_id: MemberUserId,
    access: Annotated[ProjectAccess, Depends(require_role(ProjectRole.VIEWER, for_update=True))],
) -> ProjectAccess:
    """Removing a member: an admin removes anyone, any member removes themself (leaves)."""
    if user_id != access.user.id and not role_at_least(access.role, ProjectRole.ADMIN):
        raise InsufficientRole("Only an admin removes other members; you may remove yourself.")
    return access


MemberView = Annotated[ProjectAccess, Depends(require_role(ProjectRole.VIEWER))]
AdminWrite = Annotated[ProjectAccess, Depends(require_role(ProjectRole.ADMIN, for_update=True))]
MemberRemoval = Annotated[ProjectAccess, Depends(_admin_or_self)]


async def get_if_match(
    if_match: Annotated[
        str | None,
        Header(
            description="Only apply the change if the project's current ETag is listed (else 412)"
        ),
    ] = None,
) -> IfMatch:
    return IfMatch(if_match)


IfMatchDep = Annotated[IfMatch, Depends(get_if_match)]
