"""What the compose checks share: the stack's commands, its published ports, HTTP and S3 clients.

scripts/compose/run.sh sets the environment this reads (COMPOSE_PROJECT_NAME and the published
ports) after it has made sure an engine runs and the images exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx

ROOT = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "taskapi-check")
API_PORT = int(os.environ.get("TASKAPI_PORT", "8000"))
STATS_PORT = int(os.environ.get("TASKAPI_PROXY_STATS_PORT", "8404"))
S3_PORT = int(os.environ.get("TASKAPI_S3_PORT", "9000"))
IMAGE = "taskapi:local"
PASSWORD = "compose-check-password-1"
T = TypeVar("T")


class CheckFailed(Exception):
    """A check did not hold; the message says what was expected and what was seen."""


@dataclass
class Checks:
    """Prints each check as it holds; the first that does not ends the run."""

    passed: list[str] = field(default_factory=list)

    def ok(self, name: str, detail: str = "") -> None:
        self.passed.append(name)
        print(f"  ok  {name}" + (f"  ({detail})" if detail else ""), flush=True)

    def expect(self, condition: bool, name: str, detail: str = "") -> None:
        if not condition:
            raise CheckFailed(f"{name}: {detail}")
        self.ok(name, detail)

    def report(self) -> None:
        """For run.sh's closing line: how many held."""
        results = os.environ.get("COMPOSE_CHECK_RESULTS")
        if results:
            Path(results).write_text(f"{len(self.passed)}\n")


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(
    args: Sequence[str], *, check: bool = True, timeout: float = 600, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603  (our own fixed commands)
        list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
    )
    if check and result.returncode != 0:
        raise CheckFailed(
            f"`{' '.join(args)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result


def compose(*args: str, check: bool = True, timeout: float = 600) -> str:
    """docker-compose on the project's own compose.yaml, unchanged, as this run's project."""
    return run(["docker-compose", "-p", PROJECT, *args], check=check, timeout=timeout).stdout


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    return run(["docker", *args], check=check, timeout=timeout).stdout


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """The first truthy value `probe` returns; CheckFailed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.HTTPError, OSError, CheckFailed) as error:
            value, last = None, error
        if value:
            return value
        time.sleep(interval)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def containers(service: str) -> list[dict[str, Any]]:
    """The service's containers (running or not), numbered as compose numbers them."""
    ids = compose("ps", "-q", service).split()
    if not ids:
        return []
    found: list[dict[str, Any]] = json.loads(docker("inspect", *ids))
    number = "com.docker.compose.container-number"
    return sorted(found, key=lambda c: int(c["Config"]["Labels"][number]))


def health(container: dict[str, Any]) -> str:
    state: dict[str, Any] = json.loads(docker("inspect", container["Id"]))[0]["State"]
    return str(state.get("Health", {}).get("Status", "none"))


def leftovers() -> dict[str, list[str]]:
    """Whatever of this project still exists in the engine."""
    label = f"label=com.docker.compose.project={PROJECT}"
    return {
        "containers": docker("ps", "-aq", "--filter", label).split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
        "networks": docker("network", "ls", "-q", "--filter", label).split(),
    }


def proxy_servers() -> dict[str, dict[str, str]]:
    """HAProxy's view of the API backend: slot name -> its CSV stats row (status, stot, ...)."""
    response = httpx.get(f"http://127.0.0.1:{STATS_PORT}/stats;csv", timeout=5)
    response.raise_for_status()
    header, *rows = response.text.lstrip("# ").splitlines()
    names = header.split(",")
    servers = {}
    for row in rows:
        record = dict(zip(names, row.split(","), strict=False))
        if record.get("pxname") == "api" and record.get("svname") not in ("FRONTEND", "BACKEND"):
            servers[record["svname"]] = record
    return servers


def servers_up() -> dict[str, dict[str, str]]:
    return {name: row for name, row in proxy_servers().items() if row["status"] == "UP"}


def s3_client() -> Any:
    env = service_environment("api")
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{S3_PORT}",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["S3_REGION"],
    )


def s3_keys() -> set[str]:
    bucket = service_environment("api")["S3_BUCKET"]
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def service_environment(service: str) -> dict[str, str]:
    """The environment compose gave the service's first container."""
    (first, *_) = containers(service)
    return dict(item.partition("=")[::2] for item in first["Config"]["Env"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Api:
    """The API through the proxy's published port, as a client on this machine sees it."""

    def __init__(self, port: int = API_PORT) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_and_login(self, prefix: str = "compose") -> tuple[dict[str, Any], str]:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        user = self.expect(
            "POST",
            "/api/v1/auth/register",
            201,
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        tokens = self.expect(
            "POST", "/api/v1/auth/login", 200, json={"username": name, "password": PASSWORD}
        )
        return user, str(tokens["access_token"])

    def expect(
        self, method: str, path: str, status: int, token: str | None = None, **kwargs: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code != status:
            raise CheckFailed(
                f"{method} {path}: expected {status}, got {response.status_code}: "
                f"{response.text[:500]}"
            )
        if not response.content or not response.headers.get("content-type", "").endswith("json"):
            return response.content
        return response.json()


# Runs inside an API container: one request to that replica's own port, answered as JSON (or as
# text). The image has Python but no curl; this is how a check talks to one replica directly.
IN_REPLICA_CLIENT = """
import json, sys, urllib.error, urllib.request
method, path, token, body = sys.argv[1:5]
headers = {"Content-Type": "application/json"}
if token:
    headers["Authorization"] = "Bearer " + token
request = urllib.request.Request("http://127.0.0.1:8000" + path, method=method,
    data=body.encode() if body else None, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as error:
    status, text = error.code, error.read().decode()
try:
    parsed = json.loads(text) if text else None
except ValueError:
    parsed = text
print(json.dumps({"status": status, "body": parsed}))
"""


def in_replica(
    index: int, method: str, path: str, token: str = "", body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """One request to API replica number `index` directly, from inside its container."""
    out = compose(
        "exec",
        "-T",
        "--index",
        str(index),
        "api",
        "python",
        "-c",
        IN_REPLICA_CLIENT,
        method,
        path,
        token,
        json.dumps(body) if body is not None else "",
        timeout=60,
    )
    answer = json.loads(out.strip().splitlines()[-1])
    return int(answer["status"]), answer["body"]


@contextmanager
def reported(checks: Checks) -> Iterator[None]:
    """Exit status 1 with the failed check's message; the count of those that held either way."""
    try:
        yield
    except CheckFailed as error:
        print(f"  FAILED  {error}", file=sys.stderr, flush=True)
        checks.report()
        sys.exit(1)
    checks.report()
