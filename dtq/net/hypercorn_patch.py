"""dtq's fixes to hypercorn 0.18.0 internals, installed when `dtq.net.serve` is imported.

1. Trap 1 (stack-findings): the trio worker's connection life cycle under quart-trio.
2. hypercorn's own error responses (431 for a too large request head, 400 for a malformed
   request, 501 for an unsupported Transfer-Encoding, 500 when an app ends without answering)
   carry the API guide's JSON error body instead of an empty one.

Both rely on hypercorn internals, so this module refuses to load unless the installed hypercorn
is the version, and each patched module the exact source, they were checked against. After
upgrading hypercorn: re-read the patched methods, run tests/api/test_serving.py (its canary
test shows whether hypercorn still needs fix 1), then update the verified version and hashes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable
from itertools import chain
from time import time
from types import ModuleType
from typing import Any

import h11
import trio
from hypercorn.events import Event, Updated
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import http_stream
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio import tcp_server
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import suppress_body

from dtq.errors import DtqError, InvalidRequest, NotFound
from dtq.net.envelope import JSON, error_body

__all__ = ["apply_hypercorn_patch", "protocol_error", "remove_hypercorn_patch"]

_VERIFIED_HYPERCORN_VERSIONS = frozenset({"0.18.0"})
_VERIFIED_SOURCES_SHA256 = {
    tcp_server: "fbec50b5df48e46d28e1a594c47931e1395d1dded14044945203f7840d0cba20",
    hypercorn_h11: "5d2cfe635578adc65941fd5dc7b35ad1d89a61a9beff3e97742dd94f359ee9e0",
    http_stream: "b28bb59de67f2f2813642846cc089fc52bf771f2270f813d039456ba4fe34f7f",
}


# --- 1. Trap 1: hypercorn (trio worker) + quart-trio connection life cycle ---------------------
#
# quart-trio runs each request in a nursery that it cancels as soon as the ASGI `http.disconnect`
# (or `websocket.disconnect`) arrives. hypercorn delivers that message from inside the app's last
# `send()`, i.e. in the app's task, and that same task then goes on with hypercorn's connection
# bookkeeping in `TCPServer.protocol_send`: re-arming the keep-alive idle timer, `send_eof`,
# `aclose`. Now cancelled, that bookkeeping is cut short: the idle timer is never armed, so
# `keep_alive_timeout` never fires and every shutdown with an idle keep-alive connection open
# waits the whole `graceful_timeout`; a socket can stay open.
#
# The fix, two small wrappers around hypercorn 0.18.0's `TCPServer` methods:
#  1. `protocol_send` runs shielded from the caller's cancellation, so the bookkeeping always
#     completes. It is short work: restart/stop a timer, shut down and close the socket, queue
#     `http.disconnect` for the app. The one slow part, the socket write, hypercorn shields itself
#     already (a peer that stops reading mid-response blocks it, patched or not). No deadline on
#     the shield: one that fired would silently drop bytes from the connection's stream.
#  2. Once the read loop has ended (the peer closed its side, or the read failed), the idle timer
#     is stopped and never re-armed: the connection then closes at once instead of sitting in
#     CLOSE_WAIT for `keep_alive_timeout` (it did in hypercorn even without quart-trio; the
#     shield of 1. makes it happen on every request, as the timer now does get re-armed).

_PEER_GONE = "_dtq_peer_gone"  # attribute set on a TCPServer once its read loop has ended

# inspect.unwrap: hypercorn's own methods even if this module is imported a second time.
_original_protocol_send: Callable[[TCPServer, Event], Awaitable[None]] = inspect.unwrap(
    TCPServer.protocol_send
)
_original_read_data: Callable[[TCPServer], Awaitable[None]] = inspect.unwrap(TCPServer._read_data)


async def _protocol_send(self: TCPServer, event: Event) -> None:
    with trio.CancelScope(shield=True):
        if isinstance(event, Updated) and event.idle and getattr(self, _PEER_GONE, False):
            return  # nobody is left to send another request: don't re-arm the idle timer
        await _original_protocol_send(self, event)


async def _read_data(self: TCPServer) -> None:
    try:
        await _original_read_data(self)
    finally:
        setattr(self, _PEER_GONE, True)
        with trio.CancelScope(shield=True):
            await self.idle_task.stop()


# --- 2. hypercorn's own error responses in the guide's format ----------------------------------
#
# hypercorn answers some requests itself, before or instead of the app, always with an empty
# body: `H11Protocol._send_error_response` when h11 refuses what the client sent (431, 400, 501:
# the status is h11's `error_status_hint`), and `HTTPStream._send_error_response` when the app
# ended without a response (500) or the Host is not served (404, only with `server_names`).
# The replacements send the same status and the same `connection: close`, plus the guide's JSON
# error. They get only the status code (hypercorn does not pass h11's error on), so the message
# is chosen by status. WebSocket handshakes refused by hypercorn and HTTP/2 protocol errors
# (stream resets, GOAWAY) have no body to carry one and are left as they are.

_original_h11_error_response: Callable[[H11Protocol, int], Awaitable[None]] = inspect.unwrap(
    H11Protocol._send_error_response
)
_original_stream_error_response: Callable[[HTTPStream, int], Awaitable[None]] = inspect.unwrap(
    HTTPStream._send_error_response
)


def protocol_error(status_code: int, *, max_head_bytes: int) -> DtqError:
    """The guide's error for a response hypercorn makes on its own, by status code."""
    if status_code == 431:
        return InvalidRequest(
            f"Request header fields too large: the request line and headers together are "
            f"limited to {max_head_bytes} bytes",
            field="headers", reason="too large", limit_bytes=max_head_bytes,
        )  # fmt: skip
    if status_code == 501:
        return InvalidRequest(
            "Unsupported Transfer-Encoding: only 'chunked' is supported",
            field="transfer-encoding", reason="not supported",
        )  # fmt: skip
    if status_code == 404:
        return NotFound("Unknown host", field="host", reason="not served here")
    if 400 <= status_code < 500:
        return InvalidRequest("Malformed HTTP request", reason="malformed request")
    return DtqError()


