"""An S3 server that hangs up in the middle of an answer: the download is the storage outage the
contract documents (503 `storage_unavailable`), never a 500.

Seen in `make test`'s fault run (scripts/faults.py, s3-cut): a GET of a 768-byte object whose
connection was cut after the headers surfaced as aiohttp's `ClientPayloadError`, which is
neither botocore's error nor an OSError, and reached the client as 500 `internal_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from taskapi.kit.config import Settings
from taskapi.storage.base import StorageUnavailable
from taskapi.storage.s3 import S3Storage


@pytest.fixture
async def hangs_up_after_headers() -> AsyncIterator[str]:
    """An endpoint answering every request with 200 and a 768-byte Content-Length, then closing
    the connection without sending the body."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 768\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_small_objects_body_cut_short_is_a_storage_outage(
    settings: Settings, hangs_up_after_headers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    storage = S3Storage(
        settings.model_copy(
            update={"storage_backend": "s3", "s3_endpoint_url": hangs_up_after_headers}
        )
    )
    await storage.start()
    try:
        with pytest.raises(StorageUnavailable):
            await storage.open("attachments/cut-short")
    finally:
        await storage.close()
