"""serve_app over real sockets on 127.0.0.1: keep-alive, graceful shutdown, signals, proxies.

The keep-alive and shutdown tests guard the hypercorn + quart-trio fix in dtq.net.serve
(stack-findings trap 1); `test_canary_without_the_patch_the_trap_is_back` shows that they fail
without it, and will tell us once a new hypercorn no longer needs it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio
import trio.testing
from quart import request
from quart_trio import QuartTrio

from dtq.net.serve import (
    BoundAddress,
    FinishRequestBody,
    ForwardedForMiddleware,
    apply_hypercorn_patch,
    hypercorn_config,
    remove_hypercorn_patch,
    serve_app,
    shutdown_on_signals,
)
from dtq.settings import Settings

BOUND_S = 3.0  # upper bound for anything that should be quick; generous for a noisy machine


@dataclass
class Gates:
    """Lets a test hold /slow in flight: the handler sets `started`, then waits for `release`."""

    started: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)


def make_app(gates: Gates) -> QuartTrio:
    app = QuartTrio("dtq-test-serving")

    @app.get("/")
    async def index() -> str:
        return "ok"

    @app.get("/slow")
    async def slow() -> str:
        gates.started.set()
        await gates.release.wait()
        return "done"

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        return {"remote_addr": request.remote_addr, "scheme": request.scheme}

    return app


@dataclass
class Server:
    address: BoundAddress
    stop: trio.Event
    stopped: trio.Event

    async def shut_down(self, within_s: float = BOUND_S) -> None:
        self.stop.set()
        with trio.fail_after(within_s):
            await self.stopped.wait()


@asynccontextmanager
async def running(
    app: QuartTrio,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    **overrides: Any,
) -> AsyncIterator[Server]:
    settings = Settings(**{"host": "127.0.0.1", "port": 0, "graceful_timeout_s": 2.0, **overrides})
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[BoundAddress]) -> None:
        try:
            await serve_app(
                app,
                settings,
                shutdown_trigger=shutdown_trigger or stop.wait,
                task_status=task_status,
            )
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        address = await nursery.start(run)
        yield Server(address, stop, stopped)
        stop.set()


class Client:
    """One HTTP/1.1 connection on a raw trio socket (h11 does the framing), so EOF is visible."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.body = b""  # of the last response

    async def get(self, path: str, headers: list[tuple[str, str]] | None = None) -> h11.Response:
        request_headers = [("Host", "test"), *(headers or [])]
        await self.stream.send_all(
            self.h11.send(h11.Request(method="GET", target=path, headers=request_headers))
            + self.h11.send(h11.EndOfMessage())
        )
        self.body = b""
        response: h11.Response | None = None
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the server closed the connection before responding")

    async def wait_closed_by_server(self) -> None:
        assert await self.stream.receive_some(65536) == b""


@asynccontextmanager
async def connect(address: BoundAddress) -> AsyncIterator[Client]:
    async with await trio.open_tcp_stream(address.host, address.port) as stream:
        yield Client(stream)


@contextmanager
def hypercorn_unpatched() -> Iterator[None]:
    remove_hypercorn_patch()
    try:
        yield
    finally:
        apply_hypercorn_patch()


# --- the trap-1 fix ----------------------------------------------------------------------------


async def check_idle_connection_is_closed(keep_alive_timeout_s: float, within_s: float) -> None:
    app = make_app(Gates())
    async with (
        running(app, keep_alive_timeout_s=keep_alive_timeout_s) as server,
        connect(server.address) as client,
    ):
        response = await client.get("/")
        assert response.status_code == 200
        assert client.body == b"ok"
        with trio.fail_after(within_s):
            await client.wait_closed_by_server()


async def check_shutdown_with_idle_connection(graceful_timeout_s: float, within_s: float) -> float:
    """How long the shutdown took (trio clock); fails if longer than `within_s`."""
    app = make_app(Gates())
    async with (
        running(app, graceful_timeout_s=graceful_timeout_s, keep_alive_timeout_s=60.0) as server,
        connect(server.address) as client,
    ):
        assert (await client.get("/")).status_code == 200
        await trio.testing.wait_all_tasks_blocked()  # the server has gone idle
        start = trio.current_time()
        await server.shut_down(within_s=within_s)
        with trio.fail_after(within_s):
            await client.wait_closed_by_server()
        return trio.current_time() - start


async def test_idle_keep_alive_connection_closed_after_keep_alive_timeout() -> None:
    await check_idle_connection_is_closed(keep_alive_timeout_s=0.5, within_s=BOUND_S)


