"""The write-transaction view of the LMDB backend: `StoreTxn` over one nested transaction.

Every task change keeps the listing indexes, the pending index and the counters in step; the
writer thread runs it (stack-findings trap 3), so nothing here touches trio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import lmdb

from dtq.models import (
    ApiKey,
    Delivery,
    DeliveryRef,
    QueueConfig,
    Schedule,
    Task,
    TaskEvent,
    TaskStatus,
    User,
    Webhook,
    Worker,
)
from dtq.storage import codec
from dtq.storage import keys as K
from dtq.storage.counting import Deltas
from dtq.storage.lmdb import layouts as L
from dtq.storage.lmdb.redo import RecordingTxn

if TYPE_CHECKING:
    from dtq.storage.lmdb.store import LmdbStore


class LmdbTxn:
    """`StoreTxn` over one nested LMDB write transaction (one per operation)."""

    def __init__(self, store: LmdbStore, txn: lmdb.Transaction | RecordingTxn, now: float) -> None:
        self._s = store
        self._txn = txn
        self.now = now
        self.deltas = Deltas()

    # -- tasks --------------------------------------------------------------------------
    def get_task(self, task_id: str) -> Task | None:
        raw = self._txn.get(K.task_key(task_id), db=self._s.db["tasks"])
        return None if raw is None else codec.decode_task(raw)

    def prefetch_tasks(self, task_ids: Sequence[str]) -> None:
        """Nothing to do: a read is a memory-mapped lookup."""

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
        if task.worker_id:  # (tasks are created pending, without one; the port allows it)
            put(
                K.worker_index_key(task.worker_id, task.created_at, task.seq, tkey),
                b"",
                db=db["by_worker"],
            )
        put(K.queue_index_key(task.queue, task.created_at, task.seq, tkey), b"", db=db["by_queue"])
        put(K.name_index_key(task.name, task.created_at, task.seq, tkey), b"", db=db["by_name"])
        for tag in set(task.tags):
            put(K.tag_index_key(tag, task.created_at, task.seq, tkey), b"", db=db["by_tag"])
        put(L.duration_key(task, tkey), b"", db=db[L.BY_DURATION])
        put(L.status_priority_key(task, tkey), b"", db=db[L.BY_STATUS_PRIORITY])
        self.deltas.add(L.status_priority_counter(task.status, task.priority))
        self._index_state(task, tkey, add=True)
        self._index_finished(task, tkey, add=True)
        self.deltas.add("total")
        self.deltas.add(L.priority_counter(task.priority))
        self.deltas.task_status(task.queue, task.status, 1)
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
            self.deltas.task_status(old.queue, old.status, -1)
            self.deltas.task_status(new.queue, new.status, 1)
        if old.priority != new.priority:
            txn.delete(
                K.priority_key(old.priority, old.created_at, old.seq, tkey), db=db["by_priority"]
            )
            txn.put(
                K.priority_key(new.priority, new.created_at, new.seq, tkey),
                b"",
                db=db["by_priority"],
            )
            self.deltas.add(L.priority_counter(old.priority), -1)
            self.deltas.add(L.priority_counter(new.priority))
        if old.status != new.status or old.priority != new.priority:
            txn.delete(L.status_priority_key(old, tkey), db=db[L.BY_STATUS_PRIORITY])
            txn.put(L.status_priority_key(new, tkey), b"", db=db[L.BY_STATUS_PRIORITY])
            self.deltas.add(L.status_priority_counter(old.status, old.priority), -1)
            self.deltas.add(L.status_priority_counter(new.status, new.priority))
        if old.duration != new.duration:
            txn.delete(L.duration_key(old, tkey), db=db[L.BY_DURATION])
            txn.put(L.duration_key(new, tkey), b"", db=db[L.BY_DURATION])
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
        if old.tags != new.tags:
            for tag in set(old.tags) - set(new.tags):
                txn.delete(K.tag_index_key(tag, old.created_at, old.seq, tkey), db=db["by_tag"])
            for tag in set(new.tags) - set(old.tags):
                txn.put(K.tag_index_key(tag, new.created_at, new.seq, tkey), b"", db=db["by_tag"])
        self._index_state(old, tkey, add=False)
        self._index_state(new, tkey, add=True)
        if old.status != new.status or old.completed_at != new.completed_at:
            self._index_finished(old, tkey, add=False)
            self._index_finished(new, tkey, add=True)
        if (sink := self._s.event_sink) is not None:
            sink(self, old, new)

    def delete_task(self, task: Task) -> None:
        self._remove_task(task, notify=True)

    def prune_task(self, task: Task) -> None:
        self._remove_task(task, notify=False)

    def _remove_task(self, task: Task, *, notify: bool) -> None:
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
        for tag in set(task.tags):
            txn.delete(K.tag_index_key(tag, task.created_at, task.seq, tkey), db=db["by_tag"])
        txn.delete(L.duration_key(task, tkey), db=db[L.BY_DURATION])
        txn.delete(L.status_priority_key(task, tkey), db=db[L.BY_STATUS_PRIORITY])
        self.deltas.add(L.status_priority_counter(task.status, task.priority), -1)
        self._index_state(task, tkey, add=False)
        self._index_finished(task, tkey, add=False)
        self._delete_events(tkey)
        if task.idempotency_key:
            txn.delete(task.idempotency_key.encode(), db=db["idem"])
        self.deltas.task_removed(task)
        self.deltas.add(L.priority_counter(task.priority), -1)
        if notify and (sink := self._s.event_sink) is not None:
            sink(self, task, None)

    def _index_finished(self, task: Task, tkey: bytes, *, add: bool) -> None:
        if not task.status.is_final or task.completed_at is None:
            return
        key = K.finished_key(task.status, task.completed_at, task.seq, tkey)
        if add:
            self._txn.put(key, b"", db=self._s.db["by_finished"])
        else:
            self._txn.delete(key, db=self._s.db["by_finished"])

    def finished_tasks(
        self,
        status: TaskStatus,
        *,
        after: tuple[int, int] | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int = 500,
    ) -> list[Task]:
        db = self._s.db
        start = K.finished_position(status, K.micros(since), 0) if since is not None else b""
        if after is not None:
            start = max(start, K.finished_position(status, after[0], after[1] + 1))
        start = max(start, K.STATUS_BYTE[status])
        end = K.finished_position(status, K.micros(before), 0) if before is not None else None
        prefix = K.STATUS_BYTE[status]
        cur = self._txn.cursor(db=db["by_finished"])
        rows: list[Task] = []
        if not cur.set_range(start):
            return rows
        for key in cur.iternext(values=False):
            key = bytes(key)
            if not key.startswith(prefix) or (end is not None and key >= end):
                break
            raw = self._txn.get(key[-16:], db=db["tasks"])
            if raw is not None:
                rows.append(codec.decode_task(raw))
                if len(rows) >= limit:
                    break
        return rows

    # -- history ----------------------------------------------------------------------------
    def append_task_event(self, task_id: str, event: TaskEvent) -> None:
        # Numbered from the store's sequence (increasing across commits and restarts): one
        # put, no read, and a task's events sort in the order they were appended.
        key = K.event_key(K.task_key(task_id), self._s.take_seq())
        self._txn.put(key, codec.encode(event), db=self._s.db["events"])

    def _delete_events(self, tkey: bytes) -> None:
        db = self._s.db["events"]
        cur = self._txn.cursor(db=db)
        keys: list[bytes] = []
        if cur.set_range(tkey):
            for key in cur.iternext(values=False):
                if key[:16] != tkey:
                    break
                keys.append(bytes(key))
        for key in keys:  # through the transaction, so the write-ahead log sees each
            self._txn.delete(key, db=db)

    # -- schedules --------------------------------------------------------------------------
    def get_schedule(self, name: str) -> Schedule | None:
        raw = self._txn.get(name.encode(), db=self._s.db["schedules"])
        return None if raw is None else codec.decode_schedule(raw)

    def put_schedule(self, schedule: Schedule) -> None:
        self._txn.put(schedule.name.encode(), codec.encode(schedule), db=self._s.db["schedules"])

    def delete_schedule(self, name: str) -> bool:
        return bool(self._txn.delete(name.encode(), db=self._s.db["schedules"]))

    def _index_state(self, task: Task, tkey: bytes, *, add: bool) -> None:
        """Keep the pending index in step with the task's state. (Leases need no index: on
        start-up they are rebuilt from the running tasks, which saves two writes per lease.)"""
        if task.status == TaskStatus.PENDING:
            key = K.ready_key(task.queue, task.priority, task.seq)
            if add:
                run_at_us = K.micros_ceil(task.run_at) if task.run_at else 0
                ready_us = K.micros(task.ready_at or task.created_at)
                value = tkey + K.u64(run_at_us) + K.u64(ready_us) + task.name.encode()
                if task.concurrency_key:  # after a NUL: names hold none (validated)
                    value += K.SEP + task.concurrency_key.encode()
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
        self.deltas.worker_changed(old, new)

    # -- accounts -----------------------------------------------------------------------------
    def get_user(self, username: str) -> User | None:
        raw = self._txn.get(username.encode(), db=self._s.db[L.USERS])
        return None if raw is None else L.decode_user(raw)

    def put_user(self, user: User) -> None:
        self._txn.put(user.username.encode(), codec.encode(user), db=self._s.db[L.USERS])

    def delete_user(self, username: str) -> bool:
        return bool(self._txn.delete(username.encode(), db=self._s.db[L.USERS]))

    def put_api_key(self, key: ApiKey) -> None:
        self._txn.put(key.key_id.encode(), codec.encode(key), db=self._s.db[L.API_KEYS])

    def delete_api_key(self, key_id: str) -> bool:
        return bool(self._txn.delete(key_id.encode(), db=self._s.db[L.API_KEYS]))

    def get_setting(self, name: str) -> str | None:
        raw = self._txn.get(name.encode(), db=self._s.db[L.KV])
        return None if raw is None else bytes(raw).decode()

    def put_setting(self, name: str, value: str) -> None:
        self._txn.put(name.encode(), value.encode(), db=self._s.db[L.KV])

    # -- webhooks and the delivery outbox -----------------------------------------------------
    def put_webhook(self, hook: Webhook) -> None:
        self._txn.put(L.webhook_key(hook.id), codec.encode(hook), db=self._s.db[L.WEBHOOKS])

    def delete_webhook(self, webhook_id: str) -> bool:
        return bool(self._txn.delete(L.webhook_key(webhook_id), db=self._s.db[L.WEBHOOKS]))

    def get_delivery(self, ref: DeliveryRef) -> Delivery | None:
        raw = self._txn.get(L.delivery_key(ref), db=self._s.db[L.DELIVERIES])
        return None if raw is None else L.decode_delivery(raw)

    def put_delivery(self, old: Delivery | None, new: Delivery) -> None:
        dkey = L.delivery_key(new.ref)
        db = self._s.db
        self._txn.put(dkey, codec.encode(new), db=db[L.DELIVERIES])
        if old is not None and old.next_attempt_at is not None:
            if old.next_attempt_at == new.next_attempt_at:
                return
            self._txn.delete(L.due_key(old.next_attempt_at, dkey), db=db[L.DUE])
        if new.next_attempt_at is not None:
            self._txn.put(L.due_key(new.next_attempt_at, dkey), b"", db=db[L.DUE])

    def delete_delivery(self, delivery: Delivery) -> None:
        dkey = L.delivery_key(delivery.ref)
        db = self._s.db
        if delivery.next_attempt_at is not None:
            self._txn.delete(L.due_key(delivery.next_attempt_at, dkey), db=db[L.DUE])
        self._txn.delete(dkey, db=db[L.DELIVERIES])

    # -- queue configs --------------------------------------------------------------------
    def get_queue_config(self, name: str) -> QueueConfig | None:
        raw = self._txn.get(name.encode(), db=self._s.db[L.QUEUES])
        return None if raw is None else L.decode_queue(raw)

    def put_queue_config(self, config: QueueConfig) -> None:
        self._txn.put(config.name.encode(), codec.encode(config), db=self._s.db[L.QUEUES])

    def delete_queue_config(self, name: str) -> bool:
        return bool(self._txn.delete(name.encode(), db=self._s.db[L.QUEUES]))
