"""Shared fixtures for tests/workers: a server in this process (`serve()` on 127.0.0.1:0), one
`dtq serve` process for the session, the worker module, and a per-test registry of processes that
are all killed when the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from dtq.core.auth import passwords
from dtq.server import serve
from dtq.settings import Durability, Settings

from .procs import ADMIN_PASSWORD, START_S, Processes, Server, write_worker_module


@dataclass
class SharedServer:
    server: Server
    admin_key: str
    worker_key: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding `tw_handlers.py`; workers run with it as their cwd."""
    return write_worker_module(tmp_path_factory.mktemp("worker-module"))


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """A real server for the session; tests keep apart by using their own queues."""
    base = tmp_path_factory.mktemp("shared-server")
    procs = Processes(base / "logs")
    try:
        server = Server(procs, base / "data").start()
        admin_key, worker_key = server.create_keys("admin", "worker")
        yield SharedServer(server, admin_key, worker_key)
    finally:
        procs.kill_all()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    registry = Processes(tmp_path / "logs")
    try:
        yield registry
    finally:
        registry.kill_all()


@pytest.fixture
def server_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for `server_url` (parametrize with `indirect=True` to change them)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def server_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_overrides: dict[str, Any]
) -> AsyncIterator[str]:
    """`serve()` in this trio run on 127.0.0.1:0 (rate limits off), stopped by its trigger."""
    # scrypt at production cost is ~40 ms a hash (far more on a busy machine); the server
    # behaves the same with a cheap one (as in tests/api).
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        admin_password=ADMIN_PASSWORD,
        durability=Durability.OS,
        rate_limit_per_minute=0,
        rate_limit_per_hour=0,
        **server_overrides,
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_S):
            host, port = await nursery.start(partial(serve, settings, shutdown_trigger=stop.wait))
        try:
            yield f"http://{host}:{port}"
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + START_S  # bounded shutdown
