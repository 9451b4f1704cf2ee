"""The dispatcher's running loop (`run(stop)`, as `taskapi worker` runs it), woken by a stand-in
for the process's EventWaker: it fans the log out when woken and, should a wake-up be lost,
after a quiet poll interval; the rounds that deliveries finishing start only claim.
(tests/api/test_webhook_delivery.py drives it round by round, on a clock of its own.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from taskapi.events.repository import HORIZON
from taskapi.kit.outbound import outbound_client
from taskapi.kit.services import services_of
from taskapi.webhooks import queue
from taskapi.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import UserHandle, cloned_app, register_and_login
from tests.task_helpers import TASKS
from tests.webhook_receiver import Receiver, free_port, serving


class Waker:
    """What the dispatcher needs of EventWaker: `signal()` hands out the current event, a
    wake-up sets it and puts a fresh one in its place."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def signal(self) -> asyncio.Event:
        return self.event

    def wake(self) -> None:
        woken, self.event = self.event, asyncio.Event()
        woken.set()


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    outbound: httpx.AsyncClient
    fan_outs: list[int]  # one entry per fan-out batch the dispatcher ran

    async def subscribe(self, user: UserHandle, receiver: Receiver) -> None:
        response = await self.client.post(
            "/api/v1/webhooks",
            json={"url": receiver.url, "events": ["task.created"]},
            headers=user.headers,
        )
        assert response.status_code == 201, response.text

    async def create_tasks(self, user: UserHandle, count: int) -> None:
        for n in range(count):
            response = await self.client.post(
                TASKS, json={"title": f"task {n}"}, headers=user.headers
            )
            assert response.status_code == 201, response.text

    async def visible(self) -> None:
        """Until every event written so far is below the horizon (another test's transaction,
        anywhere on the server, may hold it back a while): the real EventWaker would wake the
        dispatcher again when it moves; this test's stand-in wakes it once."""
        async with asyncio.timeout(20):
            while True:
                async with services_of(self.app).sessionmaker() as session:
                    horizon = (await session.execute(text(HORIZON))).one().horizon
                    last = await session.scalar(
                        text("SELECT xid::text FROM events ORDER BY xid DESC, id DESC LIMIT 1")
                    )
                if last is None or int(horizon) > int(last):
                    return
                await asyncio.sleep(0.02)

    def dispatcher(self, waker: Waker, poll_seconds: float) -> WebhookDispatcher:
        services = services_of(self.app)
        settings = services.settings.model_copy(update={"job_poll_interval_seconds": poll_seconds})
        return WebhookDispatcher(
            services.sessionmaker, settings, wake=waker.signal, client=self.outbound
        )


@pytest.fixture
async def env(migrated_databases: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    fan_outs: list[int] = []
    counted = queue.fan_out

    async def counting_fan_out(*args: Any) -> tuple[int, int] | None:
        fan_outs.append(1)
        return await counted(*args)

    monkeypatch.setattr(queue, "fan_out", counting_fan_out)
    async with cloned_app(
        webhook_allow_private_networks=True, webhook_timeout_seconds=2
    ) as application:
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            outbound_client(allow_private_networks=True, timeout=2) as outbound,
        ):
            yield Env(application, client, outbound, fan_outs)


async def running(dispatcher: WebhookDispatcher, body: Callable[[], Awaitable[None]]) -> None:
    """`body` with the dispatcher running; then stopped, its deliveries finished."""
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_wake_up_fans_out_once_and_finished_deliveries_only_claim(env: Env) -> None:
    alice = await register_and_login(env.client)
    waker = Waker()
    # No poll within the test: every fan-out comes from the start or a wake-up.
    dispatcher = env.dispatcher(waker, poll_seconds=60)
    async with serving(Receiver(free_port())) as receiver:
        await env.subscribe(alice, receiver)

        async def body() -> None:
            await env.create_tasks(alice, 6)
            await env.visible()
            waker.wake()
            await receiver.wait_for(6)
            while dispatcher.delivered < 6:  # noqa: ASYNC110 - the outcomes land after arrival
                await asyncio.sleep(0.01)

        await running(dispatcher, body)
    assert sorted(r.event["task"]["title"] for r in receiver.received) == [
        f"task {n}" for n in range(6)
    ]
    # The first round and the wake-up: six deliveries finishing woke the loop again (each
    # round claiming what was due) without another transaction on the fan-out's cursor.
    assert len(env.fan_outs) == 2


async def test_without_a_wake_up_the_poll_interval_fans_out(env: Env) -> None:
    alice = await register_and_login(env.client)
    waker = Waker()  # never woken: a lost notification
    dispatcher = env.dispatcher(waker, poll_seconds=0.2)
    async with serving(Receiver(free_port())) as receiver:
        await env.subscribe(alice, receiver)

        async def body() -> None:
            await asyncio.sleep(0.3)  # the first round is over: only a poll can find it
            await env.create_tasks(alice, 2)
            await receiver.wait_for(2, within=5)

        await running(dispatcher, body)
    assert len(receiver.received) == 2
