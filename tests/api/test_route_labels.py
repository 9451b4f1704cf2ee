"""Requests the router does not record a route for (FastAPI's docs and schema) or never sees (an
idempotent replay, a 405 or 415 answered before routing) are counted and logged under their real
route, not `unmatched`."""

from __future__ import annotations

import httpx

from tests.conftest import UserHandle
from tests.deploy.test_metrics import REQUESTS, scrape, value

UNMATCHED = {"method": "GET", "route": "unmatched", "status": "404"}


async def test_docs_and_schema_are_counted_under_their_own_paths(
    client: httpx.AsyncClient,
) -> None:
    before = await scrape(client)
    for path in ("/docs", "/redoc", "/openapi.json", "/openapi.json"):
        assert (await client.get(path)).status_code == 200
    after = await scrape(client)
    for path, count in (("/docs", 1), ("/redoc", 1), ("/openapi.json", 2)):
        labels = {"method": "GET", "route": path, "status": "200"}
        assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == count
    assert value(after, REQUESTS, **UNMATCHED) == value(before, REQUESTS, **UNMATCHED)


async def test_a_replay_is_counted_under_the_route_it_answers_for(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    headers = {**alice.headers, "Idempotency-Key": "route-label-replay"}
    created = {"method": "POST", "route": "/api/v1/tasks", "status": "201"}
    before = await scrape(client)
    first = await client.post("/api/v1/tasks", json={"title": "once"}, headers=headers)
    again = await client.post("/api/v1/tasks", json={"title": "once"}, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    after = await scrape(client)
    assert value(after, REQUESTS, **created) - value(before, REQUESTS, **created) == 2


async def test_answers_given_before_routing_are_counted_under_the_route(
    client: httpx.AsyncClient,
) -> None:
    refused = [  # (method, path, request options, the route and status counted)
        ("PUT", "/api/v1/tasks/stats", {}, "/api/v1/tasks/stats", "405"),
        ("POST", "/api/v1/tasks", {"data": {"title": "a form"}}, "/api/v1/tasks", "415"),
    ]
    before = await scrape(client)
    for method, path, options, _, status in refused:
        response = await client.request(method, path, **options)
        assert response.status_code == int(status), response.text
    after = await scrape(client)
    for method, _, _, route, status in refused:
        labels = {"method": method, "route": route, "status": status}
        assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == 1, labels
