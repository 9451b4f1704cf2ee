"""Webhook secrets: made, sealed at rest, and used to sign deliveries (Standard Webhooks).

A secret is `whsec_` + base64 of 32 random bytes, the format the `standardwebhooks` library
(and Svix, and every Standard Webhooks verifier) reads. It is stored encrypted (AES-256-GCM, as
idempotent replays are: taskapi.kit.idempotency.sealing) with a key derived from the server
secret, so the database alone cannot sign, and it is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from standardwebhooks import Webhook as StandardWebhook

from taskapi.kit.idempotency.sealing import seal, unseal

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _sealing_key(server_secret: str) -> bytes:
    return hmac.new(server_secret.encode(), b"webhook-secret", hashlib.sha256).digest()


def seal_secret(server_secret: str, secret: str) -> bytes:
    return seal(_sealing_key(server_secret), secret.encode())


def unseal_secret(server_secret: str, sealed: bytes) -> str:
    return unseal(_sealing_key(server_secret), sealed).decode()


def signature_header(
    secrets_: Sequence[str], message_id: str, timestamp: datetime, body: bytes
) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space separated (during a rotation
    the receiver may hold either one)."""
    return " ".join(
        StandardWebhook(secret).sign(message_id, timestamp, body) for secret in secrets_
    )
