"""The process's storage backend, chosen by STORAGE_BACKEND.

The S3 backend is imported only when it is chosen: aioboto3 brings aiobotocore, botocore,
aiohttp and httpx, 21 MiB of resident memory in every process that imports them (docs/sync.md,
"What idle streams cost in memory"), which a process storing files locally never uses.
"""

from __future__ import annotations

from taskapi.kit.config import Settings
from taskapi.storage.base import Storage
from taskapi.storage.hot_cache import HotObjectCache
from taskapi.storage.local import LocalStorage


async def create_storage(settings: Settings) -> Storage:
    backend: Storage
    if settings.storage_backend == "s3":
        from taskapi.storage.s3 import S3Storage

        s3 = S3Storage(settings)
        await s3.start()
        backend = s3
    else:
        backend = LocalStorage(settings.storage_dir)
    if settings.storage_cache_bytes > 0:
        return HotObjectCache(backend, settings.storage_cache_bytes)
    return backend
