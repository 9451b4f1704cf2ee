"""What a server process holds in memory whatever its traffic: the modules it loads.

The S3 client (aioboto3, with aiobotocore, botocore, aiohttp and httpx) costs every process that
imports it 21 MiB of resident memory (docs/sync.md, "What idle streams cost in memory"); a
server storing files locally must not pay it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.conftest import database_url
from tests.deploy.test_cli_and_socket import CLI_TIMEOUT, cli_env, free_port

S3_CLIENT_PACKAGES = ("aioboto3", "aiobotocore", "boto3", "botocore")

# Builds the app as `taskapi serve` does, and its storage as its lifespan does, then lists the
# S3 client's packages that were loaded.
_LOADED_S3_PACKAGES = """
import asyncio, json, sys
from taskapi.app import create_served_app
from taskapi.kit.config import get_settings
from taskapi.storage.factory import create_storage

async def build_storage():
    storage = await create_storage(get_settings())
    await storage.close()

create_served_app()
asyncio.run(build_storage())
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))))
"""


async def loaded_s3_packages(tmp_path: Path, **env: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LOADED_S3_PACKAGES,
        *S3_CLIENT_PACKAGES,
        env=cli_env(DATABASE_URL=database_url("postgres"), STORAGE_DIR=str(tmp_path), **env),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    assert process.returncode == 0, err.decode()
    loaded: list[str] = json.loads(out)
    return loaded


async def test_a_server_storing_files_locally_does_not_load_the_s3_client(
    tmp_path: Path,
) -> None:
    assert await loaded_s3_packages(tmp_path, STORAGE_BACKEND="local") == []


async def test_a_server_storing_files_in_s3_loads_it_when_it_starts(tmp_path: Path) -> None:
    # The check above would pass just as well if it could not see the client at all.
    # Nothing listens at this endpoint: the bucket check fails fast, and is not what is checked.
    endpoint = f"http://127.0.0.1:{free_port()}"
    loaded = await loaded_s3_packages(tmp_path, STORAGE_BACKEND="s3", S3_ENDPOINT_URL=endpoint)
    assert loaded == sorted(S3_CLIENT_PACKAGES)
