"""The storage port: everything core needs from a backend, and all it may know of one.

Backends (`dtq.storage.lmdb`, `dtq.storage.memory`, later PostgreSQL) implement `Store`; core
imports only this module from storage. No table names and no byte keys cross the port: every
method takes and returns the records of `dtq.models`.

Writes. A write operation is a plain function of a `StoreTxn`. `Store.write(op, on_commit)`
runs it in the backend's next commit, which may hold many operations (group commit):

- *Atomic per operation*: an op that raises leaves none of its writes behind; the other ops of
  the same commit are unaffected and commit. A storage failure fails the whole commit (every op
  in it raises `StorageError`/`Unavailable`), and nothing of it is stored.
- *Ordered*: ops commit in the order `write` was called, and an op sees the writes of every op
  committed before it (including earlier ops of its own commit).
- *Unordered* (`write(op, ordered=False)`): for an op whose outcome must not depend on ops
  called before it that have not committed yet (an ack, a shared store's claim). A shared store
  may commit it beside the ordered commits, before or after ops called earlier (PostgreSQL: in a
  second transaction while the first is in the database); row locks order it against them, as
  they order two servers' commits. It sees every commit made before it began. Embedded stores
  commit it in call order like any other.
- *Quick* (`write(op, quick=True)`): a hint that the op writes a handful of rows (one task
  and what follows from it). An embedded store may commit a quick op that is alone in its
  batch on the event loop itself (LMDB, while its commits stay quick), sparing the hand-off to
  its writer thread and back; it never does so for other ops, which may be large (a purge, a
  prune, a batch ack) and would hold up the loop. Other stores ignore it.
- *Durable on return*: `write` returns (or `on_commit` runs) only after the commit holding the
  op is as durable as the backend's durability mode promises (`fsync`: on disk; `os`: survives
  a process crash; `none`, the memory store: until the process stops).
- `on_commit(result)` runs on the trio thread right after the commit, before any other caller
  resumes, so in-memory state (dispatcher, caches) follows commit order.

Reads. Methods a networked backend must wait for are `async`; an embedded backend may answer at
once. A read sees every write whose `write` call has returned; it never waits for the writer.
Sync reads (`iter_pending`, `iter_leases`) are start-up only.

Shared stores. A store with `shared = True` (PostgreSQL) may be used by several dtq servers at
once, so no server's memory sees every write. Core then keeps no in-memory ready queues: a lease
claims in the database (`StoreTxn.claim_ready`, rows locked and others' locks skipped) and grants
in the same transaction; the reaper claims expired leases the same way (`claim_expired`), so
each is handled once whichever server gets there; `StoreTxn.now` is the database's clock, one
for every server; `take_lead` elects one server for work that must run once (webhook
delivery); `changes` tells core that another server made tasks ready, so parked long polls try
again. An embedded store (LMDB, memory) has `shared = False`: one process owns it and core's
in-memory dispatcher is the fast path (`claim_ready` is then unused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

import trio

from dtq.models import (
    ApiKey,
    DayStats,
    Delivery,
    DeliveryRef,
    DeliveryStatus,
    QueueConfig,
    Schedule,
    Task,
    TaskEvent,
    TaskStatus,
    User,
    Webhook,
    Worker,
    WorkerStatus,
)

T = TypeVar("T")

SECONDS_PER_DAY = 86400
# Counter names a backend keeps itself (besides one per TaskStatus value and what ops count):
# total, workers_total, workers_active, duration_sum, duration_n, and per queue one per status
# (`queue_counter`), so a queue's pending/running/failed figures cost one read.
QUEUE_COUNTER_PREFIX = "queue\x00"


def queue_counter(queue: str, status: str) -> str:
    """The counter of tasks of `queue` in `status` (queue names never hold NUL)."""
    return f"{QUEUE_COUNTER_PREFIX}{queue}\x00{status}"


def queue_counts(counters: dict[str, float]) -> dict[str, dict[str, int]]:
    """queue -> status -> count, from `Store.counters()` (every queue a task ever named)."""
    out: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        if name.startswith(QUEUE_COUNTER_PREFIX):
            queue, _, status = name[len(QUEUE_COUNTER_PREFIX) :].rpartition("\x00")
            out.setdefault(queue, {})[status] = int(value)
    return out


def day_number(t: float) -> int:
    """Days since the epoch (UTC): the key of `day_stats`."""
    return int(t // SECONDS_PER_DAY)


class TaskQuery(Protocol):
    status: TaskStatus | None
    priority: Any
    worker_id: str | None
    queue: str | None
    name: str | None
    tag: str | None
    created_after: datetime | None  # inclusive (naive: UTC)
    created_before: datetime | None  # exclusive
    sort: str  # created_at | updated_at | duration
    order: str  # asc | desc
    skip: int
    limit: int


class PendingRow(NamedTuple):
    """One pending task as start-up sees it (`Store.iter_pending`)."""

    queue: str
    rank: int  # Priority.rank
    seq: int
    task_id: str
    name: str
    run_at: float | None
    ready_at: float
    concurrency_key: str | None = None


# (origin server id, [(event kind, task)]): task events another server published
EventRelayListener = Callable[[str, "Sequence[tuple[str, Task]]"], None]
# (txn, old, new): a task change, inside the op that makes it (None: inserted / deleted)
EventSink = Callable[["StoreTxn", Task | None, Task | None], None]


class WriterStats:
    """What a backend's writer reports (the /metrics commit figures)."""

    __slots__ = ("commit_seconds_total", "commits", "last_batch", "max_batch", "ops")

    def __init__(self) -> None:
        self.commits = 0
        self.ops = 0
        self.last_batch = 0
        self.max_batch = 0
        self.commit_seconds_total = 0.0

    def record(self, batch: int, seconds: float) -> None:
        self.commits += 1
        self.ops += batch
        self.last_batch = batch
        self.max_batch = max(self.max_batch, batch)
        self.commit_seconds_total += seconds


