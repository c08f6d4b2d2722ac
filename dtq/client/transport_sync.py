"""The fast lane for the synchronous `Client`: blocking sockets, one call at a time per
client (a lock), replies matched by id. It never runs push mode (that is the async Worker's),
so pushes and notices, which never come unasked here, are skipped. Twin of `transport.py`.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any

import httpx

from dtq.client.transport_base import (
    READ_BYTES,
    LaneAddress,
    check_size,
    client_ssl_context,
    connection_lost,
    lane_address,
    make_codec,
)
from dtq.wire import Error, ReplyIn, Welcome, client_decoder, encoder

if TYPE_CHECKING:
    from dtq.client._common import _Req

__all__ = ["SyncLane", "lane_address"]


class SyncLane:
    def __init__(self, address: LaneAddress, hello: dict[str, Any], timeout_s: float) -> None:
        self.address = address
        self.hello = hello
        self.timeout_s = timeout_s
        self.welcome: Welcome | None = None
        self._sock: socket.socket | None = None
        self._codec: Any = None
        self._inbox: list[bytes] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def connect(self) -> None:
        with self._lock:
            if self._sock is None:
                self._open()

    def _open(self) -> None:
        a = self.address
        try:
            sock = socket.create_connection((a.host, a.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if a.tls:
                sock = client_ssl_context().wrap_socket(sock, server_hostname=a.host)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no answer from {a}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot reach {a}: {exc}") from None
        self._sock, self._codec, self._inbox = sock, make_codec(a), []
        try:
            if hs := self._codec.handshake():
                sock.sendall(hs)
                while not self._codec.accepted:
                    self._read_some()
            rid = next(self._ids)
            sock.sendall(self._codec.encode(encoder.encode({"op": "hello", "id": rid,
                                                            **self.hello})))  # fmt: skip
            while True:
                for message in self._take():
                    if isinstance(message, Welcome):
                        self.welcome = message
                        return
                    if isinstance(message, Error):
                        from dtq.client._common import wire_error

                        raise wire_error(message)
                self._read_some()
        except BaseException:
            self._drop()
            raise

    def _take(self) -> list[Any]:
        inbox, self._inbox = self._inbox, []
        return [client_decoder.decode(m) for m in inbox]

    def _read_some(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(READ_BYTES)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no reply from {self.address} in {self.timeout_s} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise connection_lost(f"connection to {self.address} lost: {exc}") from None
        if not data:
            raise connection_lost(f"{self.address} closed the connection")
        messages, reply = self._codec.feed(data)
        if reply:
            self._sock.sendall(reply)
        self._inbox.extend(messages)

    def call(self, req: _Req[Any]) -> ReplyIn | Error:
        with self._lock:
            if self._sock is None:
                self._open()
            assert self._sock is not None
            rid = next(self._ids)
            try:
                payload = check_size(encoder.encode(req.lane_message(rid)), self.welcome)
                self._sock.sendall(self._codec.encode(payload))
                while True:
                    for message in self._take():
                        if isinstance(message, ReplyIn | Error) and message.id == rid:
                            return message
                        if isinstance(message, Error) and message.closing:
                            raise connection_lost(f"{message.code}: {message.message}")
                    self._read_some()
            except (OSError, httpx.TransportError) as exc:
                self._drop()
                if isinstance(exc, httpx.TransportError):
                    raise
                raise connection_lost(f"connection to {self.address} lost: {exc}") from None

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
