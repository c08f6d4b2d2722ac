"""What the fast-lane transports share, without I/O: where the lane is, and the two ways its
messages travel (length-prefixed frames on TCP; binary WebSocket messages via wsproto).

`transport.py` (async, anyio: trio or asyncio) and `transport_sync.py` (blocking sockets) move
the bytes; this module turns bytes into messages and back. docs/protocol.md is the reference.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from dtq.errors import InvalidRequest
from dtq.wire import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, Welcome, frame

WS_PATH = "/ws/session"
READ_BYTES = 65536


@dataclass(frozen=True)
class LaneAddress:
    kind: str  # "tcp" or "ws"
    host: str
    port: int
    tls: bool
    host_header: str  # for the WebSocket handshake

    def __str__(self) -> str:
        scheme = {"tcp": "tls" if self.tls else "tcp", "ws": "wss" if self.tls else "ws"}
        path = WS_PATH if self.kind == "ws" else ""
        return f"{scheme[self.kind]}://{self.host}:{self.port}{path}"


def lane_address(url: str, kind: str, protocol_port: int | None) -> LaneAddress | None:
    """Where the lane of the server at HTTP `url` is: `ws` is on the HTTP port itself, `tcp`
    on the port `/health` reported (None: the server has no fast lane)."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    http_port = parts.port or (443 if tls else 80)
    if kind == "ws":
        return LaneAddress("ws", host, http_port, tls, parts.netloc)
    if protocol_port is None:
        return None
    return LaneAddress("tcp", host, protocol_port, tls, parts.netloc)


def client_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def connection_lost(message: str) -> httpx.TransportError:
    """Connection trouble is an httpx transport error on every transport, so callers (and
    the retry rules) see the same exceptions as over HTTP."""
    return httpx.ReadError(message)


def check_size(payload: bytes, welcome: Welcome | None) -> bytes:
    """Refuse, before sending, a message larger than the server takes (it would close the
    connection): the same exception REST's 413 becomes."""
    if welcome is not None and len(payload) > welcome.max_frame_bytes:
        exc = InvalidRequest(
            f"Request body too large: {len(payload)} bytes, the server takes at most "
            f"{welcome.max_frame_bytes}", field="body", reason="too large",
        )  # fmt: skip
        exc.http_status = 413  # type: ignore[attr-defined]
        raise exc
    return payload


class TcpCodec:
    """Length-prefixed frames."""

    accepted = True

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)

    def handshake(self) -> bytes:
        return b""

    def encode(self, payload: bytes) -> bytes:
        return frame(payload)

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """(whole messages, bytes to send back at once)."""
        self._decoder.feed(data)
        out = []
        while (payload := self._decoder.next_frame()) is not None:
            out.append(payload)
        return out, b""


class WsCodec:
    """One binary WebSocket message per protocol message (wsproto: no I/O of its own)."""

    def __init__(self, address: LaneAddress, headers: dict[str, str] | None = None) -> None:
        self._address = address
        self._headers = headers or {}
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._parts: list[bytes] = []
        self.accepted = False

    def handshake(self) -> bytes:
        extra: list[tuple[bytes, bytes]] = [
            (k.encode(), v.encode()) for k, v in self._headers.items()
        ]
        return self._ws.send(Request(host=self._address.host_header, target=WS_PATH,
                                     extra_headers=extra))  # fmt: skip

    def encode(self, payload: bytes) -> bytes:
        return self._ws.send(BytesMessage(data=payload))

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        self._ws.receive_data(data or None)
        out: list[bytes] = []
        reply = b""
        for event in self._ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectConnection | RejectData):
                raise httpx.ConnectError(f"the server refused the WebSocket at {WS_PATH}")
            elif isinstance(event, BytesMessage):
                self._parts.append(bytes(event.data))
                if event.message_finished:
                    out.append(b"".join(self._parts))
                    self._parts.clear()
            elif isinstance(event, TextMessage):
                continue  # the session sends binary messages only
            elif isinstance(event, Ping):
                reply += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if out:
                    return out, reply
                raise connection_lost(f"the server closed the WebSocket ({event.code})")
        return out, reply


def make_codec(address: LaneAddress) -> Any:
    return WsCodec(address) if address.kind == "ws" else TcpCodec()
