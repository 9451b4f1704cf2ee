"""Input rules every domain shares: the largest id a path or body may carry, and no NUL in text."""

from __future__ import annotations

from typing import Final

# Ids are PostgreSQL bigints: a larger number is a 422, never an overflow in the database (500).
MAX_ID: Final = 2**63 - 1


def reject_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000; refusing it here keeps it a 422 rather than a 500.
    if "\x00" in value:
        raise ValueError("text may not contain the NUL character (U+0000)")
    return value
