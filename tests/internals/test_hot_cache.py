"""The hot object cache's bounds, over a real local backend (the API-level behaviour, on both
backends, is in test_attachments.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskapi.storage.base import CHUNK_SIZE
from taskapi.storage.hot_cache import HotObjectCache
from taskapi.storage.local import LocalStorage


async def _put(storage: HotObjectCache, key: str, data: bytes) -> None:
    sink = await storage.start_upload(key, "text/plain")
    await sink.write(data)
    await sink.commit()


async def _read(storage: HotObjectCache, key: str) -> bytes:
    stream = await storage.open(key)
    return b"".join([chunk async for chunk in stream.chunks])


@pytest.fixture
def backend(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path)


async def test_least_recently_read_objects_leave_first_within_the_byte_bound(
    backend: LocalStorage, tmp_path: Path
) -> None:
    storage = HotObjectCache(backend, max_bytes=10)
    for key, data in (("a", b"aaaa"), ("b", b"bbbb"), ("c", b"cccc")):
        await _put(storage, key, data)
    await _read(storage, "a")
    await _read(storage, "b")
    await _read(storage, "a")  # a is now the most recently read
    await _read(storage, "c")  # 12 bytes > 10: the least recently read (b) goes
    assert storage.cached_bytes == 8
    for key in ("a", "b", "c"):
        (tmp_path / key).unlink()
    assert await _read(storage, "a") == b"aaaa"
    assert await _read(storage, "c") == b"cccc"
    with pytest.raises(FileNotFoundError):
        await _read(storage, "b")


async def test_an_object_larger_than_the_whole_cache_is_not_kept(backend: LocalStorage) -> None:
    storage = HotObjectCache(backend, max_bytes=3)
    await _put(storage, "big", b"four")
    assert await _read(storage, "big") == b"four"
    assert storage.cached_bytes == 0


async def test_objects_over_one_chunk_are_never_kept(backend: LocalStorage) -> None:
    storage = HotObjectCache(backend, max_bytes=4 * CHUNK_SIZE)
    await _put(storage, "large", b"x" * (CHUNK_SIZE + 1))
    assert len(await _read(storage, "large")) == CHUNK_SIZE + 1
    assert storage.cached_bytes == 0
    await _put(storage, "one-chunk", b"y" * CHUNK_SIZE)
    await _read(storage, "one-chunk")
    assert storage.cached_bytes == CHUNK_SIZE


async def test_delete_drops_the_kept_copy_and_the_object(
    backend: LocalStorage, tmp_path: Path
) -> None:
    storage = HotObjectCache(backend, max_bytes=100)
    await _put(storage, "gone", b"soon gone")
    await _read(storage, "gone")
    assert storage.cached_bytes == 9
    await storage.delete("gone")
    assert storage.cached_bytes == 0
    assert not (tmp_path / "gone").exists()
    with pytest.raises(FileNotFoundError):
        await _read(storage, "gone")
