"""Stored response bodies, sealed.

They hold tokens (login, refresh) and private task data, while refresh tokens are otherwise only
stored hashed: each is encrypted (AES-256-GCM) with a key derived from the server secret and the
request, so the database alone reveals nothing and tampering is detected.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


def seal(key: bytes, body: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, body, None)


def unseal(key: bytes, sealed: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None)
