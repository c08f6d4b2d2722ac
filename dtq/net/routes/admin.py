"""Login, users and API keys."""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from dtq.core.accounts import (
    ApiKey,
    ApiKeyCreate,
    KeyId,
    LoginRequest,
    User,
    UserCreate,
    Username,
    UserUpdate,
    validate_username,
)
from dtq.core.auth import Permission
from dtq.net.envelope import iso, success
from dtq.net.routing import Api, Call, RouteSpec, no_content, respond

AUTH_TAG = "Auth"
ADMIN_TAG = "Admin"


class TokenOut(Struct):
    token: str
    token_type: str
    expires_in: int
    username: str
    role: str


class UserOut(Struct):
    username: str
    role: str
    created_at: str | None
    disabled: bool


class ApiKeyOut(Struct, omit_defaults=True):
    key_id: str
    name: str
    role: str
    created_at: str | None
    rate_limit_per_minute: int | None = None
    rate_limit_per_hour: int | None = None
    created_by: str | None = None
    key: str | None = None  # only in the response that creates it


def user_out(u: User) -> UserOut:
    return UserOut(u.username, u.role.value, iso(u.created_at), u.disabled)


def key_out(k: ApiKey, full: str | None = None) -> ApiKeyOut:
    return ApiKeyOut(
        k.key_id, k.name, k.role.value, iso(k.created_at), k.rate_limit_per_minute,
        k.rate_limit_per_hour, k.created_by, full,
    )  # fmt: skip


def register(api: Api) -> None:
    accounts = api.services.accounts

    @api.route(
        RouteSpec("POST", "/api/v1/auth/login", "Log in for a bearer token", AUTH_TAG, "login",
                  body=LoginRequest, response=TokenOut, auth=False, errors=(401,),
                  extra_fields=(("token", str),),
                  description="The JWT is at the top level (`.token`, as the guide's example "
                  "reads it) and in `data`. Failed logins are throttled per username (known or "
                  "not), beside the per-address rate limit: from the 10th failure within 15 "
                  "minutes each one locks the username for twice as long, from 1 s up to 15 "
                  "minutes; while locked, a login gets 429 `RATE_LIMITED` (`details.reason: "
                  "login_throttled`) with `Retry-After`, without the password being checked. "
                  "A correct password after the lock always works and clears the count."),
        None,
    )  # fmt: skip
    async def login(call: Call) -> Any:
        token, user = await accounts.login(call.body)
        out = TokenOut(token, "Bearer", accounts.tokens.ttl_s, user.username, user.role.value)
        return respond(success(out, token=token))

    @api.route(
        RouteSpec("GET", "/api/v1/users", "List users", ADMIN_TAG, "list_users",
                  response=list[UserOut], roles=("admin",)),
        Permission.ADMIN,
    )  # fmt: skip
    async def list_users(call: Call) -> Any:
        return respond(success([user_out(u) for u in await accounts.list_users()]))

    @api.route(
        RouteSpec("POST", "/api/v1/users", "Create a user", ADMIN_TAG, "create_user",
                  body=UserCreate, response=UserOut, status=201, errors=(409,), roles=("admin",)),
        Permission.ADMIN,
    )  # fmt: skip
    async def create_user(call: Call) -> Any:
        return respond(success(user_out(await accounts.create_user(call.body))), 201)

    @api.route(
        RouteSpec("PATCH", "/api/v1/users/{username}", "Change a user's password or role",
                  ADMIN_TAG, "update_user", body=UserUpdate, response=UserOut, errors=(404,),
                  roles=("admin",), path_types=(("username", Username),),
                  description="Every token issued to the user before the change stops working "
                  "(401); the user logs in again."),
        Permission.ADMIN,
    )  # fmt: skip
    async def update_user(call: Call) -> Any:
        username = validate_username(call.params["username"])
        return respond(success(user_out(await accounts.update_user(username, call.body))))

    @api.route(
        RouteSpec("DELETE", "/api/v1/users/{username}", "Delete a user", ADMIN_TAG,
                  "delete_user", status=204, errors=(404,), roles=("admin",),
                  path_types=(("username", Username),)),
        Permission.ADMIN,
    )  # fmt: skip
    async def delete_user(call: Call) -> Any:
        await accounts.delete_user(validate_username(call.params["username"]))
        return no_content()

    @api.route(
        RouteSpec("GET", "/api/v1/api-keys", "List API keys", ADMIN_TAG, "list_api_keys",
                  response=list[ApiKeyOut], roles=("admin",)),
        Permission.ADMIN,
    )  # fmt: skip
    async def list_api_keys(call: Call) -> Any:
        return respond(success([key_out(k) for k in await accounts.list_api_keys()]))

    @api.route(
        RouteSpec("POST", "/api/v1/api-keys", "Create an API key (shown once)", ADMIN_TAG,
                  "create_api_key", body=ApiKeyCreate, response=ApiKeyOut, status=201,
                  roles=("admin",)),
        Permission.ADMIN,
    )  # fmt: skip
    async def create_api_key(call: Call) -> Any:
        record, full = await accounts.create_api_key(call.body, call.principal.subject)
        return respond(success(key_out(record, full)), 201)

    @api.route(
        RouteSpec("DELETE", "/api/v1/api-keys/{key_id}", "Revoke an API key", ADMIN_TAG,
                  "revoke_api_key", status=204, errors=(404,), roles=("admin",),
                  path_types=(("key_id", KeyId),)),
        Permission.ADMIN,
    )  # fmt: skip
    async def revoke_api_key(call: Call) -> Any:
        await accounts.revoke_api_key(call.params["key_id"])
        return no_content()
