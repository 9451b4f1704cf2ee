"""Storage backends for tests: a real S3 API (moto's server on loopback) for the whole session,
and a probe that looks inside a backend directly, not through the app under test.

Use the fixture by importing it into a test module (the import registers it with pytest):

    from tests.storage_fixtures import moto_endpoint_fixture  # noqa: F401

and then ask for `moto_endpoint` (the server's base URL) like any other fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from taskapi.kit.config import Settings

S3_REGION = "us-east-1"


@pytest.fixture(scope="session", name="moto_endpoint")
def moto_endpoint_fixture() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", S3_REGION)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            port = server._server.server_port  # type: ignore[attr-defined]
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


def unique_bucket() -> str:
    return f"taskapi-test-{uuid.uuid4().hex[:20]}"


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(signature_version="s3v4"),
    )


class StorageProbe:
    """What a backend holds, read straight from the directory or the bucket."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend = settings.storage_backend
        self._client: Any = None
        if self.backend == "s3":
            assert settings.s3_endpoint_url
            self._client = s3_client(settings.s3_endpoint_url)

    @property
    def root(self) -> Path:
        return Path(self.settings.storage_dir)

    def objects(self) -> dict[str, int]:
        """Every complete object (key -> size); on disk that includes stray temporary files."""
        if self.backend == "s3":
            found: dict[str, int] = {}
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.settings.s3_bucket):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
            return found
        if not self.root.exists():
            return {}
        return {
            path.relative_to(self.root).as_posix(): path.stat().st_size
            for path in self.root.rglob("*")
            if path.is_file()
        }

    def pending_uploads(self) -> list[str]:
        """S3 multipart uploads begun and neither completed nor aborted (their parts cost money)."""
        if self.backend != "s3":
            return []
        listing = self._client.list_multipart_uploads(Bucket=self.settings.s3_bucket)
        return [upload["Key"] for upload in listing.get("Uploads", [])]

    def leftovers(self) -> list[str]:
        """Anything at all left in storage: objects, temporary files, unfinished uploads."""
        return sorted(self.objects()) + [f"upload:{key}" for key in self.pending_uploads()]

    def read(self, key: str) -> bytes:
        if self.backend == "s3":
            body: bytes = self._client.get_object(Bucket=self.settings.s3_bucket, Key=key)[
                "Body"
            ].read()
            return body
        return (self.root / key).read_bytes()

    def remove(self, key: str) -> None:
        """Delete one object behind the app's back."""
        if self.backend == "s3":
            self._client.delete_object(Bucket=self.settings.s3_bucket, Key=key)
        else:
            (self.root / key).unlink()

    def clean(self) -> None:
        """Free what a test stored (moto keeps objects in this process's memory)."""
        if self.backend == "s3":
            bucket = self.settings.s3_bucket
            for key in self.pending_uploads():
                listing = self._client.list_multipart_uploads(Bucket=bucket, Prefix=key)
                for upload in listing.get("Uploads", []):
                    self._client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
            for key in self.objects():
                self._client.delete_object(Bucket=bucket, Key=key)
            return
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


class MotoServer:
    """A moto server of a test module's own (outage tests restart or cut theirs)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def client(self) -> Any:
        return s3_client(self.url)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client().head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            code = error.response["Error"]["Code"]
        else:
            return True
        assert code in ("404", "NoSuchKey"), code
        return False

    def keys(self, bucket: str) -> list[str]:
        page = self.client().list_objects_v2(Bucket=bucket, Prefix="attachments/")
        return [item["Key"] for item in page.get("Contents", [])]


@contextmanager
def moto_server(port: int) -> Iterator[MotoServer]:
    """Start a MotoServer with dummy AWS credentials in the environment; stop it afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", S3_REGION)
        patch.delenv("AWS_PROFILE", raising=False)
        server = MotoServer(port)
        server.server.start()
        try:
            yield server
        finally:
            server.server.stop()
