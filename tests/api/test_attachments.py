"""Attachments on both storage backends — a local directory and S3 (a real moto server on
loopback): round trips of every allowed type, size limits with and without Content-Length, type
checks, hostile file names, who may see and change files, conditional and redirected downloads,
clean-up when a request fails after its object was stored, and memory bounded while streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import random
import re
import struct
import tracemalloc
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from taskapi.app import create_app
from taskapi.attachments import service
from taskapi.jobs.worker import Worker
from taskapi.kit.config import Settings
from taskapi.kit.errors import Conflict
from taskapi.kit.services import services_of
from taskapi.storage import STORAGE
from taskapi.wiring import JOBS
from tests.conftest import (
    MAIN_DB,
    UserHandle,
    bind_to_connection,
    make_settings,
    register_and_login,
)
from tests.storage_fixtures import (
    StorageProbe,
    moto_endpoint_fixture,  # noqa: F401 - registers the `moto_endpoint` fixture
    unique_bucket,
)
from tests.task_helpers import RFC3339_UTC, TASKS, assert_problem

MiB = 1024 * 1024
FILES = "/api/v1/files"
BOUNDARY = b"taskapi-test-boundary-7f3a9c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
ATTACHMENT_FIELDS = {"id", "task_id", "filename", "content_type", "size", "sha256", "created_at"}
OBJECT_KEY = re.compile(r"^attachments/[0-9a-f]{2}/[0-9a-f]{32}$")


# --- sample files ------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00\xff"))
    + _png_chunk(b"IEND", b"")
)
JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\xff\xdb\x00\x43\x00"
    + bytes(range(1, 65))
    + b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00"
    + b"\xff\xd9"
)
GIF87A = (
    b"GIF87a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
GIF89A = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_VP8L = bytes.fromhex("2f00000010071011118888fe07")
WEBP = (
    b"RIFF"
    + struct.pack("<I", 4 + 8 + len(_VP8L) + 1)
    + b"WEBP"
    + b"VP8L"
    + struct.pack("<I", len(_VP8L))
    + _VP8L
    + b"\x00"
)
PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
    b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>\nendobj\n"
    b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
)
_OOXML_PARTS = {
    "docx": ("word/document.xml", "wordprocessingml.document.main+xml"),
    "xlsx": ("xl/workbook.xml", "spreadsheetml.sheet.main+xml"),
    "pptx": ("ppt/presentation.xml", "presentationml.presentation.main+xml"),
}
OOXML_TYPES = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}


def ooxml(extension: str) -> bytes:
    """A real Office Open XML package: a zip with [Content_Types].xml first."""
    main, kind = _OOXML_PARTS[extension]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/{main}" '
            f'ContentType="application/vnd.openxmlformats-officedocument.{kind}"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns='
            '"http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Target="{main}" Type="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships/officeDocument"/></Relationships>',
        )
        archive.writestr(main, '<?xml version="1.0" encoding="UTF-8"?><root/>')
    return buffer.getvalue()


def plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes/readme.txt", "hello from inside a zip\n" * 20)
        archive.writestr("data.bin", bytes(range(256)))
    return buffer.getvalue()


MULTILINGUAL = "Grüße aus Köln — 東京, Zürich, ΑΘΗΝΑ, 🎉 ✓\n"
LONG_TEXT = ("é✓ 東京 " * 700).encode()  # multi-byte characters straddle every chunk boundary

ALLOWED = [
    pytest.param("pixel.png", PNG, "image/png", "image/png", id="png"),
    pytest.param("photo.jpg", JPEG, "image/jpeg", "image/jpeg", id="jpeg"),
    pytest.param("old.gif", GIF87A, "image/gif", "image/gif", id="gif87a"),
    pytest.param("anim.gif", GIF89A, "image/gif", "image/gif", id="gif89a"),
    pytest.param("pic.webp", WEBP, "image/webp", "image/webp", id="webp"),
    pytest.param("report.pdf", PDF, "application/pdf", "application/pdf", id="pdf"),
    pytest.param(
        "notes.txt", MULTILINGUAL.encode(), "text/plain; charset=utf-8", "text/plain", id="txt"
    ),
    pytest.param(
        "bom.txt", b"\xef\xbb\xbf" + MULTILINGUAL.encode(), "text/plain", "text/plain", id="bom"
    ),
    pytest.param(
        "README.md", b"# Title\n\n* caf\xc3\xa9\n", "text/markdown", "text/markdown", id="md"
    ),
    pytest.param(
        "data.csv", "name,city\nJosé,São Paulo\n".encode(), "text/csv", "text/csv", id="csv"
    ),
    pytest.param(
        "data.json",
        '{"name": "Zoë", "tags": ["ü"]}\n'.encode(),
        "application/json",
        "application/json",
        id="json",
    ),
    pytest.param(
        "server.log",
        b"2026-11-21T10:00:00Z INFO started\n\tindented line\r\n",
        "application/octet-stream",
        "text/plain",
        id="log",
    ),
    pytest.param("long.md", LONG_TEXT, "text/markdown", "text/markdown", id="long-text"),
    pytest.param("plan.docx", ooxml("docx"), OOXML_TYPES["docx"], OOXML_TYPES["docx"], id="docx"),
    pytest.param("sheet.xlsx", ooxml("xlsx"), OOXML_TYPES["xlsx"], OOXML_TYPES["xlsx"], id="xlsx"),
    pytest.param("deck.pptx", ooxml("pptx"), "application/zip", OOXML_TYPES["pptx"], id="pptx"),
    pytest.param("bundle.zip", plain_zip(), "application/zip", "application/zip", id="zip"),
    pytest.param(
        "scan.gif", GIF89A, "application/octet-stream", "image/gif", id="generic-declared"
    ),
]

_RANDOM = random.Random(20261121).randbytes(4096)
assert not _RANDOM.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"%PDF", b"PK"))

UNSUPPORTED = [
    pytest.param(
        "setup.exe",
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(600),
        "application/x-msdownload",
        id="windows-exe",
    ),
    pytest.param(
        "setup.exe",
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(600),
        "application/octet-stream",
        id="exe-declared-generic",
    ),
    pytest.param(
        "tool", b"\x7fELF\x02\x01\x01\x00" + bytes(700), "application/octet-stream", id="elf"
    ),
    pytest.param(
        "page.html",
        b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>",
        "text/html",
        id="html",
    ),
    pytest.param(
        "logo.svg",
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>',
        "image/svg+xml",
        id="svg",
    ),
    pytest.param("app.js", b"fetch('/steal?c=' + document.cookie)\n", "text/javascript", id="js"),
    pytest.param("blob.bin", _RANDOM, "application/octet-stream", id="random-binary"),
    pytest.param("image.png", PNG, "application/pdf", id="png-declared-pdf"),
    pytest.param("doc.pdf", PDF, "image/png", id="pdf-declared-png"),
    pytest.param("photo.jpg", JPEG, "image/png", id="jpeg-declared-png"),
    pytest.param("bundle.zip", plain_zip(), "application/pdf", id="zip-declared-pdf"),
    pytest.param("notes.txt", "café\n".encode("latin-1"), "text/plain", id="latin1-text"),
    pytest.param("notes.txt", b"hello\x00world\n", "text/plain", id="nul-in-text"),
    pytest.param("notes.txt", "hi".encode("utf-16"), "text/plain", id="utf16-text"),
    pytest.param("random.txt", _RANDOM, "text/plain", id="binary-named-text"),
]


# --- multipart by hand -------------------------------------------------------------------------


def file_part(
    filename: bytes | None,
    data: bytes,
    content_type: bytes | None = b"text/plain",
    *,
    field: bytes = b"file",
) -> bytes:
    disposition = b'form-data; name="' + field + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    head = b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + b"\r\n" + data + b"\r\n"


def text_part(name: bytes, value: bytes) -> bytes:
    return (
        (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n')
        + value
        + b"\r\n"
    )


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def quoted(name: str) -> bytes:
    """A name as a quoted-string parameter value (RFC 7578 senders escape `"` and `\\`)."""
    return name.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"')


async def chunked(*pieces: bytes, repeat: tuple[bytes, int] | None = None) -> AsyncIterator[bytes]:
    """A request body of unknown length (no Content-Length): httpx sends it chunked.
    Yields the first piece, then `block` `times` times, then the remaining pieces."""
    for piece in pieces[:1]:
        yield piece
    if repeat is not None:
        block, times = repeat
        for _ in range(times):
            yield block
    for piece in pieces[1:]:
        yield piece


# --- the app on each backend ---------------------------------------------------------------------


@dataclass
class Env:
    backend: str
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    probe: StorageProbe

    async def user(self) -> UserHandle:
        return await register_and_login(self.client)

    async def task(self, owner: UserHandle, **body: Any) -> dict[str, Any]:
        body.setdefault("title", f"task {uuid.uuid4().hex[:8]}")
        response = await self.client.post(TASKS, json=body, headers=owner.headers)
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    async def get_task(self, user: UserHandle, task_id: int) -> httpx.Response:
        response = await self.client.get(f"{TASKS}/{task_id}", headers=user.headers)
        assert response.status_code == 200, response.text
        return response

    async def upload(
        self,
        user: UserHandle,
        task_id: int,
        filename: str,
        data: bytes,
        content_type: str | None = "application/octet-stream",
    ) -> httpx.Response:
        file: tuple[Any, ...] = (
            (filename, data, content_type) if content_type is not None else (filename, data)
        )
        return await self.client.post(
            f"{TASKS}/{task_id}/files", files={"file": file}, headers=user.headers
        )

    async def post_raw(
        self,
        user: UserHandle,
        task_id: int,
        body: bytes | AsyncIterator[bytes],
        content_type: str | None = MULTIPART,
    ) -> httpx.Response:
        headers = dict(user.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = self.client.build_request(
            "POST", f"{TASKS}/{task_id}/files", content=body, headers=headers
        )
        if not isinstance(body, bytes):
            assert "content-length" not in request.headers
            assert request.headers["transfer-encoding"] == "chunked"
        return await self.client.send(request)

    async def listing(self, user: UserHandle, task_id: int) -> list[dict[str, Any]]:
        response = await self.client.get(f"{TASKS}/{task_id}/files", headers=user.headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()
        return items

    async def assert_nothing_stored(self, user: UserHandle, task: dict[str, Any]) -> None:
        """No object, temporary file or unfinished upload; no row; the task untouched."""
        assert self.probe.leftovers() == []
        assert await self.listing(user, task["id"]) == []
        now = (await self.get_task(user, task["id"])).json()
        assert now["attachment_count"] == 0
        assert now["version"] == task["version"]


MakeEnv = Callable[..., Awaitable[Env]]

# The apps (with their settings and storage probe) by backend and overrides, built once per
# worker: building an app and an S3 client costs more than most tests here.
_BUILT: dict[
    tuple[str, str, tuple[tuple[str, Any], ...]], tuple[Settings, FastAPI, StorageProbe]
] = {}


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_env(
    backend: str, moto_endpoint: str, connection: AsyncConnection
) -> AsyncIterator[MakeEnv]:
    """Build the app on this test's backend (settings overridable), bound to the test's
    connection like conftest's `app`, with an httpx client on it."""
    probes: list[StorageProbe] = []
    async with contextlib.AsyncExitStack() as stack:

        async def factory(**overrides: Any) -> Env:
            key = (backend, moto_endpoint, tuple(sorted(overrides.items())))
            if key not in _BUILT:
                if backend == "s3":
                    overrides.setdefault("storage_backend", "s3")
                    overrides.setdefault("s3_endpoint_url", moto_endpoint)
                    overrides.setdefault("s3_bucket", unique_bucket())
                # Cheap password hashing: every test registers users, none is about passwords.
                overrides.setdefault("argon2_time_cost", 1)
                overrides.setdefault("argon2_memory_cost_kib", 64)
                settings = make_settings(MAIN_DB, **overrides)
                _BUILT[key] = (settings, create_app(settings), StorageProbe(settings))
            settings, application, probe = _BUILT[key]
            # Each test runs the lifespan anew (fresh services, caches, storage client) and
            # leaves its storage empty (probe.clean below): only the build is shared.
            await stack.enter_async_context(application.router.lifespan_context(application))
            bind_to_connection(application, connection)
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=application), base_url="http://testserver"
                )
            )
            probes.append(probe)
            return Env(backend, application, client, settings, probe)

        yield factory
    for probe in probes:
        probe.clean()


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


