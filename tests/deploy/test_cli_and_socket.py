"""The `taskapi` command as an operator runs it, and the API served over a real socket."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import (
    ROOT,
    TEST_SECRET,
    admin_execute,
    clone_template,
    database_url,
)

TASKAPI = os.path.join(ROOT, ".venv", "bin", "taskapi")
CLI_TIMEOUT = 30.0
STARTUP_TIMEOUT = 20.0


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cli_env(**overrides: str) -> dict[str, str]:
    """The caller's environment minus anything taskapi reads, plus the given variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper()
        not in {"DATABASE_URL", "SECRET_KEY", "ENVIRONMENT", "PORT", "HOST", "WEB_CONCURRENCY"}
    }
    env.update({"ENVIRONMENT": "test", "SECRET_KEY": TEST_SECRET, "LOG_LEVEL": "WARNING"})
    env.update(overrides)
    return env


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> Completed:
    process = await asyncio.create_subprocess_exec(
        TASKAPI,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Completed(process.returncode, out.decode(), err.decode())


def _plain_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(_plain_dsn(database_url("postgres")))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def directory_entries(path: Path) -> list[Path]:
    return list(path.iterdir())


def log_text(path: Path) -> str:
    return path.read_text(errors="replace")


@asynccontextmanager
async def dropped_afterwards(name: str) -> AsyncIterator[str]:
    try:
        yield name
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- taskapi migrate ------------------------------------------------------------------------------


async def test_migrate_creates_a_missing_database_and_is_idempotent(tmp_path: Path) -> None:
    name = f"taskapi_cli_{uuid.uuid4().hex[:12]}"
    async with dropped_afterwards(name):
        assert not await database_exists(name)
        env = cli_env(DATABASE_URL=database_url(name))

        first = await run_cli("migrate", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "Traceback" not in first.stderr
        assert await database_exists(name)

        conn = await asyncpg.connect(_plain_dsn(database_url(name)))
        try:
            versions = await conn.fetch("SELECT version_num FROM alembic_version")
            assert len(versions) == 1
            tables = {
                row["tablename"]
                for row in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert {"users", "tasks", "refresh_tokens"} <= tables
        finally:
            await conn.close()

        second = await run_cli("migrate", env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert "Traceback" not in second.stderr
        assert "created database" not in second.stderr
        conn = await asyncpg.connect(_plain_dsn(database_url(name)))
        try:
            again = await conn.fetch("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        assert again == versions
    # The command wrote nothing into the directory it ran in (no key file in test mode).
    assert directory_entries(tmp_path) == []


async def test_migrate_with_postgres_down_says_what_to_do(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    env = cli_env(DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/taskapi")
    started = time.monotonic()
    result = await run_cli("migrate", env=env, cwd=tmp_path)
    assert time.monotonic() - started < 15
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert "\n" not in message, f"expected one sentence, got: {result.stderr!r}"
    assert "PostgreSQL" in message
    assert f"127.0.0.1:{port}" in message
    assert "start" in message
    assert "DATABASE_URL" in message


async def test_production_with_a_default_secret_refuses_to_start(tmp_path: Path) -> None:
    env = cli_env(ENVIRONMENT="production", SECRET_KEY="changeme")
    result = await run_cli("migrate", env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "SECRET_KEY" in result.stderr
    assert "changeme" not in result.stderr


async def test_help_explains_the_commands(tmp_path: Path) -> None:
    top = await run_cli("--help", env=cli_env(), cwd=tmp_path)
    assert top.returncode == 0
    assert "serve" in top.stdout
    assert "migrate" in top.stdout
    assert "usage: taskapi" in top.stdout

    serve = await run_cli("serve", "--help", env=cli_env(), cwd=tmp_path)
    assert serve.returncode == 0
    for option in ("--host", "--port", "--workers"):
        assert option in serve.stdout
    assert "WEB_CONCURRENCY" in serve.stdout

    missing = await run_cli(env=cli_env(), cwd=tmp_path)
    assert missing.returncode != 0
    assert "usage: taskapi" in missing.stderr
    assert "Traceback" not in missing.stderr


# --- the API over a real socket -------------------------------------------------------------------


@pytest.fixture
async def served(migrated_databases: None, tmp_path: Path) -> AsyncIterator[str]:
    """`taskapi serve` on a free port against a fresh migrated database; yields its base URL."""
    name = f"taskapi_sock_{uuid.uuid4().hex[:12]}"
    port = free_port()
    await clone_template(name)
    log_path = tmp_path / "server.log"
    env = cli_env(
        DATABASE_URL=database_url(name),
        STORAGE_DIR=str(tmp_path / "storage"),
        RATE_LIMIT_ENABLED="false",
        ARGON2_MEMORY_COST_KIB="1024",
        ARGON2_TIME_COST="1",
    )
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                TASKAPI, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=log, stderr=log
            )
        base_url = f"http://127.0.0.1:{port}"
        try:
            await _wait_until_healthy(base_url, process, log_path)
            yield base_url
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _wait_until_healthy(
    base_url: str, process: asyncio.subprocess.Process, log_path: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                pytest.fail(f"taskapi serve exited early:\n{log_text(log_path)}")
            try:
                response = await client.get("/ops/health")
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 200:
                return
            await asyncio.sleep(0.1)
    pytest.fail(f"taskapi serve did not become healthy:\n{log_text(log_path)}")


def _no_banner(response: httpx.Response) -> None:
    assert "server" not in response.headers, response.headers
    assert response.headers.get("x-request-id")
    assert response.headers.get("x-content-type-options") == "nosniff"


async def test_the_api_over_a_real_socket(served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=10.0) as client:
        health = await client.get("/ops/health", headers={"X-Request-ID": "sock-test-1"})
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        assert health.headers["x-request-id"] == "sock-test-1"
        _no_banner(health)

        credentials = {"username": "socket_user", "password": "correct horse battery"}
        registered = await client.post(
            "/api/v1/auth/register", json={**credentials, "email": "socket_user@example.com"}
        )
        assert registered.status_code == 201, registered.text
        _no_banner(registered)

        login = await client.post("/api/v1/auth/login", json=credentials)
        assert login.status_code == 200, login.text
        _no_banner(login)
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        created = await client.post(
            "/api/v1/tasks", json={"title": "over the wire"}, headers=headers
        )
        assert created.status_code == 201, created.text
        _no_banner(created)
        task_id = created.json()["id"]

        listed = await client.get("/api/v1/tasks", headers=headers)
        assert listed.status_code == 200, listed.text
        _no_banner(listed)
        assert [task["id"] for task in listed.json()["items"]] == [task_id]
        assert listed.json()["items"][0]["title"] == "over the wire"

        deleted = await client.delete(f"/api/v1/tasks/{task_id}", headers=headers)
        assert deleted.status_code == 204, deleted.text
        _no_banner(deleted)

        gone = await client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        assert gone.status_code == 404
        assert gone.headers["content-type"].startswith("application/problem+json")
        _no_banner(gone)

        missing = await client.get("/no/such/route")
        assert missing.status_code == 404
        _no_banner(missing)
