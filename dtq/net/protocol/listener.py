"""The fast lane's TCP listener (TLS with the HTTP port's certificate): one `Session` per
connection, framed by `codec`. Started with `nursery.start`, it reports the bound address, so
tests bind port 0 and read the real port back."""

from __future__ import annotations

import errno
import socket
import ssl
from functools import partial

import structlog
import trio

from dtq.errors import InvalidRequest
from dtq.net.protocol.hub import Hub
from dtq.net.protocol.outbox import NOT_TAKEN, PARTIAL, SENT
from dtq.net.protocol.session import Session, error_frame
from dtq.net.routing import Services
from dtq.net.serve import BoundAddress
from dtq.settings import Settings
from dtq.wire import FrameDecoder, FrameTooLarge, encoder, frame

log = structlog.get_logger("dtq.protocol")

DEFAULT_PROTOCOL_PORT = 5001
READ_BYTES = 65536
HANDSHAKE_TIMEOUT_S = 10.0
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


def protocol_port_to_bind(settings: Settings) -> int | None:
    """The port to listen on, 0 for any free one, or None when the fast lane is off.

    Unset, it is 5001, except beside an HTTP port of 0 (tests, benches): any free port."""
    if settings.protocol_port is None:
        return 0 if settings.port == 0 else DEFAULT_PROTOCOL_PORT
    return settings.protocol_port or None


def protocol_port_problem(settings: Settings) -> str | None:
    """One line when the protocol port cannot be bound now (checked before the store opens,
    as the HTTP port is), else None."""
    port = protocol_port_to_bind(settings)
    if not port:
        return None
    try:
        infos = socket.getaddrinfo(settings.host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            return None  # not a bind problem: serve reports it
        return (
            f"dtq: protocol port {port} on {settings.host} is already in use; choose another "
            "with --protocol-port or DTQ_PROTOCOL_PORT (0 turns it off)"
        )
    return None


def max_frame_bytes(settings: Settings) -> int:
    """A message may be as large as a REST body (MessagePack is smaller than the same JSON)."""
    return settings.max_body_bytes


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.certfile is None or settings.keyfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.certfile, settings.keyfile)
    return context


async def serve_protocol(
    svc: Services,
    hub: Hub,
    port: int,
    *,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen until cancelled; every connection runs in its own task."""
    settings = svc.settings
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
        await trio.open_tcp_listeners(port, host=settings.host, backlog=settings.backlog)
    )
    sock = listeners[0].socket  # type: ignore[attr-defined]
    bound = BoundAddress(*sock.getsockname()[:2])
    context = _ssl_context(settings)
    if context is not None:
        listeners = [trio.SSLListener(lst, context, https_compatible=False) for lst in listeners]
    scheme = "tls" if context is not None else "tcp"
    log.info("protocol listening", url=bound.url(scheme))
    limit = max_frame_bytes(settings)
    handler = partial(_handle, svc, hub, limit)
    task_status.started(bound)
    await trio.serve_listeners(handler, listeners)


class PlainSocket:
    """A plain TCP connection read and written without trio's checkpoint on every call.

    `trio.SocketStream` yields to the scheduler after each successful send or receive; for a
    lane message that is two scheduler rounds more (a few tens of microseconds each here).
    This reads and writes the socket directly and waits (`wait_readable` / `wait_writable`)
    only when the kernel says so, with a checkpoint every `FAIR_READS` reads that found data,
    so a busy peer cannot starve the others. `send_now` is the session's direct path."""

    FAIR_READS = 64

    def __init__(self, stream: trio.SocketStream) -> None:
        self.sock = socket.socket(fileno=stream.socket.detach())  # ours now, options kept
        self.sock.setblocking(False)
        self._reads = 0
        self._rest = b""  # of a message `send_now` could send only in part
        self._broken = False

    async def receive_some(self, max_bytes: int) -> bytes:
        if self._reads >= self.FAIR_READS:
            self._reads = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                self._reads = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            self._reads += 1
            return data

    def send_now(self, payload: bytes) -> int:
        """Only while no `send_all` runs (the caller's to ensure: `Outbox` and the send lock)."""
        if self._rest or self._broken:
            return NOT_TAKEN
        data = frame(payload)
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            return NOT_TAKEN
        except OSError:
            self._broken = True  # the writer's next send raises it and ends the session
            return NOT_TAKEN
        if n == len(data):
            return SENT
        self._rest = data[n:]
        return PARTIAL

    async def send_all(self, data: bytes) -> None:
        view = memoryview(self._rest + data if self._rest else data)
        self._rest = b""
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


async def _handle(svc: Services, hub: Hub, limit: int, stream: trio.abc.Stream) -> None:
    peer = _peer(stream)
    plain: PlainSocket | None = None
    try:
        if isinstance(stream, trio.SSLStream):
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.do_handshake()
        conn: trio.abc.Stream | PlainSocket = stream
        if isinstance(stream, trio.SocketStream):
            conn = plain = PlainSocket(stream)
        session = Session(svc, hub, peer, limit)
        decoder = FrameDecoder(limit)
        # The session's writer and the frame-too-large refusal both send: one at a time
        # (trio refuses two concurrent send_all on a stream).
        send_lock = trio.StrictFIFOLock()

        async def receive() -> bytes | None:
            while True:
                try:
                    payload = decoder.next_frame()
                except FrameTooLarge as exc:
                    # The rest of the stream cannot be framed: say why, then close.
                    too_large = InvalidRequest(str(exc), field="frame", reason="frame too large",
                                               max_frame_bytes=exc.limit)  # fmt: skip
                    async with send_lock:
                        await conn.send_all(frame(encoder.encode(
                            error_frame(0, too_large, closing=True))))  # fmt: skip
                    return None
                if payload is not None:
                    return payload
                data = await conn.receive_some(READ_BYTES)
                if not data:
                    return None
                decoder.feed(data)

        async def write(batch: list[bytes]) -> None:
            data = b"".join([frame(p) for p in batch if p])  # (FLUSH: the rest only)
            try:
                send_lock.acquire_nowait()  # the usual case: nobody else is sending
            except trio.WouldBlock:
                await send_lock.acquire()
            try:
                await conn.send_all(data)
            finally:
                send_lock.release()

        def send_now(payload: bytes) -> int:
            if plain is None or send_lock.locked():
                return NOT_TAKEN
            return plain.send_now(payload)

        await session.run(receive, write, send_now if plain is not None else None)
    # `except*`: the session's nursery wraps a peer's reset (ECONNRESET from a read or a
    # write) in an ExceptionGroup; whatever one connection raises must never stop the server.
    except* (*_GONE, trio.TooSlowError):
        pass  # the peer went away, or never finished its TLS handshake
    except* Exception as group:
        log.error("protocol connection failed", peer=peer, exc_info=group)
    finally:
        if plain is not None:
            plain.close()
        await trio.aclose_forcefully(stream)


def _peer(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        host = inner.socket.getpeername()[0]  # type: ignore[union-attr]
    except (AttributeError, OSError):
        return "unknown"
    return str(host)
