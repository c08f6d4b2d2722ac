"""The fast lane for `AsyncClient` and the `Worker`: one connection, pipelined requests.

anyio, so it runs under trio and asyncio. Replies are matched to requests by id. Without a
background reader, whichever caller holds the read lock reads frames for everyone (no task
of its own is needed); the worker starts `run_reader` so pushes and `cancelled` notices are
read as they come. Connection trouble is an `httpx.TransportError` (`transport_base`), so
retries and callers see what they see over HTTP. docs/protocol.md is the reference.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import msgspec
import sniffio

from dtq.client.transport_base import (
    READ_BYTES,
    LaneAddress,
    check_size,
    client_ssl_context,
    connection_lost,
    lane_address,
    make_codec,
)
from dtq.messages import TaskOut
from dtq.wire import Cancelled, Error, Push, ReplyIn, Welcome, client_decoder, encoder

if TYPE_CHECKING:
    from dtq.client._common import _Req

__all__ = ["AsyncLane", "lane_address"]


def _under_trio() -> bool:
    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


_GONE = (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Waiter:
    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: ReplyIn | Error | BaseException | None = None


FAIR_READS = 64  # direct reads that found data in a row; then one scheduler round


class _Connection:
    def __init__(
        self, stream: anyio.abc.ByteStream, codec: Any, direct: socket.socket | None
    ) -> None:
        self.stream = stream
        self.codec = codec
        self.waiters: dict[int, _Waiter] = {}
        self.inbox: list[bytes] = []
        self.broken: BaseException | None = None
        # Under trio, on plain TCP: the socket itself, read and written without the stream.
        # trio's stream takes one more scheduler round after every successful receive and
        # send; a lane message would pay two more (a push on its way to a handler, too).
        self.direct = direct
        self.reads = 0


class AsyncLane:
    def __init__(self, address: LaneAddress, hello: dict[str, Any], timeout_s: float) -> None:
        self.address = address
        self.hello = hello
        self.timeout_s = timeout_s
        self.generation = 0  # one more on every new connection (push mode re-grants credit)
        self.welcome: Welcome | None = None
        self.on_push: Callable[[list[TaskOut]], None] | None = None
        self.on_cancelled: Callable[[str], None] | None = None
        self.background = False  # `run_reader` reads; callers only wait
        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._connect_lock = anyio.Lock()
        self._send_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        self._connected = anyio.Event()

    # -- connecting ----------------------------------------------------------------------
    async def connect(self) -> _Connection:
        async with self._connect_lock:
            if self._conn is not None:
                if self._conn.broken is None:
                    return self._conn
                old, self._conn = self._conn, None
                with anyio.CancelScope(shield=True):
                    await old.stream.aclose()
            try:
                with anyio.fail_after(self.timeout_s):
                    conn = await self._open()
            except TimeoutError:
                raise httpx.ConnectTimeout(f"no answer from {self.address}") from None
            except _GONE as exc:
                raise httpx.ConnectError(f"cannot reach {self.address}: {exc}") from None
            self._conn = conn
            self.generation += 1
            self._connected.set()
            return conn

    async def _open(self) -> _Connection:
        a = self.address
        stream: anyio.abc.ByteStream
        if a.tls:
            stream = await anyio.connect_tcp(a.host, a.port, ssl_context=client_ssl_context(),
                                             tls_standard_compatible=False)  # fmt: skip
        else:
            stream = await anyio.connect_tcp(a.host, a.port)
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if sock is not None:  # small frames go out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # (asyncio reads the socket itself, through its transport; TLS needs the stream)
        direct = sock if sock is not None and not a.tls and _under_trio() else None
        conn = _Connection(stream, make_codec(a), direct)
        if hs := conn.codec.handshake():
            await stream.send(hs)
            while not conn.codec.accepted:
                await self._read_some(conn)
        rid = next(self._ids)
        await stream.send(conn.codec.encode(encoder.encode({"op": "hello", "id": rid,
                                                            **self.hello})))  # fmt: skip
        while True:
            for message in self._take(conn):
                if isinstance(message, Welcome):
                    self.welcome = message
                    return conn
                if isinstance(message, Error):
                    await stream.aclose()
                    from dtq.client._common import wire_error

                    raise wire_error(message)
            await self._read_some(conn)

    def _take(self, conn: _Connection) -> list[Any]:
        inbox, conn.inbox = conn.inbox, []
        return [client_decoder.decode(m) for m in inbox]

    async def _read_some(self, conn: _Connection) -> None:
        data = await (
            self._receive_direct(conn) if conn.direct else conn.stream.receive(READ_BYTES)
        )
        messages, reply = conn.codec.feed(data)
        if reply:
            await self._send_payload(conn, reply)
        conn.inbox.extend(messages)

    @staticmethod
    async def _receive_direct(conn: _Connection) -> bytes:
        sock = conn.direct
        assert sock is not None
        if conn.reads >= FAIR_READS:  # a peer that always has data does not starve the rest
            conn.reads = 0
            await anyio.lowlevel.checkpoint()
        while True:
            try:
                data = sock.recv(READ_BYTES)
            except BlockingIOError:
                conn.reads = 0
                await anyio.wait_readable(sock)
                continue
            if not data:
                raise anyio.EndOfStream
            conn.reads += 1
            return data

    async def _send_payload(self, conn: _Connection, payload: bytes) -> None:
        """All of `payload`, never interleaved with another frame. The direct path sends at
        once when no other send is under way and the socket takes it all."""
        lock = self._send_lock
        if conn.direct is not None and not lock.locked():
            try:
                sent = conn.direct.send(payload)
            except BlockingIOError:
                sent = 0
            if sent == len(payload):
                return
            payload = payload[sent:]
            lock.acquire_nowait()  # (free: nothing awaited since `locked()`)
        else:
            await lock.acquire()
        try:
            with anyio.CancelScope(shield=True):  # half a frame would break the stream
                await conn.stream.send(payload)
        finally:
            lock.release()

    # -- requests ------------------------------------------------------------------------
    async def call(self, req: _Req[Any]) -> ReplyIn | Error:
        """The reply (or error frame) to `req`, sent on the current connection."""
        conn = await self.connect()
        rid = next(self._ids)
        waiter = conn.waiters[rid] = _Waiter()
        try:
            payload = conn.codec.encode(check_size(encoder.encode(req.lane_message(rid)),
                                                   self.welcome))  # fmt: skip
            await self._send_payload(conn, payload)
            with anyio.fail_after(self.timeout_s):
                while waiter.result is None:
                    if self.background:
                        await waiter.event.wait()
                    else:
                        async with self._read_lock:
                            if waiter.result is None:
                                await self._read_some(conn)
                                self._dispatch(conn)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no reply from {self.address} in {self.timeout_s} s") from None
        except _GONE as exc:
            self._broken(conn, exc)
        finally:
            conn.waiters.pop(rid, None)
        result = waiter.result
        if isinstance(result, BaseException):
            raise result
        assert result is not None
        return result

    async def send(self, req: Any) -> None:
        """Send without waiting for the reply (it is read and dropped): `started` notes."""
        conn = await self.connect()
        payload = conn.codec.encode(encoder.encode(req.lane_message(next(self._ids))))
        try:
            await self._send_payload(conn, payload)
        except _GONE as exc:
            self._broken(conn, exc)

    def _dispatch(self, conn: _Connection) -> None:
        for message in self._take(conn):
            if isinstance(message, ReplyIn | Error) and message.id:
                waiter = conn.waiters.get(message.id)
                if waiter is not None:
                    waiter.result = message
                    waiter.event.set()
            elif isinstance(message, Push):
                if self.on_push is not None:
                    self.on_push(message.tasks)
            elif isinstance(message, Cancelled):
                if self.on_cancelled is not None:
                    self.on_cancelled(message.task_id)
            elif isinstance(message, Error) and message.closing:
                self._broken(conn, connection_lost(f"{message.code}: {message.message}"),
                             raise_it=False)  # fmt: skip

    def _broken(self, conn: _Connection, exc: BaseException, *, raise_it: bool = True) -> None:
        if conn.broken is None:
            conn.broken = exc if isinstance(exc, httpx.TransportError) else connection_lost(
                f"connection to {self.address} lost: {exc or type(exc).__name__}"
            )  # fmt: skip
            for waiter in conn.waiters.values():
                if waiter.result is None:
                    waiter.result = conn.broken
                    waiter.event.set()
        if raise_it:
            raise conn.broken

    async def run_reader(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Read for everyone until cancelled (the worker runs this in its nursery); after a
        lost connection, wait for the next one (the next call makes it)."""
        self.background = True
        task_status.started()
        try:
            while True:
                conn = self._conn
                if conn is None or conn.broken is not None:
                    self._connected = anyio.Event()
                    await self._connected.wait()
                    continue
                try:
                    await self._read_some(conn)
                    self._dispatch(conn)
                except _GONE as exc:
                    self._broken(conn, exc, raise_it=False)
                except msgspec.DecodeError as exc:  # pragma: no cover - a server bug
                    self._broken(conn, exc, raise_it=False)
        finally:
            self.background = False

    def is_connected(self) -> bool:
        return self._conn is not None and self._conn.broken is None

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.stream.aclose()
