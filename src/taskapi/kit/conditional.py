"""Entity tags and If-None-Match (RFC 9110 §8.8.3, §13.1.2): the one tag parser, and conditional
GETs of lists and other derived views (`conditional_json`).

A list's tag is a strong hash of the exact bytes the 200 would carry, mixed with the caller and
the request's path and query. Chosen over a version counter on purpose: a counter would have to
be bumped by every write that can change what some list shows to someone (a task edited by
another member, a membership or assignee change that moves tasks in or out of view, a project
renamed, a notification read, an overdue flag turning at midnight with no write at all), and one
missed bump is a 304 for content the client has never seen. A hash of the body is correct by
construction: the tag changes exactly when the bytes do. The price is that a 304 still runs the
query and the serialisation (plus a hash: a few µs per 10 KB); what it saves is the transfer, the
client's parsing and the caller's rate-limit token (a 304 costs none: see `RateLimiter.refund`).
The caller and the query are mixed in so that two users, or two queries (limit, filters, cursor),
never share a tag even when their bodies happen to be equal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated

from fastapi import Header, Request, Response

from taskapi.kit.services import services_of

# An entity-tag (`W/"..."` or `"..."`, etagc = %x21 / %x23-7E / obs-text) or `*`, as a list
# member. A comma inside the quotes belongs to the tag, so the list is not simply split on commas.
_TAG = re.compile(r'\s*((?:W/)?"[^"]*"|\*|[^,]*?)\s*(?:,|\Z)')

IfNoneMatch = Annotated[
    str | None,
    Header(
        description="Entity tags of copies you hold (or `*`): 304, with no body, when one of them "
        "(compared weakly) is the current one"
    ),
]


def parse_tags(header: str) -> list[str]:
    """The members of an If-Match / If-None-Match list, in order, empty members dropped."""
    tags: list[str] = []
    position = 0
    while position < len(header):
        match = _TAG.match(header, position)
        if match is None or match.end() == position:  # never: the pattern always moves on
            break
        if match.group(1):
            tags.append(match.group(1))
        position = match.end()
    return tags


def none_match(if_none_match: str | None, etag: str) -> bool:
    """True when the client's copy is current: `*`, or a listed tag equal to `etag` under weak
    comparison (the `W/` prefix ignored on both sides), as RFC 9110 §13.1.2 says for GET."""
    if if_none_match is None:
        return False
    current = etag.removeprefix("W/")
    return any(tag == "*" or tag.removeprefix("W/") == current for tag in parse_tags(if_none_match))


def body_etag(body: bytes, variant: bytes = b"") -> str:
    """A strong tag for `body` (128 bits of BLAKE2b), distinct per `variant`."""
    digest = hashlib.blake2b(body, digest_size=16, person=b"taskapi.etag.v1")
    digest.update(b"\x00" + variant)
    return f'"{digest.hexdigest()}"'


def _variant(request: Request) -> bytes:
    user = getattr(request.state, "user_id", None)
    query: bytes = request.scope.get("query_string", b"")
    return f"{user}\n{request.scope['path']}?".encode() + query


async def conditional_json(
    request: Request,
    if_none_match: str | None,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The 200 with `body` (JSON) and its ETag, or a 304 (the ETag, no body, no Content-Type)
    when If-None-Match matches; a 304 gives the caller's rate-limit token back."""
    etag = body_etag(body, _variant(request))
    if none_match(if_none_match, etag):
        await services_of(request.app).rate_limiter.refund(request)
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={**(headers or {}), "ETag": etag})
