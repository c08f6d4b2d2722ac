"""Rate limits (guide "Rate Limiting", DESIGN.md "Rate limits"): headers on every /api/v1
response, 429 RATE_LIMITED with Retry-After, per-key overrides, 0 turns a window off.

The limiter's windows are aligned to the wall-clock minute; the tests pin the limiter's `now`
to the middle of one, so a minute boundary never falls between two requests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dtq.core.accounts import UserCreate
from dtq.core.auth import Role
from dtq.net.routing import Services
from dtq.server import open_services
from dtq.settings import Settings

from .helpers import Client, error_of, ok

MINUTE = int(time.time()) // 60 * 60 + 60
NOW = MINUTE + 30.0  # pinned: the middle of a minute window, in the near future
MINUTE_RESET = MINUTE + 60
HOUR_RESET = (MINUTE // 3600 + 1) * 3600


@pytest.fixture
async def services(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    """The usual services, with the limiter's clock pinned to `NOW`."""
    async with open_services(settings) as svc:
        hit = svc.limiter.hit

        def pinned(identity: str, now: float, per_minute: int, per_hour: int) -> Any:
            return hit(identity, NOW, per_minute, per_hour)

        monkeypatch.setattr(svc.limiter, "hit", pinned)
        yield svc


@pytest.fixture
async def tokens(services: Services) -> dict[Role, str]:
    """Tokens made without logging in: a login is a rate-limited request itself."""
    out = {}
    for role in Role:
        name = "admin" if role is Role.ADMIN else f"{role.value}-user"
        if role is not Role.ADMIN:
            await services.accounts.create_user(
                UserCreate(username=name, password="role-password", role=role)
            )
        user = await services.accounts.get_user(name)
        assert user is not None
        out[role] = services.accounts.issue_token(user)
    return out


def limits(reply: Any) -> tuple[int, int, int]:
    h = reply.headers
    return int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]), int(h["X-RateLimit-Reset"])


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 100, "rate_limit_per_hour": 1000}]
)
async def test_default_limits_and_headers(client: Client, tokens: dict[Role, str]) -> None:
    # the guide's numbers: burst 100 per minute, 1000 per hour; the tighter window is reported
    admin = client.bearer(tokens[Role.ADMIN])
    first = await admin.get("/api/v1/tasks")
    assert limits(first) == (100, 99, MINUTE_RESET)
    second = await admin.get("/api/v1/tasks/not-a-uuid")  # an error counts and carries them too
    error_of(second, 400, "INVALID_REQUEST")
    assert limits(second) == (100, 98, MINUTE_RESET)
    missing = await admin.get("/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000")
    error_of(missing, 404, "NOT_FOUND")
    assert limits(missing)[1] == 97
    forbidden = await client.bearer(tokens[Role.VIEWER]).get("/api/v1/users")
    error_of(forbidden, 403, "FORBIDDEN")
    assert "X-RateLimit-Limit" in forbidden.headers
    anonymous = await client.get("/api/v1/tasks")
    error_of(anonymous, 401, "UNAUTHORIZED")
    assert limits(anonymous)[0] == 100


