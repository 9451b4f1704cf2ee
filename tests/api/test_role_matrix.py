"""The role matrix (issue 17): every endpoint that touches a task or a project, for every kind
of actor, answers exactly what API.md (part 1 "Tasks"/"Attachments", part 2 "Projects") says.

The matrix is generated, not hand-listed: each endpoint declares the capability it needs
(`read`, `edit`, `manage`, `admin`, or `leave` for a member removing themself) and the rule
function `expected()` derives every cell's status and problem `code` from that capability, the
kind of task (personal, in a project, in an archived project) and the actor's relation to it.
Each cell is its own test (`<endpoint>-<context>-<actor>`), run against a small world built
straight in the database (users, project, memberships) plus the task (and file) through the API.
The worlds are built once per module (and xdist worker), in a database of the module's own
cloned from the migrated template; each cell runs in a transaction rolled back afterwards, so
every cell starts from the same untouched world whatever the cells before it changed.

Contexts and actors:
* `personal`: a personal task; actors its `owner`, its `assignee` and a `stranger`;
* `project` / `archived`: a task of a project (archived or not), assigned to the viewer and
  created by `former_owner`, who has since left the project; actors `non_member`, `viewer`,
  `editor`, `admin` (the only admin) and `former_owner`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskapi.app import create_app
from taskapi.auth.service import AUTH_SERVICE
from taskapi.kit.config import Settings
from taskapi.kit.db import create_engine
from taskapi.kit.services import services_of
from taskapi.models import Project, ProjectMember, ProjectRole, User
from tests.conftest import (
    admin_execute,
    bind_to_connection,
    clone_template,
    make_settings,
)
from tests.task_helpers import TASKS, assert_problem

API = "/api/v1"
PROJECTS = f"{API}/projects"

Context = Literal["personal", "project", "archived"]
Need = Literal["read", "edit", "manage", "admin", "leave", "restore"]
# How a response is judged: one resource (status + code), a bulk result (per-item outcome), a
# batch result (per-operation problem: status + code) or a listing that answers 200 either way
# and shows the task or not.
Shape = Literal["single", "bulk", "batch", "listing"]

PERSONAL_ACTORS = ("owner", "assignee", "stranger")
PROJECT_ACTORS = ("non_member", "viewer", "editor", "admin", "former_owner")
ROLES: dict[str, ProjectRole] = {
    "viewer": ProjectRole.VIEWER,
    "editor": ProjectRole.EDITOR,
    "admin": ProjectRole.ADMIN,
}
# Users of a project world who are not actors: a second viewer (removed by an admin in the
# member-removal cells) and a user who is not yet a member (added in the PUT member cells).
PROJECT_EXTRAS = ("spare", "candidate")
SECRET = "matrix-secret-title"
_RANK = {ProjectRole.VIEWER: 0, ProjectRole.EDITOR: 1, ProjectRole.ADMIN: 2}


@dataclass
class World:
    context: Context
    ids: dict[str, int]
    headers: dict[str, dict[str, str]]
    task_id: int
    project_id: int | None = None
    file_id: int | None = None
    own_task_id: int | None = None


@dataclass(frozen=True)
class Endpoint:
    name: str
    need: Need
    contexts: tuple[Context, ...]
    method: str
    path: str  # a template, see `_fill`
    body: Any = None
    ok: int = 200
    # The problem code when the actor cannot see what the endpoint is about (None: a listing,
    # which then answers 200 without the task).
    not_found: str | None = "task_not_found"
    shape: Shape = "single"
    # Whether an archived project refuses it (409 project_archived): its tasks are read-only.
    archive_blocks: bool = True
    needs_file: bool = False
    # The actor's own personal task ("{own_task}"), created for the cell.
    needs_own_task: bool = False
    # The task is in the trash when the actor calls (put there directly, before the cell).
    trashed: bool = False


@dataclass(frozen=True)
class Outcome:
    status: int
    code: str | None = None  # the problem code of an error
    sees: bool = True  # for listings: whether the task is in the answer


def expected(endpoint: Endpoint, context: Context, actor: str) -> Outcome:
    """The contract's answer for one cell."""
    if endpoint.need == "restore":
        # Only who could have deleted it finds it in their trash; to anyone else it is a 404.
        role = ROLES.get(actor)
        if context == "personal":
            may = actor == "owner"
        else:
            may = role is not None and _RANK[role] >= _RANK[ProjectRole.EDITOR]
        if not may:
            return Outcome(404, "task_not_found")
        if context == "archived":
            return Outcome(409, "project_archived")
        return Outcome(endpoint.ok)
    if context == "personal":
        sees = actor in ("owner", "assignee")
        role = None
    else:
        role = ROLES.get(actor)
        sees = role is not None
    if not sees:
        if endpoint.not_found is None:
            return Outcome(200, sees=False)
        return Outcome(404, endpoint.not_found)
    if endpoint.need == "read":
        return Outcome(endpoint.ok)
    if context == "personal":
        # Owner and assignee edit; only the owner manages (delete, assign, move): 403 otherwise.
        if endpoint.need == "manage" and actor != "owner":
            return Outcome(403, "forbidden")
        return Outcome(endpoint.ok)
    assert role is not None
    if endpoint.need == "leave":
        # Anyone may leave, except the last admin (the world's admin is its only one).
        return Outcome(409, "last_admin") if role == ProjectRole.ADMIN else Outcome(endpoint.ok)
    required = ProjectRole.ADMIN if endpoint.need == "admin" else ProjectRole.EDITOR
    # The role is judged before the archive: a viewer writing to an archived project's task is
    # told 403 insufficient_role (the archive would not let them either way), an editor 409.
    if _RANK[role] < _RANK[required]:
        return Outcome(403, "insufficient_role")
    if context == "archived" and endpoint.archive_blocks:
        return Outcome(409, "project_archived")
    return Outcome(endpoint.ok)


