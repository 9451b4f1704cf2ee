from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, status

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.kit.conditional import IfNoneMatch, conditional_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_response, problem_responses
from taskapi.kit.pagination import next_link
from taskapi.kit.services import services_of
from taskapi.kit.validation import MAX_ID
from taskapi.models import Task
from taskapi.tasks import batch, bulk, reads, service, trash
from taskapi.tasks.batch_schemas import BATCH_RESULT_JSON, BatchResult
from taskapi.tasks.conditional import IfMatchDep, etag_for, none_match
from taskapi.tasks.dependencies import (
    PaidBatch,
    PatchBody,
    TaskId,
    TaskToPatch,
    VisibleTaskForUpdate,
)
from taskapi.tasks.list_params import TaskListParams
from taskapi.tasks.list_query import QUERY_PARAMETERS, read_list_params
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import (
    TASK_ITEM_JSON,
    TASK_PAGE_JSON,
    AssignIn,
    BulkResult,
    BulkStatusIn,
    BulkUpdateIn,
    Tags,
    TagsIn,
    TaskCreate,
    TaskOut,
    TaskPage,
    TaskReplace,
    TaskStats,
    TransitionIn,
)
from taskapi.tasks.stats_cache import STATS_CACHE, StatsCache

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=problem_responses(401, 429))

_SINGLE = problem_responses(404, 422)
_WRITE = problem_responses(403, 404, 409, 412, 422)


def _with_etag(response: Response, task_version: int) -> None:
    response.headers["ETag"] = etag_for(task_version)


def _task_response(response: Response, task: Task) -> TaskOut:
    _with_etag(response, task.version)
    return TaskOut.of(task, today())


# Fixed paths first: they would otherwise be taken for a task id.


