"""What makes two requests "the same request": a digest of the request, keyed with the server
secret (request bodies carry passwords and refresh tokens)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.types import Message, Receive, Scope

# Larger bodies (file uploads) are streamed through untouched: their fingerprint is the method,
# path, query, content type and declared length, so memory stays bounded.
BODY_BUFFER_LIMIT = 1024 * 1024


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _multipart_boundary(content_type: bytes) -> tuple[bytes, bytes | None]:
    """The content type without its boundary, and the boundary: clients pick a new random one
    for every attempt, so a retried upload must not look like a different request."""
    main, _, params = content_type.partition(b";")
    if main.strip().lower() != b"multipart/form-data":
        return content_type, None
    kept: list[bytes] = []
    boundary: bytes | None = None
    for param in params.split(b";"):
        name, _, value = param.strip().partition(b"=")
        if name.lower() == b"boundary":
            boundary = value.strip(b'"')
        elif param.strip():
            kept.append(param.strip())
    return b"; ".join([main.strip(), *kept]), boundary


def _update(hasher: Any, part: bytes) -> None:
    # Length-prefixed, so no two different requests hash the same concatenation.
    hasher.update(len(part).to_bytes(8, "big"))
    hasher.update(part)


async def read_request(scope: Scope, receive: Receive) -> tuple[Receive, bytes]:
    """Buffer a bounded body and digest the request: returns a `receive` that replays what was
    read, then the digest (SHA-256 of method, path, query, content type, body or length)."""
    content_type, boundary = _multipart_boundary(header(scope, b"content-type") or b"")
    hasher = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope["query_string"]):
        _update(hasher, part)
    _update(hasher, content_type)
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > BODY_BUFFER_LIMIT:
        _update(hasher, b"length:" + declared)
        return receive, hasher.digest()

    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    complete = False
    while size <= BODY_BUFFER_LIMIT:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # the client went away; the app will see it too
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            complete = True
            break
    body = b"".join(chunks)
    if boundary:
        body = body.replace(boundary, b"")
    # A body of unknown length that outgrew the buffer: its prefix stands for it.
    _update(hasher, (b"body:" if complete else b"prefix:") + body)

    pending = iter(messages)

    async def replay_receive() -> Message:
        message = next(pending, None)
        return message if message is not None else await receive()

    return replay_receive, hasher.digest()


def derive(secret: bytes, purpose: bytes, digest: bytes) -> bytes:
    """A key for one `purpose` (the stored fingerprint, the sealing key) from the server secret
    and the request's digest."""
    return hmac.new(secret, purpose + b"\0" + digest, hashlib.sha256).digest()
