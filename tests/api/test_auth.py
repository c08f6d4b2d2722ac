"""Authentication (401) and authorization (403) as DESIGN.md "Auth" describes them; the admin
endpoints for users and API keys."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from quart_trio import QuartTrio

from dtq.core.accounts import UserCreate
from dtq.core.auth import ROLE_PERMISSIONS, Permission, Role
from dtq.net.routing import Services, plain_rule
from dtq.settings import Settings

from .conftest import ADMIN_PASSWORD, ROLES
from .helpers import Client, create_task, error_of, lease_one, ok, success_body

TASK_ID = "123e4567-e89b-12d3-a456-426614174000"


def api_rules(app: QuartTrio) -> list[tuple[str, str]]:
    """(method, rule) of every HTTP route under /api/v1 (HEAD/OPTIONS left out)."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.websocket or not rule.rule.startswith("/api/v1/"):
            continue
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            out.append((method, plain_rule(rule.rule)))
    return sorted(out)


def fill(rule: str) -> str:
    for name, value in (
        ("task_id", TASK_ID),
        ("worker_id", "w1"),
        ("username", "bob"),
        ("key_id", "0123456789abcdef"),
        ("webhook_id", TASK_ID),
    ):
        rule = rule.replace(f"<{name}>", value)
    return rule


# -- 401: who are you? ----------------------------------------------------------------------------


async def test_every_api_route_needs_credentials(client: Client, app: QuartTrio) -> None:
    rules = api_rules(app)
    assert len(rules) >= 20
    for method, rule in rules:
        if rule == "/api/v1/auth/login":
            continue
        kw: dict[str, Any] = {"json": {}} if method in ("POST", "PUT") else {}
        reply = await client.request(method, fill(rule), **kw)
        assert reply.status == 401, (method, rule, reply)
        error_of(reply, 401, "UNAUTHORIZED")
    error_of(await client.get("/workers/status"), 401, "UNAUTHORIZED")


async def test_401_comes_before_validation(client: Client) -> None:
    error_of(await client.get("/api/v1/tasks?limit=1000"), 401, "UNAUTHORIZED")
    error_of(await client.post("/api/v1/tasks", body=b"{"), 401, "UNAUTHORIZED")
    error_of(await client.get("/api/v1/tasks/not-a-uuid"), 401, "UNAUTHORIZED")


async def test_open_endpoints(client: Client) -> None:
    for path in ("/health", "/ready", "/info", "/docs", "/redoc", "/openapi.json"):
        reply = await client.get(path)
        assert reply.status == 200, (path, reply)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(role: str = "admin", **kw: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "dtq",
        "sub": "admin",
        "role": role,
        "iat": now,
        "exp": now + 600,
        "jti": "j",
        **kw,
    }


async def admin_id(services: Services) -> str:
    admin = await services.accounts.get_user("admin")
    assert admin is not None and admin.account_id
    return admin.account_id


def server_secret(settings: Settings) -> bytes:
    assert settings.jwt_secret
    return settings.jwt_secret.encode()


