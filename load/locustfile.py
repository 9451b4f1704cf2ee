"""Load model for taskapi: people working through their task lists.

Each simulated user logs in once, then, with a pause between actions, mostly reads (first page,
filtered pages, search, one task, stats), sometimes writes (create, edit, complete) and now and
then uploads or downloads a small file.

Who logs in (environment variables):

* `LOAD_SEED_USERS=N`: log in as `user1` .. `userN` created by `taskapi seed` (round robin over
  the simulated users), with `LOAD_PASSWORD` (default `demo-password`, seed's default). Only one
  auth request per simulated user, and the lists start full.
* unset or 0: every simulated user registers its own account (`load_<random>`) in `on_start`.
  Register + login are two requests from the per-IP `auth` bucket (burst 30 by default), so with
  many users either raise `RATE_LIMIT_AUTH_BURST` on the server or use seeded users; a 429 is
  reported as a failure and retried after its `Retry-After`.

`LOAD_WAIT_MIN` / `LOAD_WAIT_MAX` (seconds, default 0.5 / 2) set the think time between actions.

Three kinds of client (locust user classes, picked by weight, 3 to 1 to 1):

* `TaskApiUser`: works through their own list, as above.
* `ProjectMemberUser`: a member of shared projects. Seeded accounts are members of the demo
  projects `taskapi seed` creates; a self-registered one (or a seeded one in none) creates a
  project (`POST /projects`) with a few tasks. Then mostly lists a project's tasks
  (`GET /tasks?project_id=<id>`, plain or filtered), the projects list (`GET /projects`), opens
  a project task and, as an editor or admin, adds one.
* `MachineClientUser`: a script with a personal access token: batch imports (`POST
  /tasks/batch`, retried with its Idempotency-Key), following the change feed, listing changes.

Request names (the rows of the report) are the route templates, so every task id lands in one row.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import threading
import time
import uuid
import zlib
from datetime import UTC, date, datetime, timedelta
from typing import Any

from locust import FastHttpUser, between, task

API = "/api/v1"
SEED_USERS = int(os.environ.get("LOAD_SEED_USERS") or 0)
PASSWORD = os.environ.get("LOAD_PASSWORD", "demo-password")
WAIT_MIN = float(os.environ.get("LOAD_WAIT_MIN", "0.5"))
WAIT_MAX = float(os.environ.get("LOAD_WAIT_MAX", "2"))

STATUSES = ("todo", "in_progress", "done", "cancelled")
PRIORITIES = ("low", "medium", "high", "urgent")
TAGS = ("backend", "frontend", "docs", "ops", "bug", "feature", "q4", "customer")
WORDS = ("release", "invoice", "backup", "search", "onboarding", "sql", "budget", "review")
TITLES = (
    "Write release notes",
    "Review the invoice export",
    "Test the backup restore",
    "Fix search relevance",
    "Update onboarding docs",
    "Tune the SQL for the dashboard",
    "Prepare the budget review",
)

# Seeded accounts are handed out in order, so 20 simulated users over 10 seeded ones use each twice.
_next_seeded = itertools.count(1)
_next_seeded_lock = threading.Lock()


def small_png() -> bytes:
    """A valid 8x8 PNG (the server checks the bytes, not just the declared type)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = b"".join(b"\x00" + bytes(random.randrange(256) for _ in range(24)) for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def small_text() -> bytes:
    """A few KiB of meeting notes."""
    lines = [f"- {random.choice(WORDS)} item {n}: {uuid.uuid4().hex}" for n in range(80)]
    return ("# Notes\n\n" + "\n".join(lines) + "\n").encode()


def multipart(filename: str, content_type: str, payload: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), boundary


class ApiUser(FastHttpUser):
    """Signing in and reading JSON, shared by the kinds of people below."""

    abstract = True
    wait_time = between(WAIT_MIN, WAIT_MAX)
    task_ids: list[int]  # what the user may open: its own tasks, or a project's

    def sign_in(self) -> None:
        """A seeded account (round robin) or a new one, then a login."""
        if SEED_USERS > 0:
            with _next_seeded_lock:
                n = (next(_next_seeded) - 1) % SEED_USERS + 1
            self.username = f"user{n}"
        else:
            self.username = f"load_{uuid.uuid4().hex[:12]}"
            self._auth_call(
                "/auth/register",
                {
                    "username": self.username,
                    "email": f"{self.username}@example.com",
                    "password": PASSWORD,
                },
                201,
            )
        self.login()

    # --- helpers -----------------------------------------------------------------------------

    def _auth_call(self, path: str, body: dict[str, Any], expected: int) -> dict[str, Any]:
        """Auth requests retried after 429 (as a real client would), everything else fails."""
        while True:
            with self.client.post(
                API + path, json=body, name=f"POST {path}", catch_response=True
            ) as response:
                if response.status_code == expected:
                    data: dict[str, Any] = response.json()
                    return data
                if response.status_code == 429:
                    response.failure("rate limited (retried after Retry-After)")
                    time.sleep(float(response.headers.get("Retry-After") or 1))
                    continue
                response.failure(f"{response.status_code}: {response.text[:200]}")
                raise RuntimeError(f"{path} failed for {self.username}")

    def login(self) -> None:
        tokens = self._auth_call(
            "/auth/login", {"username": self.username, "password": PASSWORD}, 200
        )
        self.client.auth_header = f"Bearer {tokens['access_token']}"

    def _get_json(self, path: str, name: str) -> Any:
        with self.client.get(API + path, name=name, catch_response=True) as response:
            if response.status_code == 401:
                # Access tokens live 15 minutes; a long run logs in again like an app would.
                response.success()
                self.login()
                return None
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            return response.json()

    def refresh_task_ids(self) -> None:
        page = self._get_json("/tasks?limit=50&scope=owned", "GET /tasks?scope=owned")
        if page is not None:
            self.task_ids = [item["id"] for item in page["items"]]

    def some_task(self) -> int | None:
        return random.choice(self.task_ids) if self.task_ids else None


class TaskApiUser(ApiUser):
    """Works through their own list."""

    weight = 3

    def on_start(self) -> None:
        self.task_ids = []
        self.file_ids: list[int] = []
        self.sign_in()
        self.refresh_task_ids()
        if not self.task_ids:
            for _ in range(3):
                self.create_task()
        # One file from the start, so downloads have something to fetch.
        self.upload_file()

    # --- reads -------------------------------------------------------------------------------

    @task(10)
    def list_first_page(self) -> None:
        self._get_json("/tasks", "GET /tasks")

    @task(6)
    def list_filtered(self) -> None:
        filters = random.choice(
            (
                f"status={random.choice(STATUSES)}",
                f"priority={random.choice(PRIORITIES)},urgent",
                f"tags={random.choice(TAGS)}",
                "overdue=true",
                "status=todo,in_progress&sort=due_date",
            )
        )
        self._get_json(f"/tasks?{filters}", "GET /tasks?filters")

    @task(4)
    def search(self) -> None:
        self._get_json(f"/tasks?search={random.choice(WORDS)}", "GET /tasks?search")

    @task(8)
    def get_one(self) -> None:
        task_id = self.some_task()
        if task_id is None:
            return
        with self.client.get(
            f"{API}/tasks/{task_id}", name="GET /tasks/{id}", catch_response=True
        ) as response:
            if response.status_code == 404:
                # Deleted or unassigned by someone else meanwhile: a real outcome, not an error.
                response.success()
                self.task_ids.remove(task_id)
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(3)
    def stats(self) -> None:
        self._get_json("/tasks/stats", "GET /tasks/stats")

    # --- writes ------------------------------------------------------------------------------

    @task(4)
    def create_task(self) -> None:
        body: dict[str, Any] = {
            "title": f"{random.choice(TITLES)} #{random.randint(1, 9999)}",
            "description": " ".join(random.choices(WORDS, k=12)),
            "priority": random.choice(PRIORITIES),
            "tags": random.sample(TAGS, random.randint(0, 3)),
        }
        if random.random() < 0.7:
            due = date.today() + timedelta(days=random.randint(-5, 30))
            body["due_date"] = due.isoformat()
        with self.client.post(
            f"{API}/tasks", json=body, name="POST /tasks", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            self.task_ids.append(response.json()["id"])

    @task(3)
    def update_task(self) -> None:
        task_id = self.some_task()
        if task_id is None:
            return
        changes = random.choice(
            (
                {"priority": random.choice(PRIORITIES)},
                {"description": f"Updated {datetime.now(UTC).isoformat()}"},
                {"tags": random.sample(TAGS, 2)},
                {"due_date": (date.today() + timedelta(days=random.randint(1, 14))).isoformat()},
            )
        )
        with self.client.patch(
            f"{API}/tasks/{task_id}", json=changes, name="PATCH /tasks/{id}", catch_response=True
        ) as response:
            if response.status_code == 404:
                response.success()
                self.task_ids.remove(task_id)
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(2)
    def complete_task(self) -> None:
        page = self._get_json(
            "/tasks?scope=owned&status=todo,in_progress&limit=20", "GET /tasks?filters"
        )
        if not page or not page["items"]:
            self.create_task()
            return
        task_id = random.choice(page["items"])["id"]
        with self.client.post(
            f"{API}/tasks/{task_id}/transition",
            json={"status": "done"},
            name="POST /tasks/{id}/transition",
            catch_response=True,
        ) as response:
            if response.status_code in (404, 409):
                # Seeded accounts can be shared by several simulated users: another one may
                # have completed or deleted it first, which the API rightly refuses.
                response.success()
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    # --- files -------------------------------------------------------------------------------

    @task(1)
    def upload_file(self) -> None:
        task_id = self.some_task()
        if task_id is None:
            return
        if random.random() < 0.5:
            filename, content_type, payload = "screenshot.png", "image/png", small_png()
        else:
            filename, content_type, payload = "notes.md", "text/markdown", small_text()
        body, boundary = multipart(filename, content_type, payload)
        with self.client.post(
            f"{API}/tasks/{task_id}/files",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            name="POST /tasks/{id}/files",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            self.file_ids.append(response.json()["id"])

    @task(2)
    def download_file(self) -> None:
        if not self.file_ids:
            self.upload_file()
            return
        file_id = random.choice(self.file_ids)
        with self.client.get(
            f"{API}/files/{file_id}", name="GET /files/{id}", catch_response=True
        ) as response:
            if response.status_code != 200 or not response.content:
                response.failure(f"{response.status_code}: {response.text[:200]}")


WRITERS = ("editor", "admin")


class ProjectMemberUser(ApiUser):
    """A member of shared projects: lists a project's tasks and the projects list."""

    weight = 1

    def on_start(self) -> None:
        self.task_ids = []
        self.projects: dict[int, str] = {}  # id -> the caller's role
        self.sign_in()
        self.list_projects()
        if not self.projects:
            self.create_project()

    def project(self) -> int | None:
        return random.choice(list(self.projects)) if self.projects else None

    def create_project(self) -> None:
        name = f"Load project {uuid.uuid4().hex[:8]}"
        with self.client.post(
            f"{API}/projects", json={"name": name}, name="POST /projects", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            project = response.json()
        self.projects[project["id"]] = project["role"]
        for _ in range(3):
            self.create_project_task(project["id"])

    @task(3)
    def list_projects(self) -> None:
        page = self._get_json("/projects", "GET /projects")
        if page is not None:
            self.projects = {item["id"]: item["role"] for item in page["items"]}

    @task(10)
    def list_project_tasks(self) -> None:
        project_id = self.project()
        if project_id is None:
            return
        page = self._get_json(f"/tasks?project_id={project_id}", "GET /tasks?project_id")
        if page is not None:
            self.task_ids = [item["id"] for item in page["items"]]

    @task(4)
    def list_project_filtered(self) -> None:
        project_id = self.project()
        if project_id is None:
            return
        filters = random.choice(
            (f"status={random.choice(STATUSES)}", "overdue=true", "sort=due_date")
        )
        self._get_json(f"/tasks?project_id={project_id}&{filters}", "GET /tasks?project_id")

    @task(3)
    def get_project_task(self) -> None:
        task_id = self.some_task()
        if task_id is None:
            return
        with self.client.get(
            f"{API}/tasks/{task_id}", name="GET /tasks/{id}", catch_response=True
        ) as response:
            if response.status_code == 404:
                # Moved out of the project or deleted meanwhile: a real outcome.
                response.success()
                self.task_ids.remove(task_id)
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(2)
    def add_project_task(self) -> None:
        writable = [pid for pid, role in self.projects.items() if role in WRITERS]
        if writable:
            self.create_project_task(random.choice(writable))

    def create_project_task(self, project_id: int) -> None:
        body = {
            "title": f"{random.choice(TITLES)} #{random.randint(1, 9999)}",
            "priority": random.choice(PRIORITIES),
            "project_id": project_id,
        }
        with self.client.post(
            f"{API}/tasks", json=body, name="POST /tasks (project)", catch_response=True
        ) as response:
            if response.status_code in (403, 404):
                # Removed from the project, or demoted, by an admin meanwhile: a real outcome.
                response.success()
                self.projects.pop(project_id, None)
            elif response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")


class MachineClientUser(ApiUser):
    """A script, not a person: logs in once to create a personal access token (`POST /tokens`,
    scopes tasks:read, tasks:write, events:read), then uses only the token. It imports tasks in
    batches (`POST /tasks/batch`, 25 creates plus an update and a transition of the new tasks by
    temp id, under an Idempotency-Key, each batch retried once to check the replay), follows the
    change feed from the cursor it took before its first import, and lists what changed."""

    weight = 1
    BATCH_CREATES = 25

    def on_start(self) -> None:
        self.task_ids = []
        self.sign_in()
        with self.client.post(
            f"{API}/tokens",
            json={"name": "load import", "scopes": ["tasks:read", "tasks:write", "events:read"]},
            name="POST /tokens",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                raise RuntimeError(f"no token for {self.username}")
            token = response.json()["token"]
        self.client.auth_header = f"Bearer {token}"
        feed = self._get_json("/events", "GET /events")
        self.cursor = feed["next_cursor"] if feed else None
        self.since = datetime.now(UTC)

    @task(3)
    def batch_import(self) -> None:
        operations: list[dict[str, Any]] = [
            {
                "op": "create",
                "temp_id": f"t{n}",
                "task": {
                    "title": f"{random.choice(TITLES)} (import {n})",
                    "priority": random.choice(PRIORITIES),
                    "tags": random.sample(TAGS, 2),
                },
            }
            for n in range(self.BATCH_CREATES)
        ]
        operations.append({"op": "update", "temp_id": "t0", "changes": {"priority": "urgent"}})
        operations.append({"op": "transition", "temp_id": "t1", "status": "in_progress"})
        body = {"operations": operations, "atomic": True}
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = None
        for attempt in ("POST /tasks/batch", "POST /tasks/batch (replay)"):
            with self.client.post(
                f"{API}/tasks/batch", json=body, headers=key, name=attempt, catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                    return
                result = response.json()
                if not all(item["success"] for item in result["results"]):
                    response.failure(f"a batch operation failed: {response.text[:200]}")
                    return
                if first is None:
                    first = result
                elif result != first or response.headers.get("Idempotent-Replayed") != "true":
                    response.failure("the retried batch was not a replay")
                    return
        self.task_ids.extend(first["temp_ids"].values() if first else [])

    @task(5)
    def follow_feed(self) -> None:
        if self.cursor is None:
            return
        page = self._get_json(f"/events?since={self.cursor}&limit=200", "GET /events?since")
        if page is not None:
            self.cursor = page["next_cursor"]

    @task(2)
    def list_changed(self) -> None:
        since = self.since.strftime("%Y-%m-%dT%H:%M:%SZ")
        self._get_json(f"/tasks?updated_since={since}&limit=100", "GET /tasks?updated_since")
