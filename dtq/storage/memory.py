"""The in-memory store: the storage port with nothing kept on disk (durability mode `none`).

For tests and for trying dtq out (`dtq serve --store memory://`): nothing survives a stop.
It is honest about everything else the port promises, with LMDB's exact semantics:

- records are stored encoded (MessagePack, as LMDB keeps them), so a read is a fresh copy and a
  record that cannot be stored fails as it would on disk;
- every write op runs against an undo log: an op that raises leaves none of its writes, and
  its counter changes are merged only on success;
- ops commit in call order, each on the trio thread, with `on_commit` right after;
- orders are LMDB's key orders: tasks by (created µs, seq, id), pending by (queue, priority,
  seq), workers/users/keys by name bytes, deliveries by (created µs, id), due by (when µs, ref).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec
import trio

from dtq.clock import Clock, TrioClock
from dtq.errors import InvalidRequest, Unavailable
from dtq.models import (
    ApiKey,
    DayStats,
    Delivery,
    DeliveryRef,
    DeliveryStatus,
    Priority,
    QueueConfig,
    Schedule,
    Task,
    TaskEvent,
    TaskStatus,
    User,
    Webhook,
    Worker,
    WorkerStatus,
    epoch,
)
from dtq.storage import codec
from dtq.storage.base import (
    ChangeSignal,
    EventSink,
    LoginFailures,
    PendingRow,
    StoreTxn,
    TaskQuery,
    WriterStats,
)
from dtq.storage.counting import Deltas, apply_counters, apply_day

T = TypeVar("T")
_MISSING: Any = object()

_dec_user = msgspec.msgpack.Decoder(User).decode
_dec_key = msgspec.msgpack.Decoder(ApiKey).decode
_dec_hook = msgspec.msgpack.Decoder(Webhook).decode
_dec_delivery = msgspec.msgpack.Decoder(Delivery).decode
_dec_queue = msgspec.msgpack.Decoder(QueueConfig).decode


def _us(t: float) -> int:
    return int(t * 1_000_000)


def _uuid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes


def _created_order(task: Task) -> tuple[int, int, bytes]:
    return (_us(task.created_at), task.seq, _uuid_bytes(task.id))


def _updated_order(task: Task) -> tuple[int, int, bytes]:
    return (_us(task.updated_at), task.seq, _uuid_bytes(task.id))


def _ref_order(ref: DeliveryRef) -> tuple[bytes, int, bytes]:
    return (_uuid_bytes(ref.webhook_id), ref.created_us, _uuid_bytes(ref.id))


def _due_order(entry: tuple[int, DeliveryRef]) -> tuple[int, tuple[bytes, int, bytes]]:
    return (entry[0], _ref_order(entry[1]))


def _duration_order(task: Task) -> tuple[bool, int, int, int, bytes]:
    """(has a duration, whole µs (negative: 0), then created order): LMDB's by_duration."""
    d = task.duration
    return (d is not None, 0 if d is None else max(_us(d), 0), *_created_order(task))


class _State:
    """Every table, as plain dicts (values encoded)."""

    def __init__(self) -> None:
        self.tasks: dict[str, bytes] = {}
        self.idem: dict[str, tuple[str, bytes]] = {}
        self.workers: dict[str, bytes] = {}
        self.users: dict[str, bytes] = {}
        self.api_keys: dict[str, bytes] = {}
        self.kv: dict[str, str] = {}
        self.webhooks: dict[str, bytes] = {}
        self.deliveries: dict[DeliveryRef, bytes] = {}
        self.due: dict[tuple[int, DeliveryRef], None] = {}
        self.counters: dict[str, float] = {}
        self.queues: dict[str, bytes] = {}
        self.days: dict[int, DayStats] = {}
        self.events: dict[str, tuple[bytes, ...]] = {}  # task id -> its events, in order
        self.schedules: dict[str, bytes] = {}
        self.leads: dict[str, tuple[str, float]] = {}  # name -> (holder, until)
        self.hits: dict[str, tuple[int, float]] = {}  # rate-limit counter -> (total, expires)
        self.seq = 1  # the next enqueue sequence number
        self.buckets: dict[str, tuple[float, float]] = {}  # queue -> (tokens, updated)
        # username -> (its login throttle record, forget_at)
        self.login_failures: dict[str, tuple[LoginFailures, float]] = {}


