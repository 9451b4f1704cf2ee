"""Request size limits (docs/api.md, "Errors": 413 `payload_too_large`): every route refuses a body
over MAX_REQUEST_BYTES with a 413 problem, at once when Content-Length says so (nothing is read, not
even authentication runs) and as soon as the limit is passed when the body streams without one; the
upload route has its own MAX_UPLOAD_BYTES; `taskapi serve` bounds the request headers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from taskapi.app import create_app
from tests.conftest import (
    MAIN_DB,
    UserHandle,
    admin_execute,
    bind_to_connection,
    clone_template,
    database_url,
    make_settings,
    register_and_login,
)
from tests.deploy.test_cli_and_socket import TASKAPI, cli_env, free_port, log_text

PROBLEM = "application/problem+json"
MiB = 1024 * 1024
DEFAULT_LIMIT = MiB
CHUNK = 64 * 1024


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == "payload_too_large"
    assert body["status"] == 413
    assert response.headers["connection"] == "close"


def big_json(size: int) -> bytes:
    """A syntactically valid JSON object of `size` bytes (whitespace padding)."""
    head, tail = b'{"title": "t"', b"}"
    return head + b" " * (size - len(head) - len(tail)) + tail


class Body:
    """A request body that counts how much of it the server pulled."""

    def __init__(self, total: int | None) -> None:
        self.total = total  # None: never ends
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        first = b'{"title": "t", "description": "'
        self.sent += len(first)
        yield first
        while self.total is None or self.sent < self.total:
            self.sent += CHUNK
            yield b"x" * CHUNK


# (method, path template, needs a task id)
ROUTES = [
    ("POST", "/api/v1/tasks", False),
    ("PATCH", "/api/v1/tasks/{id}", True),
    ("PUT", "/api/v1/tasks/{id}", True),
    ("POST", "/api/v1/tasks/{id}/transition", True),
    ("POST", "/api/v1/tasks/{id}/tags", True),
    ("POST", "/api/v1/tasks/{id}/assign", True),
    ("PATCH", "/api/v1/tasks/bulk", False),
    ("POST", "/api/v1/tasks/bulk-status", False),
    ("POST", "/api/v1/auth/register", False),
    ("POST", "/api/v1/auth/login", False),
    ("POST", "/api/v1/auth/token", False),
    ("POST", "/api/v1/auth/refresh", False),
    ("PATCH", "/api/v1/users/me", False),
    ("GET", "/ops/health", False),
]


def content_type(path: str) -> dict[str, str]:
    form = path == "/api/v1/auth/token"  # OAuth2's password form
    return {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}


@pytest.fixture
async def task_id(client: httpx.AsyncClient, alice: UserHandle) -> int:
    response = await client.post("/api/v1/tasks", json={"title": "target"}, headers=alice.headers)
    assert response.status_code == 201
    task: int = response.json()["id"]
    return task


@pytest.mark.parametrize(("method", "path", "with_id"), ROUTES)
async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    client: httpx.AsyncClient,
    alice: UserHandle,
    task_id: int,
    method: str,
    path: str,
    with_id: bool,
) -> None:
    url = path.format(id=task_id)
    body = Body(DEFAULT_LIMIT + 1)
    response = await client.request(
        method,
        url,
        content=body,
        headers={**alice.headers, **content_type(path), "Content-Length": str(DEFAULT_LIMIT + 1)},
    )
    assert_413(response)
    assert body.sent == 0  # not one byte of it was read
    # Without credentials too: the limit comes before authentication, not after.
    anonymous = await client.request(
        method, url, content=b"", headers={"Content-Length": str(10 * MiB)}
    )
    assert_413(anonymous)


@pytest.mark.parametrize(("method", "path", "with_id"), ROUTES[:-1])
async def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(
    client: httpx.AsyncClient,
    alice: UserHandle,
    task_id: int,
    method: str,
    path: str,
    with_id: bool,
) -> None:
    body = Body(None)  # chunked, and it never ends: only the limit can stop it
    async with asyncio.timeout(10):
        response = await client.request(
            method,
            path.format(id=task_id),
            content=body,
            headers={**alice.headers, **content_type(path)},
        )
    assert_413(response)
    assert DEFAULT_LIMIT < body.sent <= DEFAULT_LIMIT + 2 * CHUNK


async def test_an_endless_body_to_a_route_that_takes_none_is_never_read(
    client: httpx.AsyncClient,
) -> None:
    body = Body(None)
    async with asyncio.timeout(10):
        response = await client.request("GET", "/ops/health", content=body)
    assert response.status_code == 200
    assert body.sent <= DEFAULT_LIMIT


async def test_a_body_just_under_the_limit_is_served(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    for content in (big_json(DEFAULT_LIMIT), _chunks(big_json(DEFAULT_LIMIT))):
        response = await client.post(
            "/api/v1/tasks",
            content=content,
            headers={**alice.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["title"] == "t"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def test_more_than_500_ids_in_a_bulk_request_is_422(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    ids = list(range(1, 502))
    for method, url, body in (
        ("PATCH", "/api/v1/tasks/bulk", {"task_ids": ids, "updates": {"priority": "low"}}),
        ("POST", "/api/v1/tasks/bulk-status", {"task_ids": ids, "target_status": "done"}),
    ):
        response = await client.request(method, url, json=body, headers=alice.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "task_ids"]


# --- uploads ----------------------------------------------------------------------------------

UPLOAD_LIMIT = 256 * 1024
BOUNDARY = b"limitsboundary"


def upload_body(size: int) -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="notes.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n" + b"a" * size + b"\r\n--" + BOUNDARY + b"--\r\n"
    )


@pytest.fixture
async def upload_client(
    connection: AsyncConnection, migrated_databases: None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a small JSON limit and a larger upload limit."""
    settings = make_settings(
        MAIN_DB,
        max_request_bytes=64 * 1024,
        max_upload_bytes=UPLOAD_LIMIT,
        argon2_time_cost=1,
        argon2_memory_cost_kib=64,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        bind_to_connection(application, connection)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_uploads_have_their_own_limit(upload_client: httpx.AsyncClient) -> None:
    client = upload_client
    user = await register_and_login(client)
    created = await client.post("/api/v1/tasks", json={"title": "files"}, headers=user.headers)
    url = f"/api/v1/tasks/{created.json()['id']}/files"
    headers = {**user.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}

    # Four times the JSON limit, exactly the upload limit: accepted, with or without a length.
    exact = upload_body(UPLOAD_LIMIT)
    for content in (exact, _chunks(exact)):
        response = await client.post(url, content=content, headers=headers)
        assert response.status_code == 201, response.text
        assert response.json()["size"] == UPLOAD_LIMIT

    # One byte more is refused, declared or streamed ...
    over = upload_body(UPLOAD_LIMIT + 1)
    for content in (over, _chunks(over)):
        response = await client.post(url, content=content, headers=headers)
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "payload_too_large"
    # ... and a declared length far over it before any of it is read.
    body = Body(10 * MiB)
    response = await client.post(
        url, content=body, headers={**headers, "Content-Length": str(10 * MiB)}
    )
    assert_413(response)
    assert body.sent == 0
    listed = await client.get(url, headers=user.headers)
    assert [f["size"] for f in listed.json()] == [UPLOAD_LIMIT, UPLOAD_LIMIT]

    # The JSON routes of the same app keep the small limit.
    response = await client.post(
        "/api/v1/tasks", content=big_json(64 * 1024 + 1), headers=user.headers
    )
    assert_413(response)


# --- over a real socket: `taskapi serve` ---------------------------------------------------------

SOCKET_LIMIT = 64 * 1024
HEADER_LIMIT = 16 * 1024


@pytest.fixture
async def served(migrated_databases: None, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    name = f"taskapi_limits_{uuid.uuid4().hex[:12]}"
    port = free_port()
    await clone_template(name)
    log_path = tmp_path / "server.log"
    env = cli_env(
        DATABASE_URL=database_url(name),
        STORAGE_DIR=str(tmp_path / "storage"),
        RATE_LIMIT_ENABLED="false",
        MAX_REQUEST_BYTES=str(SOCKET_LIMIT),
        MAX_REQUEST_HEADER_BYTES=str(HEADER_LIMIT),
    )
    process: asyncio.subprocess.Process | None = None
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                TASKAPI, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 20
        while not await _healthy(port):
            if process.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"taskapi serve did not start:\n{log_text(log_path)}")
            await asyncio.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _healthy(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            response = await client.get(f"http://127.0.0.1:{port}/ops/health")
    except httpx.TransportError:
        return False
    return response.status_code == 200


async def exchange(address: tuple[str, int], *pieces: bytes) -> bytes:
    """Send the pieces over a fresh connection, then read until the server closes it (which it
    must do by itself, promptly)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _request(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def test_oversized_headers_are_refused_and_the_server_stays_up(
    served: tuple[str, int],
) -> None:
    one_huge = _request("GET", "/ops/health", "X-Big: " + "a" * (4 * HEADER_LIMIT))
    many = _request("GET", "/ops/health", *(f"X-H{i}: {'b' * 40}" for i in range(1000)))
    huge_url = _request("GET", "/ops/health?q=" + "c" * (4 * HEADER_LIMIT))
    for raw_request in (one_huge, many, huge_url):
        raw = await exchange(served, raw_request)
        assert _status(raw) == 431, raw[:200]
        assert b"request_header_fields_too_large" in raw

    # A header that is big but within the bound (a long cookie, a JWT) is fine.
    fine = _request("GET", "/ops/health", "X-Big: " + "a" * 8000, "Connection: close")
    assert _status(await exchange(served, fine)) == 200
    assert await _healthy(served[1])


async def test_over_the_socket_413s_come_at_once_and_close_the_connection(
    served: tuple[str, int],
) -> None:
    # A declared length far over the limit, and no body at all: the answer cannot wait for it.
    started = time.monotonic()
    declared = _request(
        "POST", "/api/v1/tasks", "Content-Type: application/json", f"Content-Length: {100 * MiB}"
    )
    raw = await exchange(served, declared)
    assert time.monotonic() - started < 2
    assert _status(raw) == 413
    assert b"payload_too_large" in raw
    assert b"connection: close" in raw.lower()

    # Chunked, past the limit, and never finished: the 413 comes anyway, and the connection closes.
    head = _request(
        "POST", "/api/v1/auth/register", "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    )  # fmt: skip
    chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
    raw = await exchange(served, head, *(chunk for _ in range(SOCKET_LIMIT // (16 * 1024) + 1)))
    assert _status(raw) == 413
    assert b"payload_too_large" in raw
    assert await _healthy(served[1])
