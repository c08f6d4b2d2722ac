"""Listing tasks from the LMDB indexes: filter, sort, page, total.

Walks the narrowest index for the filters given; the other filters check each task. Totals
come from the counters or the index itself when it holds exactly the matching tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from dtq.errors import InvalidRequest
from dtq.models import Priority, Task
from dtq.storage import codec
from dtq.storage import keys as K
from dtq.storage.base import TaskQuery

COUNTERS = b"counters"


class Listing:
    """Mixed into `LmdbStore`: needs its `env` and `db`."""

    env: lmdb.Environment
    db: dict[str, Any]

    def list_tasks_now(self, q: TaskQuery) -> tuple[list[Task], int]:
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
            raw = txn.get(COUNTERS, db=self.db["meta"])
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