def _error_parts(status_code: int, max_head_bytes: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = error_body(protocol_error(status_code, max_head_bytes=max_head_bytes))
    headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


async def _h11_error_response(self: H11Protocol, status_code: int) -> None:
    headers, body = _error_parts(status_code, self.config.h11_max_incomplete_size)
    await self._send_h11_event(
        h11.Response(
            status_code=status_code,
            headers=list(chain(headers, self.config.response_headers("h11"))),
        )
    )
    # h11 refuses a body for a HEAD request; `_send_h11_event` then drops it, as the peer's
    # state is ERROR here, and the head alone goes out: right for HEAD.
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


async def _stream_error_response(self: HTTPStream, status_code: int) -> None:
    headers, body = _error_parts(status_code, self.config.h11_max_incomplete_size)
    await self.send(Response(stream_id=self.stream_id, headers=headers, status_code=status_code))
    if not suppress_body(self.scope["method"], status_code):
        await self.send(Body(stream_id=self.stream_id, data=body))
    await self.send(EndBody(stream_id=self.stream_id))
    self.state = ASGIHTTPState.CLOSED
    await self.config.log.access(
        self.scope, {"status": status_code, "headers": []}, time() - self.start_time
    )


# --- installing ----------------------------------------------------------------------------------

_PATCHES: tuple[tuple[type, str, Any, Any], ...] = (
    (TCPServer, "protocol_send", _protocol_send, _original_protocol_send),
    (TCPServer, "_read_data", _read_data, _original_read_data),
    (H11Protocol, "_send_error_response", _h11_error_response, _original_h11_error_response),
    (HTTPStream, "_send_error_response", _stream_error_response, _original_stream_error_response),
)
_protocol_send.__wrapped__ = _original_protocol_send  # type: ignore[attr-defined]
_read_data.__wrapped__ = _original_read_data  # type: ignore[attr-defined]
_h11_error_response.__wrapped__ = _original_h11_error_response  # type: ignore[attr-defined]
_stream_error_response.__wrapped__ = _original_stream_error_response  # type: ignore[attr-defined]


def _check_hypercorn_is_verified() -> None:
    version = importlib.metadata.version("hypercorn")
    digests = {module: _source_digest(module) for module in _VERIFIED_SOURCES_SHA256}
    changed = {
        module.__name__: digest
        for module, digest in digests.items()
        if digest is not None and digest != _VERIFIED_SOURCES_SHA256[module]
    }
    if version not in _VERIFIED_HYPERCORN_VERSIONS or changed:
        raise RuntimeError(
            f"{__name__} patches hypercorn internals (keep-alive/shutdown fix and error bodies, "
            f"see its docstring), verified for hypercorn {sorted(_VERIFIED_HYPERCORN_VERSIONS)} "
            f"only; installed: hypercorn {version}, changed sources (sha256): {changed}. "
            f"Re-check the patches against the new hypercorn, run tests/api/test_serving.py, "
            f"then update the verified version and hashes."
        )


def _source_digest(module: ModuleType) -> str | None:
    try:
        source = inspect.getsource(module)
    except OSError:  # no source installed (.pyc only): the version must do
        return None
    return hashlib.sha256(source.encode()).hexdigest()


def apply_hypercorn_patch() -> None:
    """Install the fixes (done at import; installing them twice is harmless)."""
    for owner, name, patched, _ in _PATCHES:
        setattr(owner, name, patched)


def remove_hypercorn_patch() -> None:
    """Restore hypercorn's own methods. For tests that show the traps without the fixes."""
    for owner, name, _, original in _PATCHES:
        setattr(owner, name, original)


_check_hypercorn_is_verified()
apply_hypercorn_patch()
