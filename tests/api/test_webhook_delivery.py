"""Webhook delivery end to end (issue 19): events made through the API reach a real receiver on
loopback, signed (verified with the `standardwebhooks` library), retried, in order per task,
filtered, never about what the owner cannot see; deactivation after 3 days of failures.

The dispatcher runs round by round (`run_once`) on a clock the test moves, on a database of the
test's own (real commits): retries and deactivation are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import text

from taskapi.events.jobs import purge_events
from taskapi.jobs.registry import JobContext
from taskapi.kit.outbound import outbound_client
from taskapi.kit.services import services_of
from taskapi.storage import STORAGE
from taskapi.webhooks.dispatcher import WebhookDispatcher
from taskapi.webhooks.jobs import purge_pings
from tests.conftest import UserHandle, cloned_app, register_and_login
from tests.event_helpers import settle
from tests.task_helpers import TASKS, task_url
from tests.webhook_receiver import Receiver, free_port, serving

WEBHOOKS = "/api/v1/webhooks"
PROJECTS = "/api/v1/projects"


class Clock:
    """Real time plus what the test has skipped ahead (the API stamps pings and redeliveries
    with real time: the dispatcher must never be behind it)."""

    def __init__(self) -> None:
        self.skipped = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.skipped

    def advance(self, **delta: float) -> None:
        self.skipped += timedelta(**delta)

    def advance_to(self, moment: datetime) -> None:
        self.skipped += max(timedelta(0), moment - self())


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    clock: Clock
    dispatcher: WebhookDispatcher
    outbound: httpx.AsyncClient

    async def fanned_out(self) -> None:
        """Until every event committed so far has its deliveries. The log is read below the
        horizon, the oldest transaction running in the whole cluster: while another test holds
        one open, the fan-out waits for it, as a feed reader would."""
        async with asyncio.timeout(20):
            while True:
                await self.dispatcher.fan_out()
                async with services_of(self.app).sessionmaker() as session:
                    behind = await session.scalar(
                        text(
                            "SELECT EXISTS (SELECT 1 FROM events e, webhook_fanout f "
                            "WHERE (e.xid, e.id) > (f.after_xid, f.after_id))"
                        )
                    )
                if not behind:
                    return
                await asyncio.sleep(0.02)

    async def deliver(self) -> int:
        """Once the fan-out has caught up, dispatcher rounds until one starts nothing (a task's
        next event goes in the round after its previous one was delivered); how many attempts
        were made."""
        await self.fanned_out()
        started = 0
        while round_started := await self.dispatcher.run_once(self.outbound):
            started += round_started
        return started

    async def subscribe(
        self, user: UserHandle, receiver: Receiver, events: list[str], **extra: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            WEBHOOKS,
            json={"url": receiver.url, "events": events, **extra},
            headers=user.headers,
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        receiver.secrets.append(created["secret"])
        return created

    async def deliveries(self, user: UserHandle, webhook_id: int) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"{WEBHOOKS}/{webhook_id}/deliveries?limit=100", headers=user.headers
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@pytest.fixture
async def env(migrated_databases: None) -> AsyncIterator[Env]:
    async with cloned_app(
        webhook_allow_private_networks=True, webhook_timeout_seconds=2
    ) as application:
        clock = Clock()
        settings = services_of(application).settings
        dispatcher = WebhookDispatcher(services_of(application).sessionmaker, settings, clock=clock)
        transport = httpx.ASGITransport(app=application)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            outbound_client(allow_private_networks=True, timeout=2) as outbound,
        ):
            yield Env(application, client, clock, dispatcher, outbound)


async def create_task(env: Env, user: UserHandle, **body: Any) -> dict[str, Any]:
    response = await env.client.post(TASKS, json={"title": "t", **body}, headers=user.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def patch_task(env: Env, user: UserHandle, task_id: int, **body: Any) -> None:
    response = await env.client.patch(task_url(task_id), json=body, headers=user.headers)
    assert response.status_code == 200, response.text


async def test_events_arrive_signed_in_order_once_each(env: Env) -> None:
    alice = await register_and_login(env.client)
    async with serving(Receiver(free_port())) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.*"])
        start = (await env.client.get("/api/v1/events", headers=alice.headers)).json()
        task = await create_task(env, alice, title="first")
        await patch_task(env, alice, task["id"], title="second")
        await patch_task(env, alice, task["id"], status="in_progress")
        await env.deliver()
        await env.deliver()  # nothing left: nothing sent twice

        events = [r.event for r in receiver.received]
        assert [(e["type"], e["task"]["title"]) for e in events] == [
            ("task.created", "first"),
            ("task.updated", "second"),
            ("task.updated", "second"),
        ]
        assert events[2]["changes"] == {"status": ["todo", "in_progress"]}
        # Every one verified with the secret shown at creation; webhook-id is the event id.
        assert all(r.verified_by == [webhook["secret"]] for r in receiver.received)
        assert [r.webhook_id for r in receiver.received] == [str(e["id"]) for e in events]
        # Each body is the event exactly as the feed serves it.
        feed, _ = await settle(env.client, env.app, alice, start["next_cursor"])
        assert events == feed

        log = await env.deliveries(alice, webhook["id"])
        assert [
            (d["event_type"], d["status"], d["attempts"], d["response_status"]) for d in log
        ] == [
            ("task.updated", "delivered", 1, 200),
            ("task.updated", "delivered", 1, 200),
            ("task.created", "delivered", 1, 200),
        ]
        shown = (await env.client.get(f"{WEBHOOKS}/{webhook['id']}", headers=alice.headers)).json()
        assert shown["last_delivery_at"] is not None


def attempts_metric() -> dict[str, float]:
    """taskapi_webhook_attempts_total by outcome, as /ops/metrics would show it."""
    return {
        outcome: REGISTRY.get_sample_value("taskapi_webhook_attempts_total", {"outcome": outcome})
        or 0.0
        for outcome in ("delivered", "retry", "failed")
    }


async def test_a_500_is_retried_after_the_backoff_and_delivered_once(env: Env) -> None:
    alice = await register_and_login(env.client)
    before = attempts_metric()
    statuses = iter([500, 200])

    async def answer(n: int, received: Any) -> int:
        return next(statuses)

    async with serving(Receiver(free_port(), answer=answer)) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.created"])
        await create_task(env, alice)
        await env.deliver()
        [pending] = await env.deliveries(alice, webhook["id"])
        assert (pending["status"], pending["attempts"], pending["response_status"]) == (
            "pending",
            1,
            500,
        )
        assert pending["last_error"] == "HTTP 500"
        # Not before the backoff (5 s, +-20%) ...
        env.clock.advance(seconds=3.9)
        assert await env.deliver() == 0
        env.clock.advance(seconds=2.2)
        assert await env.deliver() == 1
        [done] = await env.deliveries(alice, webhook["id"])
        assert (done["status"], done["attempts"], done["response_status"]) == ("delivered", 2, 200)
        # Two requests, the same message both times.
        assert len(receiver.received) == 2
        assert receiver.received[0].webhook_id == receiver.received[1].webhook_id
        assert receiver.received[0].body == receiver.received[1].body
    after = attempts_metric()
    assert {k: after[k] - before[k] for k in after} == {"delivered": 1, "retry": 1, "failed": 0}


async def test_answers_written_together_each_land_on_their_own_delivery(env: Env) -> None:
    """A round's answers are written in batches (several webhooks, successes and failures in
    one write): each delivery still gets its own outcome, each webhook its own state."""
    alice = await register_and_login(env.client)
    before = attempts_metric()

    async def refuse(n: int, received: Any) -> int:
        return 500

    async with (
        serving(Receiver(free_port())) as first,
        serving(Receiver(free_port())) as second,
        serving(Receiver(free_port(), answer=refuse)) as failing,
    ):
        hooks = [await env.subscribe(alice, r, ["task.created"]) for r in (first, second, failing)]
        for n in range(6):
            await create_task(env, alice, title=f"t{n}")
        assert await env.deliver() == 18  # one round; the failures wait for their backoff
        for hook in hooks[:2]:
            log = await env.deliveries(alice, hook["id"])
            assert [(d["status"], d["attempts"], d["response_status"]) for d in log] == [
                ("delivered", 1, 200)
            ] * 6
            shown = await env.client.get(f"{WEBHOOKS}/{hook['id']}", headers=alice.headers)
            assert shown.json()["last_delivery_at"] is not None
        log = await env.deliveries(alice, hooks[2]["id"])
        assert [(d["status"], d["attempts"], d["last_error"]) for d in log] == [
            ("pending", 1, "HTTP 500")
        ] * 6
        shown = await env.client.get(f"{WEBHOOKS}/{hooks[2]['id']}", headers=alice.headers)
        assert shown.json()["last_delivery_at"] is None
    after = attempts_metric()
    assert {k: after[k] - before[k] for k in after} == {"delivered": 12, "retry": 6, "failed": 0}


async def test_a_slow_outcome_write_does_not_hold_the_receiver_s_share(env: Env) -> None:
    """A webhook may have 8 requests in flight; a request that has been answered is no longer
    in flight, even while its outcome waits to be written (here: behind a lock on the webhook's
    row), so the receiver keeps getting the rest."""
    alice = await register_and_login(env.client)
    async with serving(Receiver(free_port())) as receiver:
        hook = await env.subscribe(alice, receiver, ["task.created"])
        for n in range(20):  # 20 tasks: none waits for another's delivery
            await create_task(env, alice, title=f"t{n}")
        await env.fanned_out()
        stop = asyncio.Event()
        async with services_of(env.app).sessionmaker() as holder:
            await holder.execute(
                text("SELECT 1 FROM webhooks WHERE id = :id FOR UPDATE"), {"id": hook["id"]}
            )
            running = asyncio.create_task(env.dispatcher.run(stop))
            try:
                await receiver.wait_for(20, within=10)
                assert receiver.max_in_flight <= 8
                log = await env.deliveries(alice, hook["id"])
                assert {(d["status"], d["attempts"]) for d in log} == {("pending", 1)}
            finally:
                await holder.rollback()
                stop.set()
                await running  # the outcomes are written before it returns
        log = await env.deliveries(alice, hook["id"])
        assert [(d["status"], d["attempts"]) for d in log] == [("delivered", 1)] * 20
        assert len(receiver.received) == 20


async def test_a_receiver_down_for_hours_gets_everything_once_it_is_up(env: Env) -> None:
    alice = await register_and_login(env.client)
    port = free_port()
    receiver = Receiver(port)
    webhook = await env.subscribe(alice, receiver, ["task.created"])
    titles = [f"while down {n}" for n in range(3)]
    for title in titles:
        await create_task(env, alice, title=title)
    # Down: connection refused, again and again, for 20 hours of retries.
    for _ in range(8):
        await env.deliver()
        env.clock.advance(hours=2.5)
    log = await env.deliveries(alice, webhook["id"])
    assert {d["status"] for d in log} == {"pending"}
    assert all(d["attempts"] >= 5 and d["response_status"] is None for d in log)
    assert all(d["last_error"] for d in log)
    async with serving(receiver):
        env.clock.advance(hours=6)
        await env.deliver()
        # Different tasks: no order between them (their retries are jittered apart).
        assert sorted(r.event["task"]["title"] for r in receiver.received) == titles
    log = await env.deliveries(alice, webhook["id"])
    assert {d["status"] for d in log} == {"delivered"}


async def test_after_24_hours_of_failures_a_delivery_fails_for_good(env: Env) -> None:
    alice = await register_and_login(env.client)
    sent_at: list[datetime] = []

    async def answer(n: int, received: Any) -> int:
        sent_at.append(env.clock())
        return 503

    async with serving(Receiver(free_port(), answer=answer)) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.created"])
        await create_task(env, alice)
        await env.deliver()
        # Each retry exactly when it is due.
        while (log := await env.deliveries(alice, webhook["id"]))[0]["status"] == "pending":
            env.clock.advance_to(datetime.fromisoformat(log[0]["next_attempt_at"]))
            assert await env.deliver() == 1
            assert len(sent_at) < 20
        [failed] = log
        assert failed["status"] == "failed"
        assert failed["next_attempt_at"] is None
        assert failed["attempts"] == len(receiver.received) == len(sent_at)
        delays = [(b - a).total_seconds() for a, b in itertools.pairwise(sent_at)]
        # Exponential from 5 s (+-20%), capped at 6 h (+-20%), until 24 h are over; the clock is
        # real time plus the skips, so each delay also holds the real time a round takes.
        round_slack = 1.0
        assert 4 <= delays[0] <= 6 + round_slack
        assert 16 <= delays[1] <= 24 + round_slack
        assert all(d <= 6 * 3600 * 1.2 + round_slack for d in delays)
        assert max(delays) >= 6 * 3600 * 0.8
        assert (sent_at[-1] - sent_at[0]) >= timedelta(hours=24)
        assert (sent_at[-2] - sent_at[0]) < timedelta(hours=24)
        assert 9 <= len(sent_at) <= 13


async def test_a_task_s_events_wait_for_its_failing_one_other_tasks_do_not(env: Env) -> None:
    alice = await register_and_login(env.client)
    refuse: set[str] = set()

    async def answer(n: int, received: Any) -> int:
        return 500 if received.event["task"]["title"] in refuse else 200

    async with serving(Receiver(free_port(), answer=answer)) as receiver:
        await env.subscribe(alice, receiver, ["task.*"])
        refuse.add("stuck")
        stuck = await create_task(env, alice, title="stuck")
        await patch_task(env, alice, stuck["id"], description="later change")
        other = await create_task(env, alice, title="other")
        await patch_task(env, alice, other["id"], description="its change")
        for _ in range(3):
            await env.deliver()
        got = [(r.event["type"], r.event["task"]["title"]) for r in receiver.received]
        # The stuck task's update never overtook its creation; the other task went through.
        assert ("task.updated", "stuck") not in got
        assert got.count(("task.created", "stuck")) == 1
        others = [item for item in got if item[1] == "other"]
        assert others == [("task.created", "other"), ("task.updated", "other")]
        refuse.clear()
        env.clock.advance(seconds=10)
        await env.deliver()
        await env.deliver()
        got = [(r.event["type"], r.event["task"]["title"]) for r in receiver.received]
        assert got[-2:] == [("task.created", "stuck"), ("task.updated", "stuck")]


async def test_filters_by_type_and_project(env: Env) -> None:
    alice = await register_and_login(env.client)
    project = await env.client.post(PROJECTS, json={"name": "shared"}, headers=alice.headers)
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    async with (
        serving(Receiver(free_port())) as created_only,
        serving(Receiver(free_port())) as in_project,
        serving(Receiver(free_port())) as projects_only,
    ):
        await env.subscribe(alice, created_only, ["task.created"])
        await env.subscribe(alice, in_project, ["*"], project_id=project_id)
        await env.subscribe(alice, projects_only, ["project.*"])
        personal = await create_task(env, alice, title="personal")
        await patch_task(env, alice, personal["id"], title="personal 2")
        shared = await create_task(env, alice, title="shared", project_id=project_id)
        renamed = await env.client.patch(
            f"{PROJECTS}/{project_id}", json={"name": "renamed"}, headers=alice.headers
        )
        assert renamed.status_code == 200, renamed.text
        await env.deliver()

        assert [(r.event["type"], r.event.get("task_id")) for r in created_only.received] == [
            ("task.created", personal["id"]),
            ("task.created", shared["id"]),
        ]
        assert [r.event["type"] for r in in_project.received] == [
            "task.created",
            "project.updated",
        ]
        assert all(r.event["project_id"] == project_id for r in in_project.received)
        assert [r.event["type"] for r in projects_only.received] == ["project.updated"]


async def test_a_webhook_gets_only_what_its_owner_may_see(env: Env) -> None:
    alice = await register_and_login(env.client)
    bob = await register_and_login(env.client)
    project = await env.client.post(PROJECTS, json={"name": "p"}, headers=alice.headers)
    project_id = project.json()["id"]
    added = await env.client.put(
        f"{PROJECTS}/{project_id}/members/{bob.id}", json={"role": "viewer"}, headers=alice.headers
    )
    assert added.status_code in (200, 201), added.text
    async with serving(Receiver(free_port())) as bobs:
        await env.subscribe(bob, bobs, ["task.*"])
        await create_task(env, alice, title="alice private")
        shared = await create_task(env, alice, title="in project", project_id=project_id)
        assigned = await create_task(env, alice, title="assigned", assignee_id=bob.id)
        removed = await env.client.delete(
            f"{PROJECTS}/{project_id}/members/{bob.id}", headers=alice.headers
        )
        assert removed.status_code == 204, removed.text
        await patch_task(env, alice, shared["id"], title="after bob left")
        await env.deliver()
        got = [(r.event["type"], r.event["task_id"]) for r in bobs.received]
        assert got == [
            ("task.created", shared["id"]),
            ("task.created", assigned["id"]),
            ("task.access_lost", shared["id"]),
        ]
        titles = {r.event["task"].get("title") for r in bobs.received}
        assert "alice private" not in titles
        assert "after bob left" not in titles


async def test_rotation_signs_with_both_secrets_for_24_hours(env: Env) -> None:
    alice = await register_and_login(env.client)
    async with serving(Receiver(free_port())) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.created"])
        old = webhook["secret"]
        rotated = await env.client.post(
            f"{WEBHOOKS}/{webhook['id']}/rotate-secret", headers=alice.headers
        )
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        assert new.startswith("whsec_")
        receiver.secrets.append(new)
        await create_task(env, alice, title="during the overlap")
        await env.deliver()
        assert receiver.received[-1].verified_by == [old, new]
        assert len(receiver.received[-1].signature.split(" ")) == 2
        env.clock.advance(hours=24, seconds=1)
        await create_task(env, alice, title="after it")
        await env.deliver()
        assert receiver.received[-1].verified_by == [new]


async def test_three_days_of_failures_deactivate_the_webhook_and_tell_its_owner(env: Env) -> None:
    alice = await register_and_login(env.client)

    async def answer(n: int, received: Any) -> int:
        return 500

    async with serving(Receiver(free_port(), answer=answer)) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.created"])
        url = f"{WEBHOOKS}/{webhook['id']}"
        # An event every 12 hours, every attempt failing: the first failure starts the count.
        for half_days in range(8):
            await create_task(env, alice, title=f"event {half_days}")
            await env.deliver()
            shown = (await env.client.get(url, headers=alice.headers)).json()
            if not shown["active"]:
                break
            env.clock.advance(hours=12)
        # Still on after 60 hours of failures, off at the first failure past 72.
        assert half_days == 6
        assert shown["disabled_reason"].startswith("every delivery has failed since")
        assert "HTTP 500" in shown["disabled_reason"]
        notes = await env.client.get("/api/v1/notifications", headers=alice.headers)
        kinds = [n["kind"] for n in notes.json()["items"]]
        assert kinds.count("webhook_disabled") == 1
        log = await env.deliveries(alice, webhook["id"])
        assert {d["status"] for d in log} == {"failed"}

        # Off: nothing is made or sent for new events ...
        sent = len(receiver.received)
        await create_task(env, alice, title="while off")
        env.clock.advance(hours=1)
        assert await env.deliver() == 0
        assert len(receiver.received) == sent
        # ... until its owner switches it on again.
        on = await env.client.patch(url, json={"active": True}, headers=alice.headers)
        assert on.status_code == 200, on.text
        assert (on.json()["active"], on.json()["disabled_reason"]) == (True, None)
        receiver.answer = None
        await create_task(env, alice, title="back on")
        await env.deliver()
        assert receiver.received[-1].event["task"]["title"] == "back on"


async def test_ping_is_signed_and_logged(env: Env) -> None:
    alice = await register_and_login(env.client)
    async with serving(Receiver(free_port())) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.created"])
        pinged = await env.client.post(f"{WEBHOOKS}/{webhook['id']}/ping", headers=alice.headers)
        assert pinged.status_code == 202, pinged.text
        await env.deliver()
        [received] = receiver.received
        assert received.event["type"] == "ping"
        assert received.event["webhook_id"] == webhook["id"]
        assert received.verified_by == [webhook["secret"]]
        [logged] = await env.deliveries(alice, webhook["id"])
        assert (logged["event_type"], logged["event_id"], logged["status"]) == (
            "ping",
            None,
            "delivered",
        )
        again = await env.client.post(
            f"{WEBHOOKS}/{webhook['id']}/deliveries/{logged['id']}/redeliver",
            headers=alice.headers,
        )
        assert again.status_code == 202
        await env.deliver()
        assert [r.webhook_id for r in receiver.received] == [received.webhook_id] * 2


async def test_the_delivery_log_is_kept_as_long_as_the_event_log(env: Env) -> None:
    alice = await register_and_login(env.client)
    async with serving(Receiver(free_port())) as receiver:
        webhook = await env.subscribe(alice, receiver, ["task.created"])
        old = await create_task(env, alice, title="old")
        new = await create_task(env, alice, title="new")
        pinged = await env.client.post(f"{WEBHOOKS}/{webhook['id']}/ping", headers=alice.headers)
        await env.client.post(f"{WEBHOOKS}/{webhook['id']}/ping", headers=alice.headers)
        await env.deliver()
    assert len(await env.deliveries(alice, webhook["id"])) == 4
    services = services_of(env.app)
    async with services.sessionmaker() as session:
        await session.execute(
            text("UPDATE events SET occurred_at = now() - interval '9 days' WHERE task_id = :t"),
            {"t": old["id"]},
        )
        await session.execute(
            text(
                "UPDATE webhook_deliveries SET created_at = now() - interval '8 days' WHERE id = :d"
            ),
            {"d": pinged.json()["delivery_id"]},
        )
        await session.commit()
    ctx = JobContext(services.sessionmaker, services.get(STORAGE), services.settings)
    await purge_events(ctx, {})
    await purge_pings(ctx, {})
    left = await env.deliveries(alice, webhook["id"])
    assert sorted((d["event_type"], d["event_id"] is None) for d in left) == [
        ("ping", True),
        ("task.created", False),
    ]
    assert new["id"] in {r.event.get("task_id") for r in receiver.received}
