"""Property (issue 17): whatever sequence of creating personal and project tasks, assigning,
sharing and unsharing projects, changing roles, moving tasks between projects (or out of them)
and archiving four users perform, nobody sees or changes what the rule forbids.

A hypothesis `RuleBasedStateMachine` drives the API; a plain-Python model of API.md part 2
("Projects") predicts every answer (status and problem code) and, after every step, for every
user: the exact set of ids in `GET /tasks` (unfiltered, `project_id=none` and per project),
`GET /tasks/{id}` (200 with the model's owner/assignee/project, or 404) for every task, and that
`PATCH /tasks/{id}` of the title succeeds exactly when the model says the user may edit it.

The machine runs in a worker thread; each API call is sent to the test's event loop (where the
app, its connection and the client live) and waited for there.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.auth.service import AUTH_SERVICE
from taskapi.kit.services import services_of
from taskapi.models import User

API = "/api/v1"
TASKS = f"{API}/tasks"
PROJECTS = f"{API}/projects"
USERS: Final = 4
PROJECT_COUNT: Final = 2
MAX_TASKS: Final = 7
ROLES: Final = ("viewer", "editor", "admin")
RANK: Final = {role: rank for rank, role in enumerate(ROLES)}
STATS: Counter[str] = Counter()

SETTINGS = settings(
    max_examples=6,
    stateful_step_count=20,
    derandomize=True,
    database=None,
    # A sequence is at most 10 steps, readable as found; shrinking one costs minutes of the
    # two shared cores.
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Actor = int | str
# Every step draws a seed from hypothesis and makes its choices with random.Random(seed): the
# values hypothesis draws itself are biased towards the simplest (the first project, no
# assignee, the same few operations) and with the few examples CI affords, whole kinds of step
# went missing. A step is reproduced exactly from its seed and its place in the sequence.
KINDS: Final = ("create_task", "assign", "share", "change_role", "unshare", "move", "archive")
# An actor: a given user, or one the model picks: "entitled" (someone the rule lets do it) or
# "near" (someone who sees what it is about but whose role or relation forbids it), so that the
# sequences neither consist mostly of refusals nor miss the boundary of the rule.
ACTORS: Final[tuple[Actor, ...]] = ("entitled", "entitled", "entitled", "near", *range(USERS))
seeds = st.integers(0, 2**32 - 1)


def operation(seed: int, n: int) -> tuple[Any, ...]:
    """The `n`th step of an example, from its seed: a kind of operation and its arguments.
    (`n` too: hypothesis draws the same few seeds again and again.)"""
    rng = random.Random(f"{seed}:{n}")
    actor = rng.choice(ACTORS)
    project = rng.randrange(PROJECT_COUNT)
    user = rng.randrange(USERS)
    maybe_user = rng.choice((None, *range(USERS)))
    task = rng.randrange(MAX_TASKS)
    kind = rng.choice(KINDS)
    if kind == "create_task":
        return kind, actor, rng.choice((None, project)), maybe_user
    if kind == "assign":
        return kind, actor, task, maybe_user
    if kind in ("share", "change_role"):
        return kind, actor, project, user, rng.choice(ROLES)
    if kind == "unshare":
        # Half the time the member to remove is someone a project task is assigned to, or the
        # actor themself (leaving).
        return kind, actor, project, rng.choice((user, user, "assignee", "self"))
    if kind == "move":
        return kind, actor, task, rng.choice((None, *range(PROJECT_COUNT))), rng.random() < 0.5
    return kind, actor, project, rng.random() < 0.5


@dataclass
class MTask:
    id: int
    owner: int
    assignee: int | None
    project: int | None  # an index into Model.projects


@dataclass
class MProject:
    id: int
    members: dict[int, str]
    archived: bool = False

    def admins(self) -> list[int]:
        return sorted(u for u, r in self.members.items() if r == "admin")

    def at_least(self, user: int, needed: str) -> bool:
        return user in self.members and RANK[self.members[user]] >= RANK[needed]


@dataclass
class Model:
    projects: list[MProject] = field(default_factory=list)
    tasks: list[MTask] = field(default_factory=list)

    # --- the rule (API.md part 1 "Tasks" and part 2 "Projects") ---

    def sees(self, user: int, task: MTask) -> bool:
        if task.project is None:
            return user in (task.owner, task.assignee)
        return user in self.projects[task.project].members

    def project_write(self, user: int, project: int) -> tuple[int, str] | None:
        """The refusal of a write to a project's tasks by a member, or None."""
        p = self.projects[project]
        if not p.at_least(user, "editor"):
            return 403, "insufficient_role"
        if p.archived:
            return 409, "project_archived"
        return None

    def edit(self, user: int, task: MTask) -> tuple[int, str] | None:
        """Why `user` may not change the task's fields (None: they may)."""
        if not self.sees(user, task):
            return 404, "task_not_found"
        if task.project is None:
            return None
        return self.project_write(user, task.project)

    def manage(self, user: int, task: MTask) -> tuple[int, str] | None:
        """Why `user` may not delete, assign or move the task (None: they may)."""
        refused = self.edit(user, task)
        if refused is None and task.project is None and user != task.owner:
            return 403, "forbidden"
        return refused

    def target(self, user: int, project: int) -> tuple[int, str] | None:
        """Why `user` may not put a task into `project` (None: they may)."""
        if user not in self.projects[project].members:
            return 404, "project_not_found"
        return self.project_write(user, project)

    def project_admin(self, user: int, project: int) -> tuple[int, str] | None:
        p = self.projects[project]
        if user not in p.members:
            return 404, "project_not_found"
        if p.members[user] != "admin":
            return 403, "insufficient_role"
        return None


