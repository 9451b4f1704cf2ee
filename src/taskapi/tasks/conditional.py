"""Entity tags for tasks and the If-Match / If-None-Match preconditions (RFC 9110 §13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header

from taskapi.kit.conditional import none_match as _none_match
from taskapi.kit.conditional import parse_tags
from taskapi.kit.errors import PreconditionFailed


def etag_for(version: int) -> str:
    # A strong tag: If-Match uses strong comparison, so a weak one could never match.
    return f'"{version}"'


@dataclass(frozen=True, slots=True)
class IfMatch:
    header: str | None

    def check(self, version: int) -> None:
        """Raise 412 unless the header is absent, `*`, or lists the current strong tag."""
        self.check_tag(etag_for(version))

    def check_tag(self, etag: str) -> None:
        """As `check`, for a resource whose tag is not its version alone."""
        if self.header is None:
            return
        tags = parse_tags(self.header)
        if "*" in tags:
            return
        if etag not in tags:  # weak tags (W/"...") never match strongly
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
    return _none_match(if_none_match, etag_for(version))