async def test_settings_defaults_match_the_guide() -> None:
    assert (Settings().rate_limit_per_minute, Settings().rate_limit_per_hour) == (100, 1000)


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_per_minute": 3}])
async def test_fourth_request_in_a_minute_is_429(client: Client, tokens: dict[Role, str]) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    for expected in (2, 1, 0):
        reply = await admin.get("/api/v1/tasks")
        ok(reply)
        assert limits(reply) == (3, expected, MINUTE_RESET)
    reply = await admin.get("/api/v1/tasks")
    error = error_of(reply, 429, "RATE_LIMITED")
    assert "3" in error["message"]
    assert reply.headers["Retry-After"] == "30"
    assert limits(reply) == (3, 0, MINUTE_RESET)
    # denied requests are not counted, and writes are refused too
    error_of(await admin.post("/api/v1/tasks", {"name": "x"}), 429, "RATE_LIMITED")
    # other callers have their own budget
    viewer = await client.bearer(tokens[Role.VIEWER]).get("/api/v1/tasks")
    ok(viewer)
    assert limits(viewer) == (3, 2, MINUTE_RESET)


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_per_minute": 3}])
async def test_429_is_before_auth_checks_and_open_endpoints_are_not_limited(
    client: Client,
) -> None:
    for _ in range(3):
        error_of(await client.get("/api/v1/tasks"), 401, "UNAUTHORIZED")
    reply = await client.get("/api/v1/tasks")
    error_of(reply, 429, "RATE_LIMITED")
    assert reply.headers["Retry-After"]
    for _ in range(5):
        assert (await client.get("/health")).status == 200


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 0, "rate_limit_per_hour": 2}]
)
async def test_hour_window(client: Client, tokens: dict[Role, str]) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    assert limits(await admin.get("/api/v1/tasks")) == (2, 1, HOUR_RESET)
    assert limits(await admin.get("/api/v1/tasks")) == (2, 0, HOUR_RESET)
    reply = await admin.get("/api/v1/tasks")
    error_of(reply, 429, "RATE_LIMITED")
    assert int(reply.headers["Retry-After"]) == HOUR_RESET - int(NOW)


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 3, "rate_limit_per_hour": 0}]
)
async def test_per_key_override(client: Client, tokens: dict[Role, str]) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    created = ok(
        await admin.post(
            "/api/v1/api-keys", {"name": "fast", "role": "worker", "rate_limit_per_minute": 5}
        ),
        201,
    )
    fast = client.api_key(created["key"])
    for expected in (4, 3, 2, 1, 0):
        reply = await fast.post("/api/v1/tasks/lease", {"worker_id": "w", "wait": 0})
        ok(reply)
        assert limits(reply) == (5, expected, MINUTE_RESET)
    error_of(await fast.get("/api/v1/tasks"), 429, "RATE_LIMITED")
    # the admin's own budget (the global 3; one used to create the key) is separate
    assert limits(await admin.get("/api/v1/tasks"))[:2] == (3, 1)


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 3, "rate_limit_per_hour": 0}]
)
async def test_per_key_zero_means_unlimited(client: Client, tokens: dict[Role, str]) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    created = ok(
        await admin.post("/api/v1/api-keys", {"name": "unlimited", "rate_limit_per_minute": 0}), 201
    )
    key = client.api_key(created["key"])
    for _ in range(10):
        reply = await key.get("/api/v1/tasks")
        ok(reply)
        assert "X-RateLimit-Limit" not in reply.headers


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 0, "rate_limit_per_hour": 0}]
)
async def test_zero_disables(client: Client, tokens: dict[Role, str]) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    for _ in range(150):
        reply = await admin.get("/api/v1/tasks")
        ok(reply)
        assert "X-RateLimit-Limit" not in reply.headers
        assert "Retry-After" not in reply.headers


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_per_minute": 3}])
async def test_bad_credentials_are_limited_like_none(client: Client) -> None:
    """Guessing API keys or tokens is rate-limited per client address, with the headers."""
    for expected, headers in zip(
        (2, 1, 0),
        ({"X-API-Key": "nope"}, {"Authorization": "Bearer abc"}, {"Authorization": "Basic x"}),
        strict=True,
    ):
        reply = await client.get("/api/v1/tasks", headers=headers)
        error_of(reply, 401, "UNAUTHORIZED")
        assert limits(reply) == (3, expected, MINUTE_RESET)
    valid_looking = "dtq_0123456789abcdef_" + "A" * 43
    reply = await client.get("/api/v1/tasks", headers={"X-API-Key": valid_looking})
    error_of(reply, 429, "RATE_LIMITED")
    assert reply.headers["Retry-After"] == "30"
    error_of(await client.get("/api/v1/tasks"), 429, "RATE_LIMITED")  # same address


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_per_minute": 3, "rate_limit_per_hour": 0}]
)
async def test_unknown_api_routes_are_counted_and_carry_the_headers(
    client: Client, tokens: dict[Role, str]
) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    ok(await admin.get("/api/v1/tasks"))
    missing = await admin.get("/api/v1/no-such-thing")
    error_of(missing, 404, "NOT_FOUND")
    assert limits(missing)[:2] == (3, 1)  # charged to the same caller as its other requests
    wrong_method = await admin.request("PATCH", "/api/v1/tasks")
    error_of(wrong_method, 405, "INVALID_REQUEST")
    assert limits(wrong_method)[:2] == (3, 0)
    error_of(await admin.get("/api/v1/no-such-thing"), 429, "RATE_LIMITED")


GUIDE_LIMITS = {"rate_limit_per_minute": 100, "rate_limit_per_hour": 1000}


@pytest.mark.parametrize("settings_overrides", [GUIDE_LIMITS])
async def test_worker_keys_are_not_throttled_by_the_limits_for_api_clients(
    client: Client, keys: dict[Role, str]
) -> None:
    """An idle worker polls and heartbeats all day: 2,000 requests, not one 429."""
    worker = client.api_key(keys[Role.WORKER])
    for i in range(2000):
        if i % 2:
            reply = await worker.post("/api/v1/workers/heartbeat", {"worker_id": "w1"})
        else:
            reply = await worker.post("/api/v1/tasks/lease", {"worker_id": "w1", "wait": 0})
        assert reply.status == 200, (i, reply.status)
    # every other key keeps the guide's 100 a minute
    operator = client.api_key(keys[Role.OPERATOR])
    for _ in range(100):
        ok(await operator.get("/api/v1/tasks"))
    error_of(await operator.get("/api/v1/tasks"), 429, "RATE_LIMITED")


@pytest.mark.parametrize(
    "settings_overrides", [{**GUIDE_LIMITS, "worker_rate_limit_per_minute": 5}]
)
async def test_worker_limits_have_their_own_settings(client: Client, keys: dict[Role, str]) -> None:
    worker = client.api_key(keys[Role.WORKER])
    for expected in (4, 3, 2, 1, 0):
        reply = await worker.post("/api/v1/workers/heartbeat", {"worker_id": "w1"})
        assert reply.status == 200
        assert limits(reply) == (5, expected, MINUTE_RESET)
    error_of(
        await worker.post("/api/v1/workers/heartbeat", {"worker_id": "w1"}), 429, "RATE_LIMITED"
    )


async def test_worker_limit_defaults_are_off() -> None:
    settings = Settings()
    assert (settings.worker_rate_limit_per_minute, settings.worker_rate_limit_per_hour) == (0, 0)
