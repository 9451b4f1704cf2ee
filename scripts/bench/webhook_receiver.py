"""The webhook benchmark's receiver (scripts/bench/webhooks.py starts it): as little as a server
can do to take a delivery, so that what is measured is the worker.

    .venv/bin/python scripts/bench/webhook_receiver.py PORT [PORT ...]

A bare ASGI app, no framework, under uvicorn (uvloop, httptools, no access log) in a process of
its own (its CPU is not the worker's), listening on every port given on 127.0.0.1: webhooks on
different ports are different origins to the worker, as different receivers are.

* `POST /hook/<anything>`: reads the body, notes the wall-clock time of arrival (time.time(), the
  clock the benchmark stamps commits with, one clock for every process of the machine), the
  `webhook-id` and the path, answers 200 with an empty body. The signature is not verified
  (tests/api/test_webhook_delivery.py does that): a receiver's own cost does not belong here.
* `GET /count`: `{"count": n, "first": t, "last": t}` of the deliveries since the last reset.
* `GET /arrivals`: every delivery since the last reset, `[[webhook-id, path, t], ...]`.
* `POST /reset`: forget them all.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

arrivals: list[tuple[str, str, float]] = []


async def _answer(send: Send, status: int, body: bytes = b"") -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # lifespan: nothing to set up (uvicorn carries on without it)
    method, path = scope["method"], scope["path"]
    if method == "POST" and path.startswith("/hook/"):
        # Drained before answering, as a real receiver would read what it is sent.
        while (await receive()).get("more_body"):
            pass
        arrived = time.time()
        webhook_id = next((v for k, v in scope["headers"] if k == b"webhook-id"), b"").decode()
        arrivals.append((webhook_id, path, arrived))
        await _answer(send, 200)
    elif method == "GET" and path == "/count":
        first = arrivals[0][2] if arrivals else None
        last = arrivals[-1][2] if arrivals else None
        await _answer(send, 200, json.dumps({"count": len(arrivals), "first": first,
                                             "last": last}).encode())  # fmt: skip
    elif method == "GET" and path == "/arrivals":
        await _answer(send, 200, json.dumps(arrivals).encode())
    elif method == "POST" and path == "/reset":
        arrivals.clear()
        await _answer(send, 204)
    else:
        await _answer(send, 404)


def main(ports: list[int]) -> None:
    sockets = []
    for port in ports:
        # IPPROTO_TCP, not the default 0: asyncio's loop sets TCP_NODELAY on accepted connections
        # only for sockets that say so, and without it every answer (head and body written
        # apart) waited ~40 ms for a delayed ACK: 180 answers/s on 8 connections, not 1,300.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sockets.append(sock)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="off",
                            access_log=False, log_level="warning")  # fmt: skip
    uvicorn.Server(config).run(sockets=sockets)  # run(): on the loop the config names


if __name__ == "__main__":
    main([int(port) for port in sys.argv[1:]])