# --- assertions ---------------------------------------------------------------------------------

_ATTR_CHARS = re.compile(r"^[A-Za-z0-9!#$&+\-.^_`|~%]*$")


def disposition_filename(header: str) -> str:
    """The exact name carried by `filename*=UTF-8''...`, after checking the header is one safe
    ASCII line with an ASCII-only fallback."""
    assert header.isascii(), header
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in header), header
    match = re.fullmatch(r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'(\S+)', header)
    assert match, header
    fallback, encoded = match.groups()
    assert ";" not in fallback
    assert "%" not in fallback
    assert _ATTR_CHARS.match(encoded), encoded
    return unquote(encoded, errors="strict")


def assert_attachment(body: dict[str, Any], task_id: int, data: bytes) -> None:
    assert set(body) == ATTACHMENT_FIELDS
    assert isinstance(body["id"], int)
    assert body["task_id"] == task_id
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert RFC3339_UTC.match(body["created_at"]), body["created_at"]


def assert_download(response: httpx.Response, meta: dict[str, Any], data: bytes) -> None:
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-type"].split(";")[0].strip() == meta["content_type"]
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["etag"] == f'"{meta["sha256"]}"'
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    dispositions = response.headers.get_list("content-disposition")
    assert len(dispositions) == 1
    assert disposition_filename(dispositions[0]) == meta["filename"]


