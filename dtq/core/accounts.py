"""Users and API keys: stored records, bootstrap, and credential checks.

Pure crypto lives in `dtq.core.auth`; this module stores through the group-commit writer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import msgspec
import structlog
import trio
from msgspec import Meta, Struct

from dtq.clock import Clock
from dtq.core.auth import (
    Principal,
    Role,
    TokenIssuer,
    check_password_strength,
    generate_api_key,
    hash_password,
    new_jwt_secret,
    parse_api_key,
    verify_api_key_secret,
    verify_password,
)
from dtq.core.auth.credentials import ambiguous_credentials
from dtq.core.auth.passwords import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS
from dtq.core.auth.throttle import LoginThrottle
from dtq.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from dtq.settings import Settings
from dtq.storage.lmdb.store import LmdbStore, LmdbTxn
from dtq.storage.writer import GroupCommitWriter

log = structlog.get_logger("dtq.accounts")

Username = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")]
RateLimit = Annotated[int, Meta(ge=0, le=10_000_000)]
KeyId = Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")]  # as dtq.core.auth.apikeys makes them


class User(Struct, array_like=True, kw_only=True):
    """A stored user. Fields are only ever added at the end, with defaults, so records written
    by an older version still decode (`array_like`: a record is a list, not a map).

    `account_id` is random per record, so a user deleted and created again under the same name
    is a different account; `generation` goes up whenever the password or role changes. Tokens
    carry both, and only match while both are unchanged. Records from before the id existed
    have `account_id == ""`: they get one at start (`upgrade_records`), and a token never
    matches an empty id.
    """

    username: str
    role: Role
    password_hash: str
    created_at: float
    disabled: bool = False
    account_id: str = ""
    generation: int = 0


class ApiKey(Struct, array_like=True, kw_only=True):
    key_id: str
    name: str
    role: Role
    secret_hash: str
    created_at: float
    rate_limit_per_minute: int | None = None
    rate_limit_per_hour: int | None = None
    created_by: str | None = None


class LoginRequest(Struct, forbid_unknown_fields=True):
    username: Annotated[str, Meta(min_length=1, max_length=64)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


# the rule check_password_strength applies, so the OpenAPI document says it
Password = Annotated[str, Meta(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)]


class UserCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    username: Username
    password: Password
    role: Role = Role.VIEWER


class UserUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    password: Password | None = None
    role: Role | None = None


class ApiKeyCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    role: Role = Role.WORKER
    rate_limit_per_minute: RateLimit | None = None
    rate_limit_per_hour: RateLimit | None = None


_enc = msgspec.msgpack.Encoder()
_dec_user = msgspec.msgpack.Decoder(User)
_dec_key = msgspec.msgpack.Decoder(ApiKey)


def _load_or_create_secret(settings: Settings) -> str:
    if settings.jwt_secret:
        return settings.jwt_secret
    path = Path(settings.data_dir) / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    secret = new_jwt_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    return secret


class Accounts:
    def __init__(
        self, store: LmdbStore, writer: GroupCommitWriter, clock: Clock, settings: Settings
    ) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self.tokens = TokenIssuer(_load_or_create_secret(settings), settings.jwt_ttl_s)
        self.login_throttle = LoginThrottle()
        self._verified: dict[str, Principal] = {}

    # -- bootstrap ---------------------------------------------------------------------
    async def bootstrap_admin(self, password: str | None) -> str | None:
        """First start: create `admin`. Returns the generated password, if one was made."""
        if self._store.get_raw("users", b"admin") is not None or self.list_users():
            return None
        generated = None
        if not password:
            password = generated = secrets.token_urlsafe(18)
        await self.create_user(UserCreate(username="admin", password=password, role=Role.ADMIN))
        return generated

    async def upgrade_records(self) -> int:
        """Give every user record written before account ids existed one; returns how many.

        Such a user's old tokens (which name no account) stop working; logging in again works.
        """
        missing = [u.username for u in self.list_users() if not u.account_id]
        for username in missing:
            await self._update_user(username, lambda u: u, bump=False)
        return len(missing)

    # -- users -------------------------------------------------------------------------
    async def create_user(self, body: UserCreate) -> User:
        check_password_strength(body.password)
        hashed = await trio.to_thread.run_sync(hash_password, body.password)
        user = User(
            username=body.username,
            role=body.role,
            password_hash=hashed,
            created_at=self._clock.now(),
            account_id=new_account_id(),
        )

        def op(tx: LmdbTxn) -> User:
            if tx.get_raw("users", user.username.encode()) is not None:
                raise Conflict(
                    f"user {user.username!r} already exists", field="username", reason="taken"
                )
            tx.put_raw("users", user.username.encode(), _enc.encode(user))
            return user

        return await self._writer.write(op)

    def list_users(self) -> list[User]:
        return [_dec_user.decode(v) for _, v in self._store.iter_raw("users")]

    def get_user(self, username: str) -> User | None:
        raw = self._store.get_raw("users", username.encode())
        return _dec_user.decode(raw) if raw else None

    async def update_user(self, username: str, body: UserUpdate) -> User:
        """Change a user's password and/or role at once; every token issued before stops
        working (one generation bump, one write). A body that changes nothing changes nothing:
        the user as it is, its tokens still valid."""
        if body.password is None and body.role is None:
            user = self.get_user(username)
            if user is None:
                raise NotFound(f"user {username!r} not found", field="username")
            return user
        hashed = None
        if body.password is not None:
            check_password_strength(body.password)
            hashed = await trio.to_thread.run_sync(hash_password, body.password)

        def change(user: User) -> User:
            return msgspec.structs.replace(
                user,
                password_hash=user.password_hash if hashed is None else hashed,
                role=user.role if body.role is None else body.role,
            )

        return await self._update_user(username, change)

    async def set_password(self, username: str, password: str) -> User:
        """Change a user's password; every token issued before stops working."""
        return await self.update_user(username, UserUpdate(password=password))

    async def set_role(self, username: str, role: Role) -> User:
        """Change a user's role; every token issued before stops working."""
        return await self.update_user(username, UserUpdate(role=role))

    async def _update_user(
        self, username: str, change: Callable[[User], User], *, bump: bool = True
    ) -> User:
        """Read, change and write one user record in one write transaction. `bump` raises the
        generation (ending the user's tokens); a record without an account id gets one."""

        def op(tx: LmdbTxn) -> User:
            raw = tx.get_raw("users", username.encode())
            if raw is None:
                raise NotFound(f"user {username!r} not found", field="username")
            user = change(_dec_user.decode(raw))
            user = msgspec.structs.replace(
                user,
                account_id=user.account_id or new_account_id(),
                generation=user.generation + 1 if bump else user.generation,
            )
            tx.put_raw("users", username.encode(), _enc.encode(user))
            return user

        return await self._writer.write(op)

    async def delete_user(self, username: str) -> None:
        def op(tx: LmdbTxn) -> None:
            if not tx.delete_raw("users", username.encode()):
                raise NotFound(f"user {username!r} not found", field="username")

        await self._writer.write(op)

    async def login(self, body: LoginRequest) -> tuple[str, User]:
        # Throttled per username before the password is looked at: a 429 says nothing about
        # whether the password (or the user) was right. Unknown names are throttled the same.
        self.login_throttle.begin(body.username, self._clock.now())
        user = self.get_user(body.username)
        ok = await trio.to_thread.run_sync(
            verify_password, body.password, user.password_hash if user else None
        )
        if not ok or user is None or user.disabled:
            raise Unauthorized("Invalid username or password", reason="bad_credentials")
        self.login_throttle.succeeded(body.username)
        if not user.account_id:  # a record from before account ids, not yet upgraded
            user = await self._update_user(user.username, lambda u: u, bump=False)
        return self.issue_token(user), user

    def issue_token(self, user: User) -> str:
        """A bearer token for `user`'s account as it is now."""
        return self.tokens.issue(
            user.username,
            user.role,
            self._clock.now(),
            account_id=user.account_id,
            generation=user.generation,
        )

    # -- api keys ----------------------------------------------------------------------
    async def create_api_key(
        self, body: ApiKeyCreate, created_by: str | None
    ) -> tuple[ApiKey, str]:
        full, key_id, secret_hash = generate_api_key()
        record = ApiKey(
            key_id=key_id,
            name=body.name,
            role=body.role,
            secret_hash=secret_hash,
            created_at=self._clock.now(),
            rate_limit_per_minute=body.rate_limit_per_minute,
            rate_limit_per_hour=body.rate_limit_per_hour,
            created_by=created_by,
        )

        def op(tx: LmdbTxn) -> ApiKey:
            tx.put_raw("api_keys", key_id.encode(), _enc.encode(record))
            return record

        await self._writer.write(op)
        return record, full

    def list_api_keys(self) -> list[ApiKey]:
        keys = [_dec_key.decode(v) for _, v in self._store.iter_raw("api_keys")]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke_api_key(self, key_id: str) -> None:
        def op(tx: LmdbTxn) -> None:
            if not tx.delete_raw("api_keys", key_id.encode()):
                raise NotFound(f"API key {key_id!r} not found", field="key_id")

        await self._writer.write(op)

    # -- request authentication (hot path) ---------------------------------------------
    def authenticate(self, api_key: str | None, bearer: str | None) -> Principal | None:
        """The caller's principal, or None when no credentials were sent.

        Both at once is refused (401), even when both are valid: they may name different
        principals, and whichever we picked, the other would be silently ignored.
        """
        if api_key is not None and bearer is not None:
            raise ambiguous_credentials()
        if api_key is not None:
            key_id, secret = parse_api_key(api_key)
            # One LMDB read (~2 us); no cache, so a key created or revoked by `dtq keys`
            # in another process takes effect at once.
            raw = self._store.get_raw("api_keys", key_id.encode())
            record = _dec_key.decode(raw) if raw else None
            if record is None or not verify_api_key_secret(secret, record.secret_hash):
                raise Unauthorized("Invalid API key", reason="unknown_api_key")
            return Principal.for_api_key(
                record.key_id,
                record.name,
                record.role,
                rate_limit_per_minute=record.rate_limit_per_minute,
                rate_limit_per_hour=record.rate_limit_per_hour,
            )
        if bearer is not None:
            now = self._clock.now()
            principal = self._verified.get(bearer)
            if principal is None or (principal.expires_at or 0) <= now:
                # Signature checks cost ~40 us; a token already verified is remembered until it
                # expires (bounded: the cache is simply emptied when full).
                principal = self.tokens.verify(bearer, now)
                if len(self._verified) >= 10_000:
                    self._verified.clear()
                self._verified[bearer] = principal
            # One LMDB read by key, as for API keys (no cache: `dtq users` in another process
            # takes effect at once). The token must name this very account at its current
            # generation: a user deleted and created again has another id, and a password or
            # role change bumps the generation, so every older token ends.
            user = self.get_user(principal.subject)
            if user is None or user.disabled:
                raise Unauthorized("Invalid token", reason="unknown_user")
            if (
                not user.account_id
                or user.account_id != principal.account_id
                or user.generation != principal.generation
                or user.role != principal.role
            ):
                raise Unauthorized("Token revoked; log in again", reason="token_revoked")
            return principal
        return None


def new_account_id() -> str:
    """A random id for a new user record (128 bits, hex)."""
    return secrets.token_hex(16)


def validate_username(name: str) -> str:
    try:
        return msgspec.convert(name, Username)
    except msgspec.ValidationError:
        raise InvalidRequest("Invalid username", field="username") from None
