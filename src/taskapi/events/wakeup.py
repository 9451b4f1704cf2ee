"""What wakes the event streams of this process (GET /events/stream): one listening connection,
one asyncio primitive, whatever the number of streams.

Every statement that inserts events notifies `taskapi_events` (a statement-level trigger on
`events`, migration 0019), which PostgreSQL delivers to every listener at commit, in every
process and replica. One asyncpg connection per process LISTENs on that channel (started and
stopped with the app's lifespan).
A notification, or a tick every `event_stream_poll_seconds`, makes the waker read the log's
*frontier*: the greatest `(xid, id)` below the horizon (`pg_snapshot_xmin`), one backward step
on the `(xid, id)` index. Only when it moved are the streams woken; each then re-reads the
feed from its own cursor. So:

* the log stays the truth: a notification carries nothing, and a lost one (a dropped listening
  connection, a notify queue overflow) delays streams by one tick at most;
* events of a transaction that committed while an older one was still running become readable
  only when that older one ends, which notifies nobody: while the frontier lags the last
  committed event, it is read every `HELD_BACK_POLL_SECONDS` instead of every tick;
* memory per stream is bounded: a stream holds no queue, only its cursor and the current
  `asyncio.Event` (replaced each time the frontier moves, so a woken stream that reads while
  the next change lands is woken again, never lost);
* an idle stream waits on that one event and nothing else: the server's shutdown reaches it
  through the same event (`stopping`, set by sse-starlette, makes the waker wake every stream),
  so no stream needs a task of its own to watch for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, Final

import anyio
import asyncpg
from sqlalchemy.engine import make_url

from taskapi.kit.config import Settings
from taskapi.kit.services import ServiceKey

logger = logging.getLogger("taskapi.events")

CHANNEL: Final = "taskapi_events"

# The servable frontier, the last event below the horizon (the oldest running transaction, as
# the feed computes it), and the last committed event: when they differ, events are committed
# but held back by an older transaction still running, whose end notifies nobody. Each branch
# is one backward step on the `(xid, id)` index: the ORDER BY names the table's columns, not
# the output's `xid` (its text, which would sort the whole log, and in the wrong order).
FRONTIER: Final = """
WITH h AS (
    SELECT coalesce(
        (SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x),
        pg_snapshot_xmax(pg_current_snapshot())) AS horizon
)
(SELECT 0 AS k, e.xid::text AS xid, e.id FROM events e, h WHERE e.xid < h.horizon
 ORDER BY e.xid DESC, e.id DESC LIMIT 1)
UNION ALL
(SELECT 1, e.xid::text, e.id FROM events e ORDER BY e.xid DESC, e.id DESC LIMIT 1)
"""
# While events are held back, the frontier is read this often (a cheap index step) instead of
# once per tick: they are served as soon as the transaction holding them ends.
HELD_BACK_POLL_SECONDS: Final = 0.05

_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})


class StreamLimitReached(Exception):
    """The user already has `event_streams_per_user` streams open on this process."""


class EventWaker:
    """The process's wake-up for event streams, and its count of open streams per user."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._poll = settings.event_stream_poll_seconds
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._frontier: tuple[str, int] | None = None
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping_task: asyncio.Task[None] | None = None
        self._closed = False
        # Handed to every stream's response as its `shutdown_event`: sse-starlette sets it when
        # uvicorn starts shutting down, and the waker then wakes every stream, which ends. One
        # event and one waiting task for the process, instead of one pair per stream.
        self.stopping = anyio.Event()
        self._open: Counter[int] = Counter()
        # Streams woken together read the feed a few at a time: a thousand of them must not
        # all wait on (and time out of) the connection pool at once.
        self.reads = asyncio.Semaphore(max(1, settings.database_pool_size // 2))

    # --- the streams' side ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The server is stopping: a woken stream ends instead of reading on."""
        return self._closed or self.stopping.is_set()

    def signal(self) -> asyncio.Event:
        """Take it *before* reading the feed, wait on it after: set once the log may have
        something new (or the process is stopping)."""
        return self._changed

    def open_stream(self, user_id: int) -> None:
        if self._open[user_id] >= self._settings.event_streams_per_user:
            raise StreamLimitReached()
        self._open[user_id] += 1

    def close_stream(self, user_id: int) -> None:
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]

    # --- the process's side ---------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="taskapi-event-waker")
        self._stopping_task = asyncio.create_task(
            self._wake_when_stopping(), name="taskapi-event-waker-stopping"
        )

    async def stop(self) -> None:
        self._closed = True
        self._wake()
        for task in (self._task, self._stopping_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._disconnect()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wake_when_stopping(self) -> None:
        await self.stopping.wait()
        self._wake()

    def _notified(self, *_args: Any) -> None:
        self._poke.set()

    async def _run(self) -> None:
        # Ends on `_closed` as well as on cancellation: Python 3.11's `asyncio.wait_for` can
        # swallow a cancellation that lands as its awaitable completes (a notification arriving
        # during `stop()`), and the task would then poll forever, hanging the shutdown.
        while not self._closed:
            self._poke.clear()
            try:
                if self._connection is None or self._connection.is_closed():
                    await self._connect()
                rows = await self._connection.fetch(FRONTIER, timeout=self._poll * 5)
                ends = {row["k"]: (row["xid"], row["id"]) for row in rows}
                frontier = ends.get(0)
                held_back = ends.get(1) != frontier
                if frontier != self._frontier:
                    self._frontier = frontier
                    self._wake()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
                # Without the listener the streams poll: wake them every tick until it is back.
                logger.warning("event listener unavailable: %s", e)
                await self._disconnect()
                self._wake()
                held_back = False
            wait = min(self._poll, HELD_BACK_POLL_SECONDS) if held_back else self._poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._poke.wait()

    async def _connect(self) -> None:
        url = make_url(self._settings.database_url)
        options: dict[str, Any] = {
            "timeout": self._settings.database_connect_timeout_seconds,
            "server_settings": {"application_name": "taskapi-event-listener"},
        }
        if url.host in _LOOPBACK_HOSTS and not ({"ssl", "sslmode"} & set(url.query)):
            options["ssl"] = False
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        connection = await asyncpg.connect(dsn, **options)
        await connection.add_listener(CHANNEL, self._notified)
        self._connection = connection

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2)
        if connection is not None:
            connection.terminate()


EVENT_WAKER: Final = ServiceKey[EventWaker]("event_waker")
