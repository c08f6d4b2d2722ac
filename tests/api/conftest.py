"""Fixtures for the API tests: the real server (core, accounts, rate limiter, app) in process,
driven through Quart's test client, as `tests/api` users of the guide would see it.

Rate limits are off by default here so tests can make many requests; the rate-limit tests set
their own. A test changes settings with `@pytest.mark.parametrize("settings_overrides", [{...}])`.
Times: tests that need exact durations or expiries take pytest-trio's `mock_clock` (the core's
clock follows trio's, so time moves only when the test jumps it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from quart_trio import QuartTrio

from dtq.core.accounts import ApiKeyCreate, UserCreate
from dtq.core.auth import Role, passwords
from dtq.net.app import create_app
from dtq.net.routing import Services
from dtq.server import open_services, serve
from dtq.settings import Durability, Settings

from .helpers import SERVE_ADMIN_PASSWORD, SERVE_START_S, Client, ok
from .webhook_support import FakeDNS, in_process
from .webhook_support import Server as WebhookServer

ADMIN_PASSWORD = "password"
JWT_SECRET = "api-tests-jwt-secret-" + "x" * 43  # given, so no secret file is written (fsync)
ROLE_PASSWORD = "role-password"
ROLES = tuple(Role)


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """scrypt at production cost takes ~40 ms a hash; the API behaves the same with a cheap one."""
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture(params=["lmdb", "memory"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Every API test runs on both stores (the default LMDB, and `memory://`)."""
    return "memory://" if request.param == "memory" else ""


@pytest.fixture
def settings(tmp_path: Path, settings_overrides: dict[str, Any], store_url: str) -> Settings:
    kw: dict[str, Any] = {"rate_limit_per_minute": 0, "rate_limit_per_hour": 0}
    if store_url:
        kw["store"] = store_url
    kw.update(settings_overrides)
    return Settings(
        data_dir=str(tmp_path / "data"),
        admin_password=ADMIN_PASSWORD,
        jwt_secret=JWT_SECRET,
        durability=Durability.OS,
        **kw,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings) as svc:
        yield svc


@pytest.fixture
def app(services: Services) -> QuartTrio:
    return create_app(services)


@pytest.fixture
def client(app: QuartTrio) -> Client:
    """No credentials."""
    return Client(app.test_client())


async def login(client: Client, username: str, password: str) -> str:
    reply = await client.post("/api/v1/auth/login", {"username": username, "password": password})
    token: str = ok(reply)["token"]
    return token


@pytest.fixture
async def tokens(client: Client, services: Services) -> dict[Role, str]:
    """A bearer token per role, each from `POST /api/v1/auth/login`."""
    out = {Role.ADMIN: await login(client, "admin", ADMIN_PASSWORD)}
    for role in ROLES:
        if role is not Role.ADMIN:
            name = f"{role.value}-user"
            await services.accounts.create_user(
                UserCreate(username=name, password=ROLE_PASSWORD, role=role)
            )
            out[role] = await login(client, name, ROLE_PASSWORD)
    return out


@pytest.fixture
async def keys(services: Services) -> dict[Role, str]:
    """An API key per role."""
    out = {}
    for role in ROLES:
        _, full = await services.accounts.create_api_key(
            ApiKeyCreate(name=f"{role.value}-key", role=role), "test"
        )
        out[role] = full
    return out


@pytest.fixture
async def admin(client: Client) -> Client:
    """Logged in as the bootstrap admin."""
    return client.bearer(await login(client, "admin", ADMIN_PASSWORD))


# --- webhooks (the kit is webhook_support.py) ------------------------------------------------


@pytest.fixture
async def fake_dns() -> FakeDNS:
    """Installed for this test's trio run only (pytest-trio runs each test in its own)."""
    dns = FakeDNS({})
    trio.socket.set_custom_hostname_resolver(dns)
    return dns


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[WebhookServer]:
    """The server in process for the webhook tests (Quart's test client in, real sockets out)."""
    async with in_process(tmp_path / "data") as running:
        yield running


# --- a real `serve()` in this trio run, for the client SDK and the worker ---------------------


@pytest.fixture
def server_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for `server_url` (parametrize with `indirect=True` to change them)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def server_url(tmp_path: Path, server_overrides: dict[str, Any]) -> AsyncIterator[str]:
    """`serve()` in this trio run on 127.0.0.1:0 (rate limits off), stopped by its trigger."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        admin_password=SERVE_ADMIN_PASSWORD,
        durability=Durability.OS,
        rate_limit_per_minute=0,
        rate_limit_per_hour=0,
        **server_overrides,
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(SERVE_START_S):
            host, port = await nursery.start(partial(serve, settings, shutdown_trigger=stop.wait))
        try:
            yield f"http://{host}:{port}"
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + SERVE_START_S  # bounded shutdown
