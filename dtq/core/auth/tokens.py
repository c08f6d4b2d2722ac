"""Who is calling (`Principal`) and the JWTs users get from login (`TokenIssuer`).

Tokens are HS256 via PyJWT. PyJWT checks the signature, the algorithm and the issuer; expiry is
checked here against the caller's `now`, so the clock is the caller's (and tests are exact).
Every PyJWT error becomes `Unauthorized` in `TokenIssuer.verify` and nowhere else.
"""

from __future__ import annotations

import math
import secrets
from typing import Literal

import jwt
import msgspec

from dtq.core.auth.roles import Permission, Role, require
from dtq.errors import Unauthorized

PrincipalKind = Literal["user", "api_key", "anonymous"]

ISSUER = "dtq"
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32  # HS256 wants a key at least as long as its 32-byte output
_MAX_TOKEN_CHARS = 4096  # ours are ~250; refuse to parse anything huge
_IAT_SKEW_S = 60  # tolerate this much clock disagreement on "issued at"
# `uid` is the account id and `gen` its generation when the token was issued: a token names an
# account, not a name, so deleting a user, changing its password or its role (which re-creates
# the id or bumps the generation) ends every token issued before (`dtq.core.accounts`).
_REQUIRED_CLAIMS = ("sub", "role", "iat", "exp", "jti", "iss", "uid", "gen")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The caller of one request, after authentication.

    `subject` is the username (user), the key's name (api_key) or the client address
    (anonymous). `rate_limit_per_*` are per-key overrides; None means "use the global setting".
    `account_id` and `generation` (users only) are what the token was issued for; the account
    store compares them with the user's record on every request.
    """

    kind: PrincipalKind
    subject: str
    role: Role | None = None  # None only for anonymous
    key_id: str | None = None  # api_key only
    rate_limit_per_minute: int | None = None
    rate_limit_per_hour: int | None = None
    expires_at: int | None = None  # user tokens: the JWT's exp (e.g. to close a WebSocket)
    account_id: str | None = None  # user tokens: the account the token was issued to
    generation: int | None = None  # user tokens: that account's generation at issue

    @classmethod
    def for_user(
        cls,
        username: str,
        role: Role,
        *,
        expires_at: int | None = None,
        account_id: str | None = None,
        generation: int | None = None,
    ) -> Principal:
        return cls(
            kind="user",
            subject=username,
            role=role,
            expires_at=expires_at,
            account_id=account_id,
            generation=generation,
        )

    @classmethod
    def for_api_key(
        cls,
        key_id: str,
        name: str,
        role: Role,
        *,
        rate_limit_per_minute: int | None = None,
        rate_limit_per_hour: int | None = None,
    ) -> Principal:
        return cls(
            kind="api_key",
            subject=name,
            role=role,
            key_id=key_id,
            rate_limit_per_minute=rate_limit_per_minute,
            rate_limit_per_hour=rate_limit_per_hour,
        )

    @classmethod
    def anonymous(cls, client_address: str) -> Principal:
        return cls(kind="anonymous", subject=client_address)

    @property
    def identity(self) -> str:
        """The key for rate limiting: one bucket per API key, user or client address."""
        if self.kind == "api_key":
            return f"key:{self.key_id}"
        if self.kind == "user":
            return f"user:{self.subject}"
        return f"addr:{self.subject}"

    def rate_limits(self, default_per_minute: int, default_per_hour: int) -> tuple[int, int]:
        """(per_minute, per_hour) for this caller: its own overrides, else the defaults."""
        per_minute = self.rate_limit_per_minute
        per_hour = self.rate_limit_per_hour
        return (
            default_per_minute if per_minute is None else per_minute,
            default_per_hour if per_hour is None else per_hour,
        )

    def require(self, permission: Permission) -> None:
        """`Unauthorized` if anonymous, `Forbidden` if the role lacks `permission`."""
        if self.role is None:
            raise Unauthorized("Authentication required", reason="missing_credentials")
        require(self.role, permission)


def new_jwt_secret() -> str:
    """A fresh random secret for signing tokens (64 URL-safe characters, 384 bits)."""
    return secrets.token_urlsafe(48)


class TokenIssuer:
    """Issues and verifies login tokens for one secret."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes "
                "(set DTQ_JWT_SECRET to a long random string, or leave it unset to generate one)"
            )
        if ttl_s <= 0:
            raise ValueError("the JWT lifetime (jwt_ttl_s) must be positive")
        self._key = secret.encode("utf-8")
        self._ttl_s = ttl_s
        self._jwt = jwt.PyJWT(options={"enforce_minimum_key_length": True})
        try:  # PyJWT refuses some keys (e.g. PEM-looking ones) for HMAC; fail now, not at login
            self._jwt.encode({}, self._key, algorithm=ALGORITHM)
        except jwt.InvalidKeyError as exc:
            raise ValueError(f"unusable JWT secret: {exc}") from exc

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def issue(
        self, subject: str, role: Role, now: float, *, account_id: str, generation: int
    ) -> str:
        """A token for the account `account_id` (user `subject`) at `generation`."""
        iat = math.floor(now)
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "uid": account_id,
            "gen": generation,
            "role": str(role),
            "iat": iat,
            "exp": iat + self._ttl_s,
            "jti": secrets.token_urlsafe(12),
        }
        return self._jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str, now: float) -> Principal:
        """The user a token names, or `Unauthorized` if it is not one of ours or has expired."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("Invalid token", reason="malformed_token")
        try:
            claims = self._jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],  # fixed: never taken from the token's own header
                issuer=ISSUER,
                options={
                    "verify_exp": False,  # checked below against our `now`
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": list(_REQUIRED_CLAIMS),
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("Invalid token", reason="bad_signature") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthorized("Invalid token", reason="bad_algorithm") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("Invalid token", reason="malformed_token") from exc

        sub, role_s, iat, exp = claims["sub"], claims["role"], claims["iat"], claims["exp"]
        if not (isinstance(sub, str) and sub and _is_int(iat) and _is_int(exp)):
            raise Unauthorized("Invalid token", reason="malformed_token")
        if not isinstance(claims["jti"], str) or not isinstance(role_s, str):
            raise Unauthorized("Invalid token", reason="malformed_token")
        uid, gen = claims["uid"], claims["gen"]
        if not (isinstance(uid, str) and uid and _is_int(gen)):
            raise Unauthorized("Invalid token", reason="malformed_token")
        try:
            role = Role(role_s)
        except ValueError:
            raise Unauthorized("Invalid token", reason="unknown_role") from None
        if now >= exp:
            raise Unauthorized("Token expired", reason="token_expired")
        if iat > now + _IAT_SKEW_S:
            raise Unauthorized("Invalid token", reason="issued_in_future")
        return Principal.for_user(sub, role, expires_at=exp, account_id=uid, generation=gen)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