async def bad_tokens(settings: Settings, services: Services, good: str) -> dict[str, str]:
    uid = await admin_id(services)

    def mine(role: str = "admin", **kw: Any) -> dict[str, Any]:
        """Claims as the server's own tokens have them, so each case fails for its own reason."""
        return claims(role, **{"uid": uid, "gen": 0, **kw})

    secret = server_secret(settings)
    header, payload, signature = good.split(".")
    viewer_payload = json.loads(base64.urlsafe_b64decode(payload + "=="))
    viewer_payload["role"] = "admin"
    now = services.queue.clock.now()
    return {
        "garbage": "not-a-jwt",
        "empty segments": "..",
        "truncated": f"{header}.{payload}",
        "bad signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "tampered claims": f"{header}.{b64(viewer_payload)}.{signature}",
        "other secret": jwt.encode(mine(), "x" * 64, algorithm="HS256"),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(mine())}.",
        "alg none (pyjwt)": jwt.encode(mine(), None, algorithm="none"),
        "alg HS512": jwt.encode(mine(), secret, algorithm="HS512"),
        "expired": services.accounts.tokens.issue(
            "admin", Role.ADMIN, now - 7200, account_id=await admin_id(services), generation=0
        ),
        "expired (hand made)": jwt.encode(mine(exp=int(now) - 1), secret, algorithm="HS256"),
        "wrong issuer": jwt.encode(mine(iss="someone"), secret, algorithm="HS256"),
        "unknown role": jwt.encode(mine(role="root"), secret, algorithm="HS256"),
        "no exp": jwt.encode(
            {k: v for k, v in mine().items() if k != "exp"}, secret, algorithm="HS256"
        ),
        "issued in the future": jwt.encode(
            mine(iat=int(now) + 3600, exp=int(now) + 7200), secret, algorithm="HS256"
        ),
        "huge": "a" * 10_000,
        # a token names an account at a generation, not just a username
        "no account (older format)": jwt.encode(claims(), secret, algorithm="HS256"),
        "another account": jwt.encode(mine(uid="0" * 32), secret, algorithm="HS256"),
        "other generation": jwt.encode(mine(gen=1), secret, algorithm="HS256"),
    }


