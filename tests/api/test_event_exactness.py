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
   Seeded schedules, repeated (the schedule is tests/event_world.py; the same over the SSE
   stream, reconnecting midway: test_event_exactness_stream.py).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from taskapi.events import service as events
from taskapi.events.schemas import TASK_ACCESS_LOST, TASK_UPDATED, Audience
from taskapi.kit.services import services_of
from tests.conftest import register_and_login
from tests.event_helpers import list_all, now_cursor, page, position, settle
from tests.event_world import (
    Follower,
    World,
    bare_spec,
    followers_end_with_the_servers_view,
    make_world,
)

# --- 1. the hole ---------------------------------------------------------------------------------


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
        await events.record_many(a, [bare_spec("project.updated", user.id, "A")])
        xid_a = await _xid(a)
        # B: a later event (later id, later xid), committed.
        await events.record_many(b, [bare_spec("project.updated", user.id, "B")])
        await b.commit()
        # C takes its xid now (before D's), writes its event only after D has committed: its
        # event has the larger id yet comes first in the feed.
        xid_c = await _xid(c)
        async with make() as d:
            await events.record_many(d, [bare_spec("project.updated", user.id, "D")])
            await d.commit()
        await events.record_many(c, [bare_spec("project.updated", user.id, "C")])
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


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_followers_end_with_exactly_the_servers_view(
    busy_app: FastAPI,
    busy_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
) -> None:
    world = await make_world(busy_client, busy_app, random.Random(seed))
    await followers_end_with_the_servers_view(world, monkeypatch, _follow)
