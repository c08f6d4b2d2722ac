"""Wake-ups and live events between servers on PostgreSQL: LISTEN/NOTIFY under trio.

What the PostgreSQL store uses to fill the port's `ChangeSignal` (`Store.changes`):

- **Ready.** The writer runs `notify_ready(cursor)` inside a commit batch in which some op made
  a task ready (created, retried, released, expired...). PostgreSQL delivers a notification
  only when its transaction commits, and folds identical ones of one transaction into one, so
  this is one `NOTIFY` per commit batch however many tasks it made ready, never one for a
  rolled-back batch. Every server's `Listener` then fires `changes`, and its parked long polls
  claim again.
- **Events.** `Publisher.publish` relays committed task events (`SharedStore.publish_events`)
  as `NOTIFY` payloads on a channel of their own, batched, each payload under PostgreSQL's
  8000-byte limit. A task too big for one payload is not relayed (counted in `too_big`); the
  queue of payloads waiting to be sent is bounded (`dropped` counts what overflowed): live
  views are best effort, the task records are the truth.
- **Poll mode.** `DTQ_PG_NOTIFY=off` (`notify_enabled`): for poolers in transaction mode
  (PgBouncer) and PostgreSQL-compatible engines without LISTEN/NOTIFY (CockroachDB). The store
  then starts no `Listener`: parked long polls and the reaper look at the database every
  `shared_poll_s` (1 s) anyway.

Wiring, in the PostgreSQL store: `self.changes = ChangeSignal()`; in `run`, unless
`notify_enabled(settings.pg_notify)` is false, start `Listener(url, self.changes).run` and
`Publisher(url).run` in its nursery; `publish_events` is `publisher.publish` (a no-op in poll
mode); the writer calls `notify_ready` in a batch where an op inserted a pending task or
replaced a task with a pending one.

psycopg's async connection is asyncio-only, so the listening connection is the sync one, made
and fed in a worker thread, and woken on the trio thread by `trio.lowlevel.wait_readable` on its
socket (checked to work here, see docs/stack-findings). A lost connection is re-made with
backoff, and `changes` fires once it is back, since notifications sent meanwhile are lost.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgspec
import structlog
import trio

from dtq.models import Task
from dtq.storage.base import ChangeSignal

log = structlog.get_logger("dtq.storage.postgres")

READY_CHANNEL = "dtq_ready"
EVENTS_CHANNEL = "dtq_events"
MAX_PAYLOAD_BYTES = 7900  # PostgreSQL refuses a payload of 8000 bytes or more
MAX_QUEUED_PAYLOADS = 1000
_RECONNECT_S = (0.1, 0.5, 1.0, 2.0, 5.0)


def notify_enabled(value: str | None) -> bool:
    """`DTQ_PG_NOTIFY`: on unless "off" / "0" / "false" / "no" (poll mode)."""
    return (value or "on").strip().lower() not in ("off", "0", "false", "no")


def notify_ready(cursor: Any) -> None:
    """Inside the commit batch's transaction (see the module): wake every server at commit."""
    cursor.execute(f"SELECT pg_notify('{READY_CHANNEL}', '')")


class _Relayed(msgspec.Struct, array_like=True):
    origin: str
    events: list[tuple[str, Task]]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Relayed).decode


def encode_events(
    origin: str, events: Sequence[tuple[str, Task]], limit: int = MAX_PAYLOAD_BYTES
) -> tuple[list[str], int]:
    """Payloads of at most `limit` bytes holding the events in order; and how many events
    were too big to fit a payload on their own (left out)."""
    payloads: list[str] = []
    too_big = 0
    batch: list[tuple[str, Task]] = []
    size = len(_encode(_Relayed(origin, [])))
    for kind, task in events:
        one = len(_encode((kind, task))) + 1
        if size + one > limit:
            if batch:
                payloads.append(_encode(_Relayed(origin, batch)).decode())
                batch, size = [], len(_encode(_Relayed(origin, [])))
            if size + one > limit:
                too_big += 1
                continue
        batch.append((kind, task))
        size += one
    if batch:
        payloads.append(_encode(_Relayed(origin, batch)).decode())
    return payloads, too_big


