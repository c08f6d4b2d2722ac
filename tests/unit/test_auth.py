"""Roles, password hashing, JWTs and API keys: pure logic, explicit `now`, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest

from dtq.core.auth import (
    ROLE_PERMISSIONS,
    Permission,
    Principal,
    Role,
    TokenIssuer,
    check_password_strength,
    generate_api_key,
    has_permission,
    hash_api_key_secret,
    hash_password,
    new_jwt_secret,
    parse_api_key,
    password_needs_rehash,
    permissions_for,
    require,
    verify_api_key_secret,
    verify_password,
)
from dtq.core.auth import passwords as passwords_mod
from dtq.errors import Forbidden, InvalidRequest, Unauthorized

NOW = 1_700_000_000.0
SECRET = "s" * 40
ACCOUNT = "0123456789abcdef0123456789abcdef"
P = Permission

# --------------------------------------------------------------------------- roles

EXPECTED: dict[Role, set[Permission]] = {
    Role.ADMIN: set(Permission),
    Role.OPERATOR: {
        P.TASKS_READ,
        P.TASKS_CREATE,
        P.TASKS_WRITE,
        P.TASKS_WORK,
        P.WORKERS_READ,
        P.WORKERS_HEARTBEAT,
        P.ANALYTICS_READ,
        P.WEBHOOKS,
        P.QUEUES_READ,
        P.QUEUES_WRITE,
    },
    Role.WORKER: {P.TASKS_READ, P.TASKS_CREATE, P.TASKS_WORK, P.WORKERS_HEARTBEAT},
    Role.VIEWER: {P.TASKS_READ, P.WORKERS_READ, P.ANALYTICS_READ, P.QUEUES_READ},
}


def test_role_values() -> None:
    assert [str(r) for r in Role] == ["admin", "operator", "worker", "viewer"]
    assert set(ROLE_PERMISSIONS) == set(Role)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_role_table(role: Role, permission: Permission) -> None:
    expected = permission in EXPECTED[role]
    assert has_permission(role, permission) is expected
    assert (permission in permissions_for(role)) is expected
    if expected:
        require(role, permission)
    else:
        with pytest.raises(Forbidden) as info:
            require(role, permission)
        assert str(role) in info.value.message
        assert str(permission) in info.value.message
        assert info.value.details["required_permission"] == str(permission)
        assert info.value.status == 403


def test_only_admin_administers() -> None:
    assert [r for r in Role if has_permission(r, P.ADMIN)] == [Role.ADMIN]


def test_role_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        ROLE_PERMISSIONS[Role.VIEWER] = frozenset(Permission)  # type: ignore[index]


def test_principal_require() -> None:
    Principal.for_user("alice", Role.WORKER).require(P.TASKS_WORK)
    with pytest.raises(Forbidden):
        Principal.for_user("alice", Role.WORKER).require(P.TASKS_WRITE)
    with pytest.raises(Unauthorized):
        Principal.anonymous("10.0.0.1").require(P.TASKS_READ)


def test_principal_identity_and_limits() -> None:
    user = Principal.for_user("alice", Role.VIEWER)
    key = Principal.for_api_key("ab" * 8, "ci", Role.WORKER, rate_limit_per_minute=5000)
    anon = Principal.anonymous("10.0.0.1")
    assert (user.identity, key.identity, anon.identity) == (
        "user:alice",
        f"key:{'ab' * 8}",
        "addr:10.0.0.1",
    )
    assert user.rate_limits(100, 1000) == (100, 1000)
    assert key.rate_limits(100, 1000) == (5000, 1000)
    zero = Principal.for_api_key("cd" * 8, "off", Role.WORKER, rate_limit_per_hour=0)
    assert zero.rate_limits(100, 1000) == (100, 0)  # 0 is an override (window off), not "unset"
    assert anon.role is None and key.key_id == "ab" * 8


# --------------------------------------------------------------------------- passwords


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password("correct horse")


def test_password_round_trip(stored: str) -> None:
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert not verify_password("", stored)
    assert not password_needs_rehash(stored)


def test_password_format_and_salt(stored: str) -> None:
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(base64.urlsafe_b64decode(salt + "==")) == 16
    assert len(base64.urlsafe_b64decode(digest + "=")) == 32
    assert hash_password("correct horse") != stored  # fresh salt each time


def test_password_unicode() -> None:
    stored = hash_password("pässwörd-\u00e9\U0001f600")
    assert verify_password("pässwörd-\u00e9\U0001f600", stored)
    assert not verify_password("passwörd-\u00e9\U0001f600", stored)
    assert not verify_password("\ud800 lone surrogate", stored)  # no UnicodeEncodeError


def _flip_char(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def test_tampered_hash_is_rejected(stored: str) -> None:
    parts = stored.split("$")
    tampered_digest = "$".join([*parts[:5], _flip_char(parts[5], 3)])
    tampered_salt = "$".join([*parts[:4], _flip_char(parts[4], 3), parts[5]])
    tampered_r = "$".join([parts[0], parts[1], "9", *parts[3:]])
    for bad in (tampered_digest, tampered_salt, tampered_r):
        assert not verify_password("correct horse", bad)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "bcrypt$16384$8$1$c2FsdA$aGFzaA",
        "scrypt$16384$8$1$c2FsdA",  # too few fields
        "scrypt$abc$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$16385$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # n not 2**k
        "scrypt$1073741824$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # n too big
        "scrypt$1048576$32$16$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # too much memory
        "scrypt$16384$0$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$16384$8$1$!!!$aGFzaGhhc2hoYXNoaGFzaA",  # bad base64
        "scrypt$16384$8$1$$aGFzaGhhc2hoYXNoaGFzaA",  # empty salt
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",  # digest too short
        "scrypt$\u0661\u0666$8$1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # non-ASCII digits
    ],
)
def test_malformed_stored_hash_is_a_mismatch(bad: str) -> None:
    assert not verify_password("whatever1", bad)
    assert password_needs_rehash(bad)


def test_unknown_user_costs_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = passwords_mod._scrypt

    def spy(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = 32) -> bytes:
        calls.append(salt)
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(passwords_mod, "_scrypt", spy)
    assert not verify_password("whatever1", None)
    assert not verify_password("whatever1", "garbage")
    assert len(calls) == 2


def test_other_parameters_still_verify_and_need_rehash() -> None:
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"old password", salt=salt, n=2**10, r=8, p=1, dklen=32)
    b64 = base64.urlsafe_b64encode
    old = f"scrypt$1024$8$1${b64(salt).decode().rstrip('=')}${b64(digest).decode().rstrip('=')}"
    assert verify_password("old password", old)
    assert password_needs_rehash(old)


def test_password_strength() -> None:
    check_password_strength("12345678")
    check_password_strength("x" * 1024)
    for bad, reason in (("", "too_short"), ("1234567", "too_short"), ("x" * 1025, "too_long")):
        with pytest.raises(InvalidRequest) as info:
            check_password_strength(bad)
        assert info.value.details == {"field": "password", "reason": reason}
        assert info.value.status == 400


# --------------------------------------------------------------------------- tokens


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(SECRET, ttl_s=3600)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "dtq",
        "sub": "alice",
        "role": "operator",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "abc",
        "uid": ACCOUNT,
        "gen": 0,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    header = _segment({"alg": alg, "typ": "JWT"})
    signing_input = f"{header}.{_segment(claims)}".encode()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return (
        f"{signing_input.decode()}.{_b64(hmac.new(key.encode(), signing_input, digest).digest())}"
    )


def _reason(issuer: TokenIssuer, token: str, now: float = NOW) -> str:
    with pytest.raises(Unauthorized) as info:
        issuer.verify(token, now)
    assert info.value.status == 401
    reason: str = info.value.details["reason"]
    return reason


def test_token_round_trip(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice", Role.OPERATOR, NOW, account_id=ACCOUNT, generation=0)
    principal = issuer.verify(token, NOW + 10)
    assert principal == Principal(
        kind="user",
        subject="alice",
        role=Role.OPERATOR,
        expires_at=int(NOW) + 3600,
        account_id=ACCOUNT,
        generation=0,
    )
    assert principal.identity == "user:alice"


def test_token_claims(issuer: TokenIssuer) -> None:
    token = issuer.issue("bob", Role.VIEWER, NOW + 0.9, account_id=ACCOUNT, generation=0)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert set(claims) == {"iss", "sub", "role", "iat", "exp", "jti", "uid", "gen"}
    assert (claims["uid"], claims["gen"]) == (ACCOUNT, 0)
    assert (claims["iss"], claims["sub"], claims["role"]) == ("dtq", "bob", "viewer")
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW) + 3600)
    other = jwt.decode(
        issuer.issue("bob", Role.VIEWER, NOW, account_id=ACCOUNT, generation=0),
        options={"verify_signature": False},
    )
    assert other["jti"] != claims["jti"]


def test_hand_signed_token_verifies(issuer: TokenIssuer) -> None:
    # Guards the helpers below: a correctly built token passes, so failures are for the reason.
    assert issuer.verify(_sign(_claims()), NOW).subject == "alice"


def test_token_expiry_uses_given_now(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice", Role.ADMIN, NOW, account_id=ACCOUNT, generation=0)
    assert issuer.verify(token, NOW + 3599.999).role is Role.ADMIN
    assert _reason(issuer, token, NOW + 3600) == "token_expired"
    assert _reason(issuer, token, NOW + 10**6) == "token_expired"


def test_token_from_the_future(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice", Role.ADMIN, NOW + 3600, account_id=ACCOUNT, generation=0)
    assert issuer.verify(token, NOW + 3600 - 60).subject == "alice"  # small skew tolerated
    assert _reason(issuer, token, NOW) == "issued_in_future"


def test_wrong_secret(issuer: TokenIssuer) -> None:
    other = TokenIssuer("t" * 40, ttl_s=3600)
    assert (
        _reason(issuer, other.issue("alice", Role.ADMIN, NOW, account_id=ACCOUNT, generation=0))
        == "bad_signature"
    )


def test_forged_signature(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue(
        "alice", Role.VIEWER, NOW, account_id=ACCOUNT, generation=0
    ).split(".")
    forged_payload = _segment(_claims(role="admin"))
    assert _reason(issuer, f"{header}.{forged_payload}.{signature}") == "bad_signature"
    flipped = _flip_char(signature, 5)
    assert _reason(issuer, f"{header}.{payload}.{flipped}") == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(issuer: TokenIssuer, alg: str) -> None:
    header = _segment({"alg": alg, "typ": "JWT"})
    payload = _segment(_claims(role="admin"))
    assert _reason(issuer, f"{header}.{payload}.") == "bad_algorithm"
    assert _reason(issuer, f"{header}.{payload}") == "malformed_token"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_algorithms_are_rejected(issuer: TokenIssuer, alg: str) -> None:
    assert _reason(issuer, _sign(_claims(), alg=alg)) == "bad_algorithm"


def test_unknown_algorithm_is_rejected(issuer: TokenIssuer) -> None:
    token = f"{_segment({'alg': 'RS256'})}.{_segment(_claims())}.{_b64(b'sig')}"
    assert _reason(issuer, token) == "bad_algorithm"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (_claims(iss="someone-else"), "malformed_token"),
        (_claims(iss=None), "malformed_token"),
        (_claims(sub=None), "malformed_token"),
        (_claims(sub=""), "malformed_token"),
        (_claims(sub=42), "malformed_token"),
        (_claims(role=None), "malformed_token"),
        (_claims(role="root"), "unknown_role"),
        (_claims(role=["admin"]), "malformed_token"),
        (_claims(exp=None), "malformed_token"),
        (_claims(exp="never"), "malformed_token"),
        (_claims(exp=True), "malformed_token"),
        (_claims(exp=float(NOW + 3600)), "malformed_token"),
        (_claims(iat=None), "malformed_token"),
        (_claims(jti=None), "malformed_token"),
        (_claims(jti=7), "malformed_token"),
        # a token names an account: from before account ids (no uid/gen), it is refused
        (_claims(uid=None), "malformed_token"),
        (_claims(uid=""), "malformed_token"),
        (_claims(uid=7), "malformed_token"),
        (_claims(gen=None), "malformed_token"),
        (_claims(gen="0"), "malformed_token"),
        (_claims(gen=False), "malformed_token"),
    ],
)
def test_bad_claims(issuer: TokenIssuer, claims: dict[str, Any], reason: str) -> None:
    assert _reason(issuer, _sign(claims)) == reason


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "a.b.c",
        "...",
        "Bearer abc",
        "eyJhbGciOiJIUzI1NiJ9",
        f"{_segment([1, 2])}.{_segment({})}.sig",
        f"{_segment({'alg': 'HS256'})}.{_b64(b'not json')}.sig",
        f"{_segment({'alg': 'HS256'})}.{_segment([1, 2])}.sig",
        "ü.ü.ü",
        "a" * 5000,
    ],
)
def test_garbage_tokens(issuer: TokenIssuer, garbage: str) -> None:
    assert _reason(issuer, garbage) in {"malformed_token", "bad_signature"}


def test_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenIssuer("short", ttl_s=60)
    with pytest.raises(ValueError, match="positive"):
        TokenIssuer(SECRET, ttl_s=0)
    with pytest.raises(ValueError, match="unusable"):
        TokenIssuer("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + "x" * 40, ttl_s=60)


def test_new_jwt_secret() -> None:
    a, b = new_jwt_secret(), new_jwt_secret()
    assert a != b and len(a) == 64
    issuer = TokenIssuer(a, ttl_s=60)
    assert (
        issuer.verify(
            issuer.issue("x", Role.WORKER, NOW, account_id=ACCOUNT, generation=0), NOW
        ).role
        is Role.WORKER
    )


# --------------------------------------------------------------------------- API keys


def test_api_key_round_trip() -> None:
    full, key_id, stored_hash = generate_api_key()
    assert full.startswith(f"dtq_{key_id}_")
    assert len(key_id) == 16 and len(stored_hash) == 64
    parsed_id, secret = parse_api_key(full)
    assert parsed_id == key_id
    assert secret not in stored_hash and full not in stored_hash
    assert verify_api_key_secret(secret, stored_hash)
    assert stored_hash == hash_api_key_secret(secret)
    assert parse_api_key(f"  {full}\n") == (key_id, secret)  # stray whitespace from copy/paste


def test_api_keys_are_unique_and_parse_with_underscores_in_secret() -> None:
    keys = [generate_api_key() for _ in range(200)]
    assert len({k[0] for k in keys}) == len({k[1] for k in keys}) == 200
    for full, key_id, stored_hash in keys:  # token_urlsafe secrets often contain "_" and "-"
        parsed_id, secret = parse_api_key(full)
        assert parsed_id == key_id and verify_api_key_secret(secret, stored_hash)


def test_api_key_wrong_secret() -> None:
    full, _, stored_hash = generate_api_key()
    other_full, _, other_hash = generate_api_key()
    _, secret = parse_api_key(full)
    _, other_secret = parse_api_key(other_full)
    assert not verify_api_key_secret(other_secret, stored_hash)
    assert not verify_api_key_secret(secret, other_hash)
    assert not verify_api_key_secret(secret, "")
    assert not verify_api_key_secret(secret, "é" * 64)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "dtq",
        "dtq__",
        "dtq_0123456789abcdef",
        "dtq_0123456789abcdef_",
        "dtq_0123456789abcdef_" + "a" * 42,  # secret too short
        "dtq_0123456789abcdef_" + "a" * 44,  # secret too long
        "dtq_0123456789ABCDEF_" + "a" * 43,  # key_id not lower hex
        "dtq_0123456789abcde_" + "a" * 43,  # key_id too short
        "xyz_0123456789abcdef_" + "a" * 43,
        "dtq_0123456789abcdef_" + "a" * 42 + "=",
        "dtq_0123456789abcdef_" + "a" * 42 + "é",
        "Bearer dtq_0123456789abcdef_" + "a" * 43,
        "x" * 10_000,
    ],
)
def test_malformed_api_keys(raw: str) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_api_key(raw)
    assert info.value.details == {"reason": "malformed_api_key"}
