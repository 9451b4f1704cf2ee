"""Files under STORAGE_DIR, written through a temporary file and renamed into place."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from taskapi.storage.base import (
    CHUNK_SIZE,
    ObjectStream,
    Storage,
    StoredObject,
    UploadSink,
    single_chunk,
)

logger = logging.getLogger("taskapi.storage")


class _LocalSink(UploadSink):
    def __init__(self, final: Path, temp: Path, handle: BinaryIO) -> None:
        self._final = final
        self._temp = temp
        self._handle = handle

    async def write(self, chunk: bytes) -> None:
        await asyncio.to_thread(self._handle.write, chunk)

    async def commit(self) -> None:
        def finish() -> None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            # Atomic: readers see the whole file or none of it.
            os.replace(self._temp, self._final)

        await asyncio.to_thread(finish)

    async def abort(self) -> None:
        def discard() -> None:
            self._handle.close()
            self._temp.unlink(missing_ok=True)

        await asyncio.to_thread(discard)


class LocalStorage(Storage):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("object key escapes the storage directory")
        return path

    async def start_upload(self, key: str, content_type: str) -> UploadSink:
        final = self._path(key)

        def open_temp() -> tuple[Path, BinaryIO]:
            final.parent.mkdir(parents=True, exist_ok=True)
            temp = final.with_name(f".{final.name}.partial")
            return temp, open(temp, "xb")

        temp, handle = await asyncio.to_thread(open_temp)
        return _LocalSink(final, temp, handle)

    async def open(self, key: str) -> ObjectStream:
        path = self._path(key)

        def open_and_read_first() -> tuple[BinaryIO | None, int, bytes]:
            # One trip to a thread instead of three: a file of up to CHUNK_SIZE is read whole
            # (and closed at once).
            handle = open(path, "rb")  # noqa: SIM115 - closed here or by the generator below
            try:
                size = os.fstat(handle.fileno()).st_size
                first = handle.read(CHUNK_SIZE)
            except BaseException:
                handle.close()
                raise
            if len(first) >= size:
                handle.close()
                return None, size, first
            return handle, size, first

        handle, size, first = await asyncio.to_thread(open_and_read_first)
        if handle is None:
            return ObjectStream(size=size, chunks=single_chunk(first), whole=first)

        async def chunks() -> AsyncIterator[bytes]:
            assert handle is not None
            try:
                chunk, sent = first, 0
                while chunk:
                    yield chunk
                    sent += len(chunk)
                    if sent >= size:
                        break  # no extra trip to a thread just to read the end of the file
                    chunk = await asyncio.to_thread(handle.read, CHUNK_SIZE)
            finally:
                handle.close()

        return ObjectStream(size=size, chunks=chunks())

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        def scan() -> list[StoredObject]:
            found = []
            base = self.root / "attachments"
            if not base.exists():
                return []
            for path in base.rglob("*"):
                if path.is_file():
                    # Leftover ".partial" files of uploads that died are listed too: they belong
                    # to no attachment, so the orphan sweep removes them.
                    modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
                    key = path.relative_to(self.root).as_posix()
                    found.append(StoredObject(key=key, modified_at=modified))
            return found

        for stored in await asyncio.to_thread(scan):
            yield stored

    async def check(self) -> bool:
        def probe() -> bool:
            self.root.mkdir(parents=True, exist_ok=True)
            return os.access(self.root, os.W_OK)

        try:
            writable = await asyncio.to_thread(probe)
        except OSError as error:
            # Readiness only says "unavailable"; the operator needs the path and the reason.
            logger.warning("local storage %s unavailable: %s", self.root, error)
            return False
        if not writable:
            logger.warning("local storage %s is not writable by this process", self.root)
        return writable
