"""Serve an ASGI app (dtq's quart-trio app) with hypercorn's trio worker, configured by Settings.

    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_app, app, settings)   # BoundAddress(host, port)
        ...

Graceful shutdown on SIGTERM / SIGINT (for `dtq serve`):

    await serve_app(app, settings, shutdown_trigger=shutdown_on_signals())

On shutdown hypercorn stops accepting, closes idle keep-alive connections at once, lets requests
in flight finish for up to `graceful_timeout_s`, then cancels what is left.

Importing this module patches hypercorn (`dtq.net.hypercorn_patch`: stack-findings trap 1, and
hypercorn's own error responses in the guide's format); the patch is checked against the exact
hypercorn source it was written for and refuses to load on any other.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from dtq.logs import get_logger
from dtq.net.hypercorn_patch import apply_hypercorn_patch, remove_hypercorn_patch
from dtq.settings import Settings

__all__ = [
    "BoundAddress",
    "FinishRequestBody",
    "ForwardedForMiddleware",
    "apply_hypercorn_patch",
    "hypercorn_config",
    "remove_hypercorn_patch",
    "serve_app",
    "shutdown_on_signals",
]

log = get_logger(__name__)

ShutdownTrigger = Callable[[], Awaitable[None]]

# How long an early answer waits for the rest of its request's body (FinishRequestBody) before
# it gives up on the connection and says `Connection: close`.
_BODY_WAIT_S = 5.0


class BoundAddress(NamedTuple):
    """Where the server actually listens (port 0 in the settings becomes the real port)."""

    host: str
    port: int

    def url(self, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def hypercorn_config(settings: Settings) -> Config:
    """A hypercorn Config from dtq's Settings (hypercorn's own access log off: dtq logs requests)."""
    if (settings.certfile is None) != (settings.keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile (only one is set)")
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.backlog = settings.backlog
    config.keep_alive_timeout = settings.keep_alive_timeout_s
    config.keep_alive_max_requests = settings.keep_alive_max_requests
    config.graceful_timeout = settings.graceful_timeout_s
    config.websocket_ping_interval = settings.websocket_ping_interval_s or None  # keep-alive
    config.certfile = settings.certfile
    config.keyfile = settings.keyfile
    config.accesslog = None
    # A Logger (not "-") makes hypercorn leave its handlers alone: records propagate to the root
    # logger, which dtq.logs.configure_logging renders like every other log line.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve_app(
    app: ASGIFramework,
    settings: Settings,
    *,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: ShutdownTrigger | None = None,
) -> None:
    """Serve `app` until `shutdown_trigger` returns (graceful) or this task is cancelled (not).

    Reports the bound address through `task_status` once the socket is listening.
    """
    config = hypercorn_config(settings)
    if settings.forwarded_allow_ips:
        app = ForwardedForMiddleware(app, settings.forwarded_allow_ips)
    app = FinishRequestBody(app, settings.max_body_bytes)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger, mode="asgi")
        )
        # hypercorn reports ["http://127.0.0.1:5000"]; one bind in, one socket out.
        bound = urlsplit(binds[0])
        if bound.hostname is None or bound.port is None:
            raise RuntimeError(f"cannot read the bound address from hypercorn's {binds!r}")
        address = BoundAddress(bound.hostname, bound.port)
        log.info("listening", url=address.url(bound.scheme))
        task_status.started(address)
    log.info("stopped")


def shutdown_on_signals(*signums: signal.Signals) -> ShutdownTrigger:
    """A `shutdown_trigger` that returns on the first SIGTERM or SIGINT (or the given signals).

    Only the first signal is caught: once shutdown has begun, a second Ctrl+C interrupts at once.
    Must run in the main thread (a trio restriction on signal handling).
    """
    wanted = signums or (signal.SIGTERM, signal.SIGINT)

    async def wait_for_signal() -> None:
        with trio.open_signal_receiver(*wanted) as received:
            async for signum in received:
                log.info("shutdown_requested", signal=signal.Signals(signum).name)
                return

    return wait_for_signal


class ForwardedForMiddleware:
    """Take the client address from X-Forwarded-For (and the scheme from X-Forwarded-Proto),
    but only when the TCP peer is a trusted proxy: an IP or network in `trusted`, or "*".

    With a chain of proxies, the client is the right-most X-Forwarded-For entry that is not a
    trusted proxy itself. Requests from untrusted peers are passed on unchanged.
    """

    def __init__(self, app: ASGIFramework, trusted: Iterable[str]) -> None:
        self.app = app
        entries = [entry.strip() for entry in trusted if entry.strip()]
        self._trust_all = "*" in entries
        self._networks = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        )

    def _is_trusted(self, host: str) -> bool:
        if self._trust_all:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" or scope["type"] == "websocket":
            peer = scope.get("client")
            if peer is not None and self._is_trusted(peer[0]):
                forwarded_for = _header_values(scope["headers"], b"x-forwarded-for")
                forwarded_proto = _header_values(scope["headers"], b"x-forwarded-proto")
                if forwarded_for or forwarded_proto:
                    scope = scope.copy()
                    if forwarded_for:
                        scope["client"] = (self._client_from(forwarded_for), 0)
                    if forwarded_proto:
                        scope["scheme"] = _scheme_for(scope["type"], forwarded_proto[-1])
        await self.app(scope, receive, send)

    def _client_from(self, hops: list[str]) -> str:
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0]


class FinishRequestBody:
    """An answer never leaves a request body unread on a keep-alive connection (issue 8, #5).

    hypercorn (`H11Protocol._maybe_recycle`) keeps an HTTP/1.1 connection for the next request
    only if, when the response ends, the request has been received to its end; otherwise it
    closes the connection, though the response did not say `Connection: close`. The client,
    told nothing, sends its next request on it and gets no answer. That is the fate of any
    answer decided from the request head alone (401, 403, 404, 405, 429, ...) whenever the body
    arrives in a later read than the head: the app's reader (Quart reads the body in a task of
    its own, whether the handler wants it or not) has not seen the end of it yet.

    So when a response starts before the request body has been received to its end, it waits
    for the end: up to `max_body_bytes` of body and `wait_s` seconds. Then the connection stays
    usable (hypercorn hands the app the end of the body only once h11 has parsed it, so h11 is
    done with the request by then). A body that is larger (the 413 case) or slower gets `Connection: close` on the
    response instead, so the client knows the connection ends with it.
    """

    def __init__(
        self, app: ASGIFramework, max_body_bytes: int, *, wait_s: float = _BODY_WAIT_S
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.wait_s = wait_s

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _RequestBody(self.max_body_bytes, _content_length(scope["headers"]))

        async def receive_and_track() -> Any:
            message = await receive()
            body.saw(message)
            return message

        async def send_once_read(message: Any) -> None:
            if message["type"] == "http.response.start" and not body.complete:
                message = await self._finish_or_close(body, message)
            await send(message)

        await self.app(scope, receive_and_track, send_once_read)

    async def _finish_or_close(self, body: _RequestBody, start: Any) -> Any:
        if not body.too_large:
            with trio.move_on_after(self.wait_s):
                await body.settled.wait()
        if body.complete:
            return start
        headers = list(start.get("headers", ()))
        if not any(
            name.lower() == b"connection" and b"close" in value.lower() for name, value in headers
        ):
            headers.append((b"connection", b"close"))
        return {**start, "headers": headers}


class _RequestBody:
    """What the app has received of one request's body (through its ASGI `receive`)."""

    __slots__ = ("complete", "limit", "received", "settled", "too_large")

    def __init__(self, limit: int, declared: int | None) -> None:
        self.limit = limit
        self.received = 0
        self.complete = False  # the end of the body has been received
        self.too_large = declared is not None and declared > limit
        self.settled = trio.Event()  # complete, too large, or the peer has gone

    def saw(self, message: Any) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
                self.settled.set()
            elif self.received > self.limit:
                self.too_large = True
                self.settled.set()
        elif message["type"] == "http.disconnect":
            self.settled.set()


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses such a request before any app sees it
    return None


def _header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    values: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            values.extend(_strip_port(part) for part in value.decode("latin-1").split(","))
    return [value for value in values if value]


def _strip_port(hop: str) -> str:
    """'1.2.3.4', '1.2.3.4:5678', '[::1]:5678', '::1' -> the address alone."""
    hop = hop.strip()
    if hop.startswith("["):
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def _scheme_for(scope_type: str, proto: str) -> str:
    secure = proto.lower() in {"https", "wss"}
    if scope_type == "websocket":
        return "wss" if secure else "ws"
    return "https" if secure else "http"
