"""S3 (or MinIO, or moto) through aioboto3, streaming both ways.

Uploads use multipart upload with bounded parts, so a 1 GiB file never sits in memory; a failed
upload is aborted so no parts are left behind.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from taskapi.kit.config import Settings
from taskapi.storage.base import (
    CHUNK_SIZE,
    ObjectStream,
    Storage,
    StorageUnavailable,
    StoredObject,
    UploadSink,
    content_disposition,
    single_chunk,
)

# A server that cannot be reached or answers with nothing usable. botocore wraps the request's
# own failures, but an object's body is read from aiohttp's stream unwrapped: a connection cut
# after the headers is aiohttp's ClientPayloadError, neither botocore's error nor an OSError.
_TRANSPORT_ERRORS = (BotoCoreError, OSError, aiohttp.ClientError)
# ...and those plus the errors S3 answered with (each caller tells a missing object apart first
# where that matters).
_ANY_ERROR = (*_TRANSPORT_ERRORS, ClientError)

PART_SIZE = 8 * 1024 * 1024  # S3's minimum is 5 MiB for every part but the last
PRESIGNED_URL_SECONDS = 300


@functools.cache
def _session() -> aioboto3.Session:
    """One session per process: a session loads botocore's service models and credentials the
    first time it makes a client (~0.1 s of CPU) and keeps them, so a storage started again in
    the same process (each app lifespan: tests start thousands) reuses them. Clients are still
    made, and closed, by each storage."""
    return aioboto3.Session()


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class _S3Sink(UploadSink):
    def __init__(self, client: Any, bucket: str, key: str, content_type: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def _flush_part(self) -> None:
        if self._upload_id is None:
            created = await self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType=self._content_type
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        with memoryview(self._buffer) as view:
            body = bytes(view[:PART_SIZE])  # one copy, not a slice copied again
        del self._buffer[:PART_SIZE]
        part = await self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"ETag": part["ETag"], "PartNumber": number})

    async def write(self, chunk: bytes) -> None:
        self._buffer.extend(chunk)
        try:
            while len(self._buffer) >= PART_SIZE:
                await self._flush_part()
        except _ANY_ERROR as error:
            raise StorageUnavailable() from error

    async def commit(self) -> None:
        try:
            if self._upload_id is None:
                # Small object: a single PUT is one round trip instead of three.
                await self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=bytes(self._buffer),
                    ContentType=self._content_type,
                )
                return
            if self._buffer:
                await self._flush_part()
            await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except _ANY_ERROR as error:
            raise StorageUnavailable() from error

    async def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            with contextlib.suppress(*_ANY_ERROR):
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )


class S3Storage(Storage):
    name = "s3"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._bucket = settings.s3_bucket
        self._session = _session()
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        config = AioConfig(
            connect_timeout=2,
            read_timeout=15,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
        )
        self._client = await self._exit_stack.enter_async_context(
            self._session.client(
                "s3",
                endpoint_url=self._settings.s3_endpoint_url,
                region_name=self._settings.s3_region,
                config=config,
            )
        )
        # Convenience for local stacks (moto, MinIO): create the bucket if it is missing.
        with contextlib.suppress(*_ANY_ERROR):
            await self._client.head_bucket(Bucket=self._bucket)
            return
        with contextlib.suppress(*_ANY_ERROR):
            await self._client.create_bucket(Bucket=self._bucket)

    async def close(self) -> None:
        await self._exit_stack.aclose()

    async def start_upload(self, key: str, content_type: str) -> UploadSink:
        return _S3Sink(self._client, self._bucket, key, content_type)

    async def open(self, key: str) -> ObjectStream:
        try:
            response = await self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if _missing(error):
                raise FileNotFoundError(key) from error
            raise StorageUnavailable() from error
        except _TRANSPORT_ERRORS as error:
            raise StorageUnavailable() from error
        body = response["Body"]
        size = int(response["ContentLength"])
        if size <= CHUNK_SIZE:
            # One chunk either way: read it here, so a failure is a clean 503 rather than a cut
            # response, and the object can be sent as one body (and kept by HotObjectCache).
            try:
                whole = await body.read()
            except _ANY_ERROR as error:
                raise StorageUnavailable() from error
            finally:
                body.close()
            return ObjectStream(size=len(whole), chunks=single_chunk(whole), whole=whole)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in body.iter_chunks(CHUNK_SIZE):
                    yield chunk
            finally:
                body.close()

        return ObjectStream(size=size, chunks=chunks())

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if not _missing(error):
                raise StorageUnavailable() from error
        except _TRANSPORT_ERRORS as error:
            raise StorageUnavailable() from error

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self._bucket, Prefix="attachments/"):
                for item in page.get("Contents", []):
                    yield StoredObject(key=item["Key"], modified_at=item["LastModified"])
        except _ANY_ERROR as error:
            raise StorageUnavailable() from error

    async def check(self) -> bool:
        try:
            await self._client.head_bucket(Bucket=self._bucket)
        except _ANY_ERROR:
            return False
        return True

    async def presigned_url(self, key: str, filename: str, content_type: str) -> str | None:
        url: str = await self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ResponseContentDisposition": content_disposition(filename),
                "ResponseContentType": content_type,
            },
            ExpiresIn=PRESIGNED_URL_SECONDS,
        )
        return url
