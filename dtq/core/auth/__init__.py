"""Authentication and authorization, as pure logic: no I/O, no HTTP, no storage.

Knows only `dtq.errors`. Storage keeps users (password hashes) and API keys (key_id, secret
hash, role, limits); `dtq.net` reads the headers, calls these and maps the errors.
"""

from dtq.core.auth.apikeys import (
    generate_api_key,
    hash_api_key_secret,
    parse_api_key,
    verify_api_key_secret,
)
from dtq.core.auth.credentials import ambiguous_credentials, bearer_of, single_credential
from dtq.core.auth.passwords import (
    check_password_strength,
    hash_password,
    password_needs_rehash,
    verify_password,
)
from dtq.core.auth.roles import (
    ROLE_PERMISSIONS,
    Permission,
    Role,
    has_permission,
    permissions_for,
    require,
)
from dtq.core.auth.throttle import LoginThrottle
from dtq.core.auth.tokens import Principal, PrincipalKind, TokenIssuer, new_jwt_secret

__all__ = [
    "ROLE_PERMISSIONS",
    "LoginThrottle",
    "Permission",
    "Principal",
    "PrincipalKind",
    "Role",
    "TokenIssuer",
    "ambiguous_credentials",
    "bearer_of",
    "check_password_strength",
    "generate_api_key",
    "has_permission",
    "hash_api_key_secret",
    "hash_password",
    "new_jwt_secret",
    "parse_api_key",
    "password_needs_rehash",
    "permissions_for",
    "require",
    "single_credential",
    "verify_api_key_secret",
    "verify_password",
]
