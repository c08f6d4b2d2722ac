"""Webhook test kit (its fixtures, `server` and `fake_dns`, are in conftest.py): a receiver on 127.0.0.1, the server in process or as a process.

The receiver is a small HTTP/1.1 server on a plain trio socket (h11 for framing): it records
every request as it arrives and answers with whatever status the test's `respond` returns
(or never answers, to test timeouts). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import trio
from quart.typing import TestClientProtocol

from dtq.core.accounts import UserCreate
from dtq.core.auth import Role
from dtq.net.app import create_app
from dtq.net.routing import Services
from dtq.server import open_services
from dtq.settings import Durability, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "password"
BOUND_S = 10.0  # anything that should be quick; generous for a busy 2-core machine
FAST = {
    "webhook_backoff_base_s": 0.05,
    "webhook_backoff_max_s": 0.2,
    "webhook_max_attempts": 3,
    "webhook_timeout_s": 2.0,
}
# The receivers run on 127.0.0.1, which the target policy refuses by default: these tests opt
# in as a local setup does. Tests of the policy itself pass `webhook_allow_private_networks=False`.
LOCAL_RECEIVERS = {"webhook_allow_private_networks": True}


# --- the receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


# A status, or a status and extra response headers (e.g. a redirect's Location).
Reply = int | tuple[int, list[tuple[str, str]]]
Respond = Callable[[Received], Awaitable[Reply]]


async def always_200(request: Received) -> int:
    return 200


@dataclass
class Receiver:
    respond: Respond = always_200
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    connections: int = 0  # accepted, whether or not a request followed
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, done: Callable[[list[Received]], bool], within_s: float = BOUND_S):
        with trio.fail_after(within_s):
            while not done(self.requests):
                self._changed = trio.Event()
                await self._changed.wait()

    async def wait_count(self, n: int, within_s: float = BOUND_S) -> None:
        await self.wait_for(lambda seen: len(seen) >= n, within_s)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while await self._one_exchange(conn, stream):
                    conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                return  # the client gave up (e.g. its timeout)

    async def _one_exchange(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed or PAUSED
                return False
        assert request is not None
        received = Received(
            request.method.decode(),
            request.target.decode(),
            {k.decode().lower(): v.decode() for k, v in request.headers},
            body,
        )
        self.requests.append(received)
        self._changed.set()
        answer = await self.respond(received)
        status, extra = (answer, []) if isinstance(answer, int) else answer
        reply = b"" if status in (204, 304) else b'{"ok": true}'
        await stream.send_all(
            conn.send(h11.Response(status_code=status, headers=[
                ("Content-Type", "application/json"), ("Content-Length", str(len(reply))),
                *extra]))
            + conn.send(h11.Data(data=reply))
            + conn.send(h11.EndOfMessage())
        )  # fmt: skip
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


@asynccontextmanager
async def run_receiver(
    respond: Respond = always_200, *, sock: trio.socket.SocketType | None = None
) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (a fresh port, or `sock`, bound earlier) until the block exits."""
    receiver = Receiver(respond)
    if sock is None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    else:
        sock.listen(128)
        listeners = [trio.SocketListener(sock)]
    receiver.port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, receiver.handle, listeners)
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()


async def reserved_port() -> trio.socket.SocketType:
    """A socket bound to a free port but not listening: connections to it are refused until
    `run_receiver(sock=...)` starts listening, and no other process can take the port."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


# --- a fake DNS -------------------------------------------------------------------------------------


class FakeDNS(trio.abc.HostnameResolver):
    """trio's resolver hook: names in `answers` resolve to those addresses, others fail.

    Only names reach it (trio answers numeric hosts itself), so a test controls exactly what
    a webhook's host name resolves to, and can change it between registration and delivery.
    """

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None,
                          family: int = 0, type: int = 0, proto: int = 0,
                          flags: int = 0) -> list[Any]:  # fmt: skip
        name = (host or b"").decode().rstrip(".").lower()
        self.asked.append(name)
        if name not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        port_number = int(port or 0)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (a, port_number, 0, 0) if ":" in a else (a, port_number))
            for a in self.answers[name]
        ]  # fmt: skip

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError


# --- the server in process (Quart's test client in, real sockets out) ----------------------------


class Api:
    """Quart's test client with a bearer token; returns (status, JSON body)."""

    def __init__(self, raw: TestClientProtocol, token: str | None = None) -> None:
        self.raw = raw
        self.token = token

    def as_token(self, token: str | None) -> Api:
        return Api(self.raw, token)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kw: dict[str, Any] = {"method": method, "headers": headers}
        if body is not None:
            kw["json"] = body
        response = await self.raw.open(path, **kw)
        data = await response.get_data()
        return response.status_code, json.loads(data) if data else None

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, reply = await self.call(method, path, body)
        assert got == status, (method, path, got, reply)
        return reply["data"] if reply is not None else None

    async def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> Api:
        got, reply = await self.call(
            "POST", "/api/v1/auth/login", {"username": username, "password": password}
        )
        assert got == 200, reply
        return self.as_token(reply["token"])


