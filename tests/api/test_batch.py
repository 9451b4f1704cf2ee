from __future__ import annotations

import httpx

from tests.conftest import UserHandle

BATCH = "/api/v1/tasks/batch"


async def test_smoke(client: httpx.AsyncClient, alice: UserHandle) -> None:
    body = {
        "operations": [
            {"op": "create", "temp_id": "a", "task": {"title": "one"}},
            {"op": "create", "temp_id": "b", "task": {"title": "two"}},
            {"op": "transition", "temp_id": "a", "status": "done"},
            {"op": "update", "temp_id": "b", "changes": {"title": "deux"}},
            {"op": "transition", "temp_id": "b", "status": "todo"},
            {"op": "delete", "temp_id": "zz"},
            {"op": "delete", "temp_id": "a"},
            {"op": "update", "task_id": 999999, "changes": {"title": "x"}},
        ]
    }
    r = await client.post(BATCH, json=body, headers=alice.headers)
    print(r.status_code, r.text)
    assert r.status_code == 200