def assert_safe_name(name: str) -> None:
    assert name
    assert "/" not in name
    assert "\\" not in name
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in name), repr(name)
    assert not any(ch in name for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert len(name.encode()) <= 255


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("filename", "data", "declared", "expected_type"), ALLOWED)
async def test_every_allowed_type_round_trips(
    env: Env, filename: str, data: bytes, declared: str, expected_type: str
) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.upload(alice, task["id"], filename, data, declared)

    assert response.status_code == 201, response.text
    meta = response.json()
    assert_attachment(meta, task["id"], data)
    assert meta["filename"] == filename
    assert meta["content_type"] == expected_type
    assert response.headers["location"] == f"{FILES}/{meta['id']}"

    download = await env.client.get(response.headers["location"], headers=alice.headers)
    assert_download(download, meta, data)
    if expected_type.startswith("text/"):
        # Browsers must not guess the encoding of text: it was checked to be UTF-8.
        assert download.headers["content-type"] == f"{expected_type}; charset=utf-8"

    # The bytes are stored once, under a random key that has nothing of the client's name.
    objects = env.probe.objects()
    assert len(objects) == 1
    (key,) = objects
    assert OBJECT_KEY.match(key), key
    assert env.probe.read(key) == data
    assert await env.listing(alice, task["id"]) == [meta]


