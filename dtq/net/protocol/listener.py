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


async def _handle(svc: Services, hub: Hub, limit: int, stream: trio.abc.Stream) -> None:
    peer = _peer(stream)
    try:
        if isinstance(stream, trio.SSLStream):
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await stream.do_handshake()
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
                        await stream.send_all(frame(encoder.encode(
                            error_frame(0, too_large, closing=True))))  # fmt: skip
                    return None
                if payload is not None:
                    return payload
                data = await stream.receive_some(READ_BYTES)
                if not data:
                    return None
                decoder.feed(data)

        async def write(batch: list[bytes]) -> None:
            data = b"".join([frame(p) for p in batch])
            try:
                send_lock.acquire_nowait()  # the usual case: nobody else is sending
            except trio.WouldBlock:
                await send_lock.acquire()
            try:
                await stream.send_all(data)
            finally:
                send_lock.release()

        await session.run(receive, write)
    except (*_GONE, trio.TooSlowError):
        pass  # the peer went away, or never finished its TLS handshake
    finally:
        await trio.aclose_forcefully(stream)


def _peer(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        host = inner.socket.getpeername()[0]  # type: ignore[union-attr]
    except (AttributeError, OSError):
        return "unknown"
    return str(host)