async def test_bad_bearer_tokens(
    client: Client, settings: Settings, services: Services, tokens: dict[Role, str]
) -> None:
    # A token made with the server's own secret and claims is accepted (the test is fair) ...
    secret = server_secret(settings)
    good = jwt.encode(claims(uid=await admin_id(services), gen=0), secret, algorithm="HS256")
    ok(await client.bearer(good).get("/api/v1/tasks"))
    # ... and every broken one is refused.
    for name, token in (await bad_tokens(settings, services, tokens[Role.VIEWER])).items():
        reply = await client.bearer(token).get("/api/v1/users")
        assert reply.status == 401, (name, reply)
        error_of(reply, 401, "UNAUTHORIZED")
        reply = await client.bearer(token).post("/api/v1/tasks", {"name": "x"})
        assert reply.status == 401, (name, reply)
    assert success_body(await client.bearer(good).get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_malformed_authorization_header(client: Client) -> None:
    for authorization in ("Basic YWRtaW46cGFzc3dvcmQ=", "Bearer", "Bearer ", "Token abc", "abc",
                          "", "Digest x=1"):  # fmt: skip
        reply = await client.get("/api/v1/tasks", headers={"Authorization": authorization})
        assert reply.status == 401, (authorization, reply)
        error_of(reply, 401, "UNAUTHORIZED")


async def test_basic_auth_with_the_right_password_is_still_401(client: Client) -> None:
    basic = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    reply = await client.get("/api/v1/tasks", headers={"Authorization": f"Basic {basic}"})
    error_of(reply, 401, "UNAUTHORIZED")


async def test_bearer_scheme_is_case_insensitive(client: Client, tokens: dict[Role, str]) -> None:
    reply = await client.get(
        "/api/v1/tasks", headers={"Authorization": f"bearer {tokens[Role.ADMIN]}"}
    )
    ok(reply)


async def test_bad_api_key(client: Client) -> None:
    for key in ("", "nope", "dtq_0123456789abcdef_" + "A" * 43, "dtq_" + "x" * 100, "x" * 10_000):
        reply = await client.get("/api/v1/tasks", headers={"X-API-Key": key})
        assert reply.status == 401, (key[:40], reply)
        error_of(reply, 401, "UNAUTHORIZED")


async def test_api_key_with_a_wrong_secret(client: Client, keys: dict[Role, str]) -> None:
    good = keys[Role.ADMIN]
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    error_of(await client.api_key(forged).get("/api/v1/tasks"), 401, "UNAUTHORIZED")
    ok(await client.api_key(good).get("/api/v1/tasks"))


async def test_a_bad_api_key_is_not_rescued_by_a_good_token(
    client: Client, tokens: dict[Role, str]
) -> None:
    both = client.bearer(tokens[Role.ADMIN]).api_key("nope")
    error_of(await both.get("/api/v1/tasks"), 401, "UNAUTHORIZED")


# -- login --------------------------------------------------------------------------------------


async def test_login(client: Client) -> None:
    reply = await client.post(
        "/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD}
    )
    body = success_body(reply, 200)
    token = body["token"]  # at the top level, as the guide's `jq -r '.token'` reads it
    assert body["data"]["token"] == token
    assert body["data"]["token_type"] == "Bearer"
    assert body["data"]["role"] == "admin"
    assert body["data"]["expires_in"] > 0
    ok(await client.bearer(token).get("/api/v1/users"))


async def test_login_failures_are_401(client: Client) -> None:
    for username, password in [
        ("admin", "wrong-password"),
        ("admin", ADMIN_PASSWORD.upper()),
        ("nobody", ADMIN_PASSWORD),
        ("ADMIN", ADMIN_PASSWORD),
    ]:
        login = {"username": username, "password": password}
        reply = await client.post("/api/v1/auth/login", login)
        assert reply.status == 401, (login, reply)
        error = error_of(reply, 401, "UNAUTHORIZED")
        assert "token" not in reply.json
        assert error["message"] == "Invalid username or password"  # same for unknown users


async def test_bad_login_body_is_400(client: Client) -> None:
    for body in [
        {},
        {"username": "admin"},
        {"password": "x"},
        {"username": "", "password": "x"},
        {"username": "admin", "password": ADMIN_PASSWORD, "remember": True},
        {"username": 1, "password": 2},
    ]:
        reply = await client.post("/api/v1/auth/login", body)
        assert reply.status == 400, (body, reply)
        error_of(reply, 400, "INVALID_REQUEST")


# -- 403: you may not ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # may hold {task}, {worker}, {user}, {key}
    permission: Permission
    status: int = 200
    body: Any = None
    needs: str = (
        ""  # "task" | "leased" | "failed" | "worker" | "user" | "key" | "hook" | "schedule"
    )


LEASED_BODY = {"lease_id": "{lease}"}
HOOK = {"url": "https://93.184.215.14/hook", "events": ["task.completed"]}  # a public address
SCHEDULE = {"name": "s", "cron": "* * * * *", "task": {"name": "x"}}
CASES = [
    Case("GET", "/api/v1/tasks", Permission.TASKS_READ),
    Case("POST", "/api/v1/tasks", Permission.TASKS_CREATE, 201, {"name": "x"}),
    Case("POST", "/api/v1/tasks/batch", Permission.TASKS_CREATE, 201, {"tasks": [{"name": "x"}]}),
    Case("GET", "/api/v1/tasks/{task}", Permission.TASKS_READ, needs="task"),
    Case(
        "PUT",
        "/api/v1/tasks/{task}",
        Permission.TASKS_WRITE,
        body={"status": "cancelled"},
        needs="task",
    ),
    Case("DELETE", "/api/v1/tasks/{task}", Permission.TASKS_WRITE, 204, needs="task"),
    Case(
        "POST",
        "/api/v1/tasks/lease",
        Permission.TASKS_WORK,
        body={"worker_id": "w", "wait": 0},
        needs="task",
    ),
    Case(
        "POST",
        "/api/v1/tasks/ack",
        Permission.TASKS_WORK,
        body={"acks": [{"id": "{task}", "lease_id": "{lease}", "status": "completed"}]},
        needs="leased",
    ),
    Case(
        "POST",
        "/api/v1/tasks/{task}/complete",
        Permission.TASKS_WORK,
        body=LEASED_BODY,
        needs="leased",
    ),
    Case(
        "POST", "/api/v1/tasks/{task}/fail", Permission.TASKS_WORK, body=LEASED_BODY, needs="leased"
    ),
    Case(
        "POST",
        "/api/v1/tasks/{task}/extend",
        Permission.TASKS_WORK,
        body=LEASED_BODY,
        needs="leased",
    ),
    Case(
        "POST",
        "/api/v1/tasks/{task}/release",
        Permission.TASKS_WORK,
        body=LEASED_BODY,
        needs="leased",
    ),
    Case("GET", "/api/v1/workers", Permission.WORKERS_READ),
    Case("GET", "/api/v1/workers/status", Permission.WORKERS_READ),
    Case("GET", "/workers/status", Permission.WORKERS_READ),
    Case("GET", "/api/v1/workers/{worker}", Permission.WORKERS_READ, needs="worker"),
    Case(
        "POST",
        "/api/v1/workers/heartbeat",
        Permission.WORKERS_HEARTBEAT,
        body={"worker_id": "w9", "current_load": 1, "max_capacity": 2},
    ),
    Case("GET", "/api/v1/analytics/dashboard", Permission.ANALYTICS_READ),
    Case("GET", "/api/v1/analytics/trends", Permission.ANALYTICS_READ),
    Case("GET", "/api/v1/analytics/export", Permission.ANALYTICS_READ),
    Case("GET", "/api/v1/users", Permission.ADMIN),
    Case(
        "POST",
        "/api/v1/users",
        Permission.ADMIN,
        201,
        {"username": "carol", "password": "long-enough", "role": "viewer"},
    ),
    Case("PATCH", "/api/v1/users/{user}", Permission.ADMIN, body={"role": "worker"}, needs="user"),
    Case("DELETE", "/api/v1/users/{user}", Permission.ADMIN, 204, needs="user"),
    Case("GET", "/api/v1/api-keys", Permission.ADMIN),
    Case("POST", "/api/v1/api-keys", Permission.ADMIN, 201, {"name": "k", "role": "worker"}),
    Case("DELETE", "/api/v1/api-keys/{key}", Permission.ADMIN, 204, needs="key"),
    Case("GET", "/api/v1/webhooks", Permission.WEBHOOKS),
    Case("POST", "/api/v1/webhooks", Permission.WEBHOOKS, 201, HOOK),
    Case("GET", "/api/v1/webhooks/{hook}", Permission.WEBHOOKS, needs="hook"),
    Case("DELETE", "/api/v1/webhooks/{hook}", Permission.WEBHOOKS, 204, needs="hook"),
    Case("GET", "/api/v1/webhooks/{hook}/deliveries", Permission.WEBHOOKS, needs="hook"),
    Case("GET", "/api/v1/tasks/{task}/explain", Permission.TASKS_READ, needs="task"),
    Case("GET", "/api/v1/queues", Permission.QUEUES_READ),
    Case("GET", "/api/v1/queues/{queue}", Permission.QUEUES_READ, needs="task"),
    Case("PUT", "/api/v1/queues/{queue}", Permission.QUEUES_WRITE, body={"concurrency_limit": 9}),
    Case("POST", "/api/v1/queues/{queue}/pause", Permission.QUEUES_WRITE, needs="task"),
    Case("POST", "/api/v1/queues/{queue}/resume", Permission.QUEUES_WRITE, needs="task"),
    Case("POST", "/api/v1/queues/{queue}/purge", Permission.QUEUES_WRITE, needs="task"),
    # issue 12: history, redrive, schedules
    Case("GET", "/api/v1/tasks/{task}/events", Permission.TASKS_READ, needs="task"),
    Case("POST", "/api/v1/tasks/{task}/retry", Permission.TASKS_WRITE, needs="failed"),
    Case("POST", "/api/v1/tasks/retry", Permission.TASKS_WRITE, body={"status": "failed"}),
    Case("POST", "/api/v1/tasks/purge", Permission.TASKS_WRITE, body={"status": "cancelled"}),
    Case("GET", "/api/v1/schedules", Permission.TASKS_READ),
    Case("POST", "/api/v1/schedules", Permission.TASKS_WRITE, 201, SCHEDULE),
    Case("GET", "/api/v1/schedules/{schedule}", Permission.TASKS_READ, needs="schedule"),
    Case(
        "PUT",
        "/api/v1/schedules/{schedule}",
        Permission.TASKS_WRITE,
        body={"paused": True},
        needs="schedule",
    ),
    Case("DELETE", "/api/v1/schedules/{schedule}", Permission.TASKS_WRITE, 204, needs="schedule"),
    Case("POST", "/api/v1/schedules/{schedule}/trigger", Permission.TASKS_WRITE, needs="schedule"),
]


def werkzeug_rule(path: str) -> str:
    for name, param in (
        ("task", "task_id"),
        ("worker", "worker_id"),
        ("user", "username"),
        ("key", "key_id"),
        ("hook", "webhook_id"),
        ("queue", "name"),
        ("schedule", "name"),
    ):
        path = path.replace(f"{{{name}}}", f"<{param}>")
    return path


async def test_the_matrix_covers_every_route(app: QuartTrio) -> None:
    covered = {(c.method, werkzeug_rule(c.path)) for c in CASES}
    served = set(api_rules(app)) - {("POST", "/api/v1/auth/login")}
    assert served - covered == set(), "add the new routes to CASES"
    assert covered - served == {("GET", "/workers/status")}


Prepare = Callable[[], Awaitable[dict[str, str]]]


def preparer(
    admin: Client, services: Services, case: Case, n: int, leaser: Client | None = None
) -> Prepare:
    """`leaser` takes the lease a "leased" case acts on: only the lease's holder (or an admin)
    may act on it, so an allowed caller must have taken it itself."""

    async def prepare() -> dict[str, str]:
        values: dict[str, str] = {"queue": "default"}  # the queue tasks go to by default
        if case.needs in ("task", "leased"):
            values["task"] = (await create_task(admin, f"t{n}"))["id"]
        if case.needs == "leased":
            leased = await lease_one(leaser or admin, "w-prep")
            values["task"], values["lease"] = leased["id"], leased["lease"]["id"]
        if case.needs == "worker":
            ok(await admin.post("/api/v1/workers/heartbeat", {"worker_id": f"w{n}"}))
            values["worker"] = f"w{n}"
        if case.needs == "user":
            reply = await admin.post(
                "/api/v1/users", {"username": f"user{n}", "password": "long-enough"}
            )
            values["user"] = ok(reply, 201)["username"]
        if case.needs == "failed":
            task = await create_task(admin, f"t{n}", queue=f"failed{n}")
            got = await lease_one(admin, "w-prep", queues=[f"failed{n}"])
            body = {"lease_id": got["lease"]["id"], "error": "x", "retry": False}
            ok(await admin.post(f"/api/v1/tasks/{got['id']}/fail", body))
            values["task"] = task["id"]
        if case.needs == "schedule":
            reply = await admin.post("/api/v1/schedules", {**SCHEDULE, "name": f"sched{n}"})
            values["schedule"] = ok(reply, 201)["name"]
        if case.needs == "hook":
            values["hook"] = ok(await admin.post("/api/v1/webhooks", HOOK), 201)["id"]
        if case.needs == "key":
            values["key"] = ok(await admin.post("/api/v1/api-keys", {"name": f"k{n}"}), 201)[
                "key_id"
            ]
        return values

    return prepare


def render(template: Any, values: dict[str, str]) -> Any:
    text = json.dumps(template)
    for name, value in values.items():
        text = text.replace(f"{{{name}}}", value)
    return json.loads(text)


async def snapshot(admin: Client) -> list[Any]:
    paths = ("/api/v1/tasks?limit=100", "/api/v1/workers", "/api/v1/users", "/api/v1/api-keys",
             "/api/v1/webhooks")  # fmt: skip
    return [ok(await admin.get(p)) for p in paths]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
async def test_role_permissions(
    case: Case,
    client: Client,
    services: Services,
    tokens: dict[Role, str],
    keys: dict[Role, str],
) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    n = 0
    for role in ROLES:
        allowed = case.permission in ROLE_PERMISSIONS[role]
        for how, caller in (
            ("token", client.bearer(tokens[role])),
            ("key", client.api_key(keys[role])),
        ):
            n += 1
            values = await preparer(admin, services, case, n, caller if allowed else admin)()
            # each new call is a new resource, so creates get a fresh name
            body = render(case.body, values) if case.body is not None else None
            if isinstance(body, dict) and "name" in body:
                body["name"] = f"{body['name']}{n}"
            if isinstance(body, dict) and "username" in body:
                body["username"] = f"{body['username']}{n}"
            path = render(case.path, values)
            checked = not allowed and case.method != "GET"
            before = await snapshot(admin) if checked else None
            kw = {"json": body} if body is not None else {}
            reply = await caller.request(case.method, path, **kw)
            where = (role.value, how, case.method, path)
            if allowed:
                assert reply.status == case.status, (where, reply)
            else:
                assert reply.status == 403, (where, reply)
                error = error_of(reply, 403, "FORBIDDEN")
                assert error["details"]["required_permission"] == case.permission.value
                if checked:
                    assert await snapshot(admin) == before, where  # a 403 changes nothing


def test_the_role_table_matches_design() -> None:
    """DESIGN.md "Auth": what each role may do, in words."""
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    assert Permission.ADMIN not in ROLE_PERMISSIONS[Role.OPERATOR]
    assert ROLE_PERMISSIONS[Role.OPERATOR] | {Permission.ADMIN} == frozenset(Permission)
    worker = ROLE_PERMISSIONS[Role.WORKER]
    assert {Permission.TASKS_WORK, Permission.WORKERS_HEARTBEAT, Permission.TASKS_READ} <= worker
    assert Permission.TASKS_WRITE not in worker and Permission.ADMIN not in worker
    assert ROLE_PERMISSIONS[Role.VIEWER] == {
        Permission.TASKS_READ,
        Permission.WORKERS_READ,
        Permission.ANALYTICS_READ,
        Permission.QUEUES_READ,  # a queue's figures and limits; changing them is an operator's
    }


# -- admin: users ---------------------------------------------------------------------------------


async def test_users(admin: Client, client: Client) -> None:
    reply = await admin.post(
        "/api/v1/users", {"username": "bob", "password": "bobs-password", "role": "operator"}
    )
    user = ok(reply, 201)
    assert user["username"] == "bob"
    assert user["role"] == "operator"
    assert user["disabled"] is False
    assert "password" not in json.dumps(user)
    listed = ok(await admin.get("/api/v1/users"))
    assert {u["username"]: u["role"] for u in listed} == {"admin": "admin", "bob": "operator"}
    assert "password" not in json.dumps(listed)
    assert "hash" not in json.dumps(listed)

    login = await client.post(
        "/api/v1/auth/login", {"username": "bob", "password": "bobs-password"}
    )
    bob = client.bearer(ok(login)["token"])
    ok(await bob.get("/api/v1/analytics/dashboard"))
    error_of(await bob.get("/api/v1/users"), 403, "FORBIDDEN")

    error_of(
        await admin.post("/api/v1/users", {"username": "bob", "password": "other-password"}),
        409,
        "CONFLICT",
        field="username",
    )
    assert (await admin.delete("/api/v1/users/bob")).status == 204
    error_of(
        await client.post("/api/v1/auth/login", {"username": "bob", "password": "bobs-password"}),
        401,
        "UNAUTHORIZED",
    )
    error_of(await admin.delete("/api/v1/users/bob"), 404, "NOT_FOUND")
    assert [u["username"] for u in ok(await admin.get("/api/v1/users"))] == ["admin"]


async def test_a_deleted_users_token_stops_working(admin: Client, client: Client) -> None:
    body = {"username": "mallory", "password": "long-enough", "role": "admin"}
    ok(await admin.post("/api/v1/users", body), 201)
    login = {"username": "mallory", "password": "long-enough"}
    mallory = client.bearer(ok(await client.post("/api/v1/auth/login", login))["token"])
    ok(await mallory.get("/api/v1/users"))
    assert (await admin.delete("/api/v1/users/mallory")).status == 204
    error_of(await mallory.get("/api/v1/users"), 401, "UNAUTHORIZED")
    new_admin = {"username": "mallory2", "password": "long-enough", "role": "admin"}
    error_of(await mallory.post("/api/v1/users", new_admin), 401, "UNAUTHORIZED")
    assert [u["username"] for u in ok(await admin.get("/api/v1/users"))] == ["admin"]


async def test_a_token_never_carries_another_role(client: Client, services: Services) -> None:
    vic = await services.accounts.create_user(
        UserCreate(username="vic", password="long-enough", role=Role.VIEWER)
    )
    # a token claiming another role than the account has (it could only come from before a
    # role change, which also bumps the generation) is refused outright
    token = services.accounts.tokens.issue(
        "vic", Role.ADMIN, services.queue.clock.now(), account_id=vic.account_id, generation=0
    )
    for path in ("/api/v1/users", "/api/v1/tasks"):
        error_of(await client.bearer(token).get(path), 401, "UNAUTHORIZED", reason="token_revoked")
    ok(await client.bearer(services.accounts.issue_token(vic)).get("/api/v1/tasks"))


async def test_bad_user_body(admin: Client) -> None:
    for body, field in [
        ({"username": "eve", "password": "short"}, "password"),
        ({"username": "eve", "password": "long-enough", "role": "god"}, "role"),
        ({"username": "has space", "password": "long-enough"}, "username"),
        ({"username": "eve"}, "password"),
        ({"username": "eve", "password": "long-enough", "disabled": True}, "disabled"),
    ]:
        reply = await admin.post("/api/v1/users", body)
        assert reply.status == 400, (body, reply)
        error_of(reply, 400, "INVALID_REQUEST", field=field)
    assert [u["username"] for u in ok(await admin.get("/api/v1/users"))] == ["admin"]


async def test_delete_user_with_a_bad_name(admin: Client) -> None:
    error_of(
        await admin.delete("/api/v1/users/bad name!"), 400, "INVALID_REQUEST", field="username"
    )


# -- admin: API keys ------------------------------------------------------------------------------


async def test_api_keys(admin: Client, client: Client) -> None:
    reply = await admin.post("/api/v1/api-keys", {"name": "ci-worker", "role": "worker"})
    created = ok(reply, 201)
    key = created["key"]  # shown once
    assert isinstance(key, str) and key.startswith("dtq_")
    assert created["name"] == "ci-worker"
    assert created["role"] == "worker"
    key_id = created["key_id"]
    assert key_id in key

    worker = client.api_key(key)
    await create_task(admin)
    assert len(ok(await worker.post("/api/v1/tasks/lease", {"worker_id": "w", "wait": 0}))) == 1
    error_of(await worker.get("/api/v1/workers"), 403, "FORBIDDEN")

    listed = ok(await admin.get("/api/v1/api-keys"))
    assert [k["key_id"] for k in listed] == [key_id]
    assert "key" not in listed[0]
    assert key not in json.dumps(listed)
    secret = key.removeprefix(f"dtq_{key_id}_")  # base64url: may itself hold "_"
    assert len(secret) == 43 and secret not in json.dumps(listed)

    assert (await admin.delete(f"/api/v1/api-keys/{key_id}")).status == 204
    error_of(await worker.get("/api/v1/tasks"), 401, "UNAUTHORIZED")
    error_of(await admin.delete(f"/api/v1/api-keys/{key_id}"), 404, "NOT_FOUND")
    assert ok(await admin.get("/api/v1/api-keys")) == []


async def test_api_key_defaults_and_limits(admin: Client) -> None:
    created = ok(
        await admin.post(
            "/api/v1/api-keys", {"name": "n", "rate_limit_per_minute": 5, "rate_limit_per_hour": 50}
        ),
        201,
    )
    assert created["role"] == "worker"  # DESIGN.md: keys are mostly for workers
    assert created["rate_limit_per_minute"] == 5
    assert created["rate_limit_per_hour"] == 50


async def test_bad_api_key_body(admin: Client) -> None:
    for body in [
        {},
        {"name": ""},
        {"name": "n", "role": "owner"},
        {"name": "n", "rate_limit_per_minute": -1},
        {"name": "n", "rate_limit_per_hour": "many"},
        {"name": "n", "key": "mine"},
    ]:
        reply = await admin.post("/api/v1/api-keys", body)
        assert reply.status == 400, (body, reply)
        error_of(reply, 400, "INVALID_REQUEST")
    assert ok(await admin.get("/api/v1/api-keys")) == []