class ChangeSignal:
    """A shared store's word to core that something changed that this process did not commit:
    another server made tasks ready (a `NOTIFY`, one per commit batch, not per task). Fired on
    the trio thread; listeners must not block. It may fire spuriously (a claim then finds
    nothing) and may be late or missed (core polls about once a second while it waits), so it is
    a hint for speed, never the truth."""

    __slots__ = ("_event_listeners", "_listeners", "fired")

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._event_listeners: list[EventRelayListener] = []
        self.fired = 0  # how many times (a figure for /metrics and tests)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def fire(self) -> None:
        self.fired += 1
        for listener in list(self._listeners):
            listener()

    # Task events relayed between servers (`SharedStore.publish_events`), so live views on any
    # server see every server's changes. Best effort: a relay may drop events under overload.
    def subscribe_events(self, listener: EventRelayListener) -> None:
        self._event_listeners.append(listener)

    def deliver_events(self, origin: str, events: Sequence[tuple[str, Task]]) -> None:
        """The backend: events published by server `origin` arrived (trio thread)."""
        for listener in list(self._event_listeners):
            listener(origin, events)


class StoreTxn(Protocol):
    """One operation's view inside a write transaction. Sync: it runs where the backend runs
    the commit (LMDB: the writer thread), so it must touch nothing but the transaction.

    Reads see this op's own writes and those of every op committed before it.
    """

    # The commit's wall-clock time, one value for every op in it. A shared store takes it from
    # the database (`now()` of the transaction), so every server judges lease expiry alike.
    now: float

    # -- tasks: every index (listing, pending, idempotency on delete) follows these -----------
    def get_task(self, task_id: str) -> Task | None: ...
    def prefetch_tasks(self, task_ids: Sequence[str]) -> None:
        """A hint: `get_task` will be asked for these next (a batch ack). A networked store
        reads (and locks, in id order) them in one round trip; an embedded one ignores it."""
        ...

    def insert_task(self, task: Task) -> Task:
        """Store a new task (`task.seq` from `next_seq`); counts total, status, day created."""
        ...

    def replace_task(self, old: Task, new: Task) -> None:
        """`old` must be the stored version; moves every index entry that changed."""
        ...

    def delete_task(self, task: Task) -> None:
        """Remove the task, its index entries and its idempotency key; counters follow."""
        ...

    def prune_task(self, task: Task) -> None:
        """Remove it as `delete_task` does (events included), but tell no event sink: retention
        ages data out, nobody deleted it. Counters follow as for `delete_task`."""
        ...

    def finished_tasks(
        self,
        status: TaskStatus,
        *,
        after: tuple[int, int] | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int = 500,
    ) -> list[Task]:
        """Up to `limit` tasks of a final `status` in (completed_at µs, seq) order, from the
        finish-time index: only those with `since <= completed_at < before`, and strictly
        after the position `after` = (completed_at in whole µs, seq) of the last one seen."""
        ...

    # -- history: one event per transition, in the transaction that made it -------------------
    def append_task_event(self, task_id: str, event: TaskEvent) -> None:
        """Add an event after the task's others (its history is removed with the task)."""
        ...

    # -- schedules ------------------------------------------------------------------------------
    def get_schedule(self, name: str) -> Schedule | None: ...
    def put_schedule(self, schedule: Schedule) -> None: ...
    def delete_schedule(self, name: str) -> bool: ...

    def next_seq(self) -> int:
        """A new enqueue sequence number, larger than every one handed out before (numbers
        of a failed commit may be skipped, never reused)."""
        ...

    def count(self, name: str, n: float = 1) -> None: ...
    def count_day(self, t: float, name: str, n: float = 1) -> None:
        """Add to the `DayStats` field `name` of the day of `t`."""
        ...

    # -- idempotency keys ---------------------------------------------------------------------
    def get_idempotent(self, key: str) -> tuple[str, bytes] | None:
        """(task id, body fingerprint) stored under an idempotency key."""
        ...

    def put_idempotent(self, key: str, task_id: str, fingerprint: bytes) -> None: ...

    # -- workers ------------------------------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None: ...
    def put_worker(self, old: Worker | None, new: Worker) -> None:
        """`old` is the stored version (None: new); keeps workers_total/workers_active."""
        ...

    # -- accounts -----------------------------------------------------------------------------
    def get_user(self, username: str) -> User | None: ...
    def put_user(self, user: User) -> None: ...
    def delete_user(self, username: str) -> bool: ...
    def put_api_key(self, key: ApiKey) -> None: ...
    def delete_api_key(self, key_id: str) -> bool: ...
    def get_setting(self, name: str) -> str | None:
        """A small server-wide value (e.g. the JWT signing secret), shared by every server."""
        ...

    def put_setting(self, name: str, value: str) -> None: ...

    # -- webhooks and the delivery outbox -----------------------------------------------------
    def put_webhook(self, hook: Webhook) -> None: ...
    def delete_webhook(self, webhook_id: str) -> bool:
        """The record only; its deliveries are dropped separately (`delete_delivery`)."""
        ...

    def get_delivery(self, ref: DeliveryRef) -> Delivery | None: ...
    def put_delivery(self, old: Delivery | None, new: Delivery) -> None:
        """`old` is the stored version (None: new). The due index holds exactly the stored
        deliveries whose `next_attempt_at` is set."""
        ...

    def delete_delivery(self, delivery: Delivery) -> None: ...

    # -- queue configs ------------------------------------------------------------------------
    def get_queue_config(self, name: str) -> QueueConfig | None: ...
    def put_queue_config(self, config: QueueConfig) -> None: ...
    def delete_queue_config(self, name: str) -> bool: ...


