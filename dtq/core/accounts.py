"""Users and API keys: stored records, bootstrap, and credential checks.

Pure crypto lives in `dtq.core.auth`; this module stores through the storage port.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
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
from dtq.core.auth.shared_throttle import SharedLoginThrottle
from dtq.core.auth.throttle import LoginThrottle
from dtq.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from dtq.models import ApiKey, User
from dtq.settings import Settings
from dtq.storage.base import JWT_SECRET_SETTING, Store, StoreTxn

__all__ = ["Accounts", "ApiKey", "ApiKeyCreate", "LoginRequest", "User", "UserCreate",
           "UserUpdate", "new_account_id", "validate_username"]  # fmt: skip

log = structlog.get_logger("dtq.accounts")

Username = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")]
RateLimit = Annotated[int, Meta(ge=0, le=10_000_000)]
KeyId = Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")]  # as dtq.core.auth.apikeys makes them


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


async def load_jwt_secret(store: Store, settings: Settings) -> str:
    """`DTQ_JWT_SECRET`, else the one the store keeps (made and kept at first start), so every
    server on one store signs alike."""
    if settings.jwt_secret:
        return settings.jwt_secret
    stored = await store.get_setting(JWT_SECRET_SETTING)
    if stored:
        return stored
    fresh = new_jwt_secret()

    def op(tx: StoreTxn) -> str:
        existing = tx.get_setting(JWT_SECRET_SETTING)
        if existing:
            return existing  # another process was first
        tx.put_setting(JWT_SECRET_SETTING, fresh)
        return fresh

    return await store.write(op)


class Accounts:
    def __init__(self, store: Store, clock: Clock, settings: Settings, *, jwt_secret: str) -> None:
        self._store = store
        self._clock = clock
        self.tokens = TokenIssuer(jwt_secret, settings.jwt_ttl_s)
        self.login_throttle = LoginThrottle()
        # Several servers on one store: the throttle's records are the store's, so a guesser
        # gets no more attempts for spreading them over the servers.
        self.shared_login_throttle = (
            SharedLoginThrottle(store) if getattr(store, "shared", False) else None
        )
        self._verified: dict[str, Principal] = {}

    @classmethod
    async def open(cls, store: Store, clock: Clock, settings: Settings) -> Accounts:
        return cls(store, clock, settings, jwt_secret=await load_jwt_secret(store, settings))

    # -- bootstrap ---------------------------------------------------------------------
    async def bootstrap_admin(self, password: str | None) -> str | None:
        """First start: create `admin`. Returns the generated password, if one was made."""
        if await self._store.get_user("admin") is not None or await self.list_users():
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
        missing = [u.username for u in await self.list_users() if not u.account_id]
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

        def op(tx: StoreTxn) -> User:
            if tx.get_user(user.username) is not None:
                raise Conflict(
                    f"user {user.username!r} already exists", field="username", reason="taken"
                )
            tx.put_user(user)
            return user

        return await self._store.write(op)

    async def list_users(self) -> list[User]:
        return await self._store.list_users()

    async def get_user(self, username: str) -> User | None:
        return await self._store.get_user(username)

    async def update_user(self, username: str, body: UserUpdate) -> User:
        """Change a user's password and/or role at once; every token issued before stops
        working (one generation bump, one write). A body that changes nothing changes nothing:
        the user as it is, its tokens still valid."""
        if body.password is None and body.role is None:
            user = await self.get_user(username)
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

        def op(tx: StoreTxn) -> User:
            stored = tx.get_user(username)
            if stored is None:
                raise NotFound(f"user {username!r} not found", field="username")
            user = change(stored)
            user = msgspec.structs.replace(
                user,
                account_id=user.account_id or new_account_id(),
                generation=user.generation + 1 if bump else user.generation,
            )
            tx.put_user(user)
            return user

        return await self._store.write(op)

    async def delete_user(self, username: str) -> None:
        def op(tx: StoreTxn) -> None:
            if not tx.delete_user(username):
                raise NotFound(f"user {username!r} not found", field="username")

        await self._store.write(op)

    async def login(self, body: LoginRequest) -> tuple[str, User]:
        # Throttled per username before the password is looked at: a 429 says nothing about
        # whether the password (or the user) was right. Unknown names are throttled the same.
        shared = self.shared_login_throttle
        if shared is not None:
            await shared.begin(body.username)
        else:
            self.login_throttle.begin(body.username, self._clock.now())
        user = await self.get_user(body.username)
        ok = await trio.to_thread.run_sync(
            verify_password, body.password, user.password_hash if user else None
        )
        if not ok or user is None or user.disabled:
            raise Unauthorized("Invalid username or password", reason="bad_credentials")
        if shared is not None:
            await shared.succeeded(body.username)
        else:
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

        def op(tx: StoreTxn) -> ApiKey:
            tx.put_api_key(record)
            return record

        await self._store.write(op)
        return record, full

    async def list_api_keys(self) -> list[ApiKey]:
        keys = await self._store.list_api_keys()
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke_api_key(self, key_id: str) -> None:
        def op(tx: StoreTxn) -> None:
            if not tx.delete_api_key(key_id):
                raise NotFound(f"API key {key_id!r} not found", field="key_id")

        await self._store.write(op)

    # -- request authentication (hot path) ---------------------------------------------
    async def authenticate(self, api_key: str | None, bearer: str | None) -> Principal | None:
        """The caller's principal, or None when no credentials were sent.

        Both at once is refused (401), even when both are valid: they may name different
        principals, and whichever we picked, the other would be silently ignored.
        """
        if api_key is not None and bearer is not None:
            raise ambiguous_credentials()
        if api_key is not None:
            key_id, secret = parse_api_key(api_key)
            # One read by key; no cache, so a key created or revoked by `dtq keys`
            # in another process takes effect at once.
            record = await self._store.get_api_key(key_id)
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
            # One read by key, as for API keys (no cache: `dtq users` in another process
            # takes effect at once). The token must name this very account at its current
            # generation: a user deleted and created again has another id, and a password or
            # role change bumps the generation, so every older token ends.
            user = await self.get_user(principal.subject)
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
