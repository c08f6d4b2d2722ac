"""LMDB backend: key layout, indexes and counters. Knows nothing of HTTP.

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
    idem        idempotency key                        -> task key + body fingerprint
    workers     worker id                              -> Worker
    days        day number                             -> DayStats
    meta        b"counters" / b"seq"                   -> counters / next seq
    users, api_keys, kv: owned by other modules, raw bytes.
    webhooks, deliveries, delivery_due: the webhook outbox (layout in `dtq.core.webhooks.outbox`).

`LmdbStore.event_sink`, when set, sees every task change (old, new; None for insert/delete)
inside the operation's transaction, so it can write what the change owes in the same commit.

Pending tasks with a future `run_at` stay in `pending`; the dispatcher keeps them in a heap
until due, so promotion costs no write.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import lmdb

from dtq.errors import InvalidRequest, StorageError
from dtq.models import DayStats, Priority, Task, TaskStatus, Worker, WorkerStatus
from dtq.storage import codec
from dtq.storage import keys as K
from dtq.storage.base import TaskQuery

T = TypeVar("T")

TABLES = (
    "tasks", "pending", "by_created", "by_updated", "by_status", "by_priority",
    "by_worker", "by_queue", "by_name", "idem", "workers", "days", "meta", "users", "api_keys", "kv",
    "webhooks", "deliveries", "delivery_due",
)  # fmt: skip
_COUNTERS = b"counters"
# Which listing indexes this data directory has: stores written before by_queue/by_name
# existed get them built from the tasks at open.
_INDEX_VERSION_KEY = b"index_version"
_INDEX_VERSION = 1
_SEQ = b"seq"
_SECONDS_PER_DAY = 86400


_PENDING_VALUE = struct.Struct(">QQ")  # run_at_us, ready_at_us (after the 16-byte task key)
_SEQ_UNPACK = struct.Struct(">Q").unpack_from


class PendingRow(NamedTuple):
    queue: str
    rank: int
    seq: int
    task_id: str
    name: str
    run_at: float | None
    ready_at: float


def day_number(t: float) -> int:
    return int(t // _SECONDS_PER_DAY)


class Deltas:
    """Counter and per-day changes made by one operation, merged into the batch on success."""

    __slots__ = ("counters", "days")

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.days: dict[int, dict[str, float]] = {}

    def add(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def day(self, t: float, name: str, n: float = 1) -> None:
        d = self.days.setdefault(day_number(t), {})
        d[name] = d.get(name, 0) + n

    def merge(self, other: Deltas) -> None:
        for k, v in other.counters.items():
            self.add(k, v)
        for day, fields in other.days.items():
            mine = self.days.setdefault(day, {})
            for k, v in fields.items():
                mine[k] = mine.get(k, 0) + v


class LmdbTxn:
    """`StoreTxn` over one nested LMDB write transaction (one per operation)."""

    def __init__(self, store: LmdbStore, txn: lmdb.Transaction, now: float) -> None:
        self._s = store
        self._txn = txn
        self.now = now
        self.deltas = Deltas()

    # -- tasks --------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        raw = self._txn.get(K.task_key(task_id), db=self._s.db["tasks"])
        return None if raw is None else codec.decode_task(raw)

    def next_seq(self) -> int:
        return self._s.take_seq()

    def insert_task(self, task: Task) -> Task:
        tkey = K.task_key(task.id)
        db = self._s.db
        put = self._txn.put
        put(tkey, codec.encode(task), db=db["tasks"])
        put(K.time_id_key(task.created_at, task.seq, tkey), b"", db=db["by_created"])
        put(K.time_id_key(task.updated_at, task.seq, tkey), b"", db=db["by_updated"])
        put(K.status_key(task.status, task.created_at, task.seq, tkey), b"", db=db["by_status"])
        put(
            K.priority_key(task.priority, task.created_at, task.seq, tkey),
            b"",
            db=db["by_priority"],
        )
        put(K.queue_index_key(task.queue, task.created_at, task.seq, tkey), b"", db=db["by_queue"])
        put(K.name_index_key(task.name, task.created_at, task.seq, tkey), b"", db=db["by_name"])
        self._index_state(task, tkey, add=True)
        self.deltas.add("total")
        self.deltas.add(task.status)
        self.deltas.day(task.created_at, "created")
        if (sink := self._s.event_sink) is not None:
            sink(self, None, task)
        return task

    def replace_task(self, old: Task, new: Task) -> None:
        tkey = K.task_key(new.id)
        db = self._s.db
        txn = self._txn
        txn.put(tkey, codec.encode(new), db=db["tasks"])
        if old.updated_at != new.updated_at:
            txn.delete(K.time_id_key(old.updated_at, old.seq, tkey), db=db["by_updated"])
            txn.put(K.time_id_key(new.updated_at, new.seq, tkey), b"", db=db["by_updated"])
        if old.status != new.status:
            txn.delete(K.status_key(old.status, old.created_at, old.seq, tkey), db=db["by_status"])
            txn.put(
                K.status_key(new.status, new.created_at, new.seq, tkey), b"", db=db["by_status"]
            )
            self.deltas.add(old.status, -1)
            self.deltas.add(new.status, 1)
        if old.priority != new.priority:
            txn.delete(
                K.priority_key(old.priority, old.created_at, old.seq, tkey), db=db["by_priority"]
            )
            txn.put(
                K.priority_key(new.priority, new.created_at, new.seq, tkey),
                b"",
                db=db["by_priority"],
            )
        if old.worker_id != new.worker_id:
            if old.worker_id:
                txn.delete(
                    K.worker_index_key(old.worker_id, old.created_at, old.seq, tkey),
                    db=db["by_worker"],
                )
            if new.worker_id:
                txn.put(
                    K.worker_index_key(new.worker_id, new.created_at, new.seq, tkey),
                    b"",
                    db=db["by_worker"],
                )
        if old.queue != new.queue:
            txn.delete(
                K.queue_index_key(old.queue, old.created_at, old.seq, tkey), db=db["by_queue"]
            )
            txn.put(
                K.queue_index_key(new.queue, new.created_at, new.seq, tkey), b"", db=db["by_queue"]
            )
        if old.name != new.name:
            txn.delete(K.name_index_key(old.name, old.created_at, old.seq, tkey), db=db["by_name"])
            txn.put(
                K.name_index_key(new.name, new.created_at, new.seq, tkey), b"", db=db["by_name"]
            )
        self._index_state(old, tkey, add=False)
        self._index_state(new, tkey, add=True)
        if (sink := self._s.event_sink) is not None:
            sink(self, old, new)

    def delete_task(self, task: Task) -> None:
        tkey = K.task_key(task.id)
        db = self._s.db
        txn = self._txn
        txn.delete(tkey, db=db["tasks"])
        txn.delete(K.time_id_key(task.created_at, task.seq, tkey), db=db["by_created"])
        txn.delete(K.time_id_key(task.updated_at, task.seq, tkey), db=db["by_updated"])
        txn.delete(K.status_key(task.status, task.created_at, task.seq, tkey), db=db["by_status"])
        txn.delete(
            K.priority_key(task.priority, task.created_at, task.seq, tkey), db=db["by_priority"]
        )
        if task.worker_id:
            txn.delete(
                K.worker_index_key(task.worker_id, task.created_at, task.seq, tkey),
                db=db["by_worker"],
            )
        txn.delete(
            K.queue_index_key(task.queue, task.created_at, task.seq, tkey), db=db["by_queue"]
        )
        txn.delete(K.name_index_key(task.name, task.created_at, task.seq, tkey), db=db["by_name"])
        self._index_state(task, tkey, add=False)
        if task.idempotency_key:
            txn.delete(task.idempotency_key.encode(), db=db["idem"])
        self.deltas.add("total", -1)
        self.deltas.add(task.status, -1)
        if task.status == TaskStatus.COMPLETED and task.duration is not None:
            self.deltas.add("duration_sum", -task.duration)
            self.deltas.add("duration_n", -1)
        if (sink := self._s.event_sink) is not None:
            sink(self, task, None)

    def _index_state(self, task: Task, tkey: bytes, *, add: bool) -> None:
        """Keep the pending index in step with the task's state. (Leases need no index: on
        start-up they are rebuilt from the running tasks, which saves two writes per lease.)"""
        if task.status == TaskStatus.PENDING:
            key = K.ready_key(task.queue, task.priority, task.seq)
            if add:
                run_at_us = K.micros_ceil(task.run_at) if task.run_at else 0
                ready_us = K.micros(task.ready_at or task.created_at)
                value = tkey + K.u64(run_at_us) + K.u64(ready_us) + task.name.encode()
                self._txn.put(key, value, db=self._s.db["pending"])
            else:
                self._txn.delete(key, db=self._s.db["pending"])

    def count(self, name: str, n: float = 1) -> None:
        self.deltas.add(name, n)

    def count_day(self, t: float, name: str, n: float = 1) -> None:
        self.deltas.day(t, name, n)

    # -- idempotency ----------------------------------------------------------------------
    def get_idempotent(self, key: str) -> tuple[str, bytes] | None:
        raw = self._txn.get(key.encode(), db=self._s.db["idem"])
        if raw is None:
            return None
        raw = bytes(raw)
        return K.task_id_from_key(raw[:16]), raw[16:]

    def put_idempotent(self, key: str, task_id: str, fingerprint: bytes) -> None:
        self._txn.put(key.encode(), K.task_key(task_id) + fingerprint, db=self._s.db["idem"])

    # -- workers --------------------------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        raw = self._txn.get(worker_id.encode(), db=self._s.db["workers"])
        return None if raw is None else codec.decode_worker(raw)

    def put_worker(self, old: Worker | None, new: Worker) -> None:
        self._txn.put(new.worker_id.encode(), codec.encode(new), db=self._s.db["workers"])
        if old is None:
            self.deltas.add("workers_total")
        was_active = old is not None and old.status == WorkerStatus.ACTIVE
        is_active = new.status == WorkerStatus.ACTIVE
        if was_active != is_active:
            self.deltas.add("workers_active", 1 if is_active else -1)

    # -- raw tables (users, api keys, ...) -------------------------------------------------
    def get_raw(self, table: str, key: bytes) -> bytes | None:
        raw = self._txn.get(key, db=self._s.db[table])
        return None if raw is None else bytes(raw)

    def put_raw(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._s.db[table])

    def delete_raw(self, table: str, key: bytes) -> bool:
        return bool(self._txn.delete(key, db=self._s.db[table]))


class LmdbStore:
    """The LMDB environment. Reads run here directly; writes go through `GroupCommitWriter`."""

    def __init__(self, path: str, *, fsync: bool = True, map_size_bytes: int = 256 << 20) -> None:
        import os

        os.makedirs(path, exist_ok=True)
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size_bytes,
                max_dbs=len(TABLES) + 2,
                sync=fsync,
                metasync=fsync,
                readahead=False,
                max_readers=512,
            )
        except lmdb.Error as exc:
            raise StorageError(f"cannot open data directory {path!r}: {exc}") from exc
        self.path = path
        self.db: dict[str, Any] = {}
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for name in TABLES:
                        self.db[name] = self.env.open_db(name.encode(), txn=txn, create=True)
                    raw = txn.get(_SEQ, db=self.db["meta"])
                    self._build_missing_indexes(txn)
                break
            except lmdb.MapFullError:  # a map too small for the tables or indexes: grow it
                self.grow()
        self._seq = K.from_u64(raw) if raw else 1
        self._seq_dirty = False
        # Called in the writer thread with (txn view, old, new); swap it only between batches.
        self.event_sink: Callable[[LmdbTxn, Task | None, Task | None], None] | None = None

    def close(self) -> None:
        self.env.close()

    def _build_missing_indexes(self, txn: lmdb.Transaction) -> None:
        """Build by_queue and by_name from the tasks when this store predates them.

        Runs in the open transaction, so an interrupted build leaves no half index behind.
        """
        meta = self.db["meta"]
        raw = txn.get(_INDEX_VERSION_KEY, db=meta)
        if raw is not None and K.from_u64(bytes(raw)) >= _INDEX_VERSION:
            return
        by_queue, by_name = self.db["by_queue"], self.db["by_name"]
        txn.drop(by_queue, delete=False)
        txn.drop(by_name, delete=False)
        for key, value in txn.cursor(db=self.db["tasks"]):
            tkey = bytes(key)
            task = codec.decode_task(value)
            txn.put(
                K.queue_index_key(task.queue, task.created_at, task.seq, tkey), b"", db=by_queue
            )
            txn.put(K.name_index_key(task.name, task.created_at, task.seq, tkey), b"", db=by_name)
        txn.put(_INDEX_VERSION_KEY, K.u64(_INDEX_VERSION), db=meta)

    # -- used by the writer thread ----------------------------------------------------------
    def take_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        self._seq_dirty = True
        return seq

    def run_batch(self, ops: list[Callable[[LmdbTxn], Any]], now: float) -> list[tuple[bool, Any]]:
        """Run ops in one write transaction, each in its own nested one; commit once.

        Returns (ok, result-or-exception) per op. Must begin and commit in one thread
        (stack-findings trap 3). Raises lmdb errors for the whole batch (map full, disk).
        """
        outcomes: list[tuple[bool, Any]] = []
        batch = Deltas()
        seq_before = self._seq
        txn = self.env.begin(write=True)
        try:
            for op in ops:
                child = self.env.begin(write=True, parent=txn)
                view = LmdbTxn(self, child, now)
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
                batch.merge(view.deltas)
                outcomes.append((True, result))
            self._apply_deltas(txn, batch)
            if self._seq_dirty:
                txn.put(_SEQ, K.u64(self._seq), db=self.db["meta"])
            txn.commit()
        except BaseException:
            txn.abort()
            self._seq = max(self._seq, seq_before)  # seqs are only ever skipped, never reused
            raise
        self._seq_dirty = False
        return outcomes

    def _apply_deltas(self, txn: lmdb.Transaction, d: Deltas) -> None:
        if d.counters:
            meta = self.db["meta"]
            raw = txn.get(_COUNTERS, db=meta)
            counters = codec.decode_counters(raw) if raw else {}
            for k, v in d.counters.items():
                counters[k] = counters.get(k, 0) + v
            txn.put(_COUNTERS, codec.encode(counters), db=meta)
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
        return int(new_size)

    # -- reads (never wait for the writer; no transaction spans an await) ---------------
    def get_task(self, task_id: str) -> Task | None:
        with self.env.begin(db=self.db["tasks"]) as txn:
            raw = txn.get(K.task_key(task_id))
            return None if raw is None else codec.decode_task(raw)

    def counters(self) -> dict[str, float]:
        with self.env.begin() as txn:
            raw = txn.get(_COUNTERS, db=self.db["meta"])
        return codec.decode_counters(raw) if raw else {}

    def day_stats(self, first_day: int, last_day: int) -> Iterator[tuple[int, DayStats]]:
        """Stored days in [first_day, last_day], in order; days with no activity are absent."""
        with self.env.begin(db=self.db["days"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(K.day_key(first_day)):
                return
            rows = []
            for key, raw in cur:
                day = K.from_u64(key)
                if day > last_day:
                    break
                rows.append((day, codec.decode_day(raw)))
        yield from rows

    def get_worker(self, worker_id: str) -> Worker | None:
        with self.env.begin(db=self.db["workers"]) as txn:
            raw = txn.get(worker_id.encode())
        return None if raw is None else codec.decode_worker(raw)

    def list_workers(
        self, status: WorkerStatus | None, skip: int, limit: int
    ) -> tuple[list[Worker], int]:
        matched: list[Worker] = []
        with self.env.begin(db=self.db["workers"]) as txn:
            for _, raw in txn.cursor():
                w = codec.decode_worker(raw)
                if status is None or w.status == status:
                    matched.append(w)
        return matched[skip : skip + limit], len(matched)

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

    def get_raw(self, table: str, key: bytes) -> bytes | None:
        with self.env.begin(db=self.db[table]) as txn:
            raw = txn.get(key)
        return None if raw is None else bytes(raw)

    def iter_raw(self, table: str) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin(db=self.db[table]) as txn:
            rows = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        yield from rows

    def scan_raw(
        self,
        table: str,
        prefix: bytes = b"",
        *,
        reverse: bool = False,
        limit: int | None = None,
        values: bool = True,
    ) -> list[tuple[bytes, bytes]]:
        """Rows whose key starts with `prefix`, in key order (or reversed), at most `limit`.
        With `values=False` every value is b"" (cheaper: counting, collecting keys)."""
        db = self.db[table]
        rows: list[tuple[bytes, bytes]] = []
        with self.env.begin(db=db) as txn:
            for key in self._iter_keys(txn, db, prefix, reverse):
                if limit is not None and len(rows) >= limit:
                    break
                rows.append((key, bytes(txn.get(key, b"")) if values else b""))
        return rows

    # -- listing --------------------------------------------------------------------------
    def list_tasks(self, q: TaskQuery) -> tuple[list[Task], int]:
        """Filter, sort and page. Walks the narrowest index; totals from counters when exact."""
        desc = q.order == "desc"
        filters: list[tuple[str, Any]] = []
        if q.status is not None:
            filters.append(("status", q.status))
        if q.priority is not None:
            filters.append(("priority", q.priority))
        if q.worker_id is not None:
            filters.append(("worker_id", q.worker_id))
        if q.queue is not None:
            filters.append(("queue", q.queue))
        if q.name is not None:
            filters.append(("name", q.name))
        with self.env.begin() as txn:
            if q.sort == "created_at":
                db, prefix = self._created_index(q)
                return self._walk(txn, db, prefix, desc, q, filters)
            if q.sort == "updated_at":
                return self._walk(txn, self.db["by_updated"], b"", desc, q, filters)
            if q.sort == "duration":
                db, prefix = self._created_index(q)
                tasks = list(self._matching(txn, db, prefix, filters))
                tasks.sort(key=_duration_key, reverse=desc)
                return tasks[q.skip : q.skip + q.limit], len(tasks)
        raise InvalidRequest(f"cannot sort by {q.sort!r}", field="sort")

    def _created_index(self, q: TaskQuery) -> tuple[Any, bytes]:
        # The index most likely to be narrowest first; the other filters check each task.
        if q.worker_id is not None:
            return self.db["by_worker"], q.worker_id.encode() + K.SEP
        if q.name is not None:
            return self.db["by_name"], K.name_prefix(q.name)
        if q.queue is not None:
            return self.db["by_queue"], K.queue_prefix(q.queue)
        if q.status is not None:
            return self.db["by_status"], K.STATUS_BYTE[q.status]
        if q.priority is not None:
            return self.db["by_priority"], K.PRIORITY_BYTE[Priority(q.priority)]
        return self.db["by_created"], b""

    def _iter_keys(
        self, txn: lmdb.Transaction, db: Any, prefix: bytes, desc: bool
    ) -> Iterator[bytes]:
        cur = txn.cursor(db)
        if desc:
            end = _prefix_end(prefix) if prefix else None
            positioned = cur.prev() if end is not None and cur.set_range(end) else cur.last()
            if not positioned:
                return
            walk = cur.iterprev(values=False)
        else:
            if not cur.set_range(prefix):
                return
            walk = cur.iternext(values=False)
        for key in walk:
            key = bytes(key)
            if not key.startswith(prefix):
                return
            yield key

    def _matching(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        filters: list[tuple[str, Any]],
        desc: bool = False,
    ) -> Iterator[Task]:
        tasks_db = self.db["tasks"]
        for key in self._iter_keys(txn, db, prefix, desc):
            raw = txn.get(key[-16:], db=tasks_db)
            if raw is None:
                continue
            task = codec.decode_task(raw)
            if all(getattr(task, f) == v for f, v in filters):
                yield task

    def _walk(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        q: TaskQuery,
        filters: list[tuple[str, Any]],
    ) -> tuple[list[Task], int]:
        page: list[Task] = []
        index_is_exact = not filters or (len(filters) == 1 and q.sort == "created_at")
        if not index_is_exact:
            total = 0
            for task in self._matching(txn, db, prefix, filters, desc):
                if total >= q.skip and len(page) < q.limit:
                    page.append(task)
                total += 1
            return page, total
        # The index holds exactly the matching tasks: skip without decoding.
        tasks_db = self.db["tasks"]
        for i, key in enumerate(self._iter_keys(txn, db, prefix, desc)):
            if i < q.skip:
                continue
            if len(page) >= q.limit:
                break
            raw = txn.get(key[-16:], db=tasks_db)
            if raw is not None:
                page.append(codec.decode_task(raw))
        return page, self._exact_total(txn, db, prefix, q, filters)

    def _exact_total(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        q: TaskQuery,
        filters: list[tuple[str, Any]],
    ) -> int:
        if not prefix:
            return int(txn.stat(self.db["tasks"])["entries"])
        if q.status is not None and len(filters) == 1:
            raw = txn.get(_COUNTERS, db=self.db["meta"])
            return int((codec.decode_counters(raw) if raw else {}).get(q.status.value, 0))
        return sum(1 for _ in self._iter_keys(txn, db, prefix, False))


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no such key)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


def _duration_key(task: Task) -> tuple[bool, float]:
    return (task.duration is not None, task.duration or 0.0)
