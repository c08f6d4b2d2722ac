"""The fast lane's output queue: the direct path keeps order, a partial send is finished before
anything else, a full queue is refused or waited on, and what is queued still goes out after
`close`. Over a real socket pair: `PlainSocket` and a peer that reads slowly or not at all."""

from __future__ import annotations

import socket

import trio
import trio.testing

from dtq.net.protocol.listener import PlainSocket
from dtq.net.protocol.outbox import NOT_TAKEN, PARTIAL, SENT, Outbox
from dtq.wire import FrameDecoder, frame


class FakeTransport:
    """Takes messages directly only when told to; records what the writer wrote."""

    def __init__(self) -> None:
        self.direct: list[bytes] = []
        self.written: list[bytes] = []
        self.answer = SENT
        self.write_gate: trio.Event | None = None

    def send_now(self, payload: bytes) -> int:
        if self.answer != NOT_TAKEN:
            self.direct.append(payload)
        return self.answer

    async def write(self, batch: list[bytes]) -> None:
        if self.write_gate is not None:
            await self.write_gate.wait()
        self.written.extend(batch)


async def test_direct_only_when_nothing_is_queued_or_in_flight() -> None:
    t = FakeTransport()
    box = Outbox(limit=10, batch=10)
    box.send_now = t.send_now
    assert box.offer(b"a")  # idle: straight out
    assert t.direct == [b"a"]
    t.answer = NOT_TAKEN
    assert box.offer(b"b")  # the socket is full: queued
    t.answer = SENT
    assert box.offer(b"c")  # b waits: c must not overtake it
    assert t.direct == [b"a"] and t.written == []
    t.write_gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run, t.write, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert box.offer(b"d")  # b and c are being written: d queues behind them
        t.write_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert t.written == [b"b", b"c", b"d"]
        assert box.offer(b"e")  # idle again: direct
        assert t.direct == [b"a", b"e"]
        box.close()
    assert box.offer(b"f") and b"f" not in t.direct + t.written  # closed: dropped


async def test_a_partial_send_queues_a_flush_and_a_full_queue_refuses() -> None:
    t = FakeTransport()
    box = Outbox(limit=2, batch=10)
    box.send_now = t.send_now
    t.answer = PARTIAL
    assert box.offer(b"big")  # taken, rest kept by the transport: a flush marker is queued
    t.answer = SENT
    assert box.offer(b"x")  # queued behind the marker, not direct
    assert not box.offer(b"y")  # full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.put, b"y")  # waits for room
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(box.run, t.write, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        box.close()
    # y got room once x went out, and by then nothing was queued: y went direct, after x
    assert t.written == [b"", b"x"]
    assert t.direct == [b"big", b"y"]


async def test_a_writer_that_cannot_write_in_time_reports_it() -> None:
    t = FakeTransport()
    t.write_gate = trio.Event()  # never set: the peer never reads
    box = Outbox(limit=2, batch=10)
    box.offer(b"a")
    with trio.fail_after(5):
        assert await box.run(t.write, 0.05) is False


async def test_plain_socket_sends_whole_frames_in_order_under_a_slow_reader() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setblocking(False)
    plain = PlainSocket(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    box = Outbox(limit=1000, batch=64)
    box.send_now = plain.send_now
    messages = [bytes([i % 251]) * (3000 + i) for i in range(200)]  # far more than the buffers

    async def write(batch: list[bytes]) -> None:
        await plain.send_all(b"".join(frame(p) for p in batch if p))

    received: list[bytes] = []
    decoder = FrameDecoder(1 << 20)
    all_in = trio.Event()

    async def read() -> None:
        while len(received) < len(messages):
            await trio.lowlevel.wait_readable(b)
            try:
                decoder.feed(b.recv(1024))  # slowly: small reads
            except BlockingIOError:
                continue
            while (payload := decoder.next_frame()) is not None:
                received.append(payload)
        all_in.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.run, write, 5.0)
            nursery.start_soon(read)
            for m in messages:
                await box.put(m)
                if len(received) % 7 == 0:
                    await trio.lowlevel.checkpoint()
            await all_in.wait()
            box.close()
    plain.close()
    b.close()
    assert received == messages
