"""uvicorn's httptools protocol with a bound on the request line and headers.

httptools (llhttp) has no limit of its own: it buffers a header value until the next header
begins, so one endless header would grow the process without bound before the application ever
sees the request. uvicorn offers `h11_max_incomplete_event_size` for its pure-Python h11
protocol only. This subclass answers 431 and closes the connection when a request's line and
headers add up to more than `MAX_REQUEST_HEADER_BYTES`, or when more than that has been read while
the head is still incomplete; memory is bounded by the limit plus one socket read.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from taskapi.kit.config import get_settings
from taskapi.kit.errors import PROBLEM_CONTENT_TYPE, problem_body


def _response_431() -> bytes:
    # Written straight to the socket: the request never reached the application (and its
    # middleware), so the problem+json and the headers that matter are produced here.
    body = json.dumps(
        problem_body(
            status=431,
            code="request_header_fields_too_large",
            title="Request header fields too large",
            detail="The request line and headers are larger than this server accepts.",
        )
    ).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        f"content-type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "x-content-type-options: nosniff\r\n"
        "cache-control: no-store\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


_LINGER_SECONDS = 1.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; httptools re-raises it as a parse error."""


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per worker process, from the same settings the app is built from.
        self.max_head_bytes = get_settings().max_request_header_bytes
        self._in_head = True  # until the first request's headers are complete
        self._received_in_head = 0  # bytes read while the head was incomplete (memory bound)
        self._head_size = 0  # the request line and headers as parsed (the exact size)
        self._refused = False
        self._draining = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._received_in_head = 0
        if self._head_size > self.max_head_bytes:
            # A head that arrived in one read: complete, but too large. The parse error this
            # becomes lands in send_400_response below, which answers 431 instead.
            self._refused = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # the rest of a refused request: read and dropped until the socket closes
        if self._in_head:
            self._received_in_head += len(data)
        super().data_received(data)
        if self._in_head and self._received_in_head > self.max_head_bytes and not self._refused:
            # Still incomplete and already too large: stop before buffering any more of it.
            self._refused = True
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)
            return
        if not self.transport.is_closing() and not self._draining:
            self.logger.warning("Request head over %d bytes: 431.", self.max_head_bytes)
            self.transport.write(_response_431())
            # A lingering close: closing with the client's unread bytes still arriving makes the
            # kernel send a reset, which can destroy the 431 before the client reads it. Stop
            # writing, swallow what still comes for a moment, then close.
            self._draining = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
