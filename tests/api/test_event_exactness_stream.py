"""The feed's exactness over GET /events/stream, with reconnects midway (issue 18: "the same
over SSE with a reconnect midway"), over real PostgreSQL and real commits.

The schedule of test_event_exactness.py (tests/event_world.py: concurrent writers, transactions
held open, the horizon held, a follower removed from the project midway), but each follower takes
a cursor, lists, then follows the SSE stream, served by a real uvicorn (httpx's ASGITransport
buffers a whole response, so it cannot follow an endless one). It drops the connection after a
random number of events, stays away a random while (events pile up, so the reconnect's first
read is a backlog, not a wake-up) and reconnects as a browser's EventSource does: the same URL,
its `?since=` now stale, plus `Last-Event-ID`, the id of the last event it applied.

Caught up: once the writers are done, each follower creates a task of its own, its end marker.
That transaction takes its id after every writer's transaction has ended, so its event comes
after all of theirs in the feed's (xid, id) order: a follower that has applied it has been
served everything written. Then each copy must be exactly what GET /tasks shows.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI

from tests.event_helpers import list_all, now_cursor, settle
from tests.event_world import Follower, World, followers_end_with_the_servers_view, make_world
from tests.sse_helpers import STREAM, messages, serving
from tests.task_helpers import TASKS

# A follower that has not caught up by then is stuck (a skipped end marker, a stream that never
# wakes): fail rather than hang the session's event loop.
CATCH_UP_TIMEOUT = 60.0
# Connections a follower cuts before its last one (that one reads up to its end marker).
MAX_CUTS = 3


@dataclass
class StreamFollowing:
    """`Follow` over the SSE stream of the server at `base_url`."""

    base_url: str
    # Per follower: the cursor it started from, and its reconnects made while the writers
    # were still writing.
    starts: dict[int, str] = field(default_factory=dict)
    midway: Counter[int] = field(default_factory=Counter)

    async def __call__(self, world: World, follower: Follower, start: float) -> None:
        rng = random.Random(world.rng.random())
        await asyncio.sleep(start)
        user = follower.user
        since = self.starts[user.id] = await now_cursor(world.client, user)
        follower.copy.load(await list_all(world.client, user))
        end = f"end {uuid.uuid4().hex[:8]}"
        cuts = rng.randint(1, MAX_CUTS)
        async with (
            asyncio.timeout(CATCH_UP_TIMEOUT),
            httpx.AsyncClient(base_url=self.base_url, timeout=CATCH_UP_TIMEOUT) as http,
            asyncio.TaskGroup() as group,
        ):
            group.create_task(_mark_the_end(world, follower, end))
            last_id: str | None = None
            for connection in range(cuts + 1):
                # Small: the removed follower gets a few dozen events in all, and each cut
                # must come while the writers still write.
                budget = rng.randint(1, 10) if connection < cuts else None
                last_id, caught_up = await _connect(http, follower, since, last_id, budget, end)
                if caught_up:
                    return
                self.midway[user.id] += not world.done.is_set()
                await asyncio.sleep(rng.uniform(0, 0.3))
            raise AssertionError("the last connection ended before the end marker")


async def _mark_the_end(world: World, follower: Follower, title: str) -> None:
    await world.done.wait()
    response = await world.client.post(TASKS, json={"title": title}, headers=follower.user.headers)
    assert response.status_code == 201, response.text


async def _connect(
    http: httpx.AsyncClient,
    follower: Follower,
    since: str,
    last_id: str | None,
    budget: int | None,
    end: str,
) -> tuple[str | None, bool]:
    """One connection: applies events until `budget` of them (then drops it) or the end marker.
    Returns the id of the last event applied and whether it was the marker."""
    headers = dict(follower.user.headers)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    async with http.stream("GET", STREAM, params={"since": since}, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for message in messages(response):
            if message.event is None:  # a heartbeat
                continue
            event = message.data
            assert message.event == event["type"], message
            assert message.id, message
            follower.apply(event)
            last_id = message.id
            if event["type"] == "task.created" and event["task"]["title"] == end:
                return last_id, True
            if budget is not None:
                budget -= 1
                if budget == 0:
                    return last_id, False
    raise AssertionError("the stream ended by itself")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stream_followers_reconnecting_midway_end_with_exactly_the_servers_view(
    busy_app: FastAPI,
    busy_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
) -> None:
    # The schedule must do what it says: every follower reconnects while the writers are still
    # writing. Events reach followers only once the cluster-wide horizon passes them, and
    # another test's open transaction can hold it back until the writers are done: then the
    # schedule exercised nothing midway, and it is run again (with fresh users) up to 3 times.
    # Every run's followers must end with exactly the server's view.
    for attempt in range(3):
        world = await make_world(busy_client, busy_app, random.Random(seed + 100 * attempt))
        async with serving(busy_app) as base_url:
            following = StreamFollowing(base_url)
            followers = await followers_end_with_the_servers_view(world, monkeypatch, following)
        if all(following.midway[f.user.id] for f in followers):
            break
    assert all(following.midway[f.user.id] for f in followers), following.midway
    # Exactly the events GET /events serves from the same cursor, in its order: the copies
    # above would not notice a skipped event that a later one of the same task overwrote.
    for follower in followers:
        start = following.starts[follower.user.id]
        polled, _ = await settle(busy_client, busy_app, follower.user, start)
        assert follower.served == [event["id"] for event in polled]
