"""GET /api/v1/events/stream: the change feed as Server-Sent Events (API.md part 2, "Change
feed and activity"), served by a real uvicorn on a socket over a database with real commits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from taskapi.events.service import FEED_FINGERPRINT
from taskapi.kit.services import services_of
from tests.conftest import UserHandle, cloned_app, register_and_login
from tests.sse_helpers import STREAM, Message, messages, serving

EVENTS = "/api/v1/events"
ARRIVAL_TIMEOUT = 10.0


@pytest.fixture
async def stream_app(migrated_databases: None) -> AsyncIterator[FastAPI]:
    async with cloned_app(event_streams_per_user=2, event_stream_heartbeat_seconds=0.3) as app:
        yield app


@pytest.fixture
async def base_url(stream_app: FastAPI) -> AsyncIterator[str]:
    async with serving(stream_app) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=ARRIVAL_TIMEOUT) as client:
        yield client


async def feed_cursor(http: httpx.AsyncClient, user: UserHandle) -> str:
    response = await http.get(EVENTS, headers=user.headers)
    assert response.status_code == 200, response.text
    cursor: str = response.json()["next_cursor"]
    return cursor


async def all_events(http: httpx.AsyncClient, user: UserHandle, since: str) -> list[Any]:
    """Everything GET /events serves after `since`, page by page."""
    items: list[Any] = []
    while True:
        response = await http.get(EVENTS, params={"since": since, "limit": 7}, headers=user.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        since = page["next_cursor"]
        if not page["has_more"]:
            return items


async def take_events(
    http: httpx.AsyncClient, user: UserHandle, count: int, **headers_and_params: Any
) -> list[Message]:
    """Open a stream, read `count` events from it, then drop the connection."""
    got: list[Message] = []
    headers = {**user.headers, **headers_and_params.pop("headers", {})}

    async def read() -> None:
        async with http.stream("GET", STREAM, headers=headers, **headers_and_params) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for message in messages(response):
                if message.event is not None:
                    got.append(message)
                    if len(got) == count:
                        return

    await asyncio.wait_for(read(), ARRIVAL_TIMEOUT)
    return got


async def create_tasks(http: httpx.AsyncClient, user: UserHandle, titles: list[str]) -> None:
    for title in titles:
        response = await http.post("/api/v1/tasks", json={"title": title}, headers=user.headers)
        assert response.status_code == 201, response.text


async def test_a_stream_resumed_with_last_event_id_loses_and_repeats_nothing(
    http: httpx.AsyncClient,
) -> None:
    user = await register_and_login(http)
    start = await feed_cursor(http, user)
    await create_tasks(http, user, [f"before {n}" for n in range(6)])

    # Cut midway through what is there: 4 of the 6 events, then the connection drops.
    first = await take_events(http, user, 4, params={"since": start})
    await create_tasks(http, user, [f"after {n}" for n in range(5)])
    # As EventSource reconnects: Last-Event-ID is the id of the last event received (it wins
    # over the stale ?since= the page was opened with).
    second = await take_events(
        http, user, 7, params={"since": start}, headers={"Last-Event-ID": first[-1].id}
    )

    streamed = [m.data for m in first + second]
    assert streamed == await all_events(http, user, start)
    assert len({event["id"] for event in streamed}) == 11
    assert [m.event for m in first + second] == [event["type"] for event in streamed]
    titles = [event["task"]["title"] for event in streamed]
    assert titles == [f"before {n}" for n in range(6)] + [f"after {n}" for n in range(5)]
    # Any event's id is a cursor GET /events takes too, and follows on from it exactly.
    assert first[1].id is not None
    assert await all_events(http, user, first[1].id) == streamed[2:]


async def test_a_stream_opened_without_a_cursor_starts_now_and_is_woken_by_a_commit(
    http: httpx.AsyncClient,
) -> None:
    user = await register_and_login(http)
    await create_tasks(http, user, ["already there"])
    got: list[Message] = []

    async def read() -> None:
        async with http.stream("GET", STREAM, headers=user.headers) as response:
            async for message in messages(response):
                if message.event is not None:
                    got.append(message)
                    if message.data["task"]["title"] == "new":
                        return

    reading = asyncio.create_task(asyncio.wait_for(read(), ARRIVAL_TIMEOUT))
    await asyncio.sleep(0.3)
    await create_tasks(http, user, ["new"])
    await reading
    # "Now" is the feed's horizon: a transaction still running anywhere on the server (other
    # tests') can hold it just before a change already committed, which then comes first.
    assert [m.data["task"]["title"] for m in got] in (["new"], ["already there", "new"])
    assert got[-1].event == "task.created"


async def test_events_held_back_by_an_older_transaction_arrive_when_it_ends_unnotified(
    http: httpx.AsyncClient, stream_app: FastAPI
) -> None:
    """The notification comes at the event's commit, while an older transaction still holds the
    horizon; that one's end notifies nobody: the waker's poll must find the frontier moved."""
    user = await register_and_login(http)
    url = make_url(services_of(stream_app).settings.database_url)
    holder = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        got: list[Message] = []
        reading = asyncio.create_task(take_events_into(http, user, got, "held"))
        await asyncio.sleep(0.3)
        transaction = holder.transaction()
        await transaction.start()
        await holder.fetchval("SELECT pg_current_xact_id()")  # an xid: it holds the horizon
        await create_tasks(http, user, ["held"])
        await asyncio.sleep(0.5)
        assert got == [], "served while an older transaction was still running"
        ended = asyncio.get_running_loop().time()
        await transaction.rollback()
        await asyncio.wait_for(reading, ARRIVAL_TIMEOUT)
        assert asyncio.get_running_loop().time() - ended < 1.5
        assert got[-1].data["task"]["title"] == "held"
    finally:
        await holder.close()


async def take_events_into(
    http: httpx.AsyncClient, user: UserHandle, got: list[Message], title: str
) -> None:
    async with http.stream("GET", STREAM, headers=user.headers) as response:
        async for message in messages(response):
            if message.event is not None:
                got.append(message)
                if message.data["task"]["title"] == title:
                    return


async def test_idle_streams_get_a_comment_line_as_heartbeat(http: httpx.AsyncClient) -> None:
    user = await register_and_login(http)
    comments: list[str] = []

    async def read() -> None:
        async with http.stream("GET", STREAM, headers=user.headers) as response:
            assert response.status_code == 200
            async for message in messages(response):
                assert message.event is None
                comments.extend(message.comments)
                if len(comments) >= 2:
                    return

    await asyncio.wait_for(read(), ARRIVAL_TIMEOUT)
    assert comments[:2] == ["keep-alive", "keep-alive"]


async def test_a_stream_woken_by_other_users_commits_still_gets_its_heartbeat(
    http: httpx.AsyncClient,
) -> None:
    """Other users' tasks are created every 0.1 s, each commit waking every stream of the
    process, none of them an event for this reader: the reader still gets a comment line
    every heartbeat (0.3 s here), or a proxy would close its idle connection."""
    reader, writer = await register_and_login(http), await register_and_login(http)
    comments: list[float] = []
    loop = asyncio.get_running_loop()

    async def read() -> None:
        async with http.stream("GET", STREAM, headers=reader.headers) as response:
            assert response.status_code == 200
            async for message in messages(response):
                assert message.event is None  # nothing of the writer's reaches the reader
                comments.extend(loop.time() for _ in message.comments)
                if len(comments) >= 4:
                    return

    async def write() -> None:
        for i in range(200):
            await create_tasks(http, writer, [f"not yours {i}"])
            await asyncio.sleep(0.1)

    writing = asyncio.create_task(write())
    try:
        await asyncio.wait_for(read(), ARRIVAL_TIMEOUT)
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
    gaps = [later - earlier for earlier, later in itertools.pairwise(comments)]
    assert max(gaps) < 1.0, gaps


async def test_streams_over_the_cap_per_user_are_refused_with_429(
    http: httpx.AsyncClient,
) -> None:
    user = await register_and_login(http)
    other = await register_and_login(http)
    opened = asyncio.Event()
    release = asyncio.Event()
    open_count = 0

    async def hold() -> None:
        nonlocal open_count
        async with http.stream("GET", STREAM, headers=user.headers) as response:
            assert response.status_code == 200
            open_count += 1
            if open_count == 2:
                opened.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.wait_for(opened.wait(), ARRIVAL_TIMEOUT)

    refused = await http.get(STREAM, headers=user.headers)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    # The cap is per user: someone else still gets theirs.
    assert (await take_stream_status(http, other)) == 200

    release.set()
    await asyncio.gather(*holders)
    # Closed streams give their slots back.
    for _ in range(50):
        if await take_stream_status(http, user) == 200:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("a closed stream's slot was never given back")


async def take_stream_status(http: httpx.AsyncClient, user: UserHandle) -> int:
    async with http.stream("GET", STREAM, headers=user.headers) as response:
        return response.status_code


async def test_a_stream_needs_a_valid_token(client: httpx.AsyncClient) -> None:
    missing = await client.get(STREAM)
    assert missing.status_code == 401
    assert missing.json()["code"] == "not_authenticated"
    forged = await client.get(STREAM, headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401


async def test_a_bad_or_expired_cursor_is_refused_before_the_stream_starts(
    client: httpx.AsyncClient, app: FastAPI, make_user: Any
) -> None:
    user = await make_user()
    response = await client.get(STREAM, params={"since": "garbage"}, headers=user.headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    response = await client.get(STREAM, headers={**user.headers, "Last-Event-ID": "garbage"})
    assert response.status_code == 422
    # A cursor from before the retention period.
    expired = services_of(app).cursor_codec.encode([1, 1, 86_400], FEED_FINGERPRINT)
    response = await client.get(STREAM, headers={**user.headers, "Last-Event-ID": expired})
    assert response.status_code == 410
    assert response.json()["code"] == "cursor_expired"