@dataclass
class Server:
    services: Services
    anonymous: Api
    admin: Api

    async def as_role(self, role: Role) -> Api:
        name = f"{role.value}-user"
        await self.services.accounts.create_user(
            UserCreate(username=name, password="role-password", role=role)
        )
        return await self.anonymous.login(name, "role-password")

    async def wait_settled(self, webhook_id: str, n: int, within_s: float = BOUND_S) -> list[Any]:
        """The webhook's deliveries once `n` exist and none is pending any more."""
        with trio.fail_after(within_s):
            while True:
                rows = await self.admin.ok(
                    "GET", f"/api/v1/webhooks/{webhook_id}/deliveries?limit=100"
                )
                if len(rows) >= n and all(r["status"] != "pending" for r in rows):
                    return list(rows)
                await trio.sleep(0.02)  # polling the public API, bounded by fail_after


def server_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": str(data_dir),
        "admin_password": ADMIN_PASSWORD,
        "durability": Durability.OS,
        "rate_limit_per_minute": 0,
        "rate_limit_per_hour": 0,
        **FAST,
        **LOCAL_RECEIVERS,
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def in_process(data_dir: Path, **overrides: Any) -> AsyncIterator[Server]:
    async with open_services(server_settings(data_dir, **overrides)) as services:
        anonymous = Api(create_app(services).test_client())
        yield Server(services, anonymous, await anonymous.login())


# --- the server as a process (`python -m dtq.cli serve`), for kill -9 ----------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    process: trio.Process
    url: str
    log_path: Path

    def kill_9(self) -> None:
        self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def spawn_server(data_dir: Path, env: Mapping[str, str]) -> AsyncIterator[ServerProcess]:
    """`dtq serve` on 127.0.0.1 until /health answers; always killed when the block exits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = _free_port()
        log_path = data_dir.parent / f"server-{port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
        marker = f"webhooks-{secrets.token_hex(6)}"  # /info tells our server from another
        environ.update({"PYTHONUNBUFFERED": "1", "DTQ_ADMIN_PASSWORD": ADMIN_PASSWORD,
                        "DTQ_ENV": marker, "DTQ_RATE_LIMIT_PER_MINUTE": "0",
                        "DTQ_RATE_LIMIT_PER_HOUR": "0",
                        "DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", **env})  # fmt: skip
        args = [sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--data-dir", str(data_dir)]  # fmt: skip
        with open(log_path, "wb") as log_file:
            process = await trio.lowlevel.open_process(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env=environ, cwd=str(REPO_ROOT),
            )  # fmt: skip
        server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
        try:
            if await _serving(server, marker):
                yield server
                return
            if attempt == 4:
                raise AssertionError(f"dtq serve did not start:\n{log_path.read_text()}")
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(BOUND_S):
                    await process.wait()


async def _serving(server: ServerProcess, marker: str) -> bool:
    """True once /health answers; False if the process died (e.g. the port was taken) or the
    port belongs to another server."""
    async with httpx.AsyncClient(base_url=server.url, timeout=1.0) as client:
        with trio.fail_after(30):
            while server.process.poll() is None:
                try:
                    if (await client.get("/health")).status_code == 200:
                        info = (await client.get("/info")).json()
                        return bool(info.get("environment") == marker)
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)  # another process starting up: nothing to await
    return False
