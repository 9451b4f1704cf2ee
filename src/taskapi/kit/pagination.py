"""Opaque, tamper-proof cursors for keyset pagination, shared by every list endpoint.

A cursor is `base64url(json) "." base64url(hmac)`: the client can't forge one, and one minted for
a different query (filters or sort) is refused rather than silently giving a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from pydantic import Field, model_validator
from starlette.requests import Request

from taskapi.kit.errors import ValidationFailed
from taskapi.kit.strict_query import StrictQuery

_SIGNATURE_BYTES = 16


class InvalidCursor(ValidationFailed):
    code, title = "invalid_cursor", "Invalid cursor"
    default_detail = "The cursor is malformed, was tampered with, or belongs to another query."


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def query_fingerprint(parts: Mapping[str, Any]) -> str:
    """A short digest of everything that defines a result order and set (not the page)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class CursorCodec:
    def __init__(self, secret: str) -> None:
        # A key of its own, so a cursor signature can never double as a token signature.
        self._key = hmac.new(secret.encode(), b"taskapi.cursor.v1", hashlib.sha256).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(self, values: list[Any], fingerprint: str) -> str:
        payload = json.dumps({"v": values, "q": fingerprint}, separators=(",", ":")).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._sign(payload))}"

    def decode(self, cursor: str, fingerprint: str) -> list[Any]:
        try:
            body, signature = cursor.split(".", 1)
            payload = _b64decode(body)
            valid = hmac.compare_digest(_b64decode(signature), self._sign(payload))
        except (ValueError, binascii.Error) as exc:
            raise InvalidCursor() from exc
        if not valid:
            raise InvalidCursor()
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise InvalidCursor() from exc
        if not isinstance(data, dict) or not isinstance(data.get("v"), list):
            raise InvalidCursor()
        if data.get("q") != fingerprint:
            raise InvalidCursor("This cursor belongs to a different query (filters or sort).")
        values: list[Any] = data["v"]
        return values


# The OpenAPI `responses` entry documenting the header `next_link` builds.
NEXT_PAGE_LINK: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "headers": {
            "Link": {
                "description": 'The next page: `<url>; rel="next"`',
                "schema": {"type": "string"},
            }
        }
    }
}


def next_link(request: Request, cursor: str) -> str:
    """The `Link` header value of the next page: this request's URL with `cursor` in place of
    `offset` and of any previous cursor. Built from the already parsed query rather than by
    Starlette's URL editing, which parses the query twice more and rebuilds the URL each time."""
    kept = [
        (key, value)
        for key, value in request.query_params.multi_items()
        if key not in ("offset", "cursor")
    ]
    kept.append(("cursor", cursor))
    return f'<{str(request.url).partition("?")[0]}?{urlencode(kept)}>; rel="next"'


MAX_PAGE_LIMIT: Final = 100
MAX_PAGE_OFFSET: Final = 10_000_000


class PageParams(StrictQuery):
    """`limit` plus either `offset` or `cursor`: the paging parameters of the keyset-paginated
    lists (a list adds its filters in a subclass; any other name is refused)."""

    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_LIMIT)] = 20
    offset: Annotated[
        int | None,
        Field(ge=0, le=MAX_PAGE_OFFSET, description="Rows to skip; not together with `cursor`"),
    ] = None
    cursor: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=2048,
            description="The `next_cursor` of the previous page (keyset); not together with "
            "`offset`",
        ),
    ] = None

    @model_validator(mode="after")
    def _one_way_to_page(self) -> PageParams:
        if self.offset is not None and self.cursor is not None:
            raise ValueError("use either offset or cursor, not both")
        return self
