"""Throwaway servers that tests (and scripts/faults.py) can break on purpose.

`PostgresCluster` is a private PostgreSQL cluster made with `initdb` in a temporary directory,
listening on 127.0.0.1 on a free port, with trust authentication and no durability (it is thrown
away). It can be stopped hard (`pg_ctl stop -m immediate`: every backend dies, clients see their
connections drop), started again, restarted, and paused/resumed (SIGSTOP/SIGCONT on every server
process: connections stay open but nothing answers). The shared server on 5432 is never touched.

    cluster = PostgresCluster()
    await cluster.start()                        # initdb on first start
    url = await cluster.create_database("app", migrate=True)   # postgresql+asyncpg://...
    await cluster.stop()                         # hard stop
    await cluster.start()                        # crash recovery, same data
    cluster.pause(); cluster.resume()
    await cluster.destroy()                      # stop it and delete its directory

initdb refuses to run as root; as root every server command runs as the `postgres` user (which
owns the directory).

Below PostgreSQL, in their own section: `RedisServer` (a redis-server on a free port that can be
killed, paused and restarted on the same port), `MotoProcess` (moto's S3 server as a subprocess)
and `Link` (a TCP forwarder in front of any server, cut and restored to simulate an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis
from alembic import command
from fastapi import FastAPI

from taskapi.app import create_app
from tests.conftest import alembic_config, make_settings, run_alembic

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER = "postgres"
COMMAND_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="taskapi-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.initialised = False
        self.paused = False
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)

    # --- addresses ------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database on this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The plain libpq/asyncpg DSN of a database on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    # --- lifecycle ------------------------------------------------------------------------------

    async def _run(self, *argv: str, check: bool = True) -> int:
        if self._as_root:
            argv = ("runuser", "-u", SERVER_USER, "--", *argv)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.root,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=COMMAND_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        if check and process.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed:\n{output.decode()}\n{log}")
        return process.returncode

    async def start(self) -> None:
        """Start the cluster (creating it on first use) and wait until it accepts connections."""
        if not self.initialised:
            await self._run(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
            self.initialised = True
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} "
            # No fsync: only the processes are ever killed, never the machine, so the page cache
            # keeps every commit (synchronous_commit must stay on: a hard stop would lose some).
            "-c fsync=off"
        )
        await self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "start",
        )  # fmt: skip

    async def stop(self, mode: str = "immediate") -> None:
        """Stop the cluster; `immediate` kills every backend without a goodbye to the clients."""
        if self.paused:
            self.resume()
        if self.initialised and self.running():
            await self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    async def restart(self, mode: str = "immediate") -> None:
        await self.stop(mode)
        await self.start()

    def running(self) -> bool:
        return self._postmaster_pid() is not None

    def pause(self) -> None:
        """SIGSTOP every server process: sockets stay open and connects queue, nothing answers."""
        for pid in self._server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        for pid in self._server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = False

    async def destroy(self) -> None:
        """Stop the cluster and remove its directory; safe to call more than once."""
        try:
            await self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- databases ------------------------------------------------------------------------------

    async def create_database(self, name: str, *, migrate: bool = True) -> str:
        """Create a database (migrated to the latest schema by default); returns its URL."""
        conn = await asyncpg.connect(self.dsn(), timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = self.url(name)
        if migrate:
            run_alembic(lambda: command.upgrade(alembic_config(url), "head"))
        return url

    # --- processes ------------------------------------------------------------------------------

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def _server_pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, walwriter, ...)."""
        postmaster = self._postmaster_pid()
        if postmaster is None:
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
        return pids


# === Redis and S3 ================================================================================
# Moved here from tests/faults/test_redis_outage.py and tests/faults/test_storage_outage.py so
# scripts/faults.py can use them too.


class RedisServer:
    """A redis-server subprocess on its own port that can be killed, paused, resumed and
    restarted (start() again: the same port). Nothing is persisted."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is needed for these tests"
        self.process = await asyncio.create_subprocess_exec(
            executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    if await probe.ping():
                        return
                except (redis.ConnectionError, OSError):
                    pass
                assert self.process.returncode is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.02)
        finally:
            await probe.aclose()

    async def kill(self) -> None:
        """SIGKILL, no goodbye to the clients; also how to stop it for good (safe to repeat)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        if self.paused:
            process.send_signal(signal.SIGCONT)
            self.paused = False
        process.kill()
        await process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    async def copy_keys(self, pattern: str) -> dict[bytes, bytes]:
        async with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
            return {key: await client.get(key) async for key in client.scan_iter(match=pattern)}

    async def set_keys(self, values: dict[bytes, bytes]) -> None:
        async with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
            await client.mset(values)


class MotoProcess:
    """moto's S3 server (`moto_server`) as a subprocess on loopback: its own process, so it shares
    no GIL with a load generator. Objects live in its memory: put a `Link` in front of it to
    simulate an outage (a restarted moto would have lost them)."""

    def __init__(self, executable: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.executable = executable or shutil.which("moto_server") or "moto_server"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (our own argv)
            [self.executable, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        """Safe to call more than once, or without start()."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Link:
    """A TCP forwarder on its own port in front of a server, that can be cut and restored.

    Cutting closes the listening socket and every open connection, so clients see "connection
    refused", exactly as when the server is down; restoring reopens the same port in front of the
    same server. (Stopping moto's ThreadedMotoServer would not do: its stop() leaves the listening
    socket open, so connections hang in the backlog, and keep-alive connections are still served.)
    It runs in the caller's event loop.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        assert self._server is None
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Safe to call more than once."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError):
            sink.close()


# --- fixtures' building blocks ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def started_cluster() -> AsyncIterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster, running, removed afterwards."""
    server = PostgresCluster()
    try:
        await server.start()
        yield server
    finally:
        await server.destroy()


@contextlib.asynccontextmanager
async def started_redis() -> AsyncIterator[RedisServer]:
    """A throwaway redis-server on a free port, killed afterwards."""
    server = RedisServer(free_port())
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


@contextlib.asynccontextmanager
async def app_on_cluster(
    cluster: PostgresCluster, name: str, **overrides: Any
) -> AsyncIterator[FastAPI]:
    """The API over a new database `name` on `cluster` (started again if a failed test left it
    stopped), through its lifespan."""
    if not cluster.running():
        await cluster.start()
    url = await cluster.create_database(name)
    application = create_app(make_settings(name, database_url=url, **overrides))
    async with application.router.lifespan_context(application):
        yield application
