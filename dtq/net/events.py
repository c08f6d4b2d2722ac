"""The in-process event bus: fan-out of durable state changes to live subscribers.

Publishing never waits: events go into one bounded log (a ring); each subscriber reads at its
own pace, and one that falls more than the log's length behind is told how many events it
missed (`Lagged`) and carries on from the oldest one kept. Events are published from the
writer's commit callbacks, i.e. only after the change they describe is durable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from dtq.models import QueueConfig, Task, Worker
from dtq.net.envelope import iso, now_iso
from dtq.net.views import task_out, worker_out

_encode = msgspec.json.Encoder().encode


def queue_config_out(config: QueueConfig) -> dict[str, Any]:
    return {
        "name": config.name,
        "paused": config.paused,
        "concurrency_limit": config.concurrency_limit,
        "concurrency_limit_per_key": config.concurrency_limit_per_key,
        "rate_limit_per_second": config.rate_limit_per_second,
        "updated_at": iso(config.updated_at),
    }


class Event:
    """One change. `data` is encoded to JSON once, on first use, and shared by subscribers."""

    __slots__ = (
        "_json", "config", "kind", "name", "queue", "status", "subject_id", "task", "worker",
    )  # fmt: skip

    def __init__(
        self,
        kind: str,
        task: Task | None = None,
        worker: Worker | None = None,
        config: QueueConfig | None = None,
    ) -> None:
        self.kind = kind
        self.config = config
        self.task = task
        self.worker = worker
        self.subject_id = task.id if task else (worker.worker_id if worker else "")
        self.status = task.status.value if task else (worker.status.value if worker else "")
        self.queue = task.queue if task else (config.name if config else "")
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
        elif self.config is not None:
            body["queue"] = queue_config_out(self.config)
            body["timestamp"] = iso(self.config.updated_at)
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


def message_text(items: list[Event | Lagged]) -> str:
    return (items[0].json if len(items) == 1 else batch_json(items)).decode()


EventFilter = Callable[[Event], bool]


class Subscription:
    """A reader's position in the bus's log. Costs the publisher nothing: filtering and
    copying happen when the subscriber reads, on its own time."""

    def __init__(self, bus: EventBus, accept: EventFilter | None) -> None:
        self._bus = bus
        self._accept = accept
        self._pos = bus.next_seq

    async def next_batch(self, limit: int = 500) -> list[Event | Lagged] | None:
        """The next events (at least one, at most `limit`), or `[Lagged(n)]` when the log moved
        on past this reader, or None once the bus is closed and everything was read."""
        bus = self._bus
        while True:
            if self._pos < bus.first_seq:
                missed = bus.first_seq - self._pos
                self._pos = bus.first_seq
                return [Lagged(missed)]
            if self._pos < bus.next_seq:
                end = min(bus.next_seq, self._pos + limit)
                batch = bus.read(self._pos, end)
                self._pos = end
                accept = self._accept
                items: list[Event | Lagged] = [e for e in batch if accept is None or accept(e)]
                if items:
                    return items
                continue
            if bus.closed:
                return None
            await bus.wait_published()

    async def next_message(self, limit: int = 500) -> str | None:
        """The next WebSocket message (one event, a batch, or a lagged notice), or None once
        the bus is closed. Unfiltered readers at the same position share one encoded message:
        with many dashboards open, a batch is built once, not once per reader."""
        if self._accept is None:
            start = self._pos
            items = await self.next_batch(limit)
            if items is None:
                return None
            if isinstance(items[0], Lagged):
                return items[0].json.decode()
            return self._bus.shared_message(start, self._pos, items)
        items = await self.next_batch(limit)
        if items is None:
            return None
        return message_text(items)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """A bounded log of recent events with one sequence number; publishing is O(1) whatever
    the number of subscribers (a ring buffer, and one wake-up for everyone waiting)."""

    def __init__(self, capacity: int = 1000) -> None:
        self._ring: list[Event | None] = [None] * max(capacity, 1)
        self.first_seq = 0  # oldest event still in the ring
        self.next_seq = 0  # the sequence number the next event gets
        self._published = trio.Event()
        self._subscribers = 0
        self._messages: dict[tuple[int, int], str] = {}
        self.closed = False

    def subscribe(self, accept: EventFilter | None = None) -> Subscription:
        self._subscribers += 1
        return Subscription(self, accept)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers -= 1

    @property
    def subscriber_count(self) -> int:
        return self._subscribers

    def read(self, start: int, end: int) -> list[Event]:
        ring, size = self._ring, len(self._ring)
        return [ring[seq % size] for seq in range(start, end)]  # type: ignore[misc]

    def shared_message(self, start: int, end: int, items: list[Event | Lagged]) -> str:
        """The message for the unfiltered range [start, end), built once per range."""
        key = (start, end)
        cached = self._messages.get(key)
        if cached is None:
            if len(self._messages) >= 64:
                self._messages.clear()
            cached = self._messages[key] = message_text(items)
        return cached

    async def wait_published(self) -> None:
        await self._published.wait()

    def publish(self, event: Event) -> None:
        size = len(self._ring)
        self._ring[self.next_seq % size] = event
        self.next_seq += 1
        if self.next_seq - self.first_seq > size:
            self.first_seq = self.next_seq - size
        woken, self._published = self._published, trio.Event()
        woken.set()

    def on_task(self, kind: str, task: Task) -> None:
        """TaskQueue listener."""
        if self._subscribers:
            self.publish(Event(kind, task=task))

    def on_worker(self, kind: str, worker: Worker) -> None:
        if self._subscribers:
            self.publish(Event(kind, worker=worker))

    def on_queue(self, kind: str, config: QueueConfig) -> None:
        """TaskQueue.queue_listeners entry: queue.paused / queue.resumed / queue.updated."""
        if self._subscribers:
            self.publish(Event(kind, config=config))

    def close(self) -> None:
        """Shutdown: every subscriber reads what is left, then ends."""
        self.closed = True
        self._published.set()


class ServerRelay:
    """Shared stores: this server's task events go to the other servers' buses, and theirs
    come into this one's, so `/ws/tasks` and `/ws/metrics` on any server see every server.

    Outgoing events are collected and handed to the store once per scheduling round (the
    store sends them in batches: one `NOTIFY` per batch on PostgreSQL); at most
    `max_pending` wait, older ones are dropped beyond that (counted in `dropped`), so a slow
    relay costs memory that is bounded, never a stall of the commit path. Incoming events are
    published on the local bus as they come; this server's own are skipped (it published them
    already)."""

    def __init__(self, bus: EventBus, store: Any, *, max_pending: int = 10_000) -> None:
        self.bus = bus
        self.store = store
        self.origin = uuid.uuid4().hex
        self.max_pending = max_pending
        self.dropped = 0
        self.relayed_in = 0
        self._pending: list[tuple[str, Task]] = []
        self._ready = trio.Event()
        store.changes.subscribe_events(self.on_foreign)

    def on_task(self, kind: str, task: Task) -> None:
        """TaskQueue listener."""
        pending = self._pending
        pending.append((kind, task))
        if len(pending) > self.max_pending:
            excess = len(pending) - self.max_pending
            del pending[:excess]
            self.dropped += excess
        self._ready.set()

    def on_foreign(self, origin: str, events: Sequence[tuple[str, Task]]) -> None:
        if origin == self.origin:
            return
        self.relayed_in += len(events)
        for kind, task in events:
            self.bus.publish(Event(kind, task=task))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            await trio.lowlevel.checkpoint()  # let the rest of this round's commits add theirs
            batch, self._pending = self._pending, []
            if batch:
                self.store.publish_events(self.origin, batch)
