from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from taskapi.kit.errors import ServiceUnavailable
from taskapi.kit.services import ServiceKey

CHUNK_SIZE = 1024 * 1024


class StorageUnavailable(ServiceUnavailable):
    code, title = "storage_unavailable", "Storage unavailable"
    default_detail = "File storage is unavailable right now; try again shortly."


def new_object_key() -> str:
    """Random and meaningless: a client's file name never becomes a path or key."""
    token = secrets.token_hex(16)
    return f"attachments/{token[:2]}/{token}"


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the exact name in RFC 5987 `filename*`: the one
    header a stored file is downloaded under, whether the API streams it or S3 serves it from a
    presigned URL."""
    fallback = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\;%' else "_" for ch in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    modified_at: datetime


@dataclass
class ObjectStream:
    size: int
    chunks: AsyncIterator[bytes]
    # The whole object when it was read at once (a small local file): it can be sent as one
    # body, without a streaming response's machinery.
    whole: bytes | None = None


async def single_chunk(data: bytes) -> AsyncIterator[bytes]:
    """The chunks of an object already in memory."""
    yield data


class UploadSink(ABC):
    """An object being written: `write` chunks, then `commit`, or `abort` to leave nothing."""

    @abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    async def commit(self) -> None: ...

    @abstractmethod
    async def abort(self) -> None: ...


class Storage(ABC):
    name: str

    @abstractmethod
    async def start_upload(self, key: str, content_type: str) -> UploadSink: ...

    @abstractmethod
    async def open(self, key: str) -> ObjectStream:
        """Stream an object; raises FileNotFoundError if it does not exist."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object; deleting one that does not exist is not an error (idempotent)."""

    @abstractmethod
    def list_objects(self) -> AsyncIterator[StoredObject]: ...

    @abstractmethod
    async def check(self) -> bool:
        """True when the backend answers (readiness)."""

    async def presigned_url(self, key: str, filename: str, content_type: str) -> str | None:
        """A short-lived direct download URL, when the backend has such a thing."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""


STORAGE = ServiceKey[Storage]("storage")
