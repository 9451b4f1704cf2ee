"""`taskapi worker` delivers webhooks, and a worker killed mid-delivery (SIGKILL: no cleanup at
all) loses nothing: once its lease runs out, another worker sends the same delivery again, with
the same `webhook-id`, and it is recorded as delivered once (issue 19)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from taskapi.kit.services import services_of
from tests.conftest import cloned_app, register_and_login
from tests.deploy.test_cli_and_socket import TASKAPI, cli_env, log_text
from tests.task_helpers import TASKS
from tests.webhook_receiver import Receiver, free_port, serving

WEBHOOKS = "/api/v1/webhooks"


async def _worker(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            TASKAPI, "worker", env=env, cwd=log.parent, stdout=out, stderr=out
        )


async def test_a_worker_killed_mid_delivery_loses_nothing(
    migrated_databases: None, tmp_path: Path
) -> None:
    first_arrived = asyncio.Event()
    release = asyncio.Event()

    async def answer(n: int, received: Any) -> int:
        if n == 1:
            first_arrived.set()
            await release.wait()  # held open until the worker sending it is dead
        return 200

    async with (
        cloned_app(webhook_allow_private_networks=True) as application,
        serving(Receiver(free_port(), answer=answer)) as receiver,
    ):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            alice = await register_and_login(client)
            created = await client.post(
                WEBHOOKS,
                json={"url": receiver.url, "events": ["task.created"]},
                headers=alice.headers,
            )
            assert created.status_code == 201, created.text
            secret = created.json()["secret"]
            receiver.secrets.append(secret)
            env = cli_env(
                DATABASE_URL=services_of(application).settings.database_url,
                WEBHOOK_ALLOW_PRIVATE_NETWORKS="true",
                # A 1 s attempt timeout makes the lease 3 s: a dead worker's delivery is sent
                # again that soon.
                WEBHOOK_TIMEOUT_SECONDS="1",
                JOB_POLL_INTERVAL_SECONDS="0.2",
                LOG_LEVEL="INFO",
            )
            log = tmp_path / "workers.log"
            task = await client.post(TASKS, json={"title": "once"}, headers=alice.headers)
            assert task.status_code == 201
            doomed = await _worker(env, log)
            try:
                async with asyncio.timeout(20):
                    await first_arrived.wait()
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
            finally:
                with contextlib.suppress(ProcessLookupError):
                    doomed.kill()
            release.set()
            survivor = await _worker(env, log)
            try:
                await receiver.wait_for(2, within=20)
                rows = await delivery_rows(application)
                deadline = asyncio.get_running_loop().time() + 10
                while rows[0]["status"] != 1:
                    assert asyncio.get_running_loop().time() < deadline, log_text(log)
                    await asyncio.sleep(0.1)
                    rows = await delivery_rows(application)
            finally:
                survivor.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(survivor.wait(), 15) == 0, log_text(log)

    first, second = receiver.received
    assert first.webhook_id == second.webhook_id == str(first.event["id"])
    assert first.event["task"]["title"] == "once"
    assert first.verified_by == second.verified_by == [secret]
    [row] = rows
    assert (row["status"], row["attempts"], row["response_status"]) == (1, 2, 200)


async def delivery_rows(application: Any) -> list[Any]:
    async with services_of(application).sessionmaker() as session:
        result = await session.execute(
            text("SELECT status, attempts, response_status FROM webhook_deliveries")
        )
        return list(result.mappings().all())
