"""A connection's output: a bounded FIFO of encoded messages drained by one writer task, and a
direct path that hands a message to the transport at once when nothing is queued or being
written.

The direct path is what makes a reply cheap: without it every reply wakes the writer task, one
more round of trio's scheduler (a few tens of microseconds here) per message. Order is kept
either way: a message goes direct only when no earlier one is still waiting or in flight.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

import trio

NOT_TAKEN = 0  # the transport could not take it now: queue it
SENT = 1  # all of it is out
PARTIAL = 2  # taken; the transport keeps the unsent rest and sends it first on its next write

SendNow = Callable[[bytes], int]  # one encoded message -> NOT_TAKEN / SENT / PARTIAL
Write = Callable[[list[bytes]], Awaitable[None]]

FLUSH = b""  # queued after a PARTIAL: wakes the writer so the rest goes out (never a message)


class Outbox:
    def __init__(self, limit: int, batch: int) -> None:
        self.send_now: SendNow | None = None  # set by the transport that has one
        self._queue: collections.deque[bytes] = collections.deque()
        self._limit = limit
        self._batch = batch
        self._writing = False
        self._closed = False
        self._more = trio.Event()  # something queued, or closed
        self._space = trio.lowlevel.ParkingLot()  # senders waiting for room

    def offer(self, payload: bytes) -> bool:
        """Send or queue without waiting; False when the queue is full. After `close`, a
        message is dropped (True): nothing more goes out."""
        if self._closed:
            return True
        if self.send_now is not None and not self._queue and not self._writing:
            taken = self.send_now(payload)
            if taken == SENT:
                return True
            if taken == PARTIAL:
                payload = FLUSH
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(payload)
        self._more.set()
        return True

    async def put(self, payload: bytes) -> None:
        """`offer`, waiting for room while the queue is full."""
        while not self.offer(payload):
            await self._space.park()

    def close(self) -> None:
        """What is queued still goes out; then `run` returns."""
        self._closed = True
        self._more.set()

    async def run(self, write: Write, timeout_s: float) -> bool:
        """The writer: batches of queued messages to `write` until closed and empty. False
        when one `write` took longer than `timeout_s` (a peer that does not read)."""
        while True:
            if not self._queue:
                if self._closed:
                    return True
                self._more = trio.Event()
                await self._more.wait()
                continue
            n = min(len(self._queue), self._batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._writing = True  # set before any await: nothing overtakes this batch
            self._space.unpark_all()
            try:
                with trio.move_on_after(timeout_s) as timer:
                    await write(batch)
            finally:
                self._writing = False
            if timer.cancelled_caught:
                return False