# --- the endpoints -------------------------------------------------------------------------------
# Paths and bodies are templates: "{task}", "{project}", "{file}", "{me}" (the actor) and any
# user of the world ("{editor}", "{candidate}", ...) are filled in per cell; a body value that is
# exactly one placeholder becomes the id itself.


def _fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template[1:-1] in values:
            return values[template[1:-1]]
        return template.format(**values)
    if isinstance(template, list):
        return [_fill(item, values) for item in template]
    if isinstance(template, dict):
        return {key: _fill(value, values) for key, value in template.items()}
    return template


ALL: tuple[Context, ...] = ("personal", "project", "archived")
IN_PROJECT: tuple[Context, ...] = ("project", "archived")
PERSONAL: tuple[Context, ...] = ("personal",)
TASK = "/tasks/{task}"
PROJECT = "/projects/{project}"
UPLOAD = object()  # the body of a file upload (multipart)


def task_endpoint(
    name: str, need: Need, method: str, path: str, body: Any = None, **kw: Any
) -> Endpoint:
    return Endpoint(name, need, kw.pop("contexts", ALL), method, path, body, **kw)


def project_endpoint(
    name: str, need: Need, method: str, path: str, body: Any = None, **kw: Any
) -> Endpoint:
    # An archived project is still run by its admins (they unarchive it): only its tasks are
    # read-only.
    kw.setdefault("not_found", "project_not_found")
    return Endpoint(name, need, IN_PROJECT, method, path, body, archive_blocks=False, **kw)


