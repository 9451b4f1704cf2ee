"""A revoked personal access token fails on the very next request through another real server
process, one that had recognised and cached it (API.md part 2, "Personal access tokens")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    admin_execute,
    clone_template,
    database_url,
    register_and_login,
)
from tests.deploy.test_cli_and_socket import (
    TASKAPI,
    _wait_until_healthy,
    cli_env,
    free_port,
)


@pytest.fixture
async def database(migrated_databases: None) -> AsyncIterator[str]:
    name = f"taskapi_pat_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    try:
        yield database_url(name)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def server(env: dict[str, str], tmp_path: Path, name: str) -> AsyncIterator[str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            TASKAPI, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        await _wait_until_healthy(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        await process.wait()


async def test_a_revoked_token_fails_at_once_on_another_process(
    database: str, tmp_path: Path
) -> None:
    env = cli_env(
        DATABASE_URL=database,
        STORAGE_DIR=str(tmp_path / "storage"),
        REDIS_KEY_PREFIX=f"taskapi-test:{uuid.uuid4().hex}:",
        WORKER_EMBEDDED="false",
        ARGON2_MEMORY_COST_KIB="1024",
        ARGON2_TIME_COST="1",
    )
    async with AsyncExitStack() as stack:
        first, second = await asyncio.gather(
            stack.enter_async_context(server(env, tmp_path, "first")),
            stack.enter_async_context(server(env, tmp_path, "second")),
        )
        one = await stack.enter_async_context(httpx.AsyncClient(base_url=first))
        two = await stack.enter_async_context(httpx.AsyncClient(base_url=second))
        user = await register_and_login(one)
        created = await one.post(
            "/api/v1/tokens",
            json={"name": "ci", "scopes": ["tasks:read"]},
            headers=user.headers,
        )
        assert created.status_code == 201, created.text
        token = {"Authorization": f"Bearer {created.json()['token']}"}
        for _ in range(3):  # recognised, then served from the principal cache
            assert (await two.get("/api/v1/tasks", headers=token)).status_code == 200
        revoked = await one.delete(f"/api/v1/tokens/{created.json()['id']}", headers=user.headers)
        assert revoked.status_code == 204, revoked.text
        refused = await two.get("/api/v1/tasks", headers=token)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "invalid_token"
