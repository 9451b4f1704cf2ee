"""/projects: thin HTTP over taskapi.projects.service; who may call what is decided by the role
dependencies (taskapi.projects.dependencies)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.kit.conditional import IfNoneMatch, conditional_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.pagination import NEXT_PAGE_LINK, next_link
from taskapi.kit.services import services_of
from taskapi.kit.strict_query import NoQueryParameters
from taskapi.projects import service
from taskapi.projects.dependencies import (
    AdminWrite,
    IfMatchDep,
    MemberRemoval,
    MemberUserId,
    MemberView,
)
from taskapi.projects.schemas import (
    MemberIn,
    MemberOut,
    ProjectCreate,
    ProjectListParams,
    ProjectOut,
    ProjectPage,
    ProjectPatch,
)
from taskapi.tasks.conditional import etag_for, none_match

router = APIRouter(prefix="/projects", tags=["projects"], responses=problem_responses(401, 429))

_ETAG: dict[str, Any] = {
    "ETag": {
        "description": "The entity tag of the project's current version",
        "required": True,
        "schema": {"type": "string"},
    }
}
_WITH_ETAG: dict[int | str, dict[str, Any]] = {200: {"headers": _ETAG}}


def _project_response(response: Response, access: service.ProjectAccess) -> ProjectOut:
    response.headers["ETag"] = etag_for(access.project.version)
    return access.out()


@router.get(
    "",
    dependencies=[requires(Scope.PROJECTS_READ)],
    response_model=ProjectPage,
    responses={**NEXT_PAGE_LINK, **problem_responses(422)},
    summary="List the projects you are a member of",
)
async def list_projects(
    user: CurrentUser,
    session: DbSession,
    params: Annotated[ProjectListParams, Query()],
    request: Request,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Newest first, each with your `role`. Paginate with `limit` plus either `offset` or `cursor`
    (the `next_cursor` of the previous page: keyset pagination, stable while projects are
    added). A `Link: <...>; rel="next"` header points at the next page."""
    codec = services_of(request.app).cursor_codec
    page = await service.list_projects(session, user, params, codec)
    headers = {}
    if page.next_cursor is not None:
        headers["Link"] = next_link(request, page.next_cursor)
    return await conditional_json(request, if_none_match, page.model_dump_json().encode(), headers)


@router.post(
    "",
    dependencies=[requires(Scope.PROJECTS_WRITE)],
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectOut,
    responses={
        201: {
            "headers": {
                **_ETAG,
                "Location": {
                    "description": "The project's URL",
                    "required": True,
                    "schema": {"type": "string"},
                },
            }
        },
        **problem_responses(409, 422),
    },
    summary="Create a project",
)
async def create_project(
    data: ProjectCreate, user: CurrentUser, session: DbSession, response: Response
) -> ProjectOut:
    """You become its first admin. The name is unique among your projects, ignoring case (409
    `project_name_taken`)."""
    access = await service.create_project(session, user, data)
    response.headers["Location"] = f"/api/v1/projects/{access.project.id}"
    return _project_response(response, access)


@router.get(
    "/{project_id}",
    dependencies=[requires(Scope.PROJECTS_READ)],
    response_model=ProjectOut,
    responses={
        **_WITH_ETAG,
        304: {"description": "Not modified (If-None-Match matched)", "headers": _ETAG},
        **problem_responses(404, 422),
    },
    summary="Get a project",
)
async def get_project(
    access: MemberView, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    """Any member; 404 `project_not_found` for anyone else."""
    etag = etag_for(access.project.version)
    if none_match(if_none_match, access.project.version):
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        access.out().model_dump_json(), media_type="application/json", headers={"ETag": etag}
    )


@router.patch(
    "/{project_id}",
    dependencies=[requires(Scope.PROJECTS_WRITE)],
    response_model=ProjectOut,
    responses={**_WITH_ETAG, **problem_responses(403, 404, 409, 412, 422)},
    summary="Rename, describe or archive a project",
)
async def update_project(
    data: ProjectPatch,
    access: AdminWrite,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> ProjectOut:
    """Admins only. An archived project's tasks are read-only (409 `project_archived`) until it
    is unarchived."""
    access = await service.update_project(session, access, data, if_match)
    return _project_response(response, access)


@router.delete(
    "/{project_id}",
    dependencies=[requires(Scope.PROJECTS_WRITE)],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 404, 412, 422),
    summary="Delete a project and its tasks",
)
async def delete_project(access: AdminWrite, session: DbSession, if_match: IfMatchDep) -> None:
    """Admins only. The project's tasks (and their files) are deleted with it."""
    await service.delete_project(session, access, if_match)


@router.get(
    "/{project_id}/members",
    dependencies=[requires(Scope.PROJECTS_READ)],
    response_model=list[MemberOut],
    responses=problem_responses(404, 422),
    summary="List a project's members",
)
async def list_project_members(
    access: MemberView, session: DbSession, _strict: NoQueryParameters
) -> list[MemberOut]:
    """Any member. In the order they were added."""
    return await service.list_members(session, access)


@router.put(
    "/{project_id}/members/{user_id}",
    dependencies=[requires(Scope.PROJECTS_WRITE)],
    response_model=MemberOut,
    responses=problem_responses(403, 404, 409, 422),
    summary="Add a member or change their role",
)
async def put_project_member(
    user_id: MemberUserId, data: MemberIn, access: AdminWrite, session: DbSession
) -> MemberOut:
    """Admins only. A new member gets a `project_shared` notification; 404 `user_not_found` for
    an unknown user; taking the admin role from the last admin is 409 `last_admin`."""
    return await service.put_member(session, access, user_id, data.role)


@router.delete(
    "/{project_id}/members/{user_id}",
    dependencies=[requires(Scope.PROJECTS_WRITE)],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 404, 409, 422),
    summary="Remove a member, or leave a project",
)
async def remove_project_member(
    user_id: MemberUserId, access: MemberRemoval, session: DbSession
) -> None:
    """An admin removes anyone; any member removes themself (leaves). The project's tasks
    assigned to them lose their assignee; 409 `last_admin` for the last admin; 404
    `member_not_found` if they are not a member."""
    await service.remove_member(session, access, user_id)