def decode_events(payload: str) -> tuple[str, list[tuple[str, Task]]]:
    relayed = _decode(payload)
    return relayed.origin, relayed.events


Connect = Callable[[str], Any]  # conninfo -> an autocommit psycopg.Connection


def _connect(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo, autocommit=True)


class Listener:
    """One LISTEN connection per server; fires `signal` for ready tasks and hands relayed
    events to `signal.deliver_events`."""

    def __init__(self, conninfo: str, signal: ChangeSignal, *, connect: Connect = _connect):
        self.conninfo = conninfo
        self.signal = signal
        self._connect = connect
        self.received = 0  # notifications taken in (a figure for tests and /metrics)
        self.reconnects = 0

    def _open(self) -> Any:
        conn = self._connect(self.conninfo)
        conn.execute(f"LISTEN {READY_CHANNEL}")
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        return conn

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        failures = 0
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._open)
            except Exception as exc:  # the database is down: try again, say so once a while
                if not started:
                    raise
                delay = _RECONNECT_S[min(failures, len(_RECONNECT_S) - 1)]
                failures += 1
                log.warning("LISTEN connection failed; retrying", error=str(exc), retry_in_s=delay)
                await trio.sleep(delay)
                continue
            failures = 0
            if started:
                self.reconnects += 1
            self.signal.fire()  # anything sent while we were not listening is lost: look
            if not started:
                started = True
                task_status.started()
            try:
                await self._listen(conn)
            except Exception as exc:
                log.warning("LISTEN connection lost; reconnecting", error=str(exc))
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(conn.close)

    async def _listen(self, conn: Any) -> None:
        pgconn = conn.pgconn
        while True:
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()  # raises once the connection is gone
            ready = False
            while (note := pgconn.notifies()) is not None:
                self.received += 1
                channel = note.relname.decode()
                if channel == READY_CHANNEL:
                    ready = True
                elif channel == EVENTS_CHANNEL:
                    try:
                        origin, events = decode_events(note.extra.decode())
                    except (msgspec.DecodeError, UnicodeDecodeError):
                        continue  # not ours (another version): skip it
                    self.signal.deliver_events(origin, events)
            if ready:
                self.signal.fire()  # once per wake-up, however many arrived together
            if pgconn.status != 0:  # CONNECTION_OK
                raise ConnectionError("LISTEN connection is not OK")


class Publisher:
    """Sends relayed events as NOTIFY payloads on a connection of its own, in a thread;
    `publish` never waits."""

    def __init__(self, conninfo: str, *, connect: Connect = _connect) -> None:
        self.conninfo = conninfo
        self._connect = connect
        self._queue: collections.deque[str] = collections.deque()
        self._ready = trio.Event()
        self.sent = 0
        self.dropped = 0
        self.too_big = 0

    def publish(self, origin: str, events: Sequence[tuple[str, Task]]) -> None:
        payloads, too_big = encode_events(origin, events)
        self.too_big += too_big
        self._queue.extend(payloads)
        while len(self._queue) > MAX_QUEUED_PAYLOADS:
            self._queue.popleft()
            self.dropped += 1
        if payloads:
            self._ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        conn: Any = None
        task_status.started()
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                batch = list(self._queue)
                self._queue.clear()
                try:
                    if conn is None:
                        conn = await trio.to_thread.run_sync(self._connect, self.conninfo)
                    await trio.to_thread.run_sync(partial(self._send, conn, batch))
                    self.sent += len(batch)
                except Exception as exc:  # lost: live views miss these; the next batch retries
                    self.dropped += len(batch)
                    log.warning("events not relayed", error=str(exc), dropped=len(batch))
                    conn = None
                    await trio.sleep(0.5)
        finally:
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(conn.close)

    @staticmethod
    def _send(conn: Any, payloads: list[str]) -> None:
        conn.execute(
            f"SELECT pg_notify('{EVENTS_CHANNEL}', p) FROM unnest(%s::text[]) AS p", [payloads]
        )
