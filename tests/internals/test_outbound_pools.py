"""One connection pool per origin (taskapi.kit.outbound_pools): requests go to their origin's
transport, made on first use; a transport unused for `idle_seconds` is closed; closing the
whole closes every one. And through `outbound_client`, against real listeners: each receiver's
connection is kept alive and reused."""

from __future__ import annotations

import asyncio

import httpx

from taskapi.kit.outbound import outbound_client, post_bounded
from taskapi.kit.outbound_pools import PerOriginTransport
from tests.outbound_servers import RecordingConnector
from tests.webhook_receiver import Receiver, free_port, serving


class Recording(httpx.AsyncBaseTransport):
    def __init__(self, made: list[Recording]) -> None:
        made.append(self)
        self.hosts: list[str] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert not self.closed
        self.hosts.append(f"{request.url.scheme}://{request.url.netloc.decode()}")
        return httpx.Response(200)

    async def aclose(self) -> None:
        self.closed = True


async def test_each_origin_has_its_own_transport() -> None:
    made: list[Recording] = []
    async with httpx.AsyncClient(
        transport=PerOriginTransport(lambda: Recording(made), idle_seconds=60)
    ) as client:
        for url in (
            "http://a.example/1",
            "http://a.example/2",
            "https://a.example/3",  # another scheme: another origin
            "http://a.example:8080/4",  # another port
            "http://b.example/5",
            "http://A.EXAMPLE/6",  # hosts are case-insensitive
        ):
            await client.post(url)
        assert [t.hosts for t in made] == [
            ["http://a.example", "http://a.example", "http://a.example"],
            ["https://a.example"],
            ["http://a.example:8080"],
            ["http://b.example"],
        ]
        assert not any(t.closed for t in made)
    assert all(t.closed for t in made)


async def test_an_origin_unused_for_idle_seconds_is_closed_then_made_again() -> None:
    made: list[Recording] = []
    transport = PerOriginTransport(lambda: Recording(made), idle_seconds=0.2)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.post("http://quiet.example/")
        await asyncio.sleep(0.1)
        await client.post("http://busy.example/")
        await asyncio.sleep(0.15)  # quiet: 0.25 s unused; busy: 0.15 s
        await client.post("http://busy.example/")
        assert [t.closed for t in made] == [True, False]
        assert transport.origins == 1
        await client.post("http://quiet.example/")
        assert [t.closed for t in made] == [True, False, False]


async def test_outbound_client_reuses_each_receiver_s_connection() -> None:
    connector = RecordingConnector()
    async with (
        serving(Receiver(free_port())) as first,
        serving(Receiver(free_port())) as second,
        outbound_client(allow_private_networks=True, timeout=2, connector=connector) as client,
    ):
        for receiver in (first, second, first, second, first):
            result = await post_bounded(client, receiver.url, content=b"{}", headers={})
            assert (result.status, result.error) == (200, None)
        # One connection per receiver, kept alive in its own pool.
        assert connector.attempts == [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
        assert (len(first.received), len(second.received)) == (3, 2)
