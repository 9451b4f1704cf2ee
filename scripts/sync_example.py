"""Keep a local copy of your tasks in sync with taskapi, exactly (docs/sync.md).

    python scripts/sync_example.py --base-url http://127.0.0.1:8000 \
        --username alice --password 'correct horse battery' [--follow-seconds 30]

1. take a cursor (`GET /events` without `since`: "now"),
2. list every task you see (`GET /tasks`, page by page),
3. follow the feed from the cursor, applying each event by `task.version`;
4. on 410 `cursor_expired` (you were away longer than the retention), start again at 1.

The copy then equals what `GET /tasks` shows you, whatever the server did meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httpx

API = "/api/v1"
ENDS_COPY = frozenset({"task.deleted", "task.access_lost"})
GONE_FOR_GOOD = 2**62


class Replica:
    """A copy of the tasks one user sees: `tasks` by id, kept by `sync`."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.versions: dict[int, int] = {}  # the newest version seen per task (tombstones too)
        self.cursor: str | None = None
        self.relists = 0

    async def _get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        return await self.client.get(API + path, params=params, headers=self.headers)

    async def start(self) -> None:
        """Steps 1 and 2: a cursor first, then the list (never the other way round: a change
        made between the two would be in neither)."""
        response = await self._get("/events", {})
        response.raise_for_status()
        self.cursor = response.json()["next_cursor"]
        self.tasks, self.versions = {}, {}
        params: dict[str, Any] = {"limit": 100}
        while True:
            response = await self._get("/tasks", params)
            response.raise_for_status()
            page = response.json()
            for task in page["items"]:
                self.tasks[task["id"]] = task
                self.versions[task["id"]] = task["version"]
            if page["next_cursor"] is None:
                break
            params = {"limit": 100, "cursor": page["next_cursor"]}

    def apply(self, event: dict[str, Any]) -> None:
        """Step 3, one event: newer versions win; deletions and lost access leave a tombstone
        (an older event arriving later must not bring the task back)."""
        task_id = event.get("task_id")
        if task_id is None:
            return  # a project event: nothing of a task's (see docs/sync.md for member_added)
        if event["type"] == "task.purged":
            self.tasks.pop(task_id, None)
            self.versions[task_id] = GONE_FOR_GOOD
            return
        version = event["task"]["version"]
        known = self.versions.get(task_id)
        if event["type"] in ENDS_COPY:
            if known is None or version >= known:
                self.tasks.pop(task_id, None)
                self.versions[task_id] = version
        elif known is None or version > known:
            self.tasks[task_id] = event["task"]
            self.versions[task_id] = version

    async def sync(self, limit: int = 100) -> int:
        """Follow the feed until it has nothing more for now; returns the events applied."""
        if self.cursor is None:
            await self.start()
        applied = 0
        while True:
            response = await self._get("/events", {"since": self.cursor, "limit": limit})
            if response.status_code == 410:  # step 4: away too long; the list is the truth
                self.relists += 1
                await self.start()
                continue
            response.raise_for_status()
            page = response.json()
            for event in page["items"]:
                self.apply(event)
                applied += 1
            self.cursor = page["next_cursor"]  # never null: keep it even when nothing came
            if not page["has_more"]:
                return applied


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--follow-seconds", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    async with httpx.AsyncClient(base_url=args.base_url, timeout=10) as client:
        login = await client.post(
            f"{API}/auth/login", json={"username": args.username, "password": args.password}
        )
        login.raise_for_status()
        replica = Replica(client, login.json()["access_token"])
        await replica.sync()
        print(f"{len(replica.tasks)} tasks")
        loop = asyncio.get_running_loop()
        until = loop.time() + args.follow_seconds
        while loop.time() < until:
            await asyncio.sleep(args.interval)
            if await replica.sync():
                print(f"{len(replica.tasks)} tasks (cursor {(replica.cursor or '')[:16]}...)")


if __name__ == "__main__":
    asyncio.run(main())