@router.get(
    "",
    dependencies=[requires(Scope.TASKS_READ)],
    response_model=TaskPage,
    responses=problem_responses(404, 422),
    summary="List the tasks you can see",
    openapi_extra={"parameters": QUERY_PARAMETERS},
)
async def list_tasks(
    user: CurrentUser,
    session: DbSession,
    params: Annotated[TaskListParams, Depends(read_list_params)],
    request: Request,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Tasks you own or are assigned. Filters combine with AND. Paginate with `limit` plus either
    `offset` or `cursor` (the `next_cursor` of the previous page: keyset pagination, stable while
    tasks are added). A `Link: <...>; rel="next"` header points at the next page."""
    codec = services_of(request.app).cursor_codec
    page = await reads.list_tasks(session, user, params, codec)
    headers = {}
    if page["next_cursor"] is not None:
        headers["Link"] = next_link(request, page["next_cursor"])
    return await conditional_json(request, if_none_match, TASK_PAGE_JSON.dump_json(page), headers)


async def get_stats_cache(request: Request) -> StatsCache:
    return services_of(request.app).get(STATS_CACHE)


@router.get(
    "/stats",
    dependencies=[requires(Scope.TASKS_READ)],
    response_model=TaskStats,
    responses=problem_responses(404, 422),
    summary="Statistics over the tasks you can see",
)
async def task_stats(
    user: CurrentUser,
    session: DbSession,
    cache: Annotated[StatsCache, Depends(get_stats_cache)],
    request: Request,
    if_none_match: IfNoneMatch = None,
    project_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="Only this project's tasks (you must be a member)"),
    ] = None,
) -> Response:
    """Counts over every task you can see: your personal tasks (owned or assigned) and those of
    your projects. Cached per user and invalidated by every change, so it is never stale after a
    write."""
    payload = await reads.stats_json(session, cache, user, project_id)
    return await conditional_json(request, if_none_match, payload)


@router.patch(
    "/bulk",
    dependencies=[requires(Scope.TASKS_WRITE)],
    response_model_exclude_none=True,
    responses=problem_responses(422),
    summary="Update many tasks",
)
async def bulk_update(data: BulkUpdateIn, user: CurrentUser, session: DbSession) -> BulkResult:
    """Applies `updates` to each task on its own (at most 500 ids); one failure never undoes the
    others. Ids you can't see fail with `task_not_found`."""
    return await bulk.bulk_update(session, user, data.task_ids, data.updates)


@router.post(
    "/bulk-status",
    dependencies=[requires(Scope.TASKS_WRITE)],
    response_model_exclude_none=True,
    responses=problem_responses(422),
    summary="Change the status of many tasks",
)
async def bulk_status(data: BulkStatusIn, user: CurrentUser, session: DbSession) -> BulkResult:
    """Each task follows the workflow on its own; invalid transitions fail per item."""
    return await bulk.bulk_status(session, user, data.task_ids, data.target_status)


@router.post(
    "/batch",
    dependencies=[requires(Scope.TASKS_WRITE)],
    response_model=BatchResult,
    responses={
        **problem_responses(422),
        409: {
            **problem_response(409),
            "description": "An operation of an atomic batch failed (`batch_failed`, with the "
            "operation's `index` and its problem as `error`): nothing was applied",
        },
    },
    summary="Create, update, transition and delete many tasks in one request",
)
async def batch_write(batch_in: PaidBatch, user: CurrentUser, session: DbSession) -> Response:
    """Up to 500 operations, applied in order in one transaction, each by the rules of its
    single-task endpoint: `create` (as `POST /tasks`), `update` (as `PATCH`, with `if_match`
    for `If-Match`), `transition`, `delete` (to the trash). A later operation may name a task an
    earlier `create` made by its `temp_id`.

    Non-atomic (the default): each operation succeeds or fails on its own; a failure is reported
    in its result with the problem object its own endpoint would have answered, and leaves
    nothing behind. `"atomic": true`: all apply or none; the first failure answers 409
    `batch_failed` with its `index` and `error`.

    Costs one rate-limit token per 10 operations. With `Idempotency-Key`, a retry replays the
    first answer and applies nothing again."""
    result = await batch.apply_batch(session, user, batch_in)
    return Response(BATCH_RESULT_JSON.dump_json(result), media_type="application/json")


@router.post(
    "",
    dependencies=[requires(Scope.TASKS_WRITE)],
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(403, 404, 409, 422),
    summary="Create a task",
)
async def create_task(
    data: TaskCreate, user: CurrentUser, session: DbSession, response: Response
) -> TaskOut:
    task = await service.create_task(session, user, data)
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return _task_response(response, task)


@router.get(
    "/{task_id}",
    dependencies=[requires(Scope.TASKS_READ)],
    response_model=TaskOut,
    responses={**_SINGLE, 304: {"description": "Not modified (If-None-Match matched)"}},
    summary="Get a task",
)
async def get_task(
    task_id: TaskId,
    user: CurrentUser,
    session: DbSession,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    task = await reads.get_task_item(session, user, task_id)
    etag = etag_for(task["version"])
    if none_match(if_none_match, task["version"]):
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        TASK_ITEM_JSON.dump_json(task), media_type="application/json", headers={"ETag": etag}
    )


@router.patch(
    "/{task_id}",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=_WRITE,
    summary="Update some fields of a task",
)
async def update_task(
    data: PatchBody,
    task: TaskToPatch,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """Only the fields sent change; `null` clears `description`, `due_date` or `assignee_id`.
    A status change must follow the workflow (409 otherwise)."""
    task = await service.update_task(session, user, task, data, if_match)
    return _task_response(response, task)


@router.put(
    "/{task_id}",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=_WRITE,
    summary="Replace a task",
)
async def replace_task(
    data: TaskReplace,
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """A full replacement: omitted fields take their defaults."""
    task = await service.replace_task(session, user, task, data, if_match)
    return _task_response(response, task)


@router.delete(
    "/{task_id}",
    dependencies=[requires(Scope.TASKS_WRITE)],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 404, 409, 412, 422),
    summary="Move a task to the trash",
)
async def delete_task(
    task: VisibleTaskForUpdate, user: CurrentUser, session: DbSession, if_match: IfMatchDep
) -> None:
    """Into the trash: absent from every list, search, stats and get from now on, kept with its
    files for `TRASH_RETENTION_DAYS` (restore with `POST /tasks/{id}/restore`). The owner of a
    personal task (its assignee gets 403), an editor or admin of a project task."""
    await trash.trash_task(session, user, task, if_match)


@router.post(
    "/{task_id}/transition",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=_WRITE,
    summary="Change a task's status",
)
async def transition_task(
    data: TransitionIn,
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """Workflow: todo → in_progress | done | cancelled; in_progress → todo | done | cancelled;
    done → todo; cancelled → todo. Anything else, including the current status, is 409
    `invalid_transition`."""
    task = await service.transition_task(session, user, task, data.status, if_match)
    return _task_response(response, task)


@router.post(
    "/{task_id}/assign",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=_WRITE,
    summary="Assign or unassign a task",
)
async def assign_task(
    data: AssignIn,
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """Owner only. The assignee can then read and update the task and gets a `task_assigned`
    notification; `null` unassigns (and the former assignee loses access)."""
    task = await service.assign_task(session, user, task, data.assignee_id, if_match)
    return _task_response(response, task)


@router.post(
    "/{task_id}/tags",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=_WRITE,
    summary="Add tags to a task",
)
async def add_tags(
    data: Annotated[Tags | TagsIn, Body(description='["a", "b"] or {"tags": ["a", "b"]}')],
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """Tags are trimmed and lower-cased; adding one the task already has is a no-op."""
    tags = data.tags if isinstance(data, TagsIn) else data
    task = await service.add_tags(session, user, task, tags, if_match)
    return _task_response(response, task)


@router.delete(
    "/{task_id}/tags/{tag}",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=_WRITE,
    summary="Remove a tag from a task",
)
async def remove_tag(
    tag: Annotated[str, Path(max_length=200)],
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """404 `tag_not_found` if the task does not carry the tag."""
    task = await service.remove_tag(session, user, task, tag, if_match)
    return _task_response(response, task)
