"""Listing tasks from the LMDB indexes: filter, sort, page, total.

Walks the narrowest index for the filters given; the other filters check each task. Totals
come from the counters or the index itself when it holds exactly the matching tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from dtq.errors import InvalidRequest
from dtq.models import Priority, Task, epoch
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
        if q.tag is not None:
            filters.append(("tags", q.tag))  # membership, see `_matches`
        after, before = epoch(q.created_after), epoch(q.created_before)
        with self.env.begin() as txn:
            if q.sort == "created_at":
                db, prefix = self._created_index(q)
                bounds = _created_bounds(prefix, after, before)
                return self._walk(txn, db, prefix, desc, q, filters, bounds)
            if q.sort == "updated_at":
                if after is not None or before is not None:
                    filters.append(("created_at", (after, before)))
                return self._walk(txn, self.db["by_updated"], b"", desc, q, filters)
            if q.sort == "duration":
                db, prefix = self._created_index(q)
                bounds = _created_bounds(prefix, after, before)
                tasks = list(self._matching(txn, db, prefix, filters, bounds=bounds))
                tasks.sort(key=_duration_key, reverse=desc)
                return tasks[q.skip : q.skip + q.limit], len(tasks)
        raise InvalidRequest(f"cannot sort by {q.sort!r}", field="sort")

    def _created_index(self, q: TaskQuery) -> tuple[Any, bytes]:
        # The index most likely to be narrowest first; the other filters check each task.
        if q.worker_id is not None:
            return self.db["by_worker"], q.worker_id.encode() + K.SEP
        if q.name is not None:
            return self.db["by_name"], K.name_prefix(q.name)
        if q.tag is not None:
            return self.db["by_tag"], K.tag_prefix(q.tag)
        if q.queue is not None:
            return self.db["by_queue"], K.queue_prefix(q.queue)
        if q.status is not None:
            return self.db["by_status"], K.STATUS_BYTE[q.status]
        if q.priority is not None:
            return self.db["by_priority"], K.PRIORITY_BYTE[Priority(q.priority)]
        return self.db["by_created"], b""

    def _iter_keys(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        bounds: tuple[bytes | None, bytes | None] = (None, None),
    ) -> Iterator[bytes]:
        """Keys starting with `prefix`, within bounds (lo inclusive, hi exclusive)."""
        lo, hi = bounds
        cur = txn.cursor(db)
        if desc:
            end = hi if hi is not None else (_prefix_end(prefix) if prefix else None)
            positioned = cur.prev() if end is not None and cur.set_range(end) else cur.last()
            if not positioned:
                return
            walk = cur.iterprev(values=False)
        else:
            if not cur.set_range(lo if lo is not None else prefix):
                return
            walk = cur.iternext(values=False)
        for key in walk:
            key = bytes(key)
            if not key.startswith(prefix):
                return
            if (lo is not None and key < lo) or (hi is not None and key >= hi):
                return
            yield key

    def _matching(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        filters: list[tuple[str, Any]],
        desc: bool = False,
        bounds: tuple[bytes | None, bytes | None] = (None, None),
    ) -> Iterator[Task]:
        tasks_db = self.db["tasks"]
        for key in self._iter_keys(txn, db, prefix, desc, bounds):
            raw = txn.get(key[-16:], db=tasks_db)
            if raw is None:
                continue
            task = codec.decode_task(raw)
            if _matches(task, filters):
                yield task

    def _walk(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        q: TaskQuery,
        filters: list[tuple[str, Any]],
        bounds: tuple[bytes | None, bytes | None] = (None, None),
    ) -> tuple[list[Task], int]:
        page: list[Task] = []
        index_is_exact = not filters or (len(filters) == 1 and q.sort == "created_at")
        if not index_is_exact:
            total = 0
            for task in self._matching(txn, db, prefix, filters, desc, bounds):
                if total >= q.skip and len(page) < q.limit:
                    page.append(task)
                total += 1
            return page, total
        # The index holds exactly the matching tasks: skip without decoding.
        tasks_db = self.db["tasks"]
        for i, key in enumerate(self._iter_keys(txn, db, prefix, desc, bounds)):
            if i < q.skip:
                continue
            if len(page) >= q.limit:
                break
            raw = txn.get(key[-16:], db=tasks_db)
            if raw is not None:
                page.append(codec.decode_task(raw))
        if bounds != (None, None):  # a time range: count its keys (no decoding)
            return page, sum(1 for _ in self._iter_keys(txn, db, prefix, False, bounds))
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


def _created_bounds(
    prefix: bytes, after: float | None, before: float | None
) -> tuple[bytes | None, bytes | None]:
    """Key bounds of a created-at range in an index whose keys are prefix | created_us | ..."""
    lo = prefix + K.u64(max(K.micros(after), 0)) if after is not None else None
    hi = prefix + K.u64(max(K.micros(before), 0)) if before is not None else None
    return lo, hi


def _matches(task: Task, filters: list[tuple[str, Any]]) -> bool:
    for field, value in filters:
        if field == "tags":
            if value not in task.tags:
                return False
        elif field == "created_at":
            after, before = value
            us = K.micros(task.created_at)
            if (after is not None and us < K.micros(after)) or (
                before is not None and us >= K.micros(before)
            ):
                return False
        elif getattr(task, field) != value:
            return False
    return True


def _duration_key(task: Task) -> tuple[bool, float]:
    return (task.duration is not None, task.duration or 0.0)