async def test_shutdown_with_idle_keep_alive_connection_is_quick() -> None:
    await check_shutdown_with_idle_connection(graceful_timeout_s=10.0, within_s=BOUND_S)


async def test_in_flight_request_finishes_during_graceful_shutdown() -> None:
    gates = Gates()
    async with running(make_app(gates), graceful_timeout_s=10.0) as server:
        async with connect(server.address) as client, trio.open_nursery() as nursery:
            result: list[h11.Response] = []

            async def slow_request() -> None:
                result.append(await client.get("/slow"))

            nursery.start_soon(slow_request)
            with trio.fail_after(BOUND_S):
                await gates.started.wait()
            server.stop.set()
            await trio.testing.wait_all_tasks_blocked()  # shutdown has begun, /slow is waiting
            assert not server.stopped.is_set()
            gates.release.set()
            with trio.fail_after(BOUND_S):
                await server.stopped.wait()
        assert result[0].status_code == 200
        assert client.body == b"done"


async def test_peer_that_closes_is_let_go_at_once() -> None:
    # hypercorn alone kept such a connection (CLOSE_WAIT) until keep_alive_timeout.
    async with (
        running(make_app(Gates()), keep_alive_timeout_s=60.0) as server,
        connect(server.address) as client,
    ):
        assert (await client.get("/")).status_code == 200
        await trio.testing.wait_all_tasks_blocked()  # the server has gone idle
        await client.stream.send_eof()
        with trio.fail_after(BOUND_S):
            await client.wait_closed_by_server()


async def test_canary_without_the_patch_the_trap_is_back() -> None:
    """If this fails, hypercorn/quart-trio no longer need dtq's patch: consider removing it."""
    with hypercorn_unpatched():
        # The idle keep-alive connection is never closed ...
        with pytest.RaisesGroup(trio.TooSlowError):
            await check_idle_connection_is_closed(keep_alive_timeout_s=0.2, within_s=0.6)
        # ... so shutdown waits until graceful_timeout runs out and cancels the connection.
        took_s = await check_shutdown_with_idle_connection(graceful_timeout_s=0.5, within_s=BOUND_S)
        assert took_s >= 0.5


# --- serve_app ---------------------------------------------------------------------------------


async def test_port_zero_reports_the_bound_address() -> None:
    async with running(make_app(Gates())) as server:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port > 0
        assert server.address.url() == f"http://127.0.0.1:{port}"
        await server.shut_down()


async def test_shutdown_on_signals_stops_the_server() -> None:
    async with running(make_app(Gates()), shutdown_trigger=shutdown_on_signals()) as server:
        await trio.testing.wait_all_tasks_blocked()  # the trigger is waiting for signals
        signal.raise_signal(signal.SIGINT)
        with trio.fail_after(BOUND_S):
            await server.stopped.wait()


async def test_forwarded_for_trusted_over_real_socket() -> None:
    async with running(make_app(Gates()), forwarded_allow_ips=("127.0.0.1",)) as server:
        async with connect(server.address) as client:
            response = await client.get(
                "/whoami",
                [("X-Forwarded-For", "203.0.113.7, 127.0.0.1"), ("X-Forwarded-Proto", "https")],
            )
            assert response.status_code == 200
            assert client.body == b'{"remote_addr":"203.0.113.7","scheme":"https"}\n'
        await server.shut_down()


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="certfile and keyfile"):
        hypercorn_config(Settings(certfile="cert.pem"))


def test_config_from_settings() -> None:
    config = hypercorn_config(
        Settings(host="::1", port=8080, backlog=2048, keep_alive_timeout_s=7.0)
    )
    assert config.bind == ["[::1]:8080"]
    assert config.backlog == 2048
    assert config.keep_alive_timeout == 7.0
    assert config.accesslog is None


# --- ForwardedForMiddleware, without sockets ---------------------------------------------------


async def forwarded_scope(trusted: tuple[str, ...], peer: str, **headers: str) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {
        "type": "http",
        "client": (peer, 50000),
        "scheme": "http",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }
    await ForwardedForMiddleware(app, trusted)(scope, None, None)  # type: ignore[arg-type]
    return seen[0]


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "client"),
    [
        (("10.0.0.1",), "10.0.0.1", "203.0.113.7", "203.0.113.7"),
        (("10.0.0.1",), "192.0.2.1", "203.0.113.7", "192.0.2.1"),  # untrusted peer: ignored
        (("10.0.0.0/8",), "10.1.2.3", "203.0.113.7, 10.9.9.9", "203.0.113.7"),  # chain
        (("10.0.0.0/8",), "10.1.2.3", "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # spoofed head
        (("*",), "192.0.2.1", "203.0.113.7:4711", "203.0.113.7"),
        (("::1",), "::1", "[2001:db8::1]:4711", "2001:db8::1"),
    ],
)
async def test_forwarded_for(
    trusted: tuple[str, ...], peer: str, forwarded_for: str, client: str
) -> None:
    scope = await forwarded_scope(trusted, peer, x_forwarded_for=forwarded_for)
    assert scope["client"][0] == client


