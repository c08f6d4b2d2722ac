"""LMDB backend: the environment, the batch a commit runs, and reads. Knows nothing of HTTP.

Sub-databases (all keys big-endian so LMDB order is index order):

    tasks       task key (16)                          -> Task
    pending     queue NUL | priority | seq             -> task key + run_at_us + ready_at_us + name
    by_created  created_us | seq | task key            -> b""
    by_updated  updated_us | seq | task key            -> b""
    by_status   status | created_us | seq | task key   -> b""
    by_priority priority | created_us | seq | task key -> b""
    by_worker   worker NUL | created_us | seq | task key -> b""
    by_queue    queue NUL | created_us | seq | task key  -> b""
    by_name     name hash (16) | created_us | seq | task key -> b""
    by_tag      tag NUL | created_us | seq | task key     -> b""
    by_finished status | completed_us | seq | task key  -> b""   (final states only)
    by_duration has | duration_us | created_us | seq | task key -> b"" (see layouts)
    by_status_priority status | priority | created_us | seq | task key -> b""
    events      task key (16) | event number (8)        -> TaskEvent (numbered by seq)
    schedules   schedule name (utf-8)                   -> Schedule
    idem        idempotency key                        -> task key + body fingerprint
    workers     worker id                              -> Worker
    days        day number                             -> DayStats
    meta        b"counters" / b"seq"                   -> counters / next seq
    users, api_keys, kv, webhooks, deliveries, delivery_due: see `dtq.storage.lmdb.layouts`.

Writes go through the group-commit writer (`dtq.storage.lmdb.writer`), which runs `run_batch`
in one thread. The event sink, when set, sees every task change (old, new; None for
insert/delete) inside the operation's transaction, so it can write what the change owes in the
same commit.

Pending tasks with a future `run_at` stay in `pending`; the dispatcher keeps them in a heap
until due, so promotion costs no write.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import lmdb
import trio

from dtq.clock import Clock
from dtq.errors import StorageError
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
)
from dtq.storage import codec
from dtq.storage import keys as K
from dtq.storage.base import (
    JWT_SECRET_SETTING,
    ChangeSignal,
    EventSink,
    PendingRow,
    StoreTxn,
    TaskQuery,
    WriterStats,
    queue_counter,
)
from dtq.storage.lmdb import layouts as L
from dtq.storage.lmdb.listing import COUNTERS, Listing
from dtq.storage.lmdb.logged import BesideTheLog, CommitLog, LogBusy
from dtq.storage.lmdb.redo import RecordingTxn
from dtq.storage.lmdb.txn import Deltas, LmdbTxn
from dtq.storage.lmdb.writer import GroupCommitWriter

T = TypeVar("T")

# Append only: a write-ahead log record names tables by their place here.
TABLES = (
    "tasks", "pending", "by_created", "by_updated", "by_status", "by_priority",
    "by_worker", "by_queue", "by_name", "idem", "workers", "days", "meta",
    L.USERS, L.API_KEYS, L.KV, L.WEBHOOKS, L.DELIVERIES, L.DUE, L.QUEUES,
    "by_tag", "by_finished", "events", "schedules", L.BY_DURATION,
    L.BY_STATUS_PRIORITY,
)  # fmt: skip
# Which listing indexes this data directory has: stores written before by_queue/by_name
# existed get them built from the tasks at open.
_INDEX_VERSION_KEY = b"index_version"
# 2: by_tag and by_finished; 3: by_duration, by_status_priority and their counters
_INDEX_VERSION = 3
# Per-queue status counters (`queue_counter`): stores written before them get them counted
# from the tasks at open.
_QUEUE_COUNTERS_KEY = b"queue_counters_version"
_SEQ = b"seq"

_PENDING_VALUE = struct.Struct(">QQ")  # run_at_us, ready_at_us (after the 16-byte task key)
_SEQ_UNPACK = struct.Struct(">Q").unpack_from


class LmdbStore(Listing):
    """The LMDB environment. Reads run here directly; writes go through `GroupCommitWriter`."""

    def __init__(
        self,
        path: str,
        *,
        fsync: bool = True,
        map_size_bytes: int = 256 << 20,
        clock: Clock | None = None,
    ) -> None:
        os.makedirs(path, exist_ok=True)
        # Each commit's durability point is one record in the write-ahead log (synced with
        # fsync), unless another process (a server) holds the log; then LMDB syncs its own.
        self.log: CommitLog | None = None
        try:
            self.log = CommitLog(path, sync=fsync)
        except LogBusy:
            pass
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot open the write-ahead log in {path!r}: {exc}") from exc
        else:
            self.log.rewind_if_power_was_lost()
        lmdb_syncs = self.log is None
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size_bytes,
                max_dbs=len(TABLES) + 2,
                sync=lmdb_syncs,
                metasync=lmdb_syncs,
                readahead=False,
                max_readers=512,
            )
        except lmdb.Error as exc:
            if self.log is not None:
                self.log.abandon()
            raise StorageError(f"cannot open data directory {path!r}: {exc}") from exc
        if self.log is not None:
            self.log.opened(self.env)
        self.path = path
        self.db: dict[str, Any] = {}
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for name in TABLES:
                        self.db[name] = self.env.open_db(name.encode(), txn=txn, create=True)
                    self._tables = [self.db[name] for name in TABLES]
                    if self.log is not None:
                        self.log.recover(txn, self._tables, self.db["meta"])
                    raw = txn.get(_SEQ, db=self.db["meta"])
                    self._build_missing_indexes(txn)
                    self._build_queue_counters(txn)
                    self._adopt_secret_file(txn)
                break
            except lmdb.MapFullError:  # a map too small for the tables or indexes: grow it
                self.grow()
        self._table_number = {db: i for i, db in enumerate(self._tables)}
        self._beside: BesideTheLog | None = None
        if self.log is not None:
            try:
                self.log.start(self.env, self.db["meta"])
            except (OSError, lmdb.Error) as exc:
                self.log.abandon()
                self.env.close()
                raise StorageError(
                    f"cannot start the write-ahead log in {path!r} (is the disk full?): {exc}"
                ) from exc
        else:
            self._beside = BesideTheLog(path, self.env, self.db["meta"])
        self._seq = K.from_u64(raw) if raw else 1
        self._seq_dirty = False
        # Called in the writer thread with (txn view, old, new); swap it only between batches.
        self.event_sink: EventSink | None = None
        self.durability = "fsync" if fsync else "os"
        self.shared = False  # one process owns the environment
        self.changes: ChangeSignal | None = None
        self.writer = GroupCommitWriter(self, clock)
        self.stats: WriterStats = self.writer.stats
        self.commit_hooks: list[Callable[[int, float], None]] = self.writer.commit_hooks
        self.checkpoint_hooks: list[Callable[[bool, float], None]] = self.writer.checkpoint_hooks

    # -- the port's life cycle and writes ---------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.writer.run(task_status=task_status)

    async def aclose(self) -> None:
        await self.writer.aclose()

    async def write(
        self,
        op: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        ordered: bool = True,  # one writer: every op commits in call order
        quick: bool = False,
    ) -> T:
        return await self.writer.write(op, on_commit, quick=quick)

    def set_event_sink(self, sink: EventSink | None) -> None:
        self.event_sink = sink

    def close(self) -> None:
        try:
            if self.log is not None:
                self.log.close()
            if self._beside is not None:
                self._beside.close()
        finally:
            self.env.close()

    def _adopt_secret_file(self, txn: lmdb.Transaction) -> None:
        """Data directories from before the JWT secret lived in the store kept it in a file
        beside the environment: take it in, so tokens issued before stay valid."""
        key = JWT_SECRET_SETTING.encode()
        if txn.get(key, db=self.db[L.KV]) is not None:
            return
        try:
            with open(os.path.join(self.path, "jwt-secret")) as fh:
                secret = fh.read().strip()
        except FileNotFoundError:
            return
        if secret:
            txn.put(key, secret.encode(), db=self.db[L.KV])

    def _build_missing_indexes(self, txn: lmdb.Transaction) -> None:
        """Build the listing indexes (and counters) this store predates, once: the version
        recorded in `meta` says which it has.

        Runs in the open transaction, so an interrupted build leaves no half index behind.
        """
        meta = self.db["meta"]
        raw = txn.get(_INDEX_VERSION_KEY, db=meta)
        version = 0 if raw is None else K.from_u64(bytes(raw))
        if version >= _INDEX_VERSION:
            return
        if version < 2:
            self._build_v2(txn)
        if version < 3:
            self._build_v3(txn)
        txn.put(_INDEX_VERSION_KEY, K.u64(_INDEX_VERSION), db=meta)

    def _build_v2(self, txn: lmdb.Transaction) -> None:
        """by_queue, by_name, by_tag and by_finished."""
        by_queue, by_name = self.db["by_queue"], self.db["by_name"]
        by_tag, by_finished = self.db["by_tag"], self.db["by_finished"]
        for db in (by_queue, by_name, by_tag, by_finished):
            txn.drop(db, delete=False)
        for key, value in txn.cursor(db=self.db["tasks"]):
            tkey = bytes(key)
            task = codec.decode_task(value)
            txn.put(
                K.queue_index_key(task.queue, task.created_at, task.seq, tkey), b"", db=by_queue
            )
            txn.put(K.name_index_key(task.name, task.created_at, task.seq, tkey), b"", db=by_name)
            for tag in set(task.tags):
                txn.put(K.tag_index_key(tag, task.created_at, task.seq, tkey), b"", db=by_tag)
            if task.status.is_final and task.completed_at is not None:
                fkey = K.finished_key(task.status, task.completed_at, task.seq, tkey)
                txn.put(fkey, b"", db=by_finished)

    def _build_v3(self, txn: lmdb.Transaction) -> None:
        """by_duration, by_status_priority, and the counters of the priority filter and the
        status + priority one (their totals)."""
        by_duration, by_sp = self.db[L.BY_DURATION], self.db[L.BY_STATUS_PRIORITY]
        for db in (by_duration, by_sp):
            txn.drop(db, delete=False)
        n: dict[str, int] = {}
        for s in TaskStatus:
            for p in Priority:
                n[L.priority_counter(p)] = n[L.status_priority_counter(s, p)] = 0
        for key, value in txn.cursor(db=self.db["tasks"]):
            tkey = bytes(key)
            task = codec.decode_task(value)
            txn.put(L.duration_key(task, tkey), b"", db=by_duration)
            txn.put(L.status_priority_key(task, tkey), b"", db=by_sp)
            n[L.priority_counter(task.priority)] += 1
            n[L.status_priority_counter(task.status, task.priority)] += 1
        meta = self.db["meta"]
        raw = txn.get(COUNTERS, db=meta)
        counters = codec.decode_counters(raw) if raw else {}
        counters.update({name: v for name, v in n.items() if v or name in counters})
        txn.put(COUNTERS, codec.encode(counters), db=meta)

    def _build_queue_counters(self, txn: lmdb.Transaction) -> None:
        """Count tasks per (queue, status) once, for stores that predate those counters."""
        meta = self.db["meta"]
        if txn.get(_QUEUE_COUNTERS_KEY, db=meta) is not None:
            return
        raw = txn.get(COUNTERS, db=meta)
        counters = codec.decode_counters(raw) if raw else {}
        for _, value in txn.cursor(db=self.db["tasks"]):
            task = codec.decode_task(value)
            name = queue_counter(task.queue, task.status)
            counters[name] = counters.get(name, 0) + 1
        txn.put(COUNTERS, codec.encode(counters), db=meta)
        txn.put(_QUEUE_COUNTERS_KEY, K.u64(1), db=meta)

    # -- used by the writer thread ----------------------------------------------------------
    def take_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        self._seq_dirty = True
        return seq

    def run_batch(self, ops: list[Callable[[StoreTxn], Any]], now: float) -> list[tuple[bool, Any]]:
        """Run ops in one write transaction, each in its own nested one; commit once.

        Returns (ok, result-or-exception) per op. Must begin and commit in one thread
        (stack-findings trap 3). Raises lmdb errors for the whole batch (map full, disk).
        """
        if self.log is not None and self.log.pin_lost:
            self.log.checkpoint_now()  # (it fails: so does this batch, and the next tries again)
        outcomes: list[tuple[bool, Any]] = []
        batch = Deltas()
        seq_before = self._seq
        logged = self.log is not None
        txn = self.env.begin(write=True)
        try:
            top: Any = RecordingTxn(txn, self._table_number) if logged else txn
            for op in ops:
                child = self.env.begin(write=True, parent=txn)
                child_view: Any = RecordingTxn(child, self._table_number) if logged else child
                view = LmdbTxn(self, child_view, now)
                try:
                    result = op(view)
                except lmdb.Error:
                    child.abort()
                    raise
                except Exception as exc:  # an op's own failure; the others go on
                    child.abort()
                    outcomes.append((False, exc))
                    continue
                child.commit()
                if logged:
                    top.changes.extend(child_view.changes)
                batch.merge(view.deltas)
                outcomes.append((True, result))
            self._apply_deltas(top, batch)
            if self._seq_dirty:
                top.put(_SEQ, K.u64(self._seq), db=self.db["meta"])
            if logged and top.changes:
                assert self.log is not None
                self.log.commit(txn, top, self.db["meta"])
            else:
                txn.commit()  # (logged: nothing changed, nothing to make durable)
                if self._beside is not None:
                    self._beside.committed()
        except BaseException:
            txn.abort()
            self._seq = max(self._seq, seq_before)  # seqs are only ever skipped, never reused
            raise
        self._seq_dirty = False
        return outcomes

    def _apply_deltas(self, txn: lmdb.Transaction | RecordingTxn, d: Deltas) -> None:
        if d.counters:
            meta = self.db["meta"]
            raw = txn.get(COUNTERS, db=meta)
            counters = codec.decode_counters(raw) if raw else {}
            for k, v in d.counters.items():
                counters[k] = counters.get(k, 0) + v
            txn.put(COUNTERS, codec.encode(counters), db=meta)
        days_db = self.db["days"]
        for day, fields in d.days.items():
            key = K.day_key(day)
            raw = txn.get(key, db=days_db)
            stats = codec.decode_day(raw) if raw else DayStats()
            for k, v in fields.items():
                setattr(stats, k, getattr(stats, k) + v)
            txn.put(key, codec.encode(stats), db=days_db)

    def grow(self) -> int:
        """Double the map. Call only when no transaction of this process is open."""
        new_size = self.env.info()["map_size"] * 2
        self.env.set_mapsize(new_size)
        # Growing ended every transaction, the checkpoint's pin too: the next batch takes a
        # checkpoint first, before its commit could reuse the snapshot's pages.
        if self.log is not None and self.log.checkpointer is not None:
            self.log.pin_lost = True
        elif self.log is not None:  # still opening: the snapshot it opened at
            self.log.opened(self.env)
        return int(new_size)

    # -- reads (never wait for the writer; no transaction spans an await) ---------------
    def _get(self, table: str, key: bytes) -> bytes | None:
        with self.env.begin(db=self.db[table]) as txn:
            raw = txn.get(key)
        return None if raw is None else bytes(raw)

    def _values(self, table: str) -> list[bytes]:
        with self.env.begin(db=self.db[table]) as txn:
            return [bytes(v) for _, v in txn.cursor()]

    async def get_task(self, task_id: str) -> Task | None:
        with self.env.begin(db=self.db["tasks"]) as txn:
            raw = txn.get(K.task_key(task_id))
            return None if raw is None else codec.decode_task(raw)

    async def list_tasks(self, query: TaskQuery) -> tuple[list[Task], int]:
        return self.list_tasks_now(query)

    async def list_task_events(
        self, task_id: str, skip: int = 0, limit: int | None = None
    ) -> list[TaskEvent]:
        tkey = K.task_key(task_id)
        end = None if limit is None else skip + limit
        with self.env.begin(db=self.db["events"]) as txn:
            keys = itertools.islice(self._iter_keys(txn, self.db["events"], tkey, False), skip, end)
            return [codec.decode_event(txn.get(key, b"")) for key in keys]

    async def count_task_events(self, task_id: str) -> int:
        tkey = K.task_key(task_id)
        with self.env.begin(db=self.db["events"]) as txn:
            return sum(1 for _ in self._iter_keys(txn, self.db["events"], tkey, False))

    async def counters(self) -> dict[str, float]:
        return self.counters_now()

    def counters_now(self) -> dict[str, float]:
        with self.env.begin() as txn:
            raw = txn.get(COUNTERS, db=self.db["meta"])
        return codec.decode_counters(raw) if raw else {}

    async def day_stats(self, first_day: int, last_day: int) -> list[tuple[int, DayStats]]:
        rows: list[tuple[int, DayStats]] = []
        with self.env.begin(db=self.db["days"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(K.day_key(first_day)):
                return rows
            for key, raw in cur:
                day = K.from_u64(key)
                if day > last_day:
                    break
                rows.append((day, codec.decode_day(raw)))
        return rows

    async def get_worker(self, worker_id: str) -> Worker | None:
        raw = self._get("workers", worker_id.encode())
        return None if raw is None else codec.decode_worker(raw)

    async def list_workers(
        self, status: WorkerStatus | None, skip: int, limit: int
    ) -> tuple[list[Worker], int]:
        return self.list_workers_now(status, skip, limit)

    def list_workers_now(
        self, status: WorkerStatus | None, skip: int, limit: int
    ) -> tuple[list[Worker], int]:
        matched: list[Worker] = []
        with self.env.begin(db=self.db["workers"]) as txn:
            for _, raw in txn.cursor():
                w = codec.decode_worker(raw)
                if status is None or w.status == status:
                    matched.append(w)
        return matched[skip : skip + limit], len(matched)

    # -- accounts -------------------------------------------------------------------------
    async def get_user(self, username: str) -> User | None:
        raw = self._get(L.USERS, username.encode())
        return None if raw is None else L.decode_user(raw)

    async def list_users(self) -> list[User]:
        return [L.decode_user(v) for v in self._values(L.USERS)]

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        # One LMDB read (~2 us), no cache: a key created or revoked by `dtq keys` in another
        # process takes effect at once.
        raw = self._get(L.API_KEYS, key_id.encode())
        return None if raw is None else L.decode_api_key(raw)

    async def list_api_keys(self) -> list[ApiKey]:
        return [L.decode_api_key(v) for v in self._values(L.API_KEYS)]

    async def get_setting(self, name: str) -> str | None:
        raw = self._get(L.KV, name.encode())
        return None if raw is None else raw.decode()

    # -- schedules ------------------------------------------------------------------------
    async def get_schedule(self, name: str) -> Schedule | None:
        raw = self._get("schedules", name.encode())
        return None if raw is None else codec.decode_schedule(raw)

    async def list_schedules(self, skip: int = 0, limit: int | None = None) -> list[Schedule]:
        end = None if limit is None else skip + limit
        rows: list[Schedule] = []
        with self.env.begin(db=self.db["schedules"]) as txn:
            for i, (_, raw) in enumerate(txn.cursor()):
                if i < skip:
                    continue
                if end is not None and i >= end:
                    break
                rows.append(codec.decode_schedule(raw))
        return rows

    async def count_schedules(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.db["schedules"])["entries"])

    # -- webhooks -------------------------------------------------------------------------
    async def list_webhooks(self) -> list[Webhook]:
        return [L.decode_webhook(v) for v in self._values(L.WEBHOOKS)]

    async def get_delivery(self, ref: DeliveryRef) -> Delivery | None:
        raw = self._get(L.DELIVERIES, L.delivery_key(ref))
        return None if raw is None else L.decode_delivery(raw)

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Delivery], int]:
        db = self.db[L.DELIVERIES]
        prefix = L.webhook_key(webhook_id)
        end = None if limit is None else skip + limit
        with self.env.begin(db=db) as txn:
            keys = list(self._iter_keys(txn, db, prefix, newest_first))
            if status is None:  # count keys, decode only the page
                page = [txn.get(k) for k in keys[skip:end]]
                return [L.decode_delivery(raw) for raw in page if raw is not None], len(keys)
            matched = [
                d for d in (L.decode_delivery(txn.get(k, b"")) for k in keys) if d.status == status
            ]
        return matched[skip:end], len(matched)

    async def due_deliveries(self, limit: int) -> list[tuple[float, DeliveryRef]]:
        db = self.db[L.DUE]
        rows: list[tuple[float, DeliveryRef]] = []
        with self.env.begin(db=db) as txn:
            for key in self._iter_keys(txn, db, b"", False):
                if len(rows) >= limit:
                    break
                when, dkey = L.split_due_key(key)
                rows.append((when, L.ref_of_key(dkey)))
        return rows

    # -- start-up -------------------------------------------------------------------------
    def iter_pending(self) -> Iterator[PendingRow]:
        """Every pending task, in index order (queue, priority, seq).

        Start-up reads a million of these: fields are unpacked with one struct call, and
        queue and task names are shared strings rather than a copy per task.
        """
        names: dict[bytes, str] = {}
        queues: dict[bytes, str] = {}
        unpack = _PENDING_VALUE.unpack_from
        with self.env.begin(db=self.db["pending"]) as txn:
            for key, val in txn.cursor():
                key = bytes(key)
                sep = key.index(K.SEP)
                qraw = key[:sep]
                queue = queues.get(qraw) or queues.setdefault(qraw, qraw.decode())
                nraw = bytes(val[32:])
                ckey = None
                if K.SEP in nraw:  # name NUL concurrency key
                    nraw, _, kraw = nraw.partition(K.SEP)
                    ckey = kraw.decode()
                name = names.get(nraw) or names.setdefault(nraw, nraw.decode())
                h = bytes(val[:16]).hex()
                run_at_us, ready_us = unpack(val, 16)
                yield PendingRow(
                    queue,
                    key[sep + 1],
                    _SEQ_UNPACK(key, sep + 2)[0],
                    f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
                    name,
                    run_at_us / 1_000_000 if run_at_us else None,
                    ready_us / 1_000_000,
                    ckey,
                )

    def iter_leases(self) -> Iterator[tuple[float, str, str]]:
        """(expires_at, task id, lease id) of every running task."""
        prefix = K.STATUS_BYTE[TaskStatus.RUNNING]
        with self.env.begin() as txn:
            rows = []
            for key in self._iter_keys(txn, self.db["by_status"], prefix, False):
                raw = txn.get(key[-16:], db=self.db["tasks"])
                task = codec.decode_task(raw) if raw else None
                if task is not None and task.lease is not None:
                    rows.append((task.lease.expires_at, task.id, task.lease.id))
        yield from rows

    def iter_running(self) -> Iterator[tuple[str, str, str | None]]:
        """(task id, queue, concurrency_key) of every running task."""
        prefix = K.STATUS_BYTE[TaskStatus.RUNNING]
        rows = []
        with self.env.begin() as txn:
            for key in self._iter_keys(txn, self.db["by_status"], prefix, False):
                raw = txn.get(key[-16:], db=self.db["tasks"])
                if raw is not None:
                    task = codec.decode_task(raw)
                    rows.append((task.id, task.queue, task.concurrency_key))
        yield from rows

    # -- queue configs ----------------------------------------------------------------------
    async def get_queue_config(self, name: str) -> QueueConfig | None:
        raw = self._get(L.QUEUES, name.encode())
        return None if raw is None else L.decode_queue(raw)

    async def list_queue_configs(self) -> list[QueueConfig]:
        return [L.decode_queue(v) for v in self._values(L.QUEUES)]
