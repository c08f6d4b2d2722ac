"""API keys: ``dtq_<key_id>_<secret>``, shown once, stored as (key_id, SHA-256 of the secret).

`key_id` is public (it names the key in listings and is the storage lookup key); the secret is
32 random bytes. Because the secret is high-entropy, a fast hash is right here: nobody can guess
2**256 candidates, so a slow hash would only cost CPU on every request. Passwords are different
(low entropy, see `dtq.core.auth.passwords`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from dtq.errors import Unauthorized

KEY_PREFIX = "dtq"
_KEY_ID_BYTES = 8  # 16 hex characters
_SECRET_BYTES = 32  # 43 base64url characters
_KEY_RE = re.compile(r"dtq_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_KEY_CHARS = len("dtq_") + 2 * _KEY_ID_BYTES + 1 + 43


def generate_api_key() -> tuple[str, str, str]:
    """A new key: (full key to show once, key_id, hash of the secret to store)."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return f"{KEY_PREFIX}_{key_id}_{secret}", key_id, hash_api_key_secret(secret)


def parse_api_key(raw: str) -> tuple[str, str]:
    """(key_id, secret) from an ``X-API-Key`` value; `Unauthorized` if it is not shaped like one."""
    match = _KEY_RE.fullmatch(raw.strip()) if len(raw) <= 2 * _KEY_CHARS else None
    if match is None:
        raise Unauthorized("Invalid API key", reason="malformed_api_key")
    return match[1], match[2]


def hash_api_key_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def verify_api_key_secret(secret: str, stored_hash: str) -> bool:
    """Whether `secret` hashes to `stored_hash`, compared in constant time."""
    actual = hash_api_key_secret(secret).encode("ascii")
    return hmac.compare_digest(actual, stored_hash.encode("utf-8", "surrogatepass"))
