"""Where attachment bytes live: a local directory or S3, behind one streaming interface."""

from taskapi.storage.base import (
    STORAGE,
    ObjectStream,
    Storage,
    StorageUnavailable,
    StoredObject,
    content_disposition,
    new_object_key,
)

__all__ = [
    "STORAGE",
    "ObjectStream",
    "Storage",
    "StorageUnavailable",
    "StoredObject",
    "content_disposition",
    "new_object_key",
]
