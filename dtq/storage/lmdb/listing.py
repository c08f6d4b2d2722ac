"""Listing tasks from the LMDB indexes: filter, sort, page, total.

Every sort has an index holding every task in that order: by_created (and the per-filter
indexes, all keyed filter | created | seq | id, by_status_priority for the two together),
by_updated, by_duration. A page is a walk of one of them:

- created_at: the narrowest filter's index (the one with the fewest tasks), which holds
  exactly that filter's tasks; other filters are checked on each of them;
- updated_at / duration: the sort's own index, checking the filters on each task, unless the
  narrowest filter's tasks are fewer than that walk would read: then those are gathered and
  sorted here.

The total comes from the counters (status, priority, both, queue) or the count of an index's
keys when the index holds exactly the matching tasks; else from checking each task of the
narrowest index. A page past the middle is walked from the other end (the walk reads
`min(skip, total - skip)` entries, not `skip`), so the last page costs what the first does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from dtq.errors import InvalidRequest
from dtq.models import Priority, Task, TaskStatus, epoch
from dtq.storage import codec
from dtq.storage import keys as K
from dtq.storage.base import TaskQuery, queue_counter
from dtq.storage.lmdb import layouts as L

COUNTERS = b"counters"
SORTS = ("created_at", "updated_at", "duration")
# Counting a filter's index keys (to choose a plan) stops here: past it, walking the sort's
# index is cheaper than gathering that many tasks anyway.
_COUNT_CAP = 100_000
SP = "status+priority"  # both filters at once: by_status_priority
_COUNTED = ("status", "priority", "queue", SP)  # filters whose size the counters keep

Bounds = tuple[bytes | None, bytes | None]
Filters = list[tuple[str, Any]]


class Listing:
    """Mixed into `LmdbStore`: needs its `env` and `db`."""

    env: lmdb.Environment
    db: dict[str, Any]

    def list_tasks_now(self, q: TaskQuery) -> tuple[list[Task], int]:
        """Filter, sort and page (see the module for the plan)."""
        if q.sort not in SORTS:
            raise InvalidRequest(f"cannot sort by {q.sort!r}", field="sort")
        desc = q.order == "desc"
        after, before = epoch(q.created_after), epoch(q.created_before)
        filters = _filters(q)
        with self.env.begin() as txn:
            # The narrowest filter's index: its key is filter | created | seq | id.
            field, db, prefix = self._narrowest(txn, q)
            bounds = _created_bounds(prefix, after, before)
            covered = _covered(field)
            rest = [f for f in filters if f[0] not in covered]  # what that index does not hold
            ranged = bounds != (None, None)
            if q.sort == "created_at":
                if rest:  # one pass: count every match, keep the page's
                    return self._scan(txn, db, prefix, desc, q, rest, bounds)
                total = self._count(txn, q, field, db, prefix, bounds)
                return self._exact_page(txn, db, prefix, desc, q, total, bounds), total
            # updated_at / duration: their indexes hold every task; check the filters.
            checks = [*filters, ("created_at", (after, before))] if ranged else filters
            sort_db = self.db["by_updated" if q.sort == "updated_at" else L.BY_DURATION]
            if not checks:
                total = self._count(txn, q, None, db, b"", (None, None))
                return self._exact_page(txn, sort_db, b"", desc, q, total), total
            everything = int(txn.stat(self.db["tasks"])["entries"])
            candidates = self._count(txn, q, field, db, prefix, bounds, cap=_COUNT_CAP)
            # Walking the sort's index reads about (page end) * everything / matches tasks;
            # gathering the narrowest filter's tasks reads `candidates`.
            walk_cost = (q.skip + q.limit) * everything / max(candidates, 1)
            if candidates < _COUNT_CAP and candidates <= walk_cost:
                return self._gathered(txn, db, prefix, desc, q, rest, bounds)
            total = self._total(txn, q, field, db, prefix, bounds, rest)
            return self._filtered_page(txn, sort_db, desc, q, checks, total), total

    # -- plans ----------------------------------------------------------------------------
    def _narrowest(self, txn: lmdb.Transaction, q: TaskQuery) -> tuple[str | None, Any, bytes]:
        """(filter field, index, prefix) of the filter with the fewest tasks; the other
        filters check each task. Counters give the status/priority/queue sizes in one read;
        the others' keys are counted, never past the smallest size seen so far."""
        options = self._filter_indexes(q)
        if len(options) <= 1:
            return options[0] if options else (None, self.db["by_created"], b"")
        best, best_n = options[0], None
        for option in sorted(options, key=lambda o: o[0] not in _COUNTED):
            field, db, prefix = option
            if field in _COUNTED:
                n = self._count(txn, q, field, db, prefix, (None, None))
            else:
                cap = _COUNT_CAP if best_n is None else best_n
                n = self._count(txn, q, field, db, prefix, (None, None), cap=cap)
            if best_n is None or n < best_n:
                best, best_n = option, n
        return best

    def _filter_indexes(self, q: TaskQuery) -> list[tuple[str | None, Any, bytes]]:
        """(field, index, prefix) of each filter given: its tasks by created order."""
        options: list[tuple[str | None, Any, bytes]] = []
        if q.worker_id is not None:
            options.append(("worker_id", self.db["by_worker"], q.worker_id.encode() + K.SEP))
        if q.name is not None:
            options.append(("name", self.db["by_name"], K.name_prefix(q.name)))
        if q.tag is not None:
            options.append(("tags", self.db["by_tag"], K.tag_prefix(q.tag)))
        if q.queue is not None:
            options.append(("queue", self.db["by_queue"], K.queue_prefix(q.queue)))
        if q.status is not None:
            options.append(("status", self.db["by_status"], K.STATUS_BYTE[q.status]))
        if q.priority is not None:
            priority = Priority(q.priority)
            options.append(("priority", self.db["by_priority"], K.PRIORITY_BYTE[priority]))
            if q.status is not None:
                prefix = L.status_priority_prefix(q.status, priority)
                options.append((SP, self.db[L.BY_STATUS_PRIORITY], prefix))
        return options

    def _count(
        self,
        txn: lmdb.Transaction,
        q: TaskQuery,
        field: str | None,
        db: Any,
        prefix: bytes,
        bounds: Bounds,
        cap: int | None = None,
    ) -> int:
        """How many tasks the index (prefix, bounds) holds: one read when counters or the
        table's size say it, else its keys counted (up to `cap`, then `cap`)."""
        if bounds == (None, None):
            if field is None:
                return int(txn.stat(self.db["tasks"])["entries"])
            if field in _COUNTED:
                raw = txn.get(COUNTERS, db=self.db["meta"])
                counters = codec.decode_counters(raw) if raw else {}
                if field == "status":
                    assert q.status is not None
                    return int(counters.get(TaskStatus(q.status).value, 0))
                if field == "priority":
                    return int(counters.get(L.priority_counter(Priority(q.priority)), 0))
                if field == SP:
                    assert q.status is not None
                    name = L.status_priority_counter(TaskStatus(q.status), Priority(q.priority))
                    return int(counters.get(name, 0))
                assert q.queue is not None
                return int(sum(counters.get(queue_counter(q.queue, s), 0) for s in TaskStatus))
        n = 0
        for _ in self._iter_keys(txn, db, prefix, False, bounds):
            n += 1
            if cap is not None and n >= cap:
                break
        return n

    def _total(
        self,
        txn: lmdb.Transaction,
        q: TaskQuery,
        field: str | None,
        db: Any,
        prefix: bytes,
        bounds: Bounds,
        rest: Filters,
    ) -> int:
        """The number of matching tasks: the narrowest index's count, checked per task when
        other filters remain."""
        if not rest:
            return self._count(txn, q, field, db, prefix, bounds)
        return sum(1 for _ in self._matching(txn, db, prefix, rest, False, bounds))

    # -- walks ----------------------------------------------------------------------------
    def _iter_keys(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        bounds: Bounds = (None, None),
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
        filters: Filters,
        desc: bool = False,
        bounds: Bounds = (None, None),
    ) -> Iterator[Task]:
        tasks_db = self.db["tasks"]
        for key in self._iter_keys(txn, db, prefix, desc, bounds):
            raw = txn.get(key[-16:], db=tasks_db)
            if raw is None:
                continue
            task = codec.decode_task(raw)
            if _matches(task, filters):
                yield task

    def _scan(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        q: TaskQuery,
        filters: Filters,
        bounds: Bounds,
    ) -> tuple[list[Task], int]:
        """Every task of the index checked: the total counted, the page kept."""
        page: list[Task] = []
        total = 0
        for task in self._matching(txn, db, prefix, filters, desc, bounds):
            if total >= q.skip and len(page) < q.limit:
                page.append(task)
            total += 1
        return page, total

    def _exact_page(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        q: TaskQuery,
        total: int,
        bounds: Bounds = (None, None),
    ) -> list[Task]:
        """A page of an index holding exactly the matching tasks: skipped keys are not
        decoded, and a page past the middle is read from the other end."""
        skip, limit, reverse = _flip(q.skip, q.limit, total)
        tasks_db = self.db["tasks"]
        page: list[Task] = []
        if limit <= 0:
            return page
        for i, key in enumerate(self._iter_keys(txn, db, prefix, desc != reverse, bounds)):
            if i < skip:
                continue
            raw = txn.get(key[-16:], db=tasks_db)
            if raw is not None:
                page.append(codec.decode_task(raw))
            if len(page) >= limit:
                break
        if reverse:
            page.reverse()
        return page

    def _filtered_page(
        self,
        txn: lmdb.Transaction,
        db: Any,
        desc: bool,
        q: TaskQuery,
        filters: Filters,
        total: int,
    ) -> list[Task]:
        """A page of a whole-store index, checking the filters on each task (from the other
        end past the middle)."""
        skip, limit, reverse = _flip(q.skip, q.limit, total)
        page: list[Task] = []
        if limit <= 0:
            return page
        for i, task in enumerate(self._matching(txn, db, b"", filters, desc != reverse)):
            if i < skip:
                continue
            page.append(task)
            if len(page) >= limit:
                break
        if reverse:
            page.reverse()
        return page

    def _gathered(
        self,
        txn: lmdb.Transaction,
        db: Any,
        prefix: bytes,
        desc: bool,
        q: TaskQuery,
        filters: Filters,
        bounds: Bounds,
    ) -> tuple[list[Task], int]:
        """The narrowest filter's tasks gathered and sorted here (few of them)."""
        rows = []
        for key in self._iter_keys(txn, db, prefix, False, bounds):
            raw = txn.get(key[-16:], db=self.db["tasks"])
            if raw is None:
                continue
            task = codec.decode_task(raw)
            if not _matches(task, filters):
                continue
            tkey = key[-16:]
            if q.sort == "updated_at":
                rows.append((K.time_id_key(task.updated_at, task.seq, tkey), task))
            else:
                rows.append((L.duration_key(task, tkey), task))
        rows.sort(key=lambda row: row[0], reverse=desc)
        return [task for _, task in rows[q.skip : q.skip + q.limit]], len(rows)


def _covered(field: str | None) -> tuple[str, ...]:
    """The filters an index of `_filter_indexes` holds exactly."""
    if field is None:
        return ()
    return ("status", "priority") if field == SP else (field,)


def _filters(q: TaskQuery) -> Filters:
    filters: Filters = []
    if q.status is not None:
        filters.append(("status", q.status))
    if q.priority is not None:
        filters.append(("priority", Priority(q.priority)))
    if q.worker_id is not None:
        filters.append(("worker_id", q.worker_id))
    if q.queue is not None:
        filters.append(("queue", q.queue))
    if q.name is not None:
        filters.append(("name", q.name))
    if q.tag is not None:
        filters.append(("tags", q.tag))  # membership, see `_matches`
    return filters


def _flip(skip: int, limit: int, total: int) -> tuple[int, int, bool]:
    """(skip, limit, reversed): the same page read from the nearer end of `total` entries."""
    end = min(skip + limit, total)
    if skip >= total:
        return 0, 0, False
    if skip > total - end:  # nearer the far end: read (total - end) there, then flip
        return total - end, end - skip, True
    return skip, limit, False


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


def _matches(task: Task, filters: Filters) -> bool:
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