ENDPOINTS: tuple[Endpoint, ...] = (
    # tasks
    task_endpoint("task.get", "read", "GET", TASK),
    task_endpoint("task.activity", "read", "GET", TASK + "/activity"),
    task_endpoint("task.patch", "edit", "PATCH", TASK, {"title": "patched"}),
    # The same assignee: a PUT that reassigned would be a `manage` request.
    task_endpoint(
        "task.put",
        "edit",
        "PUT",
        TASK,
        {"title": "put", "tags": ["t"], "assignee_id": "{assignee}"},
    ),
    task_endpoint("task.delete", "manage", "DELETE", TASK, ok=204),
    task_endpoint("task.force_delete", "manage", "DELETE", TASK + "/force", ok=204),
    task_endpoint("task.restore", "restore", "POST", TASK + "/restore", trashed=True),
    task_endpoint(
        "task.create_in_project",
        "edit",
        "POST",
        "/tasks",
        {"title": "new", "project_id": "{project}"},
        ok=201,
        not_found="project_not_found",
        contexts=IN_PROJECT,
    ),
    task_endpoint(
        "task.move_out_of_project",
        "manage",
        "PATCH",
        TASK,
        {"project_id": None},
        contexts=IN_PROJECT,
    ),
    # Into the project: a personal task of the actor's own (the target project decides).
    task_endpoint(
        "task.move_into_project",
        "edit",
        "PATCH",
        "/tasks/{own_task}",
        {"project_id": "{project}"},
        not_found="project_not_found",
        contexts=IN_PROJECT,
        needs_own_task=True,
    ),
    task_endpoint(
        "task.transition", "edit", "POST", TASK + "/transition", {"status": "in_progress"}
    ),
    # A project task is assigned within the project's members, a personal one to anybody.
    task_endpoint(
        "task.assign", "manage", "POST", TASK + "/assign", {"assignee_id": "{new_assignee}"}
    ),
    task_endpoint("task.add_tags", "edit", "POST", TASK + "/tags", ["new"]),
    task_endpoint("task.remove_tag", "edit", "DELETE", TASK + "/tags/t"),
    task_endpoint(
        "tasks.bulk_patch",
        "edit",
        "PATCH",
        "/tasks/bulk",
        {"task_ids": ["{task}"], "updates": {"title": "bulk"}},
        shape="bulk",
    ),
    task_endpoint(
        "tasks.bulk_status",
        "edit",
        "POST",
        "/tasks/bulk-status",
        {"task_ids": ["{task}"], "target_status": "in_progress"},
        shape="bulk",
    ),
    # A batch's operations, each judged as its single endpoint would be (its problem's status).
    *(
        task_endpoint(
            f"tasks.batch_{name}",
            need,
            "POST",
            "/tasks/batch",
            {"operations": [op]},
            shape="batch",
            **kw,
        )
        for name, need, op, kw in (
            (
                "update",
                "edit",
                {"op": "update", "task_id": "{task}", "changes": {"title": "b"}},
                {},
            ),
            ("transition", "edit", {"op": "transition", "task_id": "{task}", "status": "done"}, {}),
            ("delete", "manage", {"op": "delete", "task_id": "{task}"}, {}),
            (
                "create_in_project",
                "edit",
                {"op": "create", "task": {"title": "new", "project_id": "{project}"}},
                {"not_found": "project_not_found", "contexts": IN_PROJECT},
            ),
        )
    ),
    task_endpoint("tasks.list", "read", "GET", "/tasks?limit=100", not_found=None, shape="listing"),
    task_endpoint(
        "tasks.list_project",
        "read",
        "GET",
        "/tasks?project_id={project}",
        not_found="project_not_found",
        shape="listing",
        contexts=IN_PROJECT,
    ),
    task_endpoint(
        "tasks.list_personal",
        "read",
        "GET",
        "/tasks?project_id=none",
        not_found=None,
        shape="listing",
        contexts=PERSONAL,
    ),
    task_endpoint("tasks.stats", "read", "GET", "/tasks/stats", not_found=None, shape="listing"),
    task_endpoint(
        "tasks.stats_project",
        "read",
        "GET",
        "/tasks/stats?project_id={project}",
        not_found="project_not_found",
        shape="listing",
        contexts=IN_PROJECT,
    ),
    # files
    task_endpoint("files.upload", "edit", "POST", TASK + "/files", UPLOAD, ok=201),
    task_endpoint("files.list", "read", "GET", TASK + "/files", needs_file=True),
    task_endpoint(
        "files.download",
        "read",
        "GET",
        "/files/{file}",
        not_found="file_not_found",
        needs_file=True,
    ),
    task_endpoint(
        "files.delete",
        "edit",
        "DELETE",
        "/files/{file}",
        ok=204,
        not_found="file_not_found",
        needs_file=True,
    ),
    # projects
    project_endpoint("project.get", "read", "GET", PROJECT),
    project_endpoint("project.patch", "admin", "PATCH", PROJECT, {"description": "changed"}),
    project_endpoint("project.delete", "admin", "DELETE", PROJECT, ok=204),
    project_endpoint("project.members", "read", "GET", PROJECT + "/members"),
    project_endpoint(
        "project.put_member", "admin", "PUT", PROJECT + "/members/{candidate}", {"role": "viewer"}
    ),
    project_endpoint(
        "project.remove_member", "admin", "DELETE", PROJECT + "/members/{spare}", ok=204
    ),
    project_endpoint("project.leave", "leave", "DELETE", PROJECT + "/members/{me}", ok=204),
)


