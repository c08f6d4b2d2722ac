"""Fixtures for the end-to-end tests: real servers on 127.0.0.1, real sockets, real clients.

Two ways to run a server:

- in process: `serve(settings)` in a nursery on port 0, stopped by a `trio.Event` the test
  controls (`running_server`, or the `server` fixture). Cheap; lets a test use
  `trio.testing.wait_all_tasks_blocked()` to know that a request has reached its resting point.
- as a process: `python -m dtq.cli serve` exactly as a user starts it (`spawn_server`), for
  signals, `kill -9`, restarts and settings that only come from the environment. The process is
  always killed when the block exits, whatever happened.

Everything is bounded: every wait has a `trio.fail_after`, every loop a maximum count.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import wsproto
import wsproto.events as wsevents

from dtq.server import serve
from dtq.settings import Settings

from . import procs as worker_procs

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "password"  # the API guide's example logs in with admin / password
BOUND_S = 5.0  # upper bound for anything that should be quick; generous for a noisy CI machine
START_S = 20.0  # upper bound for a server process to start answering /health
HTTP_TIMEOUT = httpx.Timeout(30.0)  # longer than any long-poll a test makes


# --- in-process server -------------------------------------------------------------------------


@dataclass
class InProcessServer:
    """A `serve()` running in the test's nursery; `stop` is its shutdown trigger."""

    url: str
    port: int
    settings: Settings
    stop: trio.Event = field(default_factory=trio.Event)
    stopped: trio.Event = field(default_factory=trio.Event)

    async def shut_down(self, within_s: float = BOUND_S) -> None:
        self.stop.set()
        with trio.fail_after(within_s):
            await self.stopped.wait()

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=HTTP_TIMEOUT, **kwargs)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything in tests/e2e starts real servers or processes: marked `e2e`, each file or not."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.e2e)


def e2e_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": str(data_dir),
        "admin_password": ADMIN_PASSWORD,
        # The tests send more than the default 100 requests a minute from one identity.
        "rate_limit_per_minute": 0,
        "rate_limit_per_hour": 0,
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def running_server(data_dir: Path, **overrides: Any) -> AsyncIterator[InProcessServer]:
    """`serve()` on 127.0.0.1:0 until the block exits (then a graceful, bounded shutdown)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = e2e_settings(data_dir, **overrides)
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        try:
            await serve(settings, task_status=task_status, shutdown_trigger=stop.wait)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_S):
            host, port = await nursery.start(run)
        assert host == "127.0.0.1"
        server = InProcessServer(f"http://{host}:{port}", port, settings, stop, stopped)
        try:
            yield server
        finally:
            stop.set()
            with trio.CancelScope(shield=True), trio.move_on_after(BOUND_S * 2) as waited:
                await stopped.wait()
            if waited.cancelled_caught:
                nursery.cancel_scope.cancel()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[InProcessServer]:
    async with running_server(tmp_path / "data") as running:
        yield running


async def login(client: httpx.AsyncClient, password: str = ADMIN_PASSWORD) -> str:
    """The admin's bearer token (the guide's `POST /api/v1/auth/login`)."""
    response = await client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": password}
    )
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert isinstance(token, str) and token
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- server process ------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it, close). Callers retry on a clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any DTQ_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """`dtq serve` in a child process. `url` is where it answers."""

    process: trio.Process
    port: int
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=HTTP_TIMEOUT, **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines (DTQ_LOG_FORMAT=json) written so far."""
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    async def terminate(self, within_s: float = BOUND_S) -> int:
        """SIGTERM, then wait (bounded) for the process to exit; returns its exit code."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(within_s):
            return await self.process.wait()

    async def kill_9(self) -> int:
        self.process.kill()  # SIGKILL
        with trio.fail_after(BOUND_S):
            return await self.process.wait()


class _PortTaken(Exception):
    pass


async def _wait_until_serving(server: ServerProcess, marker: str, deadline_s: float) -> None:
    """Poll /health (with a deadline) until it answers; then make sure it is *our* server.

    `marker` was passed as DTQ_ENV, which /info reports as `environment`: a server of another
    test that happens to own the port would answer /health too.
    """
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(1.0)) as client:
        with trio.fail_after(deadline_s):
            while True:
                if server.process.poll() is not None:
                    log = server.log_text()
                    if "in use" in log.lower():
                        raise _PortTaken(log)
                    raise AssertionError(
                        f"dtq serve exited with {server.process.returncode} before answering "
                        f"/health; its log:\n{log}"
                    )
                try:
                    health = await client.get("/health")
                except httpx.TransportError:
                    await trio.sleep(0.05)  # not listening yet: process start-up is not an event
                    continue
                if health.status_code == 200:
                    break
                await trio.sleep(0.05)
            info = (await client.get("/info")).json()
            if info.get("environment") != marker:
                raise _PortTaken(f"port {server.port} answered with {info}")


@asynccontextmanager
async def spawn_server(
    data_dir: Path, env: Mapping[str, str] | None = None, *, attempts: int = 5
) -> AsyncIterator[ServerProcess]:
    """`python -m dtq.cli serve --host 127.0.0.1 --port <free> --data-dir <data_dir>`.

    Yields once /health answers. The process is killed (SIGKILL) when the block exits if it is
    still running, so no test leaves a server behind.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        port = free_port()
        marker = f"test-e2e-{secrets.token_hex(6)}"  # a test env: test clocks allowed
        log_path = data_dir.parent / f"server-{data_dir.name}-{port}-{marker}.log"
        environ = clean_environ(
            {
                "DTQ_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "DTQ_LOG_FORMAT": "json",
                "DTQ_ENV": marker,
                **(env or {}),
            }
        )
        args = [
            sys.executable, "-m", "dtq.cli", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
        ]  # fmt: skip
        with open(log_path, "wb") as log_file:
            process = await trio.lowlevel.open_process(
                args, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=log_file, env=environ, cwd=str(REPO_ROOT),
            )  # fmt: skip
        server = ServerProcess(process, port, data_dir, log_path)
        try:
            try:
                await _wait_until_serving(server, marker, START_S)
            except _PortTaken:
                if attempt == attempts:
                    raise
                continue  # finally kills this one; try another port
            yield server
            return
        finally:
            await _reap(process)
    raise AssertionError("unreachable")