async def test_several_files_listed_in_upload_order(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    other_task = await env.task(alice)
    uploaded = []
    for name, data in (("a.png", PNG), ("b.pdf", PDF), ("c.txt", b"third\n")):
        response = await env.upload(alice, task["id"], name, data)
        assert response.status_code == 201, response.text
        uploaded.append(response.json())
    assert (await env.upload(alice, other_task["id"], "d.gif", GIF89A)).status_code == 201

    assert await env.listing(alice, task["id"]) == uploaded
    assert [item["filename"] for item in await env.listing(alice, other_task["id"])] == ["d.gif"]
    assert len({item["id"] for item in uploaded}) == 3
    assert (await env.get_task(alice, task["id"])).json()["attachment_count"] == 3
    assert len(env.probe.objects()) == 4


async def test_file_larger_than_one_s3_part_round_trips(make_env: MakeEnv) -> None:
    env = await make_env(max_upload_bytes=16 * MiB)
    alice = await env.user()
    task = await env.task(alice)
    data = b"%PDF-1.7\n" + os.urandom(9 * MiB + 12345)

    response = await env.upload(alice, task["id"], "big.pdf", data, "application/pdf")

    assert response.status_code == 201, response.text
    meta = response.json()
    assert_attachment(meta, task["id"], data)
    assert env.probe.objects() == {next(iter(env.probe.objects())): len(data)}
    assert env.probe.pending_uploads() == []
    download = await env.client.get(f"{FILES}/{meta['id']}", headers=alice.headers)
    assert_download(download, meta, data)


# --- size limit ----------------------------------------------------------------------------------


async def test_size_limit_is_inclusive(make_env: MakeEnv) -> None:
    env = await make_env(max_upload_bytes=1000)
    alice = await env.user()
    task = await env.task(alice)

    exact = await env.upload(alice, task["id"], "exact.txt", b"x" * 1000, "text/plain")
    assert exact.status_code == 201, exact.text
    assert exact.json()["size"] == 1000

    over = await env.upload(alice, task["id"], "over.txt", b"x" * 1001, "text/plain")
    body = assert_problem(over, 413, "payload_too_large")
    assert "1000" in body["detail"]
    assert len(env.probe.objects()) == 1
    assert [item["filename"] for item in await env.listing(alice, task["id"])] == ["exact.txt"]


async def test_413_when_content_length_reveals_an_oversized_body(make_env: MakeEnv) -> None:
    env = await make_env(max_upload_bytes=1000)
    alice = await env.user()
    task = await env.task(alice)

    response = await env.upload(alice, task["id"], "huge.pdf", b"%PDF-1.4\n" + bytes(300_000))

    assert int(response.request.headers["content-length"]) > 300_000
    assert_problem(response, 413, "payload_too_large")
    await env.assert_nothing_stored(alice, task)


async def test_413_when_the_file_grows_past_the_limit_while_streaming(make_env: MakeEnv) -> None:
    """The Content-Length is within the framing allowance, so the limit is found by counting."""
    env = await make_env(max_upload_bytes=1000)
    alice = await env.user()
    task = await env.task(alice)

    response = await env.upload(alice, task["id"], "big.txt", b"y" * 5000, "text/plain")

    assert int(response.request.headers["content-length"]) < 1000 + 64 * 1024
    assert_problem(response, 413, "payload_too_large")
    await env.assert_nothing_stored(alice, task)


async def test_413_for_a_chunked_body_without_content_length(make_env: MakeEnv) -> None:
    env = await make_env(max_upload_bytes=1000)
    alice = await env.user()
    task = await env.task(alice)
    body = file_part(b"stream.pdf", b"%PDF-1.4\n" + bytes(3000), b"application/pdf")

    response = await env.post_raw(
        alice, task["id"], chunked(body[:700], body[700:], b"--" + BOUNDARY + b"--\r\n")
    )

    assert_problem(response, 413, "payload_too_large")
    await env.assert_nothing_stored(alice, task)


async def test_413_after_parts_were_sent_leaves_no_object_or_unfinished_upload(
    make_env: MakeEnv,
) -> None:
    """Past one S3 part (8 MiB) before the limit is hit: the multipart upload is aborted."""
    env = await make_env(max_upload_bytes=10 * MiB)
    alice = await env.user()
    task = await env.task(alice)
    head = file_part(b"huge.zip", b"PK\x03\x04" + bytes(MiB - 4), b"application/zip")

    response = await env.post_raw(
        alice,
        task["id"],
        chunked(head[:-2], b"\r\n--" + BOUNDARY + b"--\r\n", repeat=(bytes(MiB), 11)),
    )

    assert_problem(response, 413, "payload_too_large")
    await env.assert_nothing_stored(alice, task)


# --- unsupported types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("filename", "data", "declared"), UNSUPPORTED)
async def test_unsupported_or_contradicting_types_are_415(
    env: Env, filename: str, data: bytes, declared: str
) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.upload(alice, task["id"], filename, data, declared)

    assert_problem(response, 415, "unsupported_media_type")
    await env.assert_nothing_stored(alice, task)


@pytest.mark.parametrize(
    "bad_tail", [b"\xff\xfe", b"\x00", b"\xe2\x82"], ids=["invalid-byte", "nul", "truncated-char"]
)
async def test_text_going_bad_deep_into_the_file_is_415_and_leaves_nothing(
    make_env: MakeEnv, bad_tail: bytes
) -> None:
    """The bytes have been streamed to storage (on S3 a part uploaded) before the bad ones come."""
    env = await make_env(max_upload_bytes=16 * MiB)
    alice = await env.user()
    task = await env.task(alice)
    data = ("all good, ça va ✓\n" * 500_000).encode()[: 9 * MiB] + bad_tail

    response = await env.upload(alice, task["id"], "server.log", data, "text/plain")

    assert_problem(response, 415, "unsupported_media_type")
    await env.assert_nothing_stored(alice, task)


# --- malformed requests --------------------------------------------------------------------------

_TEXT_FILE = file_part(b"notes.txt", b"hello\n")
INVALID_BODIES = [
    pytest.param(multipart(file_part(b"empty.txt", b"")), MULTIPART, id="empty-file"),
    pytest.param(multipart(text_part(b"note", b"just text")), MULTIPART, id="no-file-field"),
    pytest.param(
        multipart(file_part(b"notes.txt", b"hello\n", field=b"upload")),
        MULTIPART,
        id="wrong-field-name",
    ),
    pytest.param(
        multipart(file_part(None, b"hello\n")), MULTIPART, id="file-field-without-filename"
    ),
    pytest.param(b'{"file": "aGVsbG8K"}', "application/json", id="json-body"),
    pytest.param(b"file=hello", "application/x-www-form-urlencoded", id="urlencoded-form"),
    pytest.param(multipart(_TEXT_FILE), "multipart/form-data", id="no-boundary"),
    pytest.param(multipart(_TEXT_FILE), None, id="no-content-type"),
    pytest.param(b"this is not a multipart body at all", MULTIPART, id="garbage"),
    pytest.param(b"", MULTIPART, id="empty-body"),
    pytest.param(
        file_part(b"cut.txt", b"the body ends inside the file " * 100),
        MULTIPART,
        id="truncated-inside-file",
    ),
]


@pytest.mark.parametrize(("body", "content_type"), INVALID_BODIES)
async def test_malformed_uploads_are_422(env: Env, body: bytes, content_type: str | None) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.post_raw(alice, task["id"], body, content_type)

    assert_problem(response, 422, "invalid_upload")
    await env.assert_nothing_stored(alice, task)


async def test_empty_file_through_a_normal_client_is_422(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.upload(alice, task["id"], "empty.pdf", b"", "application/pdf")

    body = assert_problem(response, 422, "invalid_upload")
    assert "empty" in body["detail"].lower()
    await env.assert_nothing_stored(alice, task)


async def test_other_form_fields_around_the_file_are_ignored(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    body = multipart(
        text_part(b"description", b"before"),
        file_part(b"pixel.png", PNG, b"image/png"),
        text_part(b"file", b"a plain field also called file"),
    )

    response = await env.post_raw(alice, task["id"], body)

    assert response.status_code == 201, response.text
    assert_attachment(response.json(), task["id"], PNG)
    assert response.json()["filename"] == "pixel.png"


# --- file names ----------------------------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param("../../etc/passwd.txt", "passwd.txt", id="dot-dot-slash"),
    pytest.param("/etc/shadow.txt", "shadow.txt", id="absolute"),
    pytest.param("C:\\evil\\x.txt", "x.txt", id="windows-drive"),
    pytest.param("..\\..\\windows\\win.ini.txt", "win.ini.txt", id="dot-dot-backslash"),
    pytest.param("tab\there\x07.txt", "tabhere.txt", id="control-chars"),
    pytest.param("line\nbreak\n.txt", "linebreak.txt", id="newlines"),
    pytest.param('say "hi"; rm -rf.txt', 'say "hi"; rm -rf.txt', id="quotes-semicolons"),
    pytest.param("evil%00.txt", "evil%00.txt", id="percent-00"),
    pytest.param("evil\x00.exe.txt", "evil.exe.txt", id="nul-byte"),
    pytest.param("invoice\u202etxt.exe.txt", "invoicetxt.exe.txt", id="rtl-override"),
    pytest.param("\x1b[31mred.txt", "[31mred.txt", id="ansi-escape"),
    pytest.param("Résumé 履歴書.txt", "Résumé 履歴書.txt", id="unicode-kept"),
    pytest.param("Re\u0301sume\u0301.txt", "Résumé.txt", id="nfc"),
    pytest.param("", "file", id="empty"),
    pytest.param("...", "file", id="only-dots"),
    pytest.param("some/dir/", "file", id="only-directory"),
    pytest.param("  spaced.txt  ", "spaced.txt", id="surrounding-spaces"),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE_NAMES)
async def test_hostile_filenames_are_sanitised_and_round_trip(
    env: Env, raw: str, expected: str
) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.post_raw(alice, task["id"], multipart(file_part(quoted(raw), b"hi\n")))

    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["filename"] == expected
    assert_safe_name(meta["filename"])
    download = await env.client.get(f"{FILES}/{meta['id']}", headers=alice.headers)
    assert_download(download, meta, b"hi\n")
    # Never the client's name as a path: the only object is under a random key.
    (key,) = env.probe.objects()
    assert OBJECT_KEY.match(key), key


@pytest.mark.parametrize(
    ("raw", "suffix"),
    [
        pytest.param("a" * 296 + ".txt", ".txt", id="300-ascii-bytes"),
        pytest.param("ü" * 150 + ".txt", ".txt", id="304-bytes-two-byte-chars"),
        pytest.param("東" * 100 + ".md", ".md", id="303-bytes-three-byte-chars"),
        pytest.param("🎉" * 80 + ".csv", ".csv", id="324-bytes-four-byte-chars"),
    ],
)
async def test_long_names_are_cut_to_255_bytes_keeping_the_extension(
    env: Env, raw: str, suffix: str
) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.post_raw(alice, task["id"], multipart(file_part(quoted(raw), b"x\n")))

    assert response.status_code == 201, response.text
    name = response.json()["filename"]
    assert_safe_name(name)
    assert name.endswith(suffix)
    assert 255 - 4 <= len(name.encode()) <= 255  # cut at a character boundary, not far short
    assert raw.startswith(name.removesuffix(suffix))
    download = await env.client.get(f"{FILES}/{response.json()['id']}", headers=alice.headers)
    assert_download(download, response.json(), b"x\n")


async def test_hostile_name_through_a_normal_client(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)

    response = await env.upload(alice, task["id"], "../../etc/passwd.txt", b"root:x:0:0\n")

    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "passwd.txt"
    (key,) = env.probe.objects()
    assert OBJECT_KEY.match(key), key


async def test_joiners_in_names_survive_but_bidi_overrides_do_not(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji built with joiners

    kept = await env.upload(alice, task["id"], f"{family} notes.txt", b"hello\n")
    spoofed = await env.upload(alice, task["id"], "invoice\u202etxt.exe.txt", b"hello\n")

    assert kept.status_code == 201, kept.text
    assert kept.json()["filename"] == f"{family} notes.txt"
    assert spoofed.status_code == 201, spoofed.text
    assert spoofed.json()["filename"] == "invoicetxt.exe.txt"


async def test_log_files_with_colour_codes_are_text(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    log = b"\x1b[32mINFO\x1b[0m started\n\x1b[31mERROR\x1b[0m failed\n"

    response = await env.upload(alice, task["id"], "server.log", log, "text/plain")

    assert response.status_code == 201, response.text
    assert response.json()["content_type"].startswith("text/plain")
    download = await env.client.get(f"/api/v1/files/{response.json()['id']}", headers=alice.headers)
    assert download.content == log


# --- visibility and permissions ------------------------------------------------------------------


async def test_a_stranger_cannot_see_or_touch_files(env: Env) -> None:
    alice = await env.user()
    mallory = await env.user()
    task = await env.task(alice)
    uploaded = await env.upload(alice, task["id"], "secret.pdf", PDF, "application/pdf")
    assert uploaded.status_code == 201
    file_id = uploaded.json()["id"]
    files_url = f"{TASKS}/{task['id']}/files"

    listed = await env.client.get(files_url, headers=mallory.headers)
    assert_problem(listed, 404, "task_not_found")
    upload = await env.upload(mallory, task["id"], "intruder.png", PNG, "image/png")
    assert_problem(upload, 404, "task_not_found")
    download = await env.client.get(f"{FILES}/{file_id}", headers=mallory.headers)
    assert_problem(download, 404, "file_not_found")
    redirect = await env.client.get(
        f"{FILES}/{file_id}", params={"redirect": "true"}, headers=mallory.headers
    )
    assert_problem(redirect, 404, "file_not_found")
    deleted = await env.client.delete(f"{FILES}/{file_id}", headers=mallory.headers)
    assert_problem(deleted, 404, "file_not_found")

    # Indistinguishable from a file that does not exist.
    missing = await env.client.get(f"{FILES}/{file_id + 100000}", headers=mallory.headers)
    assert missing.json()["detail"] == download.json()["detail"]
    # Nothing changed for the owner.
    assert [f["id"] for f in await env.listing(alice, task["id"])] == [file_id]
    assert len(env.probe.objects()) == 1
    owner_view = await env.client.get(f"{FILES}/{file_id}", headers=alice.headers)
    assert owner_view.content == PDF


async def test_files_need_authentication(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    file_id = (await env.upload(alice, task["id"], "a.png", PNG)).json()["id"]

    for method, url in (
        ("GET", f"{TASKS}/{task['id']}/files"),
        ("POST", f"{TASKS}/{task['id']}/files"),
        ("GET", f"{FILES}/{file_id}"),
        ("DELETE", f"{FILES}/{file_id}"),
    ):
        response = await env.client.request(method, url)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert len(env.probe.objects()) == 1


async def test_assignee_may_list_upload_download_and_delete_until_unassigned(env: Env) -> None:
    alice = await env.user()
    carol = await env.user()
    task = await env.task(alice, assignee_id=carol.id)
    by_owner = (await env.upload(alice, task["id"], "brief.pdf", PDF, "application/pdf")).json()

    assert [f["id"] for f in await env.listing(carol, task["id"])] == [by_owner["id"]]
    download = await env.client.get(f"{FILES}/{by_owner['id']}", headers=carol.headers)
    assert_download(download, by_owner, PDF)
    uploaded = await env.upload(carol, task["id"], "answer.png", PNG, "image/png")
    assert uploaded.status_code == 201, uploaded.text
    by_carol = uploaded.json()
    assert (await env.client.get(f"{FILES}/{by_carol['id']}", headers=alice.headers)).content == PNG
    deleted = await env.client.delete(f"{FILES}/{by_owner['id']}", headers=carol.headers)
    assert deleted.status_code == 204, deleted.text
    assert [f["id"] for f in await env.listing(alice, task["id"])] == [by_carol["id"]]

    unassigned = await env.client.post(
        f"{TASKS}/{task['id']}/assign", json={"assignee_id": None}, headers=alice.headers
    )
    assert unassigned.status_code == 200, unassigned.text

    listed = await env.client.get(f"{TASKS}/{task['id']}/files", headers=carol.headers)
    assert_problem(listed, 404, "task_not_found")
    upload = await env.upload(carol, task["id"], "late.txt", b"too late\n")
    assert_problem(upload, 404, "task_not_found")
    download = await env.client.get(f"{FILES}/{by_carol['id']}", headers=carol.headers)
    assert_problem(download, 404, "file_not_found")
    delete = await env.client.delete(f"{FILES}/{by_carol['id']}", headers=carol.headers)
    assert_problem(delete, 404, "file_not_found")
    assert [f["id"] for f in await env.listing(alice, task["id"])] == [by_carol["id"]]


async def test_attachment_count_and_task_version_follow_uploads_and_deletes(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    before = await env.get_task(alice, task["id"])
    assert before.json()["attachment_count"] == 0

    first = (await env.upload(alice, task["id"], "one.txt", b"1\n")).json()
    second = (await env.upload(alice, task["id"], "two.txt", b"2\n")).json()
    after_uploads = await env.get_task(alice, task["id"])
    assert after_uploads.json()["attachment_count"] == 2
    assert after_uploads.json()["version"] == before.json()["version"] + 2
    assert after_uploads.headers["etag"] != before.headers["etag"]
    # A client holding the old ETag gets the new representation, not a 304.
    revalidated = await env.client.get(
        f"{TASKS}/{task['id']}",
        headers={**alice.headers, "If-None-Match": before.headers["etag"]},
    )
    assert revalidated.status_code == 200
    assert revalidated.json()["attachment_count"] == 2

    deleted = await env.client.delete(f"{FILES}/{first['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    after_delete = await env.get_task(alice, task["id"])
    assert after_delete.json()["attachment_count"] == 1
    assert after_delete.json()["version"] == after_uploads.json()["version"] + 1
    assert after_delete.headers["etag"] != after_uploads.headers["etag"]

    gone = await env.client.get(f"{FILES}/{first['id']}", headers=alice.headers)
    assert_problem(gone, 404, "file_not_found")
    again = await env.client.delete(f"{FILES}/{first['id']}", headers=alice.headers)
    assert_problem(again, 404, "file_not_found")
    assert await env.listing(alice, task["id"]) == [second]
    assert (await env.get_task(alice, task["id"])).json()["attachment_count"] == 1


async def test_deleted_files_and_tasks_leave_storage_once_jobs_ran(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    doomed_task = await env.task(alice)
    kept = (await env.upload(alice, task["id"], "kept.txt", b"kept\n")).json()
    removed = (await env.upload(alice, task["id"], "removed.txt", b"removed\n")).json()
    for name, data in (("a.png", PNG), ("b.pdf", PDF)):
        assert (await env.upload(alice, doomed_task["id"], name, data)).status_code == 201
    assert len(env.probe.objects()) == 4

    deleted_file = await env.client.delete(f"{FILES}/{removed['id']}", headers=alice.headers)
    assert deleted_file.status_code == 204
    # In the trash a task keeps its files (restorable); deleted for good, they leave storage.
    trashed = await env.client.delete(f"{TASKS}/{doomed_task['id']}", headers=alice.headers)
    assert trashed.status_code == 204
    worker = Worker(
        services_of(env.app).sessionmaker, services_of(env.app).get(STORAGE), env.settings, JOBS
    )
    while await worker.run_once():
        pass
    assert len(env.probe.objects()) == 3
    deleted_task = await env.client.delete(
        f"{TASKS}/{doomed_task['id']}/force", headers=alice.headers
    )
    assert deleted_task.status_code == 204
    worker = Worker(
        services_of(env.app).sessionmaker, services_of(env.app).get(STORAGE), env.settings, JOBS
    )
    while await worker.run_once():
        pass

    assert worker.failed == 0
    objects = env.probe.objects()
    assert len(objects) == 1
    assert env.probe.read(next(iter(objects))) == b"kept\n"
    download = await env.client.get(f"{FILES}/{kept['id']}", headers=alice.headers)
    assert download.content == b"kept\n"


# --- conditional and redirected downloads --------------------------------------------------------


async def test_if_none_match_gives_304(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    meta = (await env.upload(alice, task["id"], "pixel.png", PNG, "image/png")).json()
    url = f"{FILES}/{meta['id']}"
    etag = (await env.client.get(url, headers=alice.headers)).headers["etag"]

    for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await env.client.get(url, headers={**alice.headers, "If-None-Match": condition})
        assert response.status_code == 304, (condition, response.status_code)
        assert response.content == b""
        assert response.headers["etag"] == etag

    for condition in ('"something-else"', f'"{meta["sha256"][:-1]}0"'):
        response = await env.client.get(url, headers={**alice.headers, "If-None-Match": condition})
        assert_download(response, meta, PNG)


async def test_redirect_to_a_presigned_url_on_s3_and_bytes_on_local(env: Env) -> None:
    alice = await env.user()
    task = await env.task(alice)
    name = 'Ünïcode "report"; v2.pdf'
    body = multipart(file_part(quoted(name), PDF, b"application/pdf"))
    meta = (await env.post_raw(alice, task["id"], body)).json()
    assert meta["filename"] == name

    response = await env.client.get(
        f"{FILES}/{meta['id']}", params={"redirect": "true"}, headers=alice.headers
    )

    if env.backend == "local":
        assert_download(response, meta, PDF)
        return
    assert response.status_code == 307, response.text
    location = response.headers["location"]
    assert urlsplit(location).netloc == urlsplit(env.settings.s3_endpoint_url).netloc
    assert "X-Amz-Signature=" in location
    assert "X-Amz-Expires=" in location
    async with httpx.AsyncClient() as plain:  # no token: the URL itself grants access
        fetched = await plain.get(location)
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == PDF
    assert fetched.headers["content-type"] == "application/pdf"
    assert disposition_filename(fetched.headers["content-disposition"]) == name
    # Without ?redirect the bytes still come through the API.
    direct = await env.client.get(f"{FILES}/{meta['id']}", headers=alice.headers)
    assert_download(direct, meta, PDF)


# --- failures after the object was stored --------------------------------------------------------


async def test_object_removed_when_the_request_fails_after_storing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await env.user()
    task = await env.task(alice)
    original = service.add_attachment
    stored_before_failure: list[dict[str, int]] = []

    async def add_then_fail(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        stored_before_failure.append(env.probe.objects())
        raise RuntimeError("database went away after the insert")

    monkeypatch.setattr(service, "add_attachment", add_then_fail)

    response = await env.upload(alice, task["id"], "doomed.pdf", PDF, "application/pdf")

    body = assert_problem(response, 500, "internal_error")
    assert "database went away" not in response.text
    assert "Traceback" not in response.text
    assert body["detail"]
    assert len(stored_before_failure) == 1
    assert len(stored_before_failure[0]) == 1  # the object really was there
    monkeypatch.undo()
    await env.assert_nothing_stored(alice, task)


async def test_object_removed_when_a_mapped_error_follows_storing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await env.user()
    task = await env.task(alice)
    original = service.add_attachment

    async def add_then_conflict(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        raise Conflict("Someone else changed the task.")

    monkeypatch.setattr(service, "add_attachment", add_then_conflict)

    response = await env.upload(alice, task["id"], "doomed.png", PNG, "image/png")

    assert_problem(response, 409, "conflict")
    monkeypatch.undo()
    await env.assert_nothing_stored(alice, task)


class _CommitFails(AsyncSession):
    async def commit(self) -> None:
        raise ConnectionResetError("connection lost during COMMIT")


async def test_object_removed_when_the_commit_itself_fails(
    env: Env, connection: AsyncConnection
) -> None:
    alice = await env.user()
    task = await env.task(alice)
    working = services_of(env.app).sessionmaker
    services_of(env.app).sessionmaker = async_sessionmaker(
        bind=connection,
        class_=_CommitFails,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )
    try:
        response = await env.upload(alice, task["id"], "doomed.txt", b"never committed\n")
    finally:
        services_of(env.app).sessionmaker = working

    assert_problem(response, 500, "internal_error")
    assert "COMMIT" not in response.text
    await env.assert_nothing_stored(alice, task)


# --- the hot object cache ------------------------------------------------------------------------


async def _download_after_removal(env: Env, size: int) -> tuple[bytes, httpx.Response]:
    """Upload `size` bytes, download them once, delete the object behind the app's back, then
    download again."""
    alice = await env.user()
    task = await env.task(alice)
    lines = b"".join(f"line {n} of the notes\n".encode() for n in range(size // 16 + 1))
    data = lines[:size]
    uploaded = await env.upload(alice, task["id"], "notes.txt", data, "text/plain")
    assert uploaded.status_code == 201, uploaded.text
    url = f"{FILES}/{uploaded.json()['id']}"
    first = await env.client.get(url, headers=alice.headers)
    assert first.status_code == 200
    assert first.content == data
    (key,) = env.probe.objects()
    env.probe.remove(key)
    return data, await env.client.get(url, headers=alice.headers)


async def test_a_small_file_downloaded_again_is_served_from_memory(env: Env) -> None:
    """Keys are never rewritten, so a file read once is kept and sent without asking storage
    (no thread hop and file read, no S3 request): even with the object gone from storage."""
    data, again = await _download_after_removal(env, 64 * 1024)
    assert again.status_code == 200, again.text
    assert again.content == data
    assert again.headers["content-length"] == str(len(data))
    assert again.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'


async def test_without_the_cache_every_download_reads_storage(make_env: MakeEnv) -> None:
    env = await make_env(storage_cache_bytes=0)
    _, again = await _download_after_removal(env, 64 * 1024)
    assert_problem(again, 404, "file_not_found")


async def test_files_larger_than_one_chunk_are_streamed_not_kept(make_env: MakeEnv) -> None:
    # A cache larger than the file: it is still not kept (it streams, in chunks).
    env = await make_env(storage_cache_bytes=8 * MiB)
    _, again = await _download_after_removal(env, MiB + 1)
    assert_problem(again, 404, "file_not_found")
    assert services_of(env.app).get(STORAGE).cached_bytes == 0


# --- streaming memory ----------------------------------------------------------------------------


async def _asgi_get(app: FastAPI, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """GET through the raw ASGI interface, hashing and discarding the body as it is sent
    (httpx's ASGITransport would collect the whole body first)."""
    done = asyncio.Event()
    asked = False
    result: dict[str, Any] = {"status": 0, "headers": {}, "size": 0, "chunks": 0}
    digest = hashlib.sha256()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result["status"] = message["status"]
            result["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            digest.update(chunk)
            result["size"] += len(chunk)
            result["chunks"] += 1
            if not message.get("more_body", False):
                done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    result["sha256"] = digest.hexdigest()
    return result


@pytest.mark.parametrize("backend", ["local"])
async def test_upload_and_download_stream_with_bounded_memory(make_env: MakeEnv) -> None:
    env = await make_env(max_upload_bytes=64 * MiB)
    alice = await env.user()
    task = await env.task(alice)
    chunk_size, chunks = 64 * 1024, 40 * 16  # 40 MiB
    size = chunk_size * chunks
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        # Fresh objects, as from a socket: keeping them around would show in the measurement.
        yield file_part(b"big.pdf", b"", b"application/pdf")[:-2]
        for number in range(chunks):
            chunk = os.urandom(chunk_size)
            if number == 0:
                chunk = b"%PDF-1.7\n" + chunk[9:]
            sent.update(chunk)
            yield chunk
        yield b"\r\n--" + BOUNDARY + b"--\r\n"

    tracemalloc.start()
    try:
        # The measurement does see a whole file's worth of memory when it is held.
        whole = bytes(size)
        _, control_peak = tracemalloc.get_traced_memory()
        del whole
        tracemalloc.reset_peak()

        response = await env.post_raw(alice, task["id"], body())
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        assert response.status_code == 201, response.text
        meta = response.json()
        download = await _asgi_get(env.app, f"{FILES}/{meta['id']}", alice.headers)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert control_peak >= size
    assert meta["size"] == size
    assert meta["sha256"] == sent.hexdigest()
    assert upload_peak < 20 * MiB, f"upload peaked at {upload_peak / MiB:.1f} MiB"
    assert download["status"] == 200
    assert download["size"] == size
    assert download["sha256"] == sent.hexdigest()
    assert download["headers"]["content-length"] == str(size)
    assert download["chunks"] > 2  # streamed in pieces, not one body
    assert download_peak < 20 * MiB, f"download peaked at {download_peak / MiB:.1f} MiB"
