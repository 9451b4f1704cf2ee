"""The process's event waker (events/wakeup.py): what wakes it, and that it always stops (an
app's shutdown waits for it)."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy.engine import make_url

from taskapi.events.wakeup import CHANNEL, EventWaker
from taskapi.kit.config import Settings

_EVENT = "INSERT INTO events (type) SELECT 'task.updated' FROM generate_series(1, $1) RETURNING id"


async def test_writing_events_notifies_the_listeners_once_at_commit_and_never_on_rollback(
    settings: Settings,
) -> None:
    """The trigger on `events` (migration 0019) is the streams' only wake-up: a statement that
    records events notifies the waker's channel, at commit, once per transaction however many
    statements and events; a rolled-back one notifies nobody."""
    dsn = make_url(settings.database_url).set(drivername="postgresql")
    listener = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    writer = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[2]))
    written: list[int] = []
    try:
        async with writer.transaction():
            for count in (3, 1):
                written += [r["id"] for r in await writer.fetch(_EVENT, count)]
            await asyncio.sleep(0.2)
            assert heard.empty(), "notified before the commit"
        assert await asyncio.wait_for(heard.get(), 5) == CHANNEL
        tx = writer.transaction()
        await tx.start()
        await writer.fetch(_EVENT, 2)
        await tx.rollback()
        await asyncio.sleep(0.3)
        assert heard.empty(), "a second notification: folded, or from the rolled-back writer"
    finally:
        await writer.execute("DELETE FROM events WHERE id = any($1::bigint[])", written)
        await listener.close()
        await writer.close()


async def test_stop_ends_the_waker_even_when_a_notification_lands_with_it(
    settings: Settings,
) -> None:
    """A notification arriving as `stop()` cancels the listening task: on Python 3.11
    `asyncio.wait_for` could swallow that cancellation and the task polled on forever, hanging
    the app's shutdown (seen as a test suite stuck in a fixture's teardown)."""
    for _ in range(20):
        waker = EventWaker(settings)
        await waker.start()
        await asyncio.sleep(0.01)  # connected and waiting for the next notification
        waker._notified()  # as asyncpg calls it when a NOTIFY arrives
        stopping = asyncio.create_task(waker.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert done, "stop() never returned: the listening task outlived its cancellation"