async def _reap(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(BOUND_S * 2):
            await process.wait()


async def run_cli(*args: str, env: Mapping[str, str] | None = None) -> str:
    """`python -m dtq.cli ARGS`; returns stdout, fails the test on a non-zero exit."""
    with trio.fail_after(BOUND_S * 4):
        result = await trio.run_process(
            [sys.executable, "-m", "dtq.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_environ(env or {}),
            cwd=str(REPO_ROOT),
        )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.decode()


# --- one raw HTTP/1.1 connection -------------------------------------------------------------


class RawConnection:
    """One HTTP/1.1 connection on a plain trio socket, h11 for framing.

    Unlike httpx, it shows exactly when the request has been written and when the server
    closes the connection (EOF), which the keep-alive and shutdown tests need to see.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @property
    def local_port(self) -> int:
        port: int = self.stream.socket.getsockname()[1]
        return port

    async def send_request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        request_headers = [("Host", "127.0.0.1"), *(headers or {}).items()]
        if body is not None:
            request_headers += [("Content-Type", "application/json")]
        request_headers += [("Content-Length", str(len(data)))]
        await self.stream.send_all(
            self.h11.send(h11.Request(method=method, target=path, headers=request_headers))
            + self.h11.send(h11.Data(data=data))
            + self.h11.send(h11.EndOfMessage())
        )

    async def read_response(self) -> tuple[int, bytes]:
        status: int | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert status is not None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return status, body
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the server closed the connection without a response")

    async def request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        await self.send_request(method, path, body, headers)
        return await self.read_response()

    async def wait_closed_by_server(self) -> None:
        """Returns at the server's EOF; fails if the server sends anything else instead."""
        data = await self.stream.receive_some(65536)
        assert data == b"", f"expected EOF from the server, got {data!r}"


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[RawConnection]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        yield RawConnection(stream)


class RawWebSocket:
    """A client WebSocket on a plain trio socket, wsproto for framing.

    (trio-websocket 0.12.2 never closes its TCP stream when the server closes first, which
    leaks a socket and, with warnings as errors, fails whichever test is running when it is
    garbage-collected.)
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    async def next_event(self) -> wsproto.events.Event | None:
        """The next event from the server; None at EOF."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            if not data:
                for event in self.ws.events():
                    return event
                return None

    async def open(self, target: str) -> None:
        await self.stream.send_all(self.ws.send(wsevents.Request(host="127.0.0.1", target=target)))
        event = await self.next_event()
        assert isinstance(event, wsevents.AcceptConnection), event

    async def wait_closed_by_server(self) -> int:
        """Reads until the server's close frame, answers it; returns the close code."""
        for _ in range(10_000):
            event = await self.next_event()
            assert event is not None, "EOF without a close frame"
            if isinstance(event, wsevents.CloseConnection):
                await self.stream.send_all(self.ws.send(event.response()))
                return event.code
        raise AssertionError("no close frame")


@asynccontextmanager
async def raw_websocket(port: int, target: str) -> AsyncIterator[RawWebSocket]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        ws = RawWebSocket(stream)
        await ws.open(target)
        yield ws


# --- the server side of a connection, seen from outside (Linux) ----------------------------------


def _server_receive_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet on the connection from `client_port` (Linux only).

    From /proc/net/tcp: the server's socket has local port `server_port` and remote port
    `client_port`; its `rx_queue` is what the kernel holds for the server process to read.
    None when that cannot be known (no /proc, or the socket is not listed).
    """
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == server_port and (
            int(remote.split(":")[1], 16) == client_port
        ):
            return int(queues.split(":")[1], 16)
    return None


async def wait_until_server_has_read(server_port: int, client_port: int) -> None:
    """After `send_request` returned: wait (bounded) until the server process has read it.

    Once hypercorn has read a request it is in flight: shutdown lets it finish instead of
    closing the connection as idle. Without /proc (not Linux) this returns at once.
    """
    with trio.fail_after(BOUND_S):
        for _ in range(10_000):
            pending = _server_receive_queue(server_port, client_port)
            if not pending:
                return
            await trio.sleep(0.005)  # another process's socket buffer: nothing to await


# --- `dtq serve` and `dtq worker` processes (the kit is procs.py) -----------------------------


@dataclass
class SharedServer:
    server: worker_procs.Server
    admin_key: str
    worker_key: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def worker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding `tw_handlers.py`; workers run with it as their cwd."""
    return worker_procs.write_worker_module(tmp_path_factory.mktemp("worker-module"))


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedServer]:
    """A real server for the session; tests keep apart by using their own queues."""
    base = tmp_path_factory.mktemp("shared-server")
    registry = worker_procs.Processes(base / "logs")
    try:
        server = worker_procs.Server(registry, base / "data").start()
        admin_key, worker_key = server.create_keys("admin", "worker")
        yield SharedServer(server, admin_key, worker_key)
    finally:
        registry.kill_all()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[worker_procs.Processes]:
    """A per-test registry of processes, all killed when the test ends."""
    registry = worker_procs.Processes(tmp_path / "logs")
    try:
        yield registry
    finally:
        registry.kill_all()
