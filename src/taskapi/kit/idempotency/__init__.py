"""`Idempotency-Key` on POST requests (README: "Retried POSTs").

The same key from the same caller with the same request within 24 h replays the first response
(status, body, Content-Type, Location, ETag, plus `Idempotent-Replayed: true`) and does nothing
again; another request under a used key is 422 `idempotency_key_reused`; while the first one is
still running, 409 `idempotency_key_in_use`.

- `key`: the header's syntax and the problems a key can cause;
- `fingerprint`: what makes two requests the same request;
- `sealing`: stored response bodies are encrypted;
- `store`: the keys in PostgreSQL (claim, complete, release, renew; `expire_keys` purges them);
- `middleware`: the ASGI middleware that claims, runs and keeps, or replays;
- `openapi`: how the header is documented.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from taskapi.kit.idempotency.middleware import IdempotencyMiddleware
from taskapi.kit.idempotency.openapi import document_idempotency
from taskapi.kit.idempotency.store import expire_keys

__all__ = ["expire_keys", "install_idempotency"]


def install_idempotency(app: FastAPI) -> None:
    """Add the middleware (inside CORS and the request context, so replays get their headers)
    and document the header and its errors on every POST operation."""
    app.add_middleware(IdempotencyMiddleware)
    original = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original()
        document_idempotency(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