async def test_forwarded_proto_only_from_trusted_peer() -> None:
    trusted = await forwarded_scope(("10.0.0.1",), "10.0.0.1", x_forwarded_proto="https")
    untrusted = await forwarded_scope(("10.0.0.1",), "10.0.0.2", x_forwarded_proto="https")
    assert (trusted["scheme"], untrusted["scheme"]) == ("https", "http")


# --- FinishRequestBody, without sockets --------------------------------------------------------


async def answer_early(body_messages: list[dict[str, Any]], **headers: str) -> list[Any]:
    """Run an app that answers without reading the body, while the 'client' delivers
    `body_messages` (then nothing); returns the response start's headers."""
    sent: list[Any] = []
    send_body, receive_body = trio.open_memory_channel[dict[str, Any]](len(body_messages) or 1)
    for message in body_messages:
        send_body.send_nowait(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with trio.open_nursery() as nursery:

            async def read_all() -> None:  # Quart reads the body in a task of its own, too
                while (await receive())["type"] == "http.request":
                    pass

            nursery.start_soon(read_all)
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no", "more_body": False})
            nursery.cancel_scope.cancel()

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(k.replace("_", "-").encode(), v.encode())
                                         for k, v in headers.items()]}  # fmt: skip
    await FinishRequestBody(app, max_body_bytes=100, wait_s=5.0)(
        scope,  # type: ignore[arg-type]
        receive_body.receive,
        send,
    )
    return list(sent[0]["headers"])


async def test_early_answer_waits_for_the_body_and_keeps_the_connection() -> None:
    headers = await answer_early(
        [{"type": "http.request", "body": b"x" * 60, "more_body": True},
         {"type": "http.request", "body": b"x" * 40, "more_body": False}],
        content_length="100",
    )  # fmt: skip
    assert headers == []


async def test_early_answer_to_a_body_too_large_says_connection_close() -> None:
    declared = await answer_early([], content_length="101")
    counted = await answer_early(
        [{"type": "http.request", "body": b"x" * 101, "more_body": True}],
        transfer_encoding="chunked",
    )
    assert declared == counted == [(b"connection", b"close")]


async def test_early_answer_to_a_body_that_stalls_says_connection_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    headers = await answer_early(
        [{"type": "http.request", "body": b"x", "more_body": True}], content_length="100"
    )
    assert headers == [(b"connection", b"close")]
    assert trio.current_time() - start == pytest.approx(5.0)


# --- hypercorn's own refusals in the guide's error format ----------------------------------------


async def raw_exchange(address: BoundAddress, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes, read one response (h11 as client parses it), check the JSON error body."""
    async with await trio.open_tcp_stream(address.host, address.port) as stream:
        await stream.send_all(request)
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "test")]))
        client.send(h11.EndOfMessage())  # h11 wants to have sent a request before a response
        response: h11.Response | None = None
        body = b""
        with trio.fail_after(BOUND_S):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        assert response is not None
        headers = dict(response.headers)
        assert headers[b"content-type"] == b"application/json"
        assert headers[b"connection"] == b"close"
        error = json.loads(body)
        assert error["status"] == "error"
        assert error["timestamp"].endswith("Z")
        assert set(error["error"]) == {"code", "message", "details"}
        return response.status_code, error["error"]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431,
         "INVALID_REQUEST", "too large"),
        (b"GET / HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n", 400, "INVALID_REQUEST",
         "malformed request"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "INVALID_REQUEST", "malformed request"),
        (b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
         "INVALID_REQUEST", "not supported"),
    ],
    ids=["431-huge-header", "400-bad-header", "400-bad-request-line", "501-transfer-encoding"],
)  # fmt: skip
async def test_protocol_refusals_carry_the_guides_error(
    request_bytes: bytes, status: int, code: str, reason: str
) -> None:
    async with running(make_app(Gates())) as server:
        got, error = await raw_exchange(server.address, request_bytes)
        assert got == status
        assert error["code"] == code
        assert error["details"]["reason"] == reason
        await server.shut_down()


async def test_app_that_ends_without_answering_gets_the_guides_500() -> None:
    async def silent_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    async with running(silent_app) as server:  # type: ignore[arg-type]
        status, error = await raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 500
        assert error["code"] == "INTERNAL_ERROR"
        await server.shut_down()
