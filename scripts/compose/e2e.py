"""`make compose-test`: the real compose.yaml up, one user's whole journey over the published port.

Run by scripts/compose/run.sh once the engine runs and the images exist: compose up; ready →
register → login → create → list → upload to the S3 service → download byte-identical → stats →
the worker (not the API) deletes a removed file's object from S3; delete keeps the
object while the task is in the trash, force delete removes it; the image checked (non-root, no
compilers, its own health check, local storage ready); `down -v`, and nothing of the project left.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from stack import (
    IMAGE,
    PROJECT,
    Api,
    CheckFailed,
    Checks,
    compose,
    containers,
    docker,
    health,
    leftovers,
    reported,
    s3_keys,
    service_environment,
    sha256,
    step,
    wait_for,
)

SMALL = b"compose end-to-end\n" * 4096  # 76 KiB: one PUT
LARGE = (b"0123456789abcdef" * 65536 + b"\n") * 9  # 9 MiB: a multipart upload (8 MiB parts)


def ready(api: Api) -> dict[str, Any] | None:
    response = api.http.get("/ops/ready")
    body: dict[str, Any] = response.json()
    return body if response.status_code == 200 and body["status"] == "ok" else None


def stack_up(checks: Checks, api: Api) -> None:
    step("compose up (the project's compose.yaml, unchanged)")
    started = time.monotonic()
    compose("up", "-d", "--no-build", timeout=600)
    body = wait_for("/ops/ready through the proxy", lambda: ready(api), timeout=180)
    checks.expect(
        body["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"},
        "ready: database, redis and S3 storage all ok",
        f"{json.dumps(body['checks'])}, {time.monotonic() - started:.0f} s after up",
    )


def journey(checks: Checks, api: Api) -> None:
    step("register, login, create, list")
    user, token = api.register_and_login()
    me = api.expect("GET", "/api/v1/auth/me", 200, token)
    checks.expect(me["id"] == user["id"], "login gives a token for the registered user")
    task = api.expect(
        "POST", "/api/v1/tasks", 201, token, json={"title": "Ship the stack", "tags": ["docker"]}
    )
    listed = api.expect("GET", "/api/v1/tasks", 200, token)
    checks.expect(
        listed["total"] == 1 and listed["items"][0]["id"] == task["id"],
        "the created task is listed",
        f"task {task['id']}",
    )

    step("upload to the S3 service, download byte-identical")
    before = s3_keys()
    uploaded = {}
    for name, data in (("small.txt", SMALL), ("large.txt", LARGE)):
        uploaded[name] = api.expect(
            "POST",
            f"/api/v1/tasks/{task['id']}/files",
            201,
            token,
            files={"file": (name, data, "text/plain")},
        )
        checks.expect(uploaded[name]["sha256"] == sha256(data), f"{name} stored with its sha256")
    new_keys = s3_keys() - before
    checks.expect(len(new_keys) == 2, "both objects are in the S3 service's bucket", str(new_keys))
    for name, data in (("small.txt", SMALL), ("large.txt", LARGE)):
        body = api.expect("GET", f"/api/v1/files/{uploaded[name]['id']}", 200, token)
        checks.expect(body == data, f"{name} downloads byte-identical", f"{len(data)} bytes")

    step("stats")
    stats = api.expect("GET", "/api/v1/tasks/stats", 200, token)
    checks.expect(
        stats["total"] == 1 and stats["by_tag"].get("docker") == 1,
        "stats count the task",
        json.dumps({key: stats[key] for key in ("total", "completed", "by_tag")}),
    )
    worker_deletes_objects(checks, api, token, uploaded["small.txt"], new_keys)
    trash_keeps_then_force_deletes(checks, api, token, task, new_keys)


def trash_keeps_then_force_deletes(
    checks: Checks, api: Api, token: str, task: dict[str, Any], keys: set[str]
) -> None:
    step("delete moves to the trash, files kept; force delete removes them from S3")
    api.expect("DELETE", f"/api/v1/tasks/{task['id']}", 204, token)
    time.sleep(3)  # give a (wrongly) queued object deletion the time to run
    kept = s3_keys() & keys
    checks.expect(len(kept) == 1, "a task in the trash keeps its object in S3", str(kept))
    trash = api.expect("GET", "/api/v1/trash", 200, token)
    checks.expect(
        [item["id"] for item in trash["items"]] == [task["id"]], "the task is listed in the trash"
    )
    api.expect("DELETE", f"/api/v1/tasks/{task['id']}/force", 204, token)
    wait_for(
        "the force-deleted task's last object gone from S3", lambda: not (s3_keys() & keys), 60
    )
    checks.ok("force delete removes the task's remaining object from S3 too")


def worker_deletes_objects(
    checks: Checks, api: Api, token: str, attachment: dict[str, Any], keys: set[str]
) -> None:
    step("the worker, not the API, deletes a removed file's object")
    compose("stop", "worker", timeout=120)
    (worker,) = containers("worker")
    checks.expect(
        worker["State"]["ExitCode"] == 0 and not worker["State"]["Running"],
        "the worker stops on SIGTERM with status 0",
        f"exit {worker['State']['ExitCode']}",
    )
    api.expect("DELETE", f"/api/v1/files/{attachment['id']}", 204, token)
    time.sleep(3)
    checks.expect(
        s3_keys() & keys == keys,
        "with the worker stopped, the object stays (the API only queued its deletion)",
    )
    compose("start", "worker", timeout=120)
    started = time.monotonic()
    wait_for("the worker deleting the object", lambda: len(s3_keys() & keys) == 1, timeout=60)
    checks.ok("the worker deletes the object once it runs", f"{time.monotonic() - started:.1f} s")


def image_checks(checks: Checks) -> None:
    step(f"the image ({IMAGE})")
    (image,) = json.loads(docker("image", "inspect", IMAGE))
    checks.ok("image size", f"{image['Size'] / 1e6:.0f} MB")
    checks.expect(image["Config"]["User"] == "10001:10001", "runs as UID 10001, not root")
    api_uid = compose("exec", "-T", "--index", "1", "api", "id", "-u").strip()
    checks.expect(api_uid == "10001", "the API container's processes run as 10001", api_uid)
    found = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "for tool in gcc cc c++ make ld as pip; do command -v $tool; done; true",
    ).split()
    checks.expect(
        not found, "no compiler, linker, make or pip in the image", " ".join(found) or "none"
    )
    checks.expect(
        all(health(c) == "healthy" for c in containers("api")), "the API container is healthy"
    )
    local_storage_ready(checks)


def local_storage_ready(checks: Checks) -> None:
    """The image as a plain `docker run` starts it: the default local storage backend (which
    needs STORAGE_DIR writable by the app user) and the image's own health check."""
    (api,) = containers("api")[:1]
    env = service_environment("api")
    env |= {"STORAGE_BACKEND": "local", "WEB_CONCURRENCY": "1"}
    network = next(iter(api["NetworkSettings"]["Networks"]))
    name = f"{PROJECT}_localstorage_{secrets.token_hex(3)}"
    args = ["run", "-d", "--name", name, "--network", network]
    args += ["--label", f"com.docker.compose.project={PROJECT}", "--health-interval", "2s"]
    for key, value in env.items():
        if key not in ("PATH", "HOSTNAME", "HOME"):
            args += ["-e", f"{key}={value}"]
    docker(*args, IMAGE)
    try:
        wait_for("the image's own health check", lambda: health({"Id": name}) == "healthy", 90)
        checks.ok("the image's HEALTHCHECK reports healthy")
        out = docker(
            "exec",
            name,
            "python",
            "-c",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8000/ops/ready', timeout=5).read().decode())",
        )
        body = json.loads(out)
        checks.expect(
            body["checks"]["storage"] == "ok",
            "local storage backend ready in the container (STORAGE_DIR writable)",
            json.dumps(body["checks"]),
        )
    finally:
        docker("rm", "-f", name, check=False)


def stack_down(checks: Checks) -> None:
    step("down -v")
    compose("down", "-v", "--remove-orphans", "--timeout", "60", timeout=300)
    left = leftovers()
    checks.expect(
        not any(left.values()), "nothing of the project is left (containers, volumes, networks)"
    )


def main() -> None:
    checks = Checks()
    api = Api()
    with reported(checks):
        try:
            stack_up(checks, api)
            journey(checks, api)
            image_checks(checks)
        except CheckFailed:
            print(compose("logs", "--no-color", "--tail", "40", check=False)[-8000:])
            raise
        finally:
            api.close()
        stack_down(checks)
    print(f"\ncompose end-to-end: {len(checks.passed)} checks held ({PROJECT}, {os.getpid()})")


if __name__ == "__main__":
    main()
