"""GET /api/v1/events/stream: the change feed as Server-Sent Events (API.md part 2).

Served with `sse-starlette`'s `EventSourceResponse` rather than a hand-rolled StreamingResponse:
it writes the SSE framing (multi-line `data:`, `id:`, `event:`, comment lines), sends the
heartbeat comment on its own task, notices the client going away while the stream is idle
(a StreamingResponse only finds out on its next write), bounds each send, and ends every open
stream when uvicorn starts its shutdown (SIGTERM), so a drain never waits on idle streams.

A stream holds no database connection and no queue while idle: it keeps its cursor and waits
on the process's `EventWaker`; woken, it reads the feed from its cursor through
`service.feed_positions`, so it is exactly as exact as GET /events.

An idle stream costs what its connection and its response's tasks hold, so it holds as few as
it can: it waits in its generator on one event with one timer, which writes the heartbeat too
(sse-starlette's ping task is off), and the server's shutdown reaches it through that same
event (`EventWaker.stopping`), so no stream runs a task of its own to watch for either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope as TokenScope
from taskapi.events import service
from taskapi.events.schemas import MAX_FEED_LIMIT, EventPage, FeedParams
from taskapi.events.wakeup import EVENT_WAKER, EventWaker, StreamLimitReached
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.ratelimit import RateLimited
from taskapi.kit.services import Services, services_of

router = APIRouter(prefix="/events", tags=["events"], responses=problem_responses(401, 429))

# A client that stops reading holds a stream no longer than this per write.
SEND_TIMEOUT_SECONDS = 30.0
# How long a stream may take to end by itself at shutdown before it is cut.
SHUTDOWN_GRACE_SECONDS = 5.0
# Every stream over the cap is refused with this Retry-After.
STREAM_RETRY_AFTER_SECONDS = 30

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`: per event `id: <cursor after it>`, "
        "`event: <type>`, `data: <the event as GET /events items>`; a comment line after "
        "15 s without events.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class _EventStream(EventSourceResponse):
    """Gives its slot back to the user's count however the stream ends."""

    def __init__(self, waker: EventWaker, user_id: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._waker = waker
        self._user_id = user_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._waker.close_stream(self._user_id)


# Written while a stream is idle, so that proxies and clients keep the connection open.
_HEARTBEAT = ServerSentEvent(comment="keep-alive")


def _events(page: EventPage, positions: list[str]) -> list[ServerSentEvent]:
    return [
        ServerSentEvent(data=item.model_dump_json(exclude_none=True), event=item.type, id=position)
        for item, position in zip(page.items, positions, strict=True)
    ]


async def _read(
    services: Services, user_id: int, since: str | None, session: AsyncSession | None = None
) -> tuple[EventPage, list[str]]:
    if session is None:
        async with services.read_sessionmaker() as own:
            return await _read(services, user_id, since, own)
    return await service.feed_positions(
        session,
        user_id,
        FeedParams(since=since, limit=MAX_FEED_LIMIT),
        services.cursor_codec,
        services.settings.event_retention_days,
    )


async def _follow(
    services: Services,
    waker: EventWaker,
    user_id: int,
    page: EventPage,
    positions: list[str],
    changed: asyncio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """`changed` was taken before `page` was read: a change committed during that read has set
    it, so nothing waits for a change it missed. Returns (the response then ends properly, with
    its last chunk) when the server shuts down, which sets `changed` too (a stream opened after
    it has been woken sees `waker.closed` instead)."""
    heartbeat = services.settings.event_stream_heartbeat_seconds
    clock = asyncio.get_running_loop().time
    # The heartbeat counts from the stream's last write, not from its last wake-up: on a busy
    # server a stream is woken by everyone's commits, and may get none of them for minutes.
    written = clock()
    while True:
        for event in _events(page, positions):
            yield event
            written = clock()
        since = page.next_cursor
        if not page.has_more:
            while not waker.closed and not await _set_within(
                changed, written + heartbeat - clock()
            ):
                yield _HEARTBEAT
                written = clock()
        if waker.closed:
            return
        changed = waker.signal()
        async with waker.reads:
            page, positions = await _read(services, user_id, since)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


@router.get(
    "/stream",
    dependencies=[requires(TokenScope.EVENTS_READ)],
    response_class=EventSourceResponse,
    responses={**_STREAM_DOC, **problem_responses(410, 422)},
    summary="Follow the changes you may see, live",
)
async def stream_events(
    user: CurrentUser,
    session: DbSession,
    request: Request,
    since: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=2048,
            description="A cursor (`next_cursor` of GET /events, or an event's `id`) to resume "
            "after; `Last-Event-ID` wins. Neither: from now.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(min_length=1, max_length=2048, description="Sent by EventSource on reconnect"),
    ] = None,
) -> EventSourceResponse:
    """The events GET /events serves, as Server-Sent Events, as they are committed: `id:` is
    the feed cursor right after the event, `event:` its type, `data:` the event as GET /events
    shows it. Reconnecting with `Last-Event-ID` (browsers do) or `?since=` resumes exactly
    where the stream was cut: nothing skipped, nothing twice. A comment line is sent after
    15 s without events. At most `EVENT_STREAMS_PER_USER` open streams per user on a server
    process (429 beyond). A cursor past the retention answers 410 `cursor_expired`. See
    docs/sync.md."""
    services = services_of(request.app)
    waker = services.get(EVENT_WAKER)
    try:
        waker.open_stream(user.id)
    except StreamLimitReached:
        raise RateLimited(
            detail="Too many open event streams; close one or retry after Retry-After seconds.",
            headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)},
        ) from None
    try:
        changed = waker.signal()
        # The request's own session (closed before the stream starts): the login check may
        # already hold its connection, and waiting for a second one could deadlock the pool.
        page, positions = await _read(services, user.id, last_event_id or since, session)
    except BaseException:
        waker.close_stream(user.id)
        raise
    return _EventStream(
        waker,
        user.id,
        content=_follow(services, waker, user.id, page, positions, changed),
        # The heartbeat is written by _follow while the stream is idle.
        ping=0,
        send_timeout=SEND_TIMEOUT_SECONDS,
        # Set by sse-starlette when uvicorn starts shutting down (SIGTERM): every stream then
        # ends with a proper last chunk (clients reconnect elsewhere with Last-Event-ID), well
        # within uvicorn's graceful-shutdown timeout.
        shutdown_event=waker.stopping,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )
