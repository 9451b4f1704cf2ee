"""The feed's exactness (issue 18, the heart of it), over real PostgreSQL and real commits.

1. The out-of-order-commit hole, shown closed step by step: an event of a transaction still open
   holds back every later one, however their ids compare; once it ends, both are served in
   (xid, id) order with nothing skipped.
2. A superseded event (a change overwritten, under the row's lock, by a transaction whose id is
   the smaller) is never served after what superseded it.
3. Concurrent writers (random creates, updates, transitions, tags, assignments, moves, deletes,
   restores and force deletes, each transaction held open a random while after its events are
   written, plus a bare transaction holding the horizon) while 3 followers take a cursor, list
   their tasks and follow the feed with random page sizes; one of them is removed from the
   project midway. At the end each follower's copy is exactly what GET /tasks shows them.
   Seeded schedules, repeated.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from taskapi.events import repository as event_repository
from taskapi.events import service as events
from taskapi.events.schemas import TASK_ACCESS_LOST, TASK_UPDATED, Audience
from taskapi.kit.services import services_of
from tests.conftest import UserHandle, cloned_app, register_and_login
from tests.event_helpers import Copy, list_all, now_cursor, page, position, settle
from tests.task_helpers import TASKS, task_url

PROJECTS = "/api/v1/projects"


@pytest.fixture
async def busy_app(migrated_databases: None) -> AsyncIterator[FastAPI]:
    # Writers, followers and held transactions at once: more connections than the tests' 10.
    async with cloned_app(database_pool_size=20, database_max_overflow=10) as application:
        yield application


@pytest.fixture
async def busy_client(busy_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=busy_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# --- 1. the hole ---------------------------------------------------------------------------------


def _spec(kind: str, user_id: int, title: str) -> Any:
    return events.spec(
        kind,
        user_id,
        Audience(users=[user_id]),
        project_id=None,
        changes={"title": [None, title]},
    )


async def _xid(session: Any) -> int:
    return int(await session.scalar(text("SELECT pg_current_xact_id()::text")))


async def test_an_open_transaction_holds_back_later_events_until_it_ends(
    live_app: FastAPI, live_client: httpx.AsyncClient
) -> None:
    user = await register_and_login(live_client)
    cursor = await now_cursor(live_client, user)
    make = services_of(live_app).sessionmaker
    async with make() as a, make() as b, make() as c:
        # A: an event written, its transaction left open.
        await events.record_many(a, [_spec("project.updated", user.id, "A")])
        xid_a = await _xid(a)
        # B: a later event (later id, later xid), committed.
        await events.record_many(b, [_spec("project.updated", user.id, "B")])
        await b.commit()
        # C takes its xid now (before D's), writes its event only after D has committed: its
        # event has the larger id yet comes first in the feed.
        xid_c = await _xid(c)
        async with make() as d:
            await events.record_many(d, [_spec("project.updated", user.id, "D")])
            await d.commit()
        await events.record_many(c, [_spec("project.updated", user.id, "C")])
        for _ in range(3):  # asked again and again: nothing is served past the open A
            held = await page(live_client, user, cursor)
            assert held["items"] == []
            assert position(held["next_cursor"]) <= (xid_a, 0)
        await a.commit()
        # A has ended: A and B are served (once other tests' transactions let the horizon
        # pass them); C is still open and holds D back.
        for _ in range(600):
            middle = await page(live_client, user, cursor)
            titles = [e["changes"]["title"][1] for e in middle["items"]]
            assert titles in ([], ["A"], ["A", "B"]), titles
            if titles == ["A", "B"]:
                break
            await asyncio.sleep(0.05)
        assert titles == ["A", "B"]
        await c.commit()
    everything, _ = await settle(live_client, live_app, user, cursor)
    titles = [e["changes"]["title"][1] for e in everything]
    assert titles == ["A", "B", "C", "D"]  # (xid, id) order: C's xid is older than D's
    ids = [e["id"] for e in everything]
    assert ids[2] > ids[3]  # ... though its id is the larger
    assert xid_c < position(await now_cursor(live_client, user))[0]
    # Paged one by one from the same cursor: the same events, none twice, none skipped.
    one_by_one, position_ = [], cursor
    while True:
        result = await page(live_client, user, position_, limit=1)
        one_by_one.extend(result["items"])
        position_ = result["next_cursor"]
        if not result["has_more"]:
            break
    assert [e["id"] for e in one_by_one] == ids


# --- 2. superseded events ------------------------------------------------------------------------


async def test_a_superseded_event_is_not_served_after_what_superseded_it(
    live_app: FastAPI, live_client: httpx.AsyncClient
) -> None:
    """W changes a task to version 2 and commits; S, whose transaction id is older (taken
    before W's), then takes the task away from the reader at that version. The feed serves
    S's tombstone first ((xid, id) order) and never W's older news after it: a follower that
    listed after both (the task absent) must not get it back."""
    user = await register_and_login(live_client)
    cursor = await now_cursor(live_client, user)
    make = services_of(live_app).sessionmaker
    task = {"id": 10**9, "version": 2, "title": "w"}
    async with make() as s:
        await _xid(s)
        async with make() as w:
            await events.record(
                w,
                type=TASK_UPDATED,
                actor_id=user.id,
                audience=Audience(users=[user.id]),
                task=task,
            )
            await w.commit()
        await events.record(
            s,
            type=TASK_ACCESS_LOST,
            actor_id=user.id,
            audience=Audience(users=[user.id]),
            task={"id": task["id"], "version": 2},
        )
        await s.commit()
    served, _ = await settle(live_client, live_app, user, cursor)
    assert [e["type"] for e in served] == [TASK_ACCESS_LOST]


# --- 3. concurrent writers and followers ---------------------------------------------------------

STATUSES = ("todo", "in_progress", "done", "cancelled")
TAGS = ("red", "green", "blue")


@dataclass
class World:
    client: httpx.AsyncClient
    app: FastAPI
    rng: random.Random
    writers: list[UserHandle]
    followers: list[UserHandle]
    p: int  # every writer and follower
    q: int  # every writer and the first follower
    tasks: dict[int, int | None] = field(default_factory=dict)  # id -> owner (personal)
    trashed: set[int] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    statuses: dict[str, int] = field(default_factory=dict)

    def writer(self, user_id: int | None) -> UserHandle | None:
        return next((w for w in self.writers if w.id == user_id), None)

    async def call(self, user: UserHandle, method: str, url: str, **kw: Any) -> httpx.Response:
        response = await self.client.request(method, url, headers=user.headers, **kw)
        assert response.status_code < 500, response.text
        key = f"{method} {url.split('/')[-1] if not url.split('/')[-1].isdigit() else '{id}'}"
        self.statuses[f"{key} {response.status_code}"] = (
            self.statuses.get(f"{key} {response.status_code}", 0) + 1
        )
        if response.status_code in (200, 201) and "owner_id" in response.text:
            body = response.json()
            if isinstance(body, dict) and "project_id" in body:
                self.tasks[body["id"]] = body["owner_id"] if body["project_id"] is None else None
        return response


async def _write(world: World, me: UserHandle) -> None:
    rng = world.rng
    if not world.tasks or rng.random() < 0.2:
        place = rng.choice(["personal", "p", "q"])
        body: dict[str, Any] = {"title": f"t{rng.randint(0, 999)}", "tags": [rng.choice(TAGS)]}
        if place == "personal":
            body["assignee_id"] = rng.choice([None, *(f.id for f in world.followers)])
        else:
            body["project_id"] = world.p if place == "p" else world.q
            body["assignee_id"] = rng.choice([None, me.id, world.followers[0].id])
        await world.call(me, "POST", TASKS, json=body)
        return
    op = rng.choices(
        ["update", "transition", "tag", "untag", "assign", "move", "delete", "restore", "force"],
        weights=[5, 4, 3, 2, 4, 4, 2, 2, 1],
    )[0]
    pool = sorted(world.trashed) if op == "restore" and world.trashed else list(world.tasks)
    task_id = rng.choice(pool)
    owner = world.writer(world.tasks.get(task_id))
    actor = owner if owner is not None else me  # project tasks: any writer is an editor
    url = task_url(task_id)
    if op == "update":
        await world.call(actor, "PATCH", url, json={"title": f"u{rng.randint(0, 999)}"})
    elif op == "transition":
        await world.call(actor, "POST", f"{url}/transition", json={"status": rng.choice(STATUSES)})
    elif op == "tag":
        await world.call(actor, "POST", f"{url}/tags", json=[rng.choice(TAGS)])
    elif op == "untag":
        await world.call(actor, "DELETE", f"{url}/tags/{rng.choice(TAGS)}")
    elif op == "assign":
        who = rng.choice([None, actor.id, *(f.id for f in world.followers)])
        await world.call(actor, "POST", f"{url}/assign", json={"assignee_id": who})
    elif op == "move":
        target = rng.choice([None, world.p, world.q])
        await world.call(actor, "PATCH", url, json={"project_id": target, "assignee_id": None})
    elif op == "delete":
        if (await world.call(actor, "DELETE", url)).status_code == 204:
            world.trashed.add(task_id)
    elif op == "restore":
        if (await world.call(actor, "POST", f"{url}/restore")).status_code == 200:
            world.trashed.discard(task_id)
    else:
        response = await world.call(actor, "DELETE", f"{url}/force")
        if response.status_code == 204:
            world.tasks.pop(task_id, None)
            world.trashed.discard(task_id)


async def _writer(world: World, me: UserHandle, operations: int) -> None:
    for _ in range(operations):
        await _write(world, me)
        await asyncio.sleep(world.rng.uniform(0, 0.01))


async def _horizon_holder(world: World) -> None:
    """A bare transaction with an xid (an event of no one's), held open a while, again and
    again: everything committed meanwhile must wait behind it, and nothing be skipped."""
    make = services_of(world.app).sessionmaker
    while not world.done.is_set():
        async with make() as session:
            await events.record_many(session, [_spec("project.updated", 0, "held")])
            await asyncio.sleep(world.rng.uniform(0.01, 0.08))
            await session.commit()
        await asyncio.sleep(world.rng.uniform(0, 0.05))


@dataclass
class Follower:
    user: UserHandle
    copy: Copy = field(default_factory=Copy)
    served: list[int] = field(default_factory=list)
    lost: int = 0

    def apply(self, event: dict[str, Any]) -> None:
        self.served.append(event["id"])
        self.lost += event["type"] == "task.access_lost"
        self.copy.apply(event)


async def _follow(world: World, follower: Follower, start: float) -> None:
    rng = random.Random(world.rng.random())
    await asyncio.sleep(start)
    client, user = world.client, follower.user
    cursor = await now_cursor(client, user)
    follower.copy.load(await list_all(client, user))
    while not world.done.is_set():
        result = await page(client, user, cursor, rng.randint(1, 40))
        for event in result["items"]:
            follower.apply(event)
        cursor = result["next_cursor"]
        await asyncio.sleep(rng.uniform(0, 0.03))
    rest, _ = await settle(client, world.app, user, cursor, limit=rng.randint(1, 40))
    for event in rest:
        follower.apply(event)


async def _remove_midway(world: World, delay: float) -> None:
    await asyncio.sleep(delay)
    lost = world.followers[2]
    response = await world.call(
        world.writers[0], "DELETE", f"{PROJECTS}/{world.p}/members/{lost.id}"
    )
    assert response.status_code == 204, response.text


def _hold_open_after_each_insert(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """The test-only hook: every transaction that writes events stays open a random while
    after writing them (row locks held, ids and xids committing out of order)."""
    insert: Callable[..., Awaitable[None]] = event_repository.insert

    async def slow_insert(session: Any, specs: Any) -> None:
        await insert(session, specs)
        await asyncio.sleep(rng.uniform(0, 0.03))

    monkeypatch.setattr(event_repository, "insert", slow_insert)


async def _world(client: httpx.AsyncClient, app: FastAPI, rng: random.Random) -> World:
    writers = [await register_and_login(client) for _ in range(8)]
    followers = [await register_and_login(client) for _ in range(3)]
    ids = []
    for members in (writers[1:] + followers, writers[1:] + followers[:1]):
        response = await client.post(
            PROJECTS, json={"name": f"p {uuid.uuid4().hex[:8]}"}, headers=writers[0].headers
        )
        assert response.status_code == 201, response.text
        project_id = response.json()["id"]
        for member in members:
            added = await client.put(
                f"{PROJECTS}/{project_id}/members/{member.id}",
                json={"role": "editor"},
                headers=writers[0].headers,
            )
            assert added.status_code == 200, added.text
        ids.append(project_id)
    return World(client, app, rng, writers, followers, ids[0], ids[1])


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_followers_end_with_exactly_the_servers_view(
    busy_app: FastAPI,
    busy_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
) -> None:
    rng = random.Random(seed)
    world = await _world(busy_client, busy_app, rng)
    # Some tasks exist before anyone follows.
    for writer in world.writers[:4]:
        await _writer(world, writer, 3)
    _hold_open_after_each_insert(monkeypatch, rng)
    followers = [Follower(user) for user in world.followers]
    following = [asyncio.create_task(_follow(world, f, rng.uniform(0, 0.5))) for f in followers]
    holder = asyncio.create_task(_horizon_holder(world))
    await asyncio.gather(
        *(_writer(world, w, 22) for w in world.writers),
        _remove_midway(world, rng.uniform(0.3, 1.5)),
    )
    world.done.set()
    await asyncio.gather(*following, holder)
    for follower in followers:
        assert len(follower.served) == len(set(follower.served)), "an event served twice"
        truth = {t["id"]: t for t in await list_all(world.client, follower.user)}
        assert follower.copy.tasks == truth, (seed, follower.user.id, world.statuses)
    # The schedule did what it says: deletes, restores, moves and a lost access all happened.
    done = {k.rsplit(" ", 1)[0] for k, n in world.statuses.items() if k.endswith((" 200", " 204"))}
    assert {"DELETE {id}", "POST restore", "PATCH {id}", "POST assign"} <= done, world.statuses
    assert followers[2].lost, "the removed follower lost access to nothing"
