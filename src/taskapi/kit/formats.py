"""Dates in the one shape the contract gives them, `2026-11-21`, and timestamps that are never unix
times: pydantic's lax mode also takes unix times (`0`, `"0.5"`) and dates written as midnight
timestamps, which the OpenAPI formats `date` and `date-time` do not allow. A value in another
shape is a 422.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated

from pydantic import BeforeValidator

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# What pydantic's lax datetime parsing takes that no timestamp filter should: a unix time.
_NUMBER = re.compile(r"\s*[+-]?[0-9]+(\.[0-9]*)?\s*")


def _date_text(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        return value  # pydantic checks that the day exists
    raise ValueError("must be a date written YYYY-MM-DD")


def _not_a_unix_time(value: object) -> object:
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-11-21T10:00:00Z")
    return value


IsoDate = Annotated[date, BeforeValidator(_date_text)]
# For a filter that has always read ISO 8601 leniently (a date, or no offset: UTC, as its
# validator says): everything pydantic parses except unix times.
IsoDateTimeUtcDefault = Annotated[datetime, BeforeValidator(_not_a_unix_time)]
