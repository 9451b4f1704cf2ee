"""Entity tags for tasks and the If-Match / If-None-Match preconditions (RFC 9110 §13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header

from taskapi.kit.errors import PreconditionFailed


def etag_for(version: int) -> str:
    # A strong tag: If-Match uses strong comparison, so a weak one could never match.
    return f'"{version}"'


def _parse_tags(header: str) -> list[str]:
    return [part.strip() for part in header.split(",") if part.strip()]


@dataclass(frozen=True, slots=True)
class IfMatch:
    header: str | None

    def check(self, version: int) -> None:
        """Raise 412 unless the header is absent, `*`, or lists the current strong tag."""
        if self.header is None:
            return
        tags = _parse_tags(self.header)
        if "*" in tags:
            return
        if etag_for(version) not in tags:  # weak tags (W/"...") never match strongly
            raise PreconditionFailed()


async def get_if_match(
    if_match: Annotated[
        str | None,
        Header(description="Only apply the change if the task's current ETag is listed (else 412)"),
    ] = None,
) -> IfMatch:
    return IfMatch(if_match)


IfMatchDep = Annotated[IfMatch, Depends(get_if_match)]


def none_match(if_none_match: str | None, version: int) -> bool:
    """True when the client's cached copy is current (weak comparison, as for GET)."""
    if if_none_match is None:
        return False
    current = etag_for(version)
    for tag in _parse_tags(if_none_match):
        if tag == "*" or tag.removeprefix("W/") == current:
            return True
    return False