class Store(Protocol):
    """A backend. Open it with `dtq.server.open_store`; run `run` in a nursery before the first
    write and `aclose` to flush; `close` releases it."""

    durability: str  # fsync | os | none
    # Several servers may use this store at once (see the module): core claims in the store.
    shared: bool
    # Shared stores: fired when another server made tasks ready (None: never fires).
    changes: ChangeSignal | None
    stats: WriterStats
    # (batch size, seconds) after every commit, on the trio thread
    commit_hooks: list[Callable[[int, float], None]]

    # -- life cycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take writes until `aclose`."""
        ...

    async def aclose(self) -> None:
        """Refuse new writes (`Unavailable`), commit the queued ones, stop `run`."""
        ...

    def close(self) -> None: ...

    # -- writes -------------------------------------------------------------------------------
    async def write(
        self,
        op: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        ordered: bool = True,
        quick: bool = False,
    ) -> T:
        """Run `op` in the next commit; return its result once durable (see the module).
        `ordered=False`: see *Unordered*; `quick=True`: see *Quick* in the module."""
        ...

    def set_event_sink(self, sink: EventSink | None) -> None:
        """Let `sink` see every task change inside the op's transaction (it may write there,
        e.g. the deliveries a change owes). Swap it only on the trio thread."""
        ...

    # -- task reads ---------------------------------------------------------------------------
    async def get_task(self, task_id: str) -> Task | None: ...
    async def list_tasks(self, query: TaskQuery) -> tuple[list[Task], int]:
        """One page and the number of matching tasks. Filters (all given must match): status,
        priority, worker_id, queue, name, tag, created_after <= created_at < created_before.

        Sorts, each a total order (so `desc` is exactly `asc` reversed, and paging through a
        listing that does not change meets every task once):

        - created_at: (created_at in whole µs, seq, id bytes);
        - updated_at: (updated_at in whole µs, seq, id bytes);
        - duration: tasks without a duration first, then by the duration in whole µs
          (a negative one counts as 0), ties in created_at order as above; so in `desc` the
          longest come first and the tasks without one last, newest of them first.

        Raises InvalidRequest on another sort. A backend should answer any page (the last
        one of a million tasks too) in about the time of the first."""
        ...

    async def list_task_events(
        self, task_id: str, skip: int = 0, limit: int | None = None
    ) -> list[TaskEvent]:
        """A task's events in the order they were appended (empty for an unknown task): those
        after the first `skip`, at most `limit` of them (None: all)."""
        ...

    async def count_task_events(self, task_id: str) -> int:
        """How many events the task has (0 for an unknown task)."""
        ...

    async def counters(self) -> dict[str, float]: ...
    async def day_stats(self, first_day: int, last_day: int) -> list[tuple[int, DayStats]]:
        """Stored days in [first_day, last_day], in order; days with no activity are absent."""
        ...

    # -- workers ------------------------------------------------------------------------------
    async def get_worker(self, worker_id: str) -> Worker | None: ...
    async def list_workers(
        self, status: WorkerStatus | None, skip: int, limit: int
    ) -> tuple[list[Worker], int]:
        """Workers in id order, one page, and how many match."""
        ...

    # -- start-up (sync: read once, before serving) --------------------------------------------
    def iter_pending(self) -> Iterator[PendingRow]:
        """Every pending task in (queue, priority rank, seq) order."""
        ...

    def iter_leases(self) -> Iterator[tuple[float, str, str]]:
        """(expires_at, task id, lease id) of every running task."""
        ...

    def iter_running(self) -> Iterator[tuple[str, str, str | None]]:
        """(task id, queue, concurrency_key) of every running task (the limits' count)."""
        ...

    # -- queue configs ------------------------------------------------------------------------
    async def get_queue_config(self, name: str) -> QueueConfig | None: ...
    async def list_queue_configs(self) -> list[QueueConfig]:
        """In name (byte) order."""
        ...

    # -- accounts -----------------------------------------------------------------------------
    async def get_user(self, username: str) -> User | None: ...
    async def list_users(self) -> list[User]:
        """In username order."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKey | None: ...
    async def list_api_keys(self) -> list[ApiKey]:
        """In key id order."""
        ...

    async def get_setting(self, name: str) -> str | None: ...

    # -- schedules ----------------------------------------------------------------------------
    async def get_schedule(self, name: str) -> Schedule | None: ...
    async def list_schedules(self, skip: int = 0, limit: int | None = None) -> list[Schedule]:
        """In name order (byte order of the UTF-8 name)."""
        ...

    async def count_schedules(self) -> int: ...

    # -- webhooks -----------------------------------------------------------------------------
    async def list_webhooks(self) -> list[Webhook]:
        """In id order."""
        ...

    async def get_delivery(self, ref: DeliveryRef) -> Delivery | None: ...
    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Delivery], int]:
        """A webhook's deliveries ordered by (created_us, id), one page, and how many match."""
        ...

    async def due_deliveries(self, limit: int) -> list[tuple[float, DeliveryRef]]:
        """(next_attempt_at, ref) of the first `limit` pending deliveries, soonest first
        (ties by ref order). Times are rounded down to the microsecond."""
        ...