class VisibilityMachine(RuleBasedStateMachine):
    """Subclassed per test run with `env` set (see the test at the bottom)."""

    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.ids: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0  # sent
        self.steps = 0  # steps taken
        # The tasks the last step was about: each user PATCHes each of them one by one (every
        # task is written by every user after every step through PATCH /tasks/bulk).
        self.touched: set[int] = set()

    # --- plumbing ---

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.env.loop).result()

    def call(self, who: int, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.requests += 1
        STATS["requests"] += 1
        request = self.env.client.request(method, url, headers=self.headers[who], **kwargs)
        response: httpx.Response = self.run(request)
        return response

    def expect(
        self, response: httpx.Response, ok: int, refused: tuple[int, str] | None, what: Any
    ) -> bool:
        """Assert the answer is `ok` when nothing refuses, else the refusal; True when ok."""
        if refused is None:
            assert response.status_code == ok, (what, response.text)
            STATS[f"{what[0]} allowed"] += 1
            return True
        status, code = refused
        assert response.status_code == status, (what, refused, response.text)
        assert response.json()["code"] == code, (what, refused, response.text)
        STATS[f"refused {status} {code}"] += 1
        return False

    def pick(self, who: Actor, entitled: list[int], near: list[int] | None = None) -> int:
        if isinstance(who, int):
            return who
        choices = (near if who == "near" and near else None) or entitled or [0]
        return choices[self.requests % len(choices)]

    def task_actor(self, who: Actor, task: MTask, to: int | None = None) -> int:
        """For assigning or moving `task` (to project `to`): its managers (who may also put it
        into `to`, if any does), or those who see it but may not manage it."""
        m = self.model
        managers = [u for u in range(USERS) if m.manage(u, task) is None]
        movers = [u for u in managers if to is None or m.target(u, to) is None]
        others = [u for u in range(USERS) if m.sees(u, task) and u not in managers]
        return self.pick(who, movers or managers, others)

    def project_actor(self, who: Actor, project: MProject) -> int:
        """For running `project`: its admins, or its other members."""
        others = sorted(u for u, r in project.members.items() if r != "admin")
        return self.pick(who, project.admins(), others)

    def task(self, ref: int) -> MTask:
        return self.model.tasks[ref % len(self.model.tasks)]

    def has_tasks(self) -> bool:
        return bool(self.model.tasks)

    # --- the world ---

    @initialize(archived=st.booleans())
    def users_projects_and_tasks(self, archived: bool) -> None:
        """Four users; project 0 run by user 0 with user 1 editor and user 2 viewer, project 1 run
        by user 1 with user 3 editor (and maybe archived); a personal task of user 0 assigned to
        user 3, a task of each project. Everything through the API; the steps take it from
        there."""
        m = self.model
        self.ids, self.headers = self.run(self.env.new_users())
        for owner in range(PROJECT_COUNT):
            r = self.call(owner, "POST", PROJECTS, json={"name": f"sm {uuid.uuid4().hex[:10]}"})
            assert r.status_code == 201, r.text
            assert r.json()["role"] == "admin"
            m.projects.append(MProject(r.json()["id"], {owner: "admin"}))
        for project, member, member_role in ((0, 1, "editor"), (0, 2, "viewer"), (1, 3, "editor")):
            self.share("entitled", project, member, member_role)
        self.create_task(0, None, 3)
        self.create_task(1, 0, 2)
        self.create_task(3, 1, None)
        assert len(m.tasks) == 3
        if archived:
            self.archive("entitled", 1, True)
        STATS["examples"] += 1

    # --- the step: one operation of any kind ---
    # (One rule, rather than a rule per kind: hypothesis enables a random subset of a machine's
    # rules per example, which with the few examples CI affords left whole kinds out.)

    @rule(seed=seeds)
    def step(self, seed: int) -> None:
        self.steps += 1
        op = operation(seed, self.steps)
        note(f"step {self.steps}: {op}")
        STATS[f"op {op[0]}"] += 1
        getattr(self, op[0])(*op[1:])

    # --- the operations ---

    def create_task(self, who: Actor, project: int | None, assignee: int | None) -> None:
        if len(self.model.tasks) >= MAX_TASKS:
            self.touched = set()
            return
        m = self.model
        body: dict[str, Any] = {"title": f"sm {self.requests}"}
        refused = None
        if project is not None:
            p = m.projects[project]
            editors = sorted(u for u in p.members if p.at_least(u, "editor"))
            who = self.pick(who, editors, sorted(set(p.members) - set(editors)))
            body["project_id"] = p.id
            refused = m.target(who, project)
            if refused is None and assignee is not None and assignee not in p.members:
                refused = (422, "assignee_not_member")
        who = self.pick(who, [0])
        if assignee is not None:
            body["assignee_id"] = self.ids[assignee]
        r = self.call(who, "POST", TASKS, json=body)
        if self.expect(r, 201, refused, ("create", who, project, assignee)):
            m.tasks.append(MTask(r.json()["id"], who, assignee, project))
            self.touched = {r.json()["id"]}

    def assign(self, who: Actor, ref: int, assignee: int | None) -> None:
        m, task = self.model, self.task(ref)
        self.touched = {task.id}
        who = self.task_actor(who, task)
        refused = m.edit(who, task)
        if refused is None and assignee != task.assignee:
            refused = m.manage(who, task)
            if (
                refused is None
                and task.project is not None
                and assignee is not None
                and assignee not in m.projects[task.project].members
            ):
                refused = (422, "assignee_not_member")
        if refused is None and task.project is None:  # the owner's alone, even a no-op
            refused = m.manage(who, task)
        body = {"assignee_id": None if assignee is None else self.ids[assignee]}
        r = self.call(who, "POST", f"{TASKS}/{task.id}/assign", json=body)
        if self.expect(r, 200, refused, ("assign", who, task, assignee)):
            task.assignee = assignee

    def share(self, who: Actor, project: int, member: int, new_role: str) -> None:
        """PUT a member: add them, or change their role."""
        m = self.model
        p = m.projects[project]
        self.touched = {t.id for t in m.tasks if t.project == project}
        who = self.project_actor(who, p)
        refused = m.project_admin(who, project)
        current = p.members.get(member)
        if refused is None and current == "admin" != new_role and p.admins() == [member]:
            refused = (409, "last_admin")
        r = self.call(
            who, "PUT", f"{PROJECTS}/{p.id}/members/{self.ids[member]}", json={"role": new_role}
        )
        if self.expect(r, 200, refused, ("share", who, project, member, new_role)):
            assert r.json()["role"] == new_role
            p.members[member] = new_role

    def change_role(self, who: Actor, project: int, which: int, new_role: str) -> None:
        """PUT a member who already is one, with a random role (maybe the same one)."""
        members = sorted(self.model.projects[project].members)
        self.share(who, project, members[which % len(members)], new_role)

    def unshare(self, who: Actor, project: int, member: int | str) -> None:
        """DELETE a member: an admin removes anyone, a member removes themself."""
        m = self.model
        p = m.projects[project]
        self.touched = {t.id for t in m.tasks if t.project == project}
        if member == "self":
            who = self.pick(who, sorted(p.members), sorted(p.members))
            member = who
        else:
            # Removing an assignee: by an admin (the point is what happens to their tasks).
            who = self.project_actor("entitled" if member == "assignee" else who, p)
        if member == "assignee":
            assigned = [t.assignee for t in m.tasks if t.project == project and t.assignee]
            member = assigned[0] if assigned else 0
        assert isinstance(member, int)
        refused: tuple[int, str] | None = None
        if who not in p.members:
            refused = (404, "project_not_found")
        elif member != who and p.members[who] != "admin":
            refused = (403, "insufficient_role")
        elif member not in p.members:
            refused = (404, "member_not_found")
        elif p.members[member] == "admin" and p.admins() == [member]:
            refused = (409, "last_admin")
        r = self.call(who, "DELETE", f"{PROJECTS}/{p.id}/members/{self.ids[member]}")
        if self.expect(r, 204, refused, ("unshare", who, project, member)):
            del p.members[member]
            for task in m.tasks:  # the project's tasks assigned to them lose their assignee
                if task.project == project and task.assignee == member:
                    task.assignee = None
                    STATS["unassigned by leaving"] += 1

    def move(self, who: Actor, ref: int, to: int | None, unassign: bool) -> None:
        """PATCH project_id (and maybe assignee_id null at once): into a project, between
        projects, or out (the mover then owns it)."""
        m, task = self.model, self.task(ref)
        self.touched = {task.id}
        who = self.task_actor(who, task, to)
        assignee = None if unassign else task.assignee
        refused = m.edit(who, task)
        if refused is None and (to != task.project or assignee != task.assignee):
            refused = m.manage(who, task)
            if refused is None and to is not None and to != task.project:
                refused = m.target(who, to)
            if (
                refused is None
                and to is not None
                and assignee is not None
                and assignee not in m.projects[to].members
            ):
                refused = (422, "assignee_not_member")
        body: dict[str, Any] = {"project_id": None if to is None else m.projects[to].id}
        if unassign:
            body["assignee_id"] = None
        r = self.call(who, "PATCH", f"{TASKS}/{task.id}", json=body)
        if self.expect(r, 200, refused, ("move", who, task, to, unassign)):
            if to is None and task.project is not None:
                task.owner = who
            if to != task.project:
                STATS[f"moved {'into a project' if to is not None else 'out'}"] += 1
            task.project, task.assignee = to, assignee

    def archive(self, who: Actor, project: int, archived: bool) -> None:
        m = self.model
        p = m.projects[project]
        self.touched = {t.id for t in m.tasks if t.project == project}
        who = self.project_actor(who, p)
        refused = m.project_admin(who, project)
        r = self.call(who, "PATCH", f"{PROJECTS}/{p.id}", json={"archived": archived})
        if self.expect(r, 200, refused, ("archive", who, project, archived)):
            assert r.json()["archived"] is archived
            p.archived = archived

    # --- after every step ---

    @invariant()
    def everyone_sees_and_changes_exactly_what_the_rule_allows(self) -> None:
        m = self.model
        if not self.ids:
            return
        for user in range(USERS):
            visible = {t.id for t in m.tasks if m.sees(user, t)}
            listed = self.call(user, "GET", TASKS, params={"limit": 100})
            assert listed.status_code == 200, listed.text
            assert {t["id"] for t in listed.json()["items"]} == visible, user
            assert listed.json()["total"] == len(visible)
            personal = self.call(user, "GET", TASKS, params={"project_id": "none", "limit": 100})
            assert {t["id"] for t in personal.json()["items"]} == {
                t.id for t in m.tasks if t.project is None and t.id in visible
            }
            for index, p in enumerate(m.projects):
                r = self.call(user, "GET", TASKS, params={"project_id": p.id, "limit": 100})
                if user not in p.members:
                    self.expect(r, 200, (404, "project_not_found"), ("list", user, index))
                    continue
                assert r.status_code == 200, r.text
                assert {t["id"] for t in r.json()["items"]} == {
                    t.id for t in m.tasks if t.project == index
                }
            for task in m.tasks:
                r = self.call(user, "GET", f"{TASKS}/{task.id}")
                if task.id in visible:
                    assert r.status_code == 200, r.text
                    got = r.json()
                    project_id = None if task.project is None else m.projects[task.project].id
                    assert got["project_id"] == project_id
                    assert got["owner_id"] == self.ids[task.owner]
                    assert got["assignee_id"] == (
                        None if task.assignee is None else self.ids[task.assignee]
                    )
                else:
                    self.expect(r, 200, (404, "task_not_found"), ("get", user, task))
                if task.id in self.touched:
                    r = self.call(user, "PATCH", f"{TASKS}/{task.id}", json={"title": f"u{user}"})
                    self.expect(r, 200, m.edit(user, task), ("edit", user, task))
            if m.tasks:
                self.check_bulk_write(user)
            STATS["user checks"] += 1

    def check_bulk_write(self, user: int) -> None:
        """Every task at once: PATCH /tasks/bulk of the title, each item as the model says."""
        m = self.model
        body = {"task_ids": [t.id for t in m.tasks], "updates": {"title": f"bulk {user}"}}
        r = self.call(user, "PATCH", f"{TASKS}/bulk", json=body)
        assert r.status_code == 200, r.text
        results = {item["task_id"]: item for item in r.json()["results"]}
        for task in m.tasks:
            refused = m.edit(user, task)
            item = results[task.id]
            assert item["success"] is (refused is None), (user, task, refused, item)
            if refused is not None:
                assert item["error"] == refused[1], (user, task, refused, item)
            STATS["bulk items"] += 1


@dataclass
class Env:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    app: FastAPI
    db: AsyncSession

    async def new_users(self) -> tuple[list[int], list[dict[str, str]]]:
        """Users straight in the database with tokens from the app's own auth service."""
        auth = services_of(self.app).get(AUTH_SERVICE)
        ids, headers = [], []
        for _ in range(USERS):
            name = f"sm_{uuid.uuid4().hex[:12]}"
            user = User(username=name, email=f"{name}@example.com", password_hash="x")
            self.db.add(user)
            await self.db.flush()
            pair = await auth.issue_tokens(self.db, user.id, family_id=uuid.uuid4())
            ids.append(user.id)
            headers.append({"Authorization": f"Bearer {pair.access_token}"})
        await self.db.commit()
        return ids, headers


async def test_sharing_moving_and_assigning_never_leak(
    live_client: httpx.AsyncClient, live_app: FastAPI
) -> None:
    # A database of its own with real commits (not one test transaction held open for the
    # whole run: its xid would hold back the event log's horizon for every other test).
    STATS.clear()
    async with services_of(live_app).sessionmaker() as db:
        env = Env(asyncio.get_running_loop(), live_client, live_app, db)
        machine = type("Machine", (VisibilityMachine,), {"env": env})
        await asyncio.to_thread(run_state_machine_as_test, machine, settings=SETTINGS)
    # The sequences did what they are for: many steps, both allowed and refused requests of
    # every kind the rule knows.
    assert STATS["examples"] >= SETTINGS.max_examples, STATS
    assert STATS["user checks"] >= 150, STATS
    for kind in (
        *(
            f"{kind_of} allowed"
            for kind_of in ("create", "assign", "share", "unshare", "move", "archive")
        ),
        "moved into a project",
        "moved out",
        "unassigned by leaving",
        "refused 404 task_not_found",
        "refused 404 project_not_found",
        "refused 403 insufficient_role",
        "refused 409 project_archived",
        "refused 403 forbidden",
        "refused 422 assignee_not_member",
    ):
        assert STATS[kind] > 0, (kind, STATS)
