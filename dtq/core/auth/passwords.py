"""Password hashing with scrypt: salted, deliberately slow, parameters stored with the hash.

Stored form: ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (salt and hash unpadded base64url), so the
cost can be raised later without breaking old hashes (see `password_needs_rehash`).

One hash takes tens of milliseconds of CPU: callers on the trio thread should run
`hash_password` / `verify_password` through `trio.to_thread.run_sync` (scrypt releases the GIL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from dtq.errors import InvalidRequest

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # a cap so a huge body cannot be fed to the hash

# n=2**14, r=8, p=1: 16 MiB of memory, ~40 ms per hash on the development machine.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_SCHEME = "scrypt"

# Bounds on parameters read back from a stored string, so a corrupted or planted hash cannot
# make a login attempt allocate gigabytes or spin for minutes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM_BYTES = 256 * 1024 * 1024

# For `verify_password(pw, None)`: an unknown user costs as much as a wrong password.
_DUMMY_SALT = b"dtq-no-such-user"


def check_password_strength(password: str) -> None:
    """Raise `InvalidRequest` (field ``password``) for a password we refuse to store."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidRequest(
            f"Password must be at least {MIN_PASSWORD_CHARS} characters",
            field="password",
            reason="too_short",
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidRequest(
            f"Password must be at most {MAX_PASSWORD_CHARS} characters",
            field="password",
            reason="too_long",
        )


def hash_password(password: str) -> str:
    """A new salted scrypt hash of `password`, in the stored form."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        (_SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64encode(salt), _b64encode(digest))
    )


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored`, compared in constant time.

    A malformed `stored` is a mismatch, not an error. Pass ``None`` when the user does not
    exist: the same work is done and the answer is False, so timing does not reveal usernames.
    """
    parsed = _parse(stored) if stored is not None else None
    if parsed is None:
        _scrypt(password, _DUMMY_SALT, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    n, r, p, salt, expected = parsed
    actual = _scrypt(password, salt, n, r, p, dklen=len(expected))
    return hmac.compare_digest(actual, expected)


def password_needs_rehash(stored: str) -> bool:
    """True if `stored` is malformed or uses other parameters than `hash_password` does now."""
    parsed = _parse(stored)
    return parsed is None or parsed[:3] != (SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = _HASH_BYTES) -> bytes:
    # "surrogatepass": a lone surrogate (valid in a JSON string) must not raise here.
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_scrypt_mem_bytes(n, r, p) + 1024 * 1024,
        dklen=dklen,
    )


def _scrypt_mem_bytes(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2)  # what OpenSSL checks against maxmem


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    _, n_s, r_s, p_s, salt_s, hash_s = parts
    n, r, p = _small_int(n_s), _small_int(r_s), _small_int(p_s)
    if n is None or r is None or p is None:
        return None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return None
    if _scrypt_mem_bytes(n, r, p) > _MAX_MEM_BYTES:
        return None
    salt = _b64decode(salt_s)
    digest = _b64decode(hash_s)
    if not salt or digest is None or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def _small_int(text: str) -> int | None:
    if not (0 < len(text) <= 8 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        return None
