"""Webhooks under concurrency (issue 19): many writers committing in random orders while two
dispatchers fan out and deliver at once still give exactly one delivery per event and webhook;
a slow receiver holds only its own share of the in-flight deliveries, never the others'."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from taskapi.events.wakeup import EVENT_WAKER
from taskapi.kit.services import services_of
from taskapi.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import UserHandle, cloned_app, register_and_login
from tests.event_helpers import settle
from tests.task_helpers import TASKS, task_url
from tests.webhook_receiver import Receiver, free_port, serving

WEBHOOKS = "/api/v1/webhooks"


async def subscribe(
    client: httpx.AsyncClient, user: UserHandle, receiver: Receiver, events: list[str]
) -> int:
    response = await client.post(
        WEBHOOKS, json={"url": receiver.url, "events": events}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    receiver.secrets.append(response.json()["secret"])
    webhook_id: int = response.json()["id"]
    return webhook_id


async def starts_at(application: FastAPI, webhook_id: int) -> set[int]:
    """The events at or after the webhook's start (the horizon when it was created)."""
    async with services_of(application).sessionmaker() as session:
        rows = await session.scalars(
            text(
                "SELECT e.id FROM events e JOIN webhooks w ON e.xid >= w.start_xid WHERE w.id = :id"
            ),
            {"id": webhook_id},
        )
        return set(rows.all())


async def queue_state(application: FastAPI) -> str:
    """The delivery queue and the fan-out cursor, for the message of a test that timed out."""
    async with services_of(application).sessionmaker() as session:
        deliveries = await session.execute(
            text(
                "SELECT webhook_id, status, attempts, last_error, count(*),"
                " max(next_attempt_at) - now() AS next_in, max(locked_until) - now() AS lease"
                " FROM webhook_deliveries GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3"
            )
        )
        fanout = await session.execute(text("SELECT after_xid::text, after_id FROM webhook_fanout"))
        events = await session.execute(
            text(
                "SELECT count(*), max(id), pg_snapshot_xmin(pg_current_snapshot())::text"
                " FROM events"
            )
        )
        return (
            f"deliveries {[tuple(row) for row in deliveries]};"
            f" fan-out {[tuple(row) for row in fanout]}; events {tuple(events.one())}"
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_writers_and_two_dispatchers_deliver_each_event_once(
    migrated_databases: None, seed: int
) -> None:
    rng = random.Random(seed)
    async with cloned_app(
        webhook_allow_private_networks=True, database_pool_size=20, database_max_overflow=10
    ) as application:
        services = services_of(application)
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            serving(Receiver(free_port())) as everything,
            serving(Receiver(free_port())) as created_only,
        ):
            owner = await register_and_login(client)
            writers = [await register_and_login(client) for _ in range(5)]
            project = await client.post(
                "/api/v1/projects", json={"name": "shared"}, headers=owner.headers
            )
            project_id = project.json()["id"]
            for writer in writers:
                added = await client.put(
                    f"/api/v1/projects/{project_id}/members/{writer.id}",
                    json={"role": "editor"},
                    headers=owner.headers,
                )
                assert added.status_code in (200, 201), added.text
            start = (await client.get("/api/v1/events", headers=owner.headers)).json()
            everything_id = await subscribe(client, owner, everything, ["*"])
            created_only_id = await subscribe(client, owner, created_only, ["task.created"])

            async def write(writer: UserHandle) -> None:
                mine: list[int] = []
                for _ in range(12):
                    if mine and rng.random() < 0.5:
                        response = await client.patch(
                            task_url(rng.choice(mine)),
                            json={"priority": rng.choice(["low", "high", "urgent"])},
                            headers=writer.headers,
                        )
                        assert response.status_code == 200, response.text
                    else:
                        response = await client.post(
                            TASKS,
                            json={"title": f"by {writer.id}", "project_id": project_id},
                            headers=writer.headers,
                        )
                        assert response.status_code == 201, response.text
                        mine.append(response.json()["id"])
                    await asyncio.sleep(rng.random() * 0.02)

            stop = asyncio.Event()
            dispatchers = [
                WebhookDispatcher(
                    services.sessionmaker, services.settings, wake=services.get(EVENT_WAKER).signal
                )
                for _ in range(2)
            ]
            running = [asyncio.create_task(d.run(stop)) for d in dispatchers]
            try:
                await asyncio.gather(*(write(writer) for writer in writers))
                # The owner's feed, once it has passed every write (other tests' transactions
                # may hold the horizon back for a while).
                events, _ = await settle(client, application, owner, start["next_cursor"])
                # A webhook starts where a feed cursor taken at its creation would: at the
                # horizon, which another test's transaction may hold back. So whether the
                # project's own events (the last members added) are its to deliver depends on
                # that moment; the writes' events always are.
                since = await starts_at(application, everything_id)
                expected = [e["id"] for e in events if e["id"] in since]
                since = await starts_at(application, created_only_id)
                expected_created = [
                    e["id"] for e in events if e["type"] == "task.created" and e["id"] in since
                ]
                writes = [e["id"] for e in events if e["type"].startswith("task.")]
                assert set(writes) <= set(expected)
                assert len(expected) >= 40  # 60 writes, less the updates that changed nothing
                try:
                    await everything.wait_for(len(expected), within=30)
                    await created_only.wait_for(len(expected_created), within=30)
                except TimeoutError:
                    got_all = (len(everything.received), len(created_only.received))
                    wanted = (len(expected), len(expected_created))
                    state = await queue_state(application)
                    pytest.fail(f"received {got_all} of {wanted} in 30 s: {state}")
                await asyncio.sleep(0.5)  # anything extra would arrive now
            finally:
                stop.set()
                await asyncio.gather(*running)

            got = [int(i) for i in everything.delivered_ids()]
            assert sorted(got) == sorted(expected)  # each once, none missing, none extra
            assert sorted(int(i) for i in created_only.delivered_ids()) == sorted(expected_created)
            assert all(r.verified_by for r in everything.received + created_only.received)
            # Between them the two dispatchers sent each delivery once (how they shared the work
            # is up to their claims: SKIP LOCKED may leave one of them little or nothing).
            received = len(everything.received) + len(created_only.received)
            assert sum(d.delivered for d in dispatchers) == received