class MemoryTxn:
    """`StoreTxn` over the live tables, with an undo log for this op's writes."""

    def __init__(self, store: MemoryStore, now: float) -> None:
        self._store = store
        self._s = store.state
        self.now = now
        self.deltas = Deltas()
        self.made_ready = False  # a task became pending: a shared store signals `changes`
        self._undo: list[tuple[dict[Any, Any], Any, Any]] = []

    def _set(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    def _del(self, table: dict[Any, Any], key: Any) -> bool:
        old = table.pop(key, _MISSING)
        if old is _MISSING:
            return False
        self._undo.append((table, key, old))
        return True

    def rollback(self) -> None:
        for table, key, old in reversed(self._undo):
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        self._undo.clear()

    # -- tasks --------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        raw = self._s.tasks.get(task_id)
        return None if raw is None else codec.decode_task(raw)

    def prefetch_tasks(self, task_ids: Sequence[str]) -> None:
        """Nothing to do: every read is in memory."""

    def next_seq(self) -> int:
        return self._store.take_seq()

    def insert_task(self, task: Task) -> Task:
        self._set(self._s.tasks, task.id, codec.encode(task))
        self.made_ready = True
        self.deltas.add("total")
        self.deltas.task_status(task.queue, task.status, 1)
        self.deltas.day(task.created_at, "created")
        if (sink := self._store.event_sink) is not None:
            sink(self, None, task)
        return task

    def replace_task(self, old: Task, new: Task) -> None:
        self._set(self._s.tasks, new.id, codec.encode(new))
        if new.status == TaskStatus.PENDING:
            self.made_ready = True
        if old.status != new.status:
            self.deltas.task_status(old.queue, old.status, -1)
            self.deltas.task_status(new.queue, new.status, 1)
        if (sink := self._store.event_sink) is not None:
            sink(self, old, new)

    def delete_task(self, task: Task) -> None:
        self._remove_task(task, notify=True)

    def prune_task(self, task: Task) -> None:
        self._remove_task(task, notify=False)

    def _remove_task(self, task: Task, *, notify: bool) -> None:
        self._del(self._s.tasks, task.id)
        self._del(self._s.events, task.id)
        if task.idempotency_key:
            self._del(self._s.idem, task.idempotency_key)
        self.deltas.task_removed(task)
        if notify and (sink := self._store.event_sink) is not None:
            sink(self, task, None)

    def finished_tasks(
        self,
        status: TaskStatus,
        *,
        after: tuple[int, int] | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int = 500,
    ) -> list[Task]:
        lo = (_us(since), 0) if since is not None else (-1, -1)
        hi = (_us(before), 0) if before is not None else None
        rows = []
        for task in (codec.decode_task(raw) for raw in self._s.tasks.values()):
            if task.status != status or task.completed_at is None:
                continue
            pos = (_us(task.completed_at), task.seq)
            if pos < lo or (hi is not None and pos >= hi) or (after is not None and pos <= after):
                continue
            rows.append((pos, task))
        rows.sort(key=lambda r: r[0])
        return [task for _, task in rows[:limit]]

    # -- history ------------------------------------------------------------------------
    def append_task_event(self, task_id: str, event: TaskEvent) -> None:
        self._set(self._s.events, task_id, (*self._s.events.get(task_id, ()), codec.encode(event)))

    # -- schedules ----------------------------------------------------------------------
    def get_schedule(self, name: str) -> Schedule | None:
        raw = self._s.schedules.get(name)
        return None if raw is None else codec.decode_schedule(raw)

    def put_schedule(self, schedule: Schedule) -> None:
        self._set(self._s.schedules, schedule.name, codec.encode(schedule))

    def delete_schedule(self, name: str) -> bool:
        return self._del(self._s.schedules, name)

    def count(self, name: str, n: float = 1) -> None:
        self.deltas.add(name, n)

    def count_day(self, t: float, name: str, n: float = 1) -> None:
        self.deltas.day(t, name, n)

    # -- idempotency --------------------------------------------------------------------
    def get_idempotent(self, key: str) -> tuple[str, bytes] | None:
        return self._s.idem.get(key)

    def put_idempotent(self, key: str, task_id: str, fingerprint: bytes) -> None:
        self._set(self._s.idem, key, (task_id, bytes(fingerprint)))

    # -- workers ------------------------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        raw = self._s.workers.get(worker_id)
        return None if raw is None else codec.decode_worker(raw)

    def put_worker(self, old: Worker | None, new: Worker) -> None:
        self._set(self._s.workers, new.worker_id, codec.encode(new))
        self.deltas.worker_changed(old, new)

    # -- accounts -----------------------------------------------------------------------
    def get_user(self, username: str) -> User | None:
        raw = self._s.users.get(username)
        return None if raw is None else _dec_user(raw)

    def put_user(self, user: User) -> None:
        self._set(self._s.users, user.username, codec.encode(user))

    def delete_user(self, username: str) -> bool:
        return self._del(self._s.users, username)

    def put_api_key(self, key: ApiKey) -> None:
        self._set(self._s.api_keys, key.key_id, codec.encode(key))

    def delete_api_key(self, key_id: str) -> bool:
        return self._del(self._s.api_keys, key_id)

    def get_setting(self, name: str) -> str | None:
        return self._s.kv.get(name)

    def put_setting(self, name: str, value: str) -> None:
        self._set(self._s.kv, name, value)

    # -- webhooks -----------------------------------------------------------------------
    def put_webhook(self, hook: Webhook) -> None:
        self._set(self._s.webhooks, str(uuid.UUID(hook.id)), codec.encode(hook))

    def delete_webhook(self, webhook_id: str) -> bool:
        return self._del(self._s.webhooks, str(uuid.UUID(webhook_id)))

    def get_delivery(self, ref: DeliveryRef) -> Delivery | None:
        raw = self._s.deliveries.get(ref)
        return None if raw is None else _dec_delivery(raw)

    def put_delivery(self, old: Delivery | None, new: Delivery) -> None:
        ref = new.ref
        self._set(self._s.deliveries, ref, codec.encode(new))
        if old is not None and old.next_attempt_at is not None:
            self._del(self._s.due, (_us(old.next_attempt_at), ref))
        if new.next_attempt_at is not None:
            self._set(self._s.due, (_us(new.next_attempt_at), ref), None)

    def delete_delivery(self, delivery: Delivery) -> None:
        ref = delivery.ref
        if delivery.next_attempt_at is not None:
            self._del(self._s.due, (_us(delivery.next_attempt_at), ref))
        self._del(self._s.deliveries, ref)

    # -- queue configs --------------------------------------------------------------------
    def get_queue_config(self, name: str) -> QueueConfig | None:
        raw = self._s.queues.get(name)
        return None if raw is None else _dec_queue(raw)

    def put_queue_config(self, config: QueueConfig) -> None:
        self._set(self._s.queues, config.name, codec.encode(config))

    def delete_queue_config(self, name: str) -> bool:
        return self._del(self._s.queues, name)

    # -- claims (`SharedTxn`): one op runs at a time here, so nothing is ever locked ----------
    def claim_ready(
        self, queues: frozenset[str] | None, names: frozenset[str] | None, limit: int
    ) -> list[Task]:
        due = [
            t
            for t in (codec.decode_task(raw) for raw in self._s.tasks.values())
            if t.status == TaskStatus.PENDING
            and (t.run_at is None or t.run_at <= self.now)
            and (queues is None or t.queue in queues)
            and (names is None or t.name in names)
        ]
        due.sort(key=lambda t: (t.priority.rank, t.ready_at or t.created_at, t.seq))
        return due[:limit]

    def claim_expired(self, limit: int) -> list[Task]:
        expired = [
            t
            for t in (codec.decode_task(raw) for raw in self._s.tasks.values())
            if t.status == TaskStatus.RUNNING
            and t.lease is not None
            and t.lease.expires_at <= self.now
        ]
        expired.sort(key=lambda t: (t.lease.expires_at if t.lease else 0.0, t.seq))
        return expired[:limit]

    def take_lead(self, name: str, holder: str, ttl_s: float) -> bool:
        current = self._s.leads.get(name)
        if current is None or current[0] == holder or current[1] <= self.now:
            self._set(self._s.leads, name, (holder, self.now + ttl_s))
            return True
        return False

    def lock_queue(self, queue: str) -> None:
        """Nothing to do: one op runs at a time."""

    def count_running(self, queue: str, concurrency_key: str | None = None) -> int:
        return sum(
            1
            for t in (codec.decode_task(raw) for raw in self._s.tasks.values())
            if t.status == TaskStatus.RUNNING
            and t.queue == queue
            and (concurrency_key is None or t.concurrency_key == concurrency_key)
        )

    def take_tokens(self, queue: str, rate_per_s: float, wanted: int) -> int:
        capacity = max(rate_per_s, 1.0)
        tokens, updated = self._s.buckets.get(queue, (capacity, self.now))
        tokens = min(capacity, tokens + max(self.now - updated, 0.0) * rate_per_s)
        taken = min(wanted, int(tokens))
        self._set(self._s.buckets, queue, (tokens - taken, self.now))
        return taken

    def add_hits(self, hits: Sequence[tuple[str, float, int]]) -> list[int]:
        table = self._s.hits
        for key in [k for k, (_, expires) in table.items() if expires <= self.now]:
            self._del(table, key)
        totals = []
        for key, expires_at, n in hits:
            total = table.get(key, (0, expires_at))[0] + n
            self._set(table, key, (total, expires_at))
            totals.append(total)
        return totals

    def login_failures(self, username: str) -> LoginFailures | None:
        row = self._s.login_failures.get(username)
        return None if row is None else row[0]

    def put_login_failures(self, username: str, record: LoginFailures, forget_at: float) -> None:
        self._set(self._s.login_failures, username, (record, forget_at))

    def clear_login_failures(self, username: str) -> None:
        self._del(self._s.login_failures, username)

    def forget_login_failures(self) -> None:
        table = self._s.login_failures
        for username in [u for u, (_, forget_at) in table.items() if forget_at <= self.now]:
            self._del(table, username)


class MemoryStore:
    """`Store` in this process's memory. One commit per write, on the trio thread."""

    durability = "none"

    def __init__(self, clock: Clock | None = None, *, shared: bool = False) -> None:
        # `shared`: behave as a store several servers use at once (tests of core's claim path:
        # two TaskQueues over one MemoryStore are two servers over one database).
        self.shared = shared
        self.changes: ChangeSignal | None = ChangeSignal() if shared else None
        self.state = _State()
        self.stats = WriterStats()
        self.commit_hooks: list[Callable[[int, float], None]] = []
        self.event_sink: EventSink | None = None
        self._clock = clock
        self._made_ready = False
        self._closing = False
        self._stopped = trio.Event()

    # -- life cycle and writes ------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._clock is None:
            self._clock = TrioClock()
        task_status.started()
        await self._stopped.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._stopped.set()

    def close(self) -> None:
        self._closing = True
        self._stopped.set()

    def set_event_sink(self, sink: EventSink | None) -> None:
        self.event_sink = sink

    def take_seq(self) -> int:
        seq = self.state.seq
        self.state.seq += 1
        return seq

    def connect_another(self) -> MemoryStore:
        """Another server's handle on the same data (a shared store only): it shares the
        tables and the change signal, and has its own life cycle, event sink and commit hooks,
        so one "server" can stop, or die, while the others carry on."""
        if not self.shared:
            raise ValueError("only a shared memory store has other handles")
        other = MemoryStore(self._clock, shared=True)
        other.state = self.state
        other.changes = self.changes
        return other

    def run_op(self, op: Callable[[StoreTxn], T], now: float) -> T:
        """Run one op as its own commit: all of its writes, or (if it raises) none."""
        view = MemoryTxn(self, now)
        try:
            result = op(view)
        except BaseException:
            view.rollback()
            raise
        s = self.state
        self._made_ready = view.made_ready
        apply_counters(s.counters, view.deltas)
        for day, fields in view.deltas.days.items():
            stats = s.days.get(day)
            stats = DayStats() if stats is None else msgspec.structs.replace(stats)
            apply_day(stats, fields)
            s.days[day] = stats
        return result

    async def write(
        self,
        op: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        ordered: bool = True,  # every op commits in call order
        quick: bool = False,  # (nothing to hand off: ops run on the event loop)
    ) -> T:
        if self._closing:
            raise Unavailable("the server is shutting down")
        if self._clock is None:
            self._clock = TrioClock()
        started = time.perf_counter()
        result = self.run_op(op, self._clock.now())
        elapsed = time.perf_counter() - started
        self.stats.record(1, elapsed)
        for hook in self.commit_hooks:
            hook(1, elapsed)
        if on_commit is not None:
            on_commit(result)
        if self.changes is not None and self._made_ready:
            self.changes.fire()  # what a NOTIFY does between servers
        # A commit is a scheduling point, as with the writer: other tasks run before we return.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    # -- task reads -------------------------------------------------------------------------
    def _all_tasks(self) -> list[Task]:
        return [codec.decode_task(raw) for raw in self.state.tasks.values()]

    async def get_task(self, task_id: str) -> Task | None:
        raw = self.state.tasks.get(task_id)
        return None if raw is None else codec.decode_task(raw)

    async def list_tasks(self, query: TaskQuery) -> tuple[list[Task], int]:
        q = query
        if q.sort not in ("created_at", "updated_at", "duration"):
            raise InvalidRequest(f"cannot sort by {q.sort!r}", field="sort")
        desc = q.order == "desc"
        priority = None if q.priority is None else Priority(q.priority)
        after, before = epoch(q.created_after), epoch(q.created_before)
        matched = [
            t
            for t in self._all_tasks()
            if (q.status is None or t.status == q.status)
            and (priority is None or t.priority == priority)
            and (q.worker_id is None or t.worker_id == q.worker_id)
            and (q.queue is None or t.queue == q.queue)
            and (q.name is None or t.name == q.name)
            and (q.tag is None or q.tag in t.tags)
            and (after is None or _us(t.created_at) >= _us(after))
            and (before is None or _us(t.created_at) < _us(before))
        ]
        # Each order is total (the id ends every key), so desc is exactly asc reversed.
        order = {"updated_at": _updated_order, "duration": _duration_order}.get(
            q.sort, _created_order
        )
        matched.sort(key=order, reverse=desc)
        return matched[q.skip : q.skip + q.limit], len(matched)

    async def list_task_events(
        self, task_id: str, skip: int = 0, limit: int | None = None
    ) -> list[TaskEvent]:
        end = None if limit is None else skip + limit
        return [codec.decode_event(raw) for raw in self.state.events.get(task_id, ())[skip:end]]

    async def count_task_events(self, task_id: str) -> int:
        return len(self.state.events.get(task_id, ()))

    async def counters(self) -> dict[str, float]:
        return dict(self.state.counters)

    # -- schedules --------------------------------------------------------------------------
    async def get_schedule(self, name: str) -> Schedule | None:
        raw = self.state.schedules.get(name)
        return None if raw is None else codec.decode_schedule(raw)

    async def list_schedules(self, skip: int = 0, limit: int | None = None) -> list[Schedule]:
        names = sorted(self.state.schedules, key=str.encode)
        end = None if limit is None else skip + limit
        return [codec.decode_schedule(self.state.schedules[n]) for n in names[skip:end]]

    async def count_schedules(self) -> int:
        return len(self.state.schedules)

    async def day_stats(self, first_day: int, last_day: int) -> list[tuple[int, DayStats]]:
        return [
            (day, msgspec.structs.replace(stats))
            for day, stats in sorted(self.state.days.items())
            if first_day <= day <= last_day
        ]

    # -- workers ----------------------------------------------------------------------------
    async def get_worker(self, worker_id: str) -> Worker | None:
        raw = self.state.workers.get(worker_id)
        return None if raw is None else codec.decode_worker(raw)

    async def list_workers(
        self, status: WorkerStatus | None, skip: int, limit: int
    ) -> tuple[list[Worker], int]:
        rows = sorted(self.state.workers.items(), key=lambda kv: kv[0].encode())
        matched = [w for w in (codec.decode_worker(raw) for _, raw in rows)
                   if status is None or w.status == status]  # fmt: skip
        return matched[skip : skip + limit], len(matched)

    # -- start-up ---------------------------------------------------------------------------
    def iter_pending(self) -> Iterator[PendingRow]:
        rows = [
            PendingRow(
                t.queue,
                t.priority.rank,
                t.seq,
                t.id,
                t.name,
                math.ceil(t.run_at * 1_000_000) / 1_000_000 if t.run_at else None,
                _us(t.ready_at or t.created_at) / 1_000_000,
                t.concurrency_key,
            )
            for t in self._all_tasks()
            if t.status == TaskStatus.PENDING
        ]
        rows.sort(key=lambda r: (r.queue.encode(), r.rank, r.seq))
        yield from rows

    def iter_leases(self) -> Iterator[tuple[float, str, str]]:
        running = sorted(
            (t for t in self._all_tasks() if t.status == TaskStatus.RUNNING), key=_created_order
        )
        yield from ((t.lease.expires_at, t.id, t.lease.id) for t in running if t.lease)

    def iter_running(self) -> Iterator[tuple[str, str, str | None]]:
        for t in self._all_tasks():
            if t.status == TaskStatus.RUNNING:
                yield t.id, t.queue, t.concurrency_key

    # -- queue configs ----------------------------------------------------------------------
    async def get_queue_config(self, name: str) -> QueueConfig | None:
        raw = self.state.queues.get(name)
        return None if raw is None else _dec_queue(raw)

    async def list_queue_configs(self) -> list[QueueConfig]:
        rows = sorted(self.state.queues.items(), key=lambda kv: kv[0].encode())
        return [_dec_queue(raw) for _, raw in rows]

    # -- accounts ---------------------------------------------------------------------------
    async def get_user(self, username: str) -> User | None:
        raw = self.state.users.get(username)
        return None if raw is None else _dec_user(raw)

    async def list_users(self) -> list[User]:
        rows = sorted(self.state.users.items(), key=lambda kv: kv[0].encode())
        return [_dec_user(raw) for _, raw in rows]

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        raw = self.state.api_keys.get(key_id)
        return None if raw is None else _dec_key(raw)

    async def list_api_keys(self) -> list[ApiKey]:
        rows = sorted(self.state.api_keys.items(), key=lambda kv: kv[0].encode())
        return [_dec_key(raw) for _, raw in rows]

    async def get_setting(self, name: str) -> str | None:
        return self.state.kv.get(name)

    # -- webhooks ---------------------------------------------------------------------------
    async def list_webhooks(self) -> list[Webhook]:
        rows = sorted(self.state.webhooks.items(), key=lambda kv: _uuid_bytes(kv[0]))
        return [_dec_hook(raw) for _, raw in rows]

    async def get_delivery(self, ref: DeliveryRef) -> Delivery | None:
        raw = self.state.deliveries.get(ref)
        return None if raw is None else _dec_delivery(raw)

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Delivery], int]:
        wid = str(uuid.UUID(webhook_id))
        refs = sorted((r for r in self.state.deliveries if r.webhook_id == wid), key=_ref_order,
                      reverse=newest_first)  # fmt: skip
        matched = [_dec_delivery(self.state.deliveries[r]) for r in refs]
        if status is not None:
            matched = [d for d in matched if d.status == status]
        end = None if limit is None else skip + limit
        return matched[skip:end], len(matched)

    def publish_events(self, origin: str, events: Sequence[tuple[str, Task]]) -> None:
        if self.changes is not None:
            self.changes.deliver_events(origin, list(events))

    async def next_run_at(self) -> float | None:
        now = self._clock.now() if self._clock is not None else time.time()
        times = [
            t.run_at
            for t in self._all_tasks()
            if t.status == TaskStatus.PENDING and t.run_at is not None and t.run_at > now
        ]
        return min(times) if times else None

    async def due_deliveries(self, limit: int) -> list[tuple[float, DeliveryRef]]:
        entries = sorted(self.state.due, key=_due_order)[:limit]
        return [(when / 1_000_000, ref) for when, ref in entries]
