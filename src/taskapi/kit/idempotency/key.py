"""The `Idempotency-Key` header: its syntax, and the problems a key can cause."""

from __future__ import annotations

from taskapi.kit.errors import AppError

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
HEADER_BYTES = HEADER.lower().encode()


class InvalidIdempotencyKey(AppError):
    status, code, title = 400, "invalid_idempotency_key", "Invalid Idempotency-Key"
    default_detail = "Idempotency-Key must be one header of 1-255 visible ASCII characters."


class IdempotencyKeyInUse(AppError):
    status, code, title = 409, "idempotency_key_in_use", "Idempotency key in use"
    default_detail = "A request with this Idempotency-Key is still being processed; retry shortly."


class IdempotencyKeyReused(AppError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"
    default_detail = (
        "This Idempotency-Key was already used with a different request; use a new key."
    )


def parse_key(values: list[bytes]) -> str:
    """The key from the header's values (every occurrence): exactly one, visible ASCII only."""
    if len(values) != 1:
        raise InvalidIdempotencyKey()
    raw = values[0]
    # Visible ASCII only: the key is echoed nowhere, but it is stored and compared as text.
    if not 1 <= len(raw) <= 255 or any(byte < 0x21 or byte > 0x7E for byte in raw):
        raise InvalidIdempotencyKey()
    return raw.decode("ascii")