async def test_a_slow_receiver_holds_only_its_own_share(migrated_databases: None) -> None:
    release = asyncio.Event()

    async def slow(n: int, received: Any) -> int:
        await release.wait()
        return 200

    async with cloned_app(
        webhook_allow_private_networks=True,
        webhook_max_in_flight=16,
        webhook_max_in_flight_per_endpoint=4,
        webhook_timeout_seconds=30,
    ) as application:
        services = services_of(application)
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            serving(Receiver(free_port(), answer=slow)) as stuck,
            serving(Receiver(free_port())) as healthy,
        ):
            alice = await register_and_login(client)
            await subscribe(client, alice, stuck, ["task.created"])
            await subscribe(client, alice, healthy, ["task.created"])
            for n in range(30):
                response = await client.post(TASKS, json={"title": f"t{n}"}, headers=alice.headers)
                assert response.status_code == 201
            stop = asyncio.Event()
            dispatcher = WebhookDispatcher(
                services.sessionmaker, services.settings, wake=services.get(EVENT_WAKER).signal
            )
            running = asyncio.create_task(dispatcher.run(stop))
            try:
                # Every healthy delivery goes through while the slow receiver holds its four.
                await healthy.wait_for(30, within=20)
                assert stuck.in_flight == 4
                assert stuck.max_in_flight == 4
                release.set()
                await stuck.wait_for(30, within=20)
            finally:
                release.set()
                stop.set()
                await running
            assert stuck.max_in_flight == 4
            assert sorted(stuck.delivered_ids()) == sorted(healthy.delivered_ids())