async def call(
    client: httpx.AsyncClient, endpoint: Endpoint, w: World, actor: str
) -> httpx.Response:
    values: dict[str, Any] = {**w.ids, "me": w.ids[actor], "task": w.task_id}
    values.update(project=w.project_id, file=w.file_id, own_task=w.own_task_id)
    values["new_assignee"] = w.ids["stranger" if w.context == "personal" else "editor"]
    url = API + _fill(endpoint.path, values)
    headers = w.headers[actor]
    if endpoint.body is UPLOAD:
        files = {"file": ("notes.txt", b"role matrix\n", "text/plain")}
        return await client.post(url, files=files, headers=headers)
    body = None if endpoint.body is None else _fill(endpoint.body, values)
    return await client.request(endpoint.method, url, json=body, headers=headers)


def _actors(context: Context) -> tuple[str, ...]:
    return PERSONAL_ACTORS if context == "personal" else PROJECT_ACTORS


CELLS = [
    pytest.param(endpoint, context, actor, id=f"{endpoint.name}-{context}-{actor}")
    for endpoint in ENDPOINTS
    for context in endpoint.contexts
    for actor in _actors(context)
]


# --- the world -----------------------------------------------------------------------------------


async def _users(
    app: FastAPI, db: AsyncSession, names: tuple[str, ...], login: tuple[str, ...]
) -> World:
    """Users straight in the database (one INSERT); those in `login` get tokens from the app's
    own auth service."""
    auth = services_of(app).get(AUTH_SERVICE)
    users = {}
    for name in names:
        username = f"rm_{name}_{uuid.uuid4().hex[:8]}"
        users[name] = User(username=username, email=f"{username}@example.com", password_hash="x")
    db.add_all(users.values())
    await db.flush()
    headers: dict[str, dict[str, str]] = {}
    for name in login:
        pair = await auth.issue_tokens(db, users[name].id, family_id=uuid.uuid4())
        headers[name] = {"Authorization": f"Bearer {pair.access_token}"}
    await db.commit()
    return World("personal", {name: user.id for name, user in users.items()}, headers, task_id=0)


async def _post_task(client: httpx.AsyncClient, w: World, actor: str, body: dict[str, Any]) -> int:
    response = await client.post(TASKS, json=body, headers=w.headers[actor])
    assert response.status_code == 201, response.text
    task_id: int = response.json()["id"]
    return task_id


