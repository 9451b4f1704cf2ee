"""The outbound client keeps no cookies: every delivery goes out as the first did, whatever the
receiver answered before (httpx's clients keep one cookie jar for every host they talk to)."""

from __future__ import annotations

import asyncio
import itertools

from taskapi.kit.outbound import outbound_client, post_bounded
from tests.outbound_servers import HttpServer, running

names = itertools.count()


async def sets_cookies(server: HttpServer, writer: asyncio.StreamWriter) -> None:
    cookies = b"".join(
        b"Set-Cookie: c%d=%s; Path=/; Max-Age=3600\r\n" % (next(names), b"x" * 50)
        for _ in range(20)
    )
    writer.write(b"HTTP/1.1 200 OK\r\n" + cookies + b"Content-Length: 2\r\n\r\nok")
    await writer.drain()


async def test_set_cookie_is_neither_kept_nor_sent_back() -> None:
    async with (
        running(sets_cookies) as server,
        outbound_client(allow_private_networks=True, timeout=2) as client,
    ):
        for _ in range(5):
            result = await post_bounded(
                client, f"http://127.0.0.1:{server.port}/hook", content=b"{}", headers={}
            )
            assert (result.status, result.error) == (200, None)
        assert len(client.cookies) == 0
    assert len(server.requests) == 5
    assert not any(b"\r\ncookie:" in head.lower() for head in server.requests)
