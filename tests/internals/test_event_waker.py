"""The process's event waker (events/wakeup.py) always stops: an app's shutdown waits for it."""

from __future__ import annotations

import asyncio

from taskapi.events.wakeup import EventWaker
from taskapi.kit.config import Settings


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
