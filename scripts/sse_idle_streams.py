"""Measure what idle event streams (GET /events/stream) cost one server process in memory: start
`taskapi serve` (one worker) on a scratch database, open N idle streams to it, and print the
process's resident memory before and after.

    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \
        .venv/bin/python scripts/sse_idle_streams.py [--streams 1000] [--users 10]

Creates a scratch database next to DATABASE_URL's (migrated to head) and drops it at the end.
Streams are spread over `--users` users (the per-user cap is lifted for the run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from taskapi.kit.config import Settings

TASKAPI = str(Path(sys.executable).with_name("taskapi"))
STREAM = "/api/v1/events/stream"


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _healthy(base_url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        for _ in range(300):
            if process.returncode is not None:
                raise SystemExit("taskapi serve exited early")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/ops/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit("taskapi serve did not become healthy")


async def _login(client: httpx.AsyncClient) -> dict[str, str]:
    name = f"idle_{uuid.uuid4().hex[:8]}"
    body = {"username": name, "email": f"{name}@example.com", "password": "correct horse battery"}
    registered = await client.post("/api/v1/auth/register", json=body)
    registered.raise_for_status()
    login = await client.post(
        "/api/v1/auth/login", json={k: body[k] for k in ("username", "password")}
    )
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def _measure(base_url: str, pid: int, streams: int, users: int, settle: float) -> None:
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0, limits=limits) as client:
        headers = [await _login(client) for _ in range(users)]
        # Warm the path once (first request of each kind allocates caches), then measure.
        async with client.stream("GET", STREAM, headers=headers[0]) as response:
            response.raise_for_status()
        await asyncio.sleep(1.0)
        before = _rss_mib(pid)
        opened = 0
        release = asyncio.Event()
        all_open = asyncio.Event()

        # Opened 50 at a time, as clients ramp up: a thousand opened in the same instant is
        # a thundering herd the server answers with 503s (its connection pool's wait).
        ramp = asyncio.Semaphore(50)

        async def hold(n: int) -> None:
            nonlocal opened
            await ramp.acquire()
            async with client.stream("GET", STREAM, headers=headers[n % users]) as response:
                ramp.release()
                response.raise_for_status()
                opened += 1
                if opened == streams:
                    all_open.set()
                await release.wait()

        started = time.monotonic()
        holders = [asyncio.create_task(hold(n)) for n in range(streams)]
        await asyncio.wait_for(all_open.wait(), 120)
        opened_in = time.monotonic() - started
        await asyncio.sleep(settle)
        after = _rss_mib(pid)
        print(f"opened {streams} idle streams in {opened_in:.1f} s")
        print(f"server RSS before: {before:.1f} MiB")
        print(f"server RSS with {streams} idle streams ({settle:.0f} s later): {after:.1f} MiB")
        print(
            f"difference: {after - before:.1f} MiB "
            f"({(after - before) * 1024 / streams:.1f} KiB per stream)"
        )
        release.set()
        await asyncio.gather(*holders)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring")
    args = parser.parse_args()
    base = Settings().database_url
    name = f"taskapi_sse_idle_{uuid.uuid4().hex[:8]}"
    url = str(make_url(base).set(database=name).render_as_string(False))
    admin = await asyncpg.connect(_plain(str(make_url(base).set(database="postgres"))))
    await admin.execute(f'CREATE DATABASE "{name}"')
    workdir = tempfile.mkdtemp(prefix="taskapi-sse-idle-")
    process: asyncio.subprocess.Process | None = None
    try:
        config = Config("alembic.ini")
        config.attributes["database_url"] = url
        await asyncio.to_thread(command.upgrade, config, "head")
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "ENVIRONMENT": "development",
            "STORAGE_DIR": str(Path(workdir) / "storage"),
            "WEB_CONCURRENCY": "1",
            "WORKER_EMBEDDED": "false",
            "RATE_LIMIT_ENABLED": "false",
            "EVENT_STREAMS_PER_USER": str(args.streams),
            "LOG_LEVEL": "WARNING",
        }
        process = await asyncio.create_subprocess_exec(
            TASKAPI, "serve", "--port", str(port), "--workers", "1", env=env, cwd=workdir
        )
        base_url = f"http://127.0.0.1:{port}"
        await _healthy(base_url, process)
        await _measure(base_url, process.pid, args.streams, args.users, args.settle)
    finally:
        if process is not None and process.returncode is None:
            process.terminate()
            await process.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
