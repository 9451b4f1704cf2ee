"""Dates and timestamps in the one shape the contract gives them, `2026-11-21` and RFC 3339's
`2026-11-21T10:00:00Z`: pydantic's lax mode also takes unix times (`0`, `"0.5"`), dates written
as midnight timestamps and timestamps without an offset, none of which the OpenAPI formats
`date` and `date-time` allow. A value in another shape is a 422, as the schema says.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated

from pydantic import BeforeValidator

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# RFC 3339 `date-time`: `T` and `Z` in either case, optional fraction, an offset always.
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


# What pydantic's lax datetime parsing takes that no timestamp filter should: a unix time.
_NUMBER = re.compile(r"\s*[+-]?[0-9]+(\.[0-9]*)?\s*")


def _date_text(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        return value  # pydantic checks that the day exists
    raise ValueError("must be a date written YYYY-MM-DD")


def _date_time_text(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE_TIME.fullmatch(value):
        return value
    raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2026-11-21T10:00:00Z")


def _not_a_unix_time(value: object) -> object:
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-11-21T10:00:00Z")
    return value


IsoDate = Annotated[date, BeforeValidator(_date_text)]
IsoDateTime = Annotated[datetime, BeforeValidator(_date_time_text)]
# For a filter that has always read ISO 8601 leniently (a date, or no offset: UTC, as its
# validator says): everything pydantic parses except unix times.
IsoDateTimeUtcDefault = Annotated[datetime, BeforeValidator(_not_a_unix_time)]
