"""Issue 8: tokens belong to an account (finding 4), one credential per request (finding 7),
and the per-account login throttle."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing

from dtq.core.accounts import LoginRequest, User, UserCreate
from dtq.core.auth import Role
from dtq.errors import NotFound
from dtq.net.routing import Services
from dtq.server import open_services
from dtq.settings import Settings
from dtq.storage.base import StoreTxn

from .conftest import ADMIN_PASSWORD
from .helpers import Client, error_of, ok

PASSWORD = "long-enough"


async def log_in(client: Client, username: str, password: str = PASSWORD) -> Client:
    reply = await client.post("/api/v1/auth/login", {"username": username, "password": password})
    return client.bearer(ok(reply)["token"])


async def revoked(user: Client) -> None:
    error_of(await user.get("/api/v1/tasks"), 401, "UNAUTHORIZED", reason="token_revoked")


# -- finding 4: a token names an account and its generation -------------------------------------


async def test_a_deleted_users_token_does_not_come_back_with_a_new_user_of_that_name(
    admin: Client, client: Client
) -> None:
    body = {"username": "mallory", "password": PASSWORD, "role": "admin"}
    ok(await admin.post("/api/v1/users", body), 201)
    old = await log_in(client, "mallory")
    ok(await old.get("/api/v1/users"))
    assert (await admin.delete("/api/v1/users/mallory")).status == 204
    ok(await admin.post("/api/v1/users", body), 201)  # same name, same password, same role
    await revoked(old)
    error_of(await old.get("/api/v1/users"), 401, "UNAUTHORIZED")
    new = await log_in(client, "mallory")
    ok(await new.get("/api/v1/users"))


async def test_a_password_change_ends_older_tokens(services: Services, client: Client) -> None:
    await services.accounts.create_user(UserCreate(username="bob", password=PASSWORD))
    old = await log_in(client, "bob")
    ok(await old.get("/api/v1/tasks"))
    await services.accounts.set_password("bob", "a-new-password")
    await revoked(old)
    error_of(
        await client.post("/api/v1/auth/login", {"username": "bob", "password": PASSWORD}),
        401,
        "UNAUTHORIZED",
    )
    ok(await (await log_in(client, "bob", "a-new-password")).get("/api/v1/tasks"))


async def test_a_role_change_ends_older_tokens(services: Services, client: Client) -> None:
    await services.accounts.create_user(
        UserCreate(username="ops", password=PASSWORD, role=Role.OPERATOR)
    )
    old = await log_in(client, "ops")
    ok(await old.get("/api/v1/workers"))
    await services.accounts.set_role("ops", Role.VIEWER)  # a demotion ...
    await revoked(old)
    await services.accounts.set_role("ops", Role.OPERATOR)  # ... and back: still over
    await revoked(old)
    new = await log_in(client, "ops")
    ok(await new.get("/api/v1/workers"))


async def test_patch_user_changes_password_and_role_and_ends_tokens(
    admin: Client, services: Services, client: Client
) -> None:
    await services.accounts.create_user(UserCreate(username="dan", password=PASSWORD))
    old = await log_in(client, "dan")
    reply = await admin.request("PATCH", "/api/v1/users/dan", json={"role": "operator"})
    user = ok(reply)
    assert (user["username"], user["role"]) == ("dan", "operator")
    assert "password" not in reply.body.decode() and "hash" not in reply.body.decode()
    await revoked(old)
    mid = await log_in(client, "dan")
    ok(await mid.get("/api/v1/workers"))  # the new role
    body = {"password": "another-password", "role": "viewer"}
    ok(await admin.request("PATCH", "/api/v1/users/dan", json=body))
    await revoked(mid)
    error_of(
        await client.post("/api/v1/auth/login", {"username": "dan", "password": PASSWORD}),
        401,
        "UNAUTHORIZED",
    )
    new = await log_in(client, "dan", "another-password")
    error_of(await new.post("/api/v1/tasks", {"name": "x"}), 403, "FORBIDDEN")  # a viewer now
    ok(await admin.get("/api/v1/users"))  # the admin's own token is untouched


async def test_patch_user_refusals(admin: Client, tokens: dict[Role, str], client: Client) -> None:
    patch = admin.request
    error_of(await patch("PATCH", "/api/v1/users/nobody", json={"role": "viewer"}), 404,
             "NOT_FOUND")  # fmt: skip
    token = tokens[Role.ADMIN]
    # a PATCH that changes nothing is a no-op: the user as it is, its tokens still good
    assert ok(await patch("PATCH", "/api/v1/users/admin", json={}))["username"] == "admin"
    ok(await client.bearer(token).get("/api/v1/tasks"))
    for body, field in (
        ({"password": "short"}, "password"),
        ({"role": "root"}, "role"),
        ({"disabled": True}, "disabled"),
    ):
        reply = await patch("PATCH", "/api/v1/users/admin", json=body)
        error_of(reply, 400, "INVALID_REQUEST", field=field)
    operator = client.bearer(tokens[Role.OPERATOR])
    reply = await operator.request("PATCH", "/api/v1/users/admin", json={"password": "x" * 12})
    error_of(reply, 403, "FORBIDDEN")
    ok(await client.post("/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD}))


async def test_other_users_tokens_are_unaffected(
    admin: Client, services: Services, client: Client
) -> None:
    for name in ("alice", "bob", "carol"):
        await services.accounts.create_user(UserCreate(username=name, password=PASSWORD))
    alice, bob, carol = [await log_in(client, n) for n in ("alice", "bob", "carol")]
    await services.accounts.set_password("alice", "a-new-password")
    await services.accounts.set_role("bob", Role.OPERATOR)
    assert (await admin.delete("/api/v1/users/carol")).status == 204
    for user in (alice, bob, carol):
        error_of(await user.get("/api/v1/tasks"), 401, "UNAUTHORIZED")
    ok(await admin.get("/api/v1/users"))  # the admin's token is untouched


async def test_account_changes_for_unknown_users_are_404(services: Services) -> None:
    with pytest.raises(NotFound):
        await services.accounts.set_password("nobody", PASSWORD)
    with pytest.raises(NotFound):
        await services.accounts.set_role("nobody", Role.ADMIN)


async def test_records_from_before_account_ids_still_work(
    services: Services, client: Client
) -> None:
    # A record as an older version stored it: a list without the two trailing fields.
    old = User(username="legacy", role=Role.VIEWER, password_hash="", created_at=0.0)
    hashed = await services.accounts.create_user(UserCreate(username="tmp", password=PASSWORD))
    raw = msgspec.msgpack.encode(
        [old.username, old.role.value, hashed.password_hash, old.created_at, False]
    )

    def put(tx: StoreTxn) -> None:
        tx.put_user(msgspec.msgpack.decode(raw, type=User))  # the old record still decodes

    await services.queue.store.write(put)
    legacy = await services.accounts.get_user("legacy")
    assert legacy is not None and legacy.account_id == "" and legacy.generation == 0
    assert [u.username for u in await services.accounts.list_users()] == ["admin", "legacy", "tmp"]
    # Logging in gives the record an id (as `upgrade_records` does at start), then works.
    user = await log_in(client, "legacy")
    ok(await user.get("/api/v1/tasks"))
    upgraded = await services.accounts.get_user("legacy")
    assert upgraded is not None and len(upgraded.account_id) == 32
    assert await services.accounts.upgrade_records() == 0


async def test_upgrade_records_gives_every_old_record_an_id(services: Services) -> None:
    created = await services.accounts.create_user(UserCreate(username="tmp", password=PASSWORD))
    for name in ("old1", "old2"):
        raw = msgspec.msgpack.encode([name, "viewer", created.password_hash, 0.0, False])

        def put(tx: StoreTxn, raw: bytes = raw) -> None:
            tx.put_user(msgspec.msgpack.decode(raw, type=User))

        await services.queue.store.write(put)
    assert await services.accounts.upgrade_records() == 2
    ids = {u.username: u.account_id for u in await services.accounts.list_users()}
    assert all(len(i) == 32 for i in ids.values()), ids
    assert len(set(ids.values())) == len(ids)
    assert ids["tmp"] == created.account_id  # records that had one keep it


# -- finding 7: one credential per request --------------------------------------------------------


async def test_a_valid_key_with_a_bad_bearer_is_401(
    client: Client, keys: dict[Role, str], tokens: dict[Role, str]
) -> None:
    key = client.api_key(keys[Role.ADMIN])
    ok(await key.get("/api/v1/tasks"))
    for authorization in ("Bearer not-a-jwt", "Bearer ", "Basic YWRtaW46cGFzc3dvcmQ=",
                          f"Bearer {tokens[Role.ADMIN][:-3]}xyz"):  # fmt: skip
        reply = await key.get("/api/v1/tasks", headers={"Authorization": authorization})
        error_of(reply, 401, "UNAUTHORIZED")


async def test_a_bad_key_with_a_valid_bearer_is_401(
    client: Client, keys: dict[Role, str], tokens: dict[Role, str]
) -> None:
    bearer = client.bearer(tokens[Role.ADMIN])
    for key in ("nope", "", keys[Role.ADMIN][:-4] + "AAAA"):
        error_of(await bearer.get("/api/v1/tasks", headers={"X-API-Key": key}), 401, "UNAUTHORIZED")


async def test_two_valid_credentials_are_ambiguous(
    client: Client, keys: dict[Role, str], tokens: dict[Role, str]
) -> None:
    # They may name different principals (here: a viewer key and an admin token).
    for key, token in ((Role.VIEWER, Role.ADMIN), (Role.ADMIN, Role.ADMIN)):
        both = client.api_key(keys[key]).bearer(tokens[token])
        reply = await both.get("/api/v1/tasks")
        error_of(reply, 401, "UNAUTHORIZED", reason="ambiguous_credentials")


async def test_a_repeated_credential_header_is_401(
    client: Client, keys: dict[Role, str], tokens: dict[Role, str]
) -> None:
    raw = client.raw
    for name, good in (("X-API-Key", keys[Role.ADMIN]),
                       ("Authorization", f"Bearer {tokens[Role.ADMIN]}")):  # fmt: skip
        for second in (good, "junk"):
            headers = [(name, good), (name, second)]
            async with raw.request("/api/v1/tasks", method="GET", headers=headers) as conn:
                await conn.send_complete()
                while True:
                    try:
                        await conn.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        break
            assert conn.status_code == 401, (name, second)  # type: ignore[attr-defined]


async def test_a_single_credential_still_works(
    client: Client, keys: dict[Role, str], tokens: dict[Role, str]
) -> None:
    ok(await client.api_key(keys[Role.VIEWER]).get("/api/v1/tasks"))
    ok(await client.bearer(tokens[Role.VIEWER]).get("/api/v1/tasks"))


# -- the per-account login throttle ---------------------------------------------------------------


async def test_failed_logins_for_one_account_back_off(
    client: Client, mock_clock: trio.testing.MockClock
) -> None:
    wrong = {"username": "admin", "password": "wrong-password"}
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    for _ in range(10):
        error_of(await client.post("/api/v1/auth/login", wrong), 401, "UNAUTHORIZED")
    # Locked for 1 s: refused before the password is checked, so even the right one gets 429.
    for body in (wrong, right):
        reply = await client.post("/api/v1/auth/login", body)
        error_of(reply, 429, "RATE_LIMITED", reason="login_throttled")
        assert reply.headers["Retry-After"] == "1"
        assert "token" not in reply.json
    mock_clock.jump(1)
    error_of(await client.post("/api/v1/auth/login", wrong), 401, "UNAUTHORIZED")
    reply = await client.post("/api/v1/auth/login", right)
    assert reply.headers["Retry-After"] == "2"  # the window doubled
    mock_clock.jump(2)
    ok(await client.post("/api/v1/auth/login", right))  # the right password after the window
    # ... which clears the record: nine free failures again.
    for _ in range(9):
        error_of(await client.post("/api/v1/auth/login", wrong), 401, "UNAUTHORIZED")
    ok(await client.post("/api/v1/auth/login", right))


async def test_unknown_usernames_are_throttled_alike(
    client: Client, mock_clock: trio.testing.MockClock
) -> None:
    for name in ("admin", "nobody"):
        body = {"username": name, "password": "wrong-password"}
        for _ in range(10):
            error_of(await client.post("/api/v1/auth/login", body), 401, "UNAUTHORIZED")
        reply = await client.post("/api/v1/auth/login", body)
        error = error_of(reply, 429, "RATE_LIMITED", reason="login_throttled")
        assert reply.headers["Retry-After"] == "1"
        assert error["message"] == "Too many failed logins for this username; retry in 1 s"


async def test_the_throttle_is_per_account(
    client: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    await services.accounts.create_user(UserCreate(username="bob", password=PASSWORD))
    for _ in range(12):
        await client.post("/api/v1/auth/login", {"username": "admin", "password": "x"})
    await log_in(client, "bob")  # another account: not slowed
    assert services.accounts.login_throttle.retry_after_s("admin", services.queue.clock.now())
    await services.accounts.login(LoginRequest("bob", PASSWORD))


@pytest.mark.parametrize("store_url", [""], ids=["lmdb"])  # a restart: a durable store
async def test_a_restart_upgrades_old_records(settings: Settings) -> None:
    async with open_services(settings) as svc:
        admin = await svc.accounts.get_user("admin")
        assert admin is not None
        raw = msgspec.msgpack.encode(["old", "viewer", admin.password_hash, 0.0, False])

        def put(tx: StoreTxn) -> None:
            tx.put_user(msgspec.msgpack.decode(raw, type=User))

        await svc.queue.store.write(put)
    async with open_services(settings) as svc:
        old = await svc.accounts.get_user("old")
        assert old is not None and len(old.account_id) == 32 and old.generation == 0
        assert await svc.accounts.get_user("admin") == admin  # records that had an id are untouched
