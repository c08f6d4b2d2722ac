"""The in-process event bus: fan-out of durable state changes to live subscribers.

Publishing never waits: each subscriber has a bounded buffer, and one that falls behind loses
the oldest-unsent events and is told how many (`Lagged`). Events are published from the
writer's commit callbacks, i.e. only after the change they describe is durable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from dtq.models import Task, Worker
from dtq.net.envelope import iso, now_iso
from dtq.net.views import task_out, worker_out

_encode = msgspec.json.Encoder().encode


class Event:
    """One change. `data` is encoded to JSON once, on first use, and shared by subscribers."""

    __slots__ = ("_json", "kind", "name", "queue", "status", "subject_id", "task", "worker")

    def __init__(self, kind: str, task: Task | None = None, worker: Worker | None = None) -> None:
        self.kind = kind
        self.task = task
        self.worker = worker
        self.subject_id = task.id if task else (worker.worker_id if worker else "")
        self.status = task.status.value if task else (worker.status.value if worker else "")
        self.queue = task.queue if task else ""
        self.name = task.name if task else ""
        self._json: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"event": self.kind}
        if self.task is not None:
            body["task"] = task_out(self.task)
            body["timestamp"] = iso(self.task.updated_at)
        elif self.worker is not None:
            body["worker"] = worker_out(self.worker)
            body["timestamp"] = now_iso()
        return body

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = _encode(self.to_dict())
        return self._json


class Lagged:
    """Sent to a subscriber in place of the `missed` events it was too slow to take."""

    __slots__ = ("missed",)

    def __init__(self, missed: int) -> None:
        self.missed = missed

    @property
    def json(self) -> bytes:
        return _encode({"event": "lagged", "missed": self.missed, "timestamp": now_iso()})


def batch_json(items: list[Event | Lagged]) -> bytes:
    """Several events in one WebSocket message: {"event": "batch", "events": [...]}.

    Under load a subscriber gets one message per wake-up instead of one per event: a
    WebSocket send costs far more than the bytes in it, and 100 subscribers would otherwise
    cost 100 sends per task change."""
    return b'{"event":"batch","count":%d,"events":[%s]}' % (
        len(items),
        b",".join(item.json for item in items),
    )


EventFilter = Callable[[Event], bool]


class Subscription:
    def __init__(self, bus: EventBus, accept: EventFilter | None, buffer: int) -> None:
        self._bus = bus
        self._accept = accept
        self._buffer: deque[Event] = deque()
        self._max = buffer
        self._wakeup = trio.Event()
        self.missed = 0
        self.closed = False

    def offer(self, event: Event) -> None:
        if self._accept is not None and not self._accept(event):
            return
        if len(self._buffer) >= self._max:
            self.missed += 1
            return
        self._buffer.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def next(self) -> Event | Lagged | None:
        """The next item; None once the bus closed and the buffer is empty."""
        while True:
            if self.missed:
                missed, self.missed = self.missed, 0
                return Lagged(missed)
            if self._buffer:
                return self._buffer.popleft()
            if self.closed:
                return None
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def take_ready(self, limit: int) -> list[Event]:
        """Up to `limit` more buffered events, without waiting (for batching on the wire)."""
        taken: list[Event] = []
        buffer = self._buffer
        while buffer and len(taken) < limit:
            taken.append(buffer.popleft())
        return taken

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0
        self.closed = False

    def subscribe(self, accept: EventFilter | None = None, *, buffer: int = 1000) -> Subscription:
        sub = Subscription(self, accept, buffer)
        if self.closed:
            sub.close()
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self._subs:
            sub.offer(event)

    def on_task(self, kind: str, task: Task) -> None:
        """TaskQueue listener."""
        if self._subs:
            self.publish(Event(kind, task=task))

    def on_worker(self, kind: str, worker: Worker) -> None:
        if self._subs:
            self.publish(Event(kind, worker=worker))

    def close(self) -> None:
        """Shutdown: every subscriber drains its buffer and ends."""
        self.closed = True
        for sub in self._subs:
            sub.close()