class SharedTxn(StoreTxn, Protocol):
    """The transaction of a shared store (`Store.shared`): claims in the database."""

    def claim_ready(
        self, queues: frozenset[str] | None, names: frozenset[str] | None, limit: int
    ) -> list[Task]:
        """Up to `limit` pending tasks due by `now` (`run_at` unset or <= now) in the given
        queues / with the given names (None: any), in dispatch order: priority rank, then
        `ready_at` (else `created_at`), then `seq`. Each row is locked until this commit ends;
        rows another transaction holds are skipped, never waited for (PostgreSQL: one
        `SELECT ... FOR UPDATE SKIP LOCKED`). The caller changes them with `replace_task` in the
        same op."""
        ...

    def claim_expired(self, limit: int) -> list[Task]:
        """Up to `limit` running tasks whose lease expired by `now`, soonest first, locked and
        skipping locked rows as `claim_ready` does."""
        ...

    def take_lead(self, name: str, holder: str, ttl_s: float) -> bool:
        """Hold the lead called `name` for `ttl_s` seconds from `now` if nobody holds it, its
        holder's time ran out, or `holder` already holds it (a renewal); True if `holder` holds
        it now. Atomic across servers (PostgreSQL: one `INSERT ... ON CONFLICT DO UPDATE ...
        WHERE`)."""
        ...

    # Queue limits that must hold across servers (paused, running per queue and per key,
    # leases per second): a claim locks each limited queue, then reads the facts in SQL.
    def lock_queue(self, queue: str) -> None:
        """Serialize claims on `queue` across servers until this commit ends (PostgreSQL:
        `pg_advisory_xact_lock`), so counts read after it cannot be raced by another claim."""
        ...

    def count_running(self, queue: str, concurrency_key: str | None = None) -> int:
        """Running tasks of `queue` (with that `concurrency_key`, if given), committed ones and
        this transaction's."""
        ...

    def take_tokens(self, queue: str, rate_per_s: float, wanted: int) -> int:
        """Take up to `wanted` lease tokens from `queue`'s bucket (`rate_per_s` a second, at
        most one second's worth saved, full when new), refilled up to `now`; returns how many
        were taken. Call it under `lock_queue`."""
        ...

    def add_hits(self, hits: Sequence[tuple[str, float, int]]) -> list[int]:
        """Rate-limit counters shared by every server: for each (counter key, expires_at,
        n), add n to the counter (made at 0 if absent) and return its total, in order. A
        counter is dropped once `now` passes its expires_at (PostgreSQL: one `INSERT ... ON
        CONFLICT DO UPDATE ... RETURNING` for the batch, rows locked in key order)."""
        ...

    # The login throttle's records (`dtq.core.auth.shared_throttle`), one per username.
    def login_failures(self, username: str) -> LoginFailures | None:
        """The username's record, locked until this commit ends, absent or not (PostgreSQL:
        `FOR UPDATE`, and an advisory lock while absent), so two servers' attempts take turns."""
        ...

    def put_login_failures(self, username: str, record: LoginFailures, forget_at: float) -> None:
        """Store the record; it may be dropped once `now` passes `forget_at`."""
        ...

    def clear_login_failures(self, username: str) -> None: ...

    def forget_login_failures(self) -> None:
        """Drop every record whose `forget_at` has passed (`now`)."""
        ...


# (failures counted, the last one's time, the end of its lock), times in epoch seconds
LoginFailures = tuple[int, float, float]


class SharedStore(Store, Protocol):
    """A store several servers use at once (`shared = True`)."""

    async def next_run_at(self) -> float | None:
        """The earliest `run_at` of the pending tasks not yet due, or None (shared stores: the
        moment a parked long poll must look again)."""
        ...

    def publish_events(self, origin: str, events: Sequence[tuple[str, Task]]) -> None:
        """Relay committed task events to every server's `changes.deliver_events` (this one's
        too: listeners skip their own `origin`). Never waits: a backend queues and sends them
        in batches (PostgreSQL: `NOTIFY` payloads), and may drop what it cannot send."""
        ...


# `StoreTxn.get_setting` names
JWT_SECRET_SETTING = "jwt_secret"