async def _attach(client: httpx.AsyncClient, w: World, actor: str) -> int:
    files = {"file": ("notes.txt", b"role matrix\n", "text/plain")}
    response = await client.post(
        f"{TASKS}/{w.task_id}/files", files=files, headers=w.headers[actor]
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    return file_id


async def build_world(
    client: httpx.AsyncClient, app: FastAPI, db: AsyncSession, context: Context, *, file: bool
) -> World:
    """The world of a context, every actor logged in."""
    if context == "personal":
        w = await _users(app, db, PERSONAL_ACTORS, PERSONAL_ACTORS)
        body = {"title": SECRET, "tags": ["t"], "assignee_id": w.ids["assignee"]}
        w.task_id = await _post_task(client, w, "owner", body)
        if file:
            w.file_id = await _attach(client, w, "owner")
        return w
    w = await _users(app, db, (*PROJECT_ACTORS, *PROJECT_EXTRAS), PROJECT_ACTORS)
    w.context = context
    members = {
        "admin": ProjectRole.ADMIN,
        "editor": ProjectRole.EDITOR,
        "viewer": ProjectRole.VIEWER,
        "spare": ProjectRole.VIEWER,
        "former_owner": ProjectRole.EDITOR,
    }
    project = Project(
        owner_id=w.ids["admin"], name=f"matrix {uuid.uuid4().hex[:8]}", member_count=len(members)
    )
    db.add(project)
    await db.flush()
    db.add_all(
        ProjectMember(project_id=project.id, user_id=w.ids[name], role=role)
        for name, role in members.items()
    )
    await db.commit()
    w.project_id = project.id
    # In the project world the task's assignee is the viewer (PUT keeps `ids["assignee"]`).
    w.ids["assignee"] = w.ids["viewer"]
    body = {
        "title": SECRET,
        "tags": ["t"],
        "project_id": project.id,
        "assignee_id": w.ids["viewer"],
    }
    w.task_id = await _post_task(client, w, "former_owner", body)
    if file:
        w.file_id = await _attach(client, w, "admin")
    # The task's creator leaves: from now on it is the members' task, not theirs.
    await db.execute(
        delete(ProjectMember).where(
            ProjectMember.project_id == project.id, ProjectMember.user_id == w.ids["former_owner"]
        )
    )
    await db.execute(
        update(Project)
        .where(Project.id == project.id)
        .values(member_count=len(members) - 1, archived=context == "archived")
    )
    await db.commit()
    return w


WorldKey = tuple[Context, bool]  # the context, and whether the task has a file


@pytest.fixture(scope="module")
async def matrix_settings(migrated_databases: None) -> AsyncIterator[Settings]:
    """A database of the module's own, cloned from the template, with Redis keys of its own
    (its user ids are those of other databases' users)."""
    name = f"taskapi_matrix_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    try:
        yield make_settings(name)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# `engine` and `built_app` replace conftest's for this module: its `connection`, `app`, `client`
# and `db_session` then run each cell on the module's database, in a transaction rolled back
# afterwards, as every other test runs on the worker's.
@pytest.fixture(scope="module")
async def engine(matrix_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(matrix_settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def built_app(matrix_settings: Settings) -> FastAPI:
    return create_app(matrix_settings)


@pytest.fixture(scope="module")
async def worlds(built_app: FastAPI, engine: AsyncEngine) -> dict[WorldKey, World]:
    """Every world, built once and committed: a cell's changes are rolled back after it, so
    each cell finds its world as it was built. The app's lifespan is run for the building only
    (each cell runs its own, as everywhere else)."""
    transport = httpx.ASGITransport(app=built_app)
    async with (
        engine.connect() as conn,
        built_app.router.lifespan_context(built_app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        transaction = await conn.begin()
        bind_to_connection(built_app, conn)
        sessionmaker = async_sessionmaker(
            bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        async with sessionmaker() as db:
            built = {
                (context, file): await build_world(client, built_app, db, context, file=file)
                for context in ALL
                for file in (False, True)
            }
        await transaction.commit()
    return built


# --- the cells -----------------------------------------------------------------------------------


def _listed(endpoint: Endpoint, w: World, body: Any) -> bool:
    if endpoint.name.startswith("tasks.stats"):
        assert body["total"] in (0, 1), body
        return bool(body["total"] == 1)
    ids = {item["id"] for item in body["items"]}
    assert ids <= {w.task_id}, body
    return w.task_id in ids


@pytest.mark.parametrize(("endpoint", "context", "actor"), CELLS)
async def test_role_matrix(
    client: httpx.AsyncClient,
    db_session: AsyncSession,
    worlds: dict[WorldKey, World],
    endpoint: Endpoint,
    context: Context,
    actor: str,
) -> None:
    w = dataclasses.replace(worlds[context, endpoint.needs_file])
    if endpoint.needs_own_task:
        w.own_task_id = await _post_task(client, w, actor, {"title": SECRET})
    if endpoint.trashed:  # as DELETE /tasks/{id} would, whoever may (an archive blocks that)
        await db_session.execute(
            text("UPDATE tasks SET deleted_at = now() WHERE id = :id"), {"id": w.task_id}
        )
    want = expected(endpoint, context, actor)
    response = await call(client, endpoint, w, actor)

    if endpoint.shape == "bulk":
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == 1
        [item] = body["results"]
        assert item["task_id"] == w.task_id
        success = want.status < 400
        assert item["success"] is success, item
        assert body["successful"] == int(success)
        if not success:
            assert item["error"] == want.code, item
        return
    if endpoint.shape == "batch":
        assert response.status_code == 200, response.text
        [item] = response.json()["results"]
        assert item["success"] is (want.status < 400), item
        if want.status >= 400:
            assert (item["error"]["status"], item["error"]["code"]) == (want.status, want.code)
            assert SECRET not in response.text
        return
    if want.status >= 400:
        assert_problem(response, want.status, want.code)
        # Nothing of the task leaks into the problem.
        assert SECRET not in response.text
        return
    assert response.status_code == want.status, response.text
    if endpoint.shape == "listing":
        assert _listed(endpoint, w, response.json()) is want.sees


# --- the generator itself --------------------------------------------------------------------


def test_matrix_covers_every_endpoint_actor_and_outcome() -> None:
    """The table generates what the issue asks: every endpoint for every actor of its contexts,
    and the rule yields each answer the contract knows (not a matrix of 200s)."""
    cells = [(p.values[0].name, p.values[1], p.values[2]) for p in CELLS]  # type: ignore[union-attr]
    assert len(cells) == len(set(cells))
    for endpoint in ENDPOINTS:
        for context in endpoint.contexts:
            assert {a for n, c, a in cells if n == endpoint.name and c == context} == set(
                _actors(context)
            )
    outcomes = {expected(*p.values) for p in CELLS}  # type: ignore[arg-type]
    codes = {o.code for o in outcomes}
    assert {
        "task_not_found",
        "project_not_found",
        "file_not_found",
        "forbidden",
        "insufficient_role",
        "project_archived",
        "last_admin",
    } <= codes
    assert {o.status for o in outcomes} >= {200, 201, 204, 403, 404, 409}
    # Reads of an archived project's tasks stay open to every member.
    get = ENDPOINTS[0]
    assert get.name == "task.get"
    assert all(expected(get, "archived", a).status == 200 for a in ROLES)
    assert expected(get, "archived", "non_member") == Outcome(404, "task_not_found")


def _route_of(endpoint: Endpoint) -> tuple[str, str]:
    path = endpoint.path.partition("?")[0]
    for template, name in (
        ("{task}", "{task_id}"),
        ("{own_task}", "{task_id}"),
        ("{file}", "{file_id}"),
        ("{project}", "{project_id}"),
    ):
        path = path.replace(template, name)
    if "/members/" in path:
        path = path.rpartition("/")[0] + "/{user_id}"
    if "/tags/" in path:
        path = path.rpartition("/")[0] + "/{tag}"
    return endpoint.method, API + path


def test_every_task_file_and_project_route_is_in_the_matrix(built_app: FastAPI) -> None:
    """A route added later that takes a task, file or project (or lists or changes tasks) cannot
    escape the matrix."""
    covered = {_route_of(endpoint) for endpoint in ENDPOINTS}
    routes = {
        (method, path)
        for route in built_app.routes
        for method in getattr(route, "methods", None) or ()
        if (path := getattr(route, "path", "")).startswith((f"{API}/tasks", f"{API}/files"))
        or path.startswith(f"{PROJECTS}/")
    }
    assert routes - covered == set()
    assert covered - routes == set()
