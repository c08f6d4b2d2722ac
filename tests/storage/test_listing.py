"""The storage contract, listing in depth: every sort and filter against an order computed
here from the tasks' fields, every page of it (deep pages are read from the far end by LMDB:
they must be the same pages), duration ties, and listing after changes. Then, LMDB only: a data
directory written before the duration index and the priority counters gets them at open."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb
import pytest
from msgspec.structs import replace

from dtq.models import ListTasksQuery, Priority, Task, TaskStatus
from dtq.storage.base import Store, StoreTxn
from dtq.storage.lmdb import store as lmdb_store
from dtq.storage.lmdb.store import LmdbStore

from .conftest import NOW, Backend, make_task, running

S = TaskStatus
P = Priority
PRIORITIES = [P.HIGH, P.MEDIUM, P.LOW]
STATUSES = [S.PENDING, S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED]
# Durations with ties (1.5 s three times, 0.5 s twice), sub-µs differences (equal in µs),
# a 0 and none at all.
DURATIONS = [None, 1.5, 0.5, None, 1.5, 2.0000001, 2.0000004, 0.0, 0.5, 1.5, 7.25]


def many() -> list[Task]:
    """61 tasks; every 4 share a created_at (one commit: ties broken by seq)."""
    seq = itertools.count(1)
    return [
        make_task(
            seq=next(seq),
            name=f"n{i % 3}",
            queue=f"q{i % 2}",
            status=STATUSES[i % 5],
            priority=PRIORITIES[i % 3],
            created_at=NOW + i // 4,
            updated_at=NOW + 1000 - (i * 7) % 61,
            worker_id=f"w{i % 4}" if i % 5 == 1 else None,
            duration=DURATIONS[i % len(DURATIONS)],
        )
        for i in range(61)
    ]


def us(t: float) -> int:
    return int(t * 1_000_000)


def created_order(t: Task) -> tuple[int, int, bytes]:
    return (us(t.created_at), t.seq, bytes.fromhex(t.id.replace("-", "")))


ORDERS: dict[str, Callable[[Task], Any]] = {
    "created_at": created_order,
    "updated_at": lambda t: (us(t.updated_at), t.seq, created_order(t)[2]),
    # what base.py's list_tasks says: without a duration first, then by whole µs, ties in
    # created order; desc is asc reversed
    "duration": lambda t: (
        t.duration is not None,
        max(us(t.duration), 0) if t.duration is not None else 0,
        *created_order(t),
    ),
}


def expected(tasks: list[Task], sort: str, order: str, **filters: Any) -> list[str]:
    def keep(t: Task) -> bool:
        for field, value in filters.items():
            if field == "tag":
                if value not in t.tags:
                    return False
            elif field == "created_after":
                if us(t.created_at) < us(value.timestamp()):
                    return False
            elif field == "created_before":
                if us(t.created_at) >= us(value.timestamp()):
                    return False
            elif getattr(t, field) != value:
                return False
        return True

    rows = sorted((t for t in tasks if keep(t)), key=ORDERS[sort], reverse=order == "desc")
    return [t.id for t in rows]


async def pages(store: Store, size: int, **kw: Any) -> tuple[list[str], set[int]]:
    """Every page of `size`, concatenated, and the totals they reported."""
    got: list[str] = []
    totals: set[int] = set()
    skip = 0
    while True:
        tasks, total = await store.list_tasks(ListTasksQuery(skip=skip, limit=size, **kw))
        totals.add(total)
        got += [t.id for t in tasks]
        if not tasks:
            return got, totals
        skip += size


async def insert_all(store: Store, tasks: list[Task]) -> None:
    def op(tx: StoreTxn) -> None:
        for t in tasks:
            tx.insert_task(t)

    await store.write(op)


at = lambda s: datetime.fromtimestamp(NOW + s, UTC).replace(tzinfo=None)  # noqa: E731
FILTERS: list[dict[str, Any]] = [
    {},
    {"priority": P.HIGH},
    {"priority": P.LOW},
    {"status": S.COMPLETED},
    {"queue": "q1"},
    {"name": "n2"},
    {"worker_id": "w1"},
    {"priority": P.MEDIUM, "status": S.PENDING},
    {"priority": P.HIGH, "status": S.RUNNING, "queue": "q1"},
    {"priority": P.LOW, "status": S.CANCELLED, "created_before": at(9)},
    {"priority": P.HIGH, "queue": "q0"},
    {"worker_id": "w1", "status": S.RUNNING},  # the running tasks fewer than the worker's
    {"worker_id": "w3", "status": S.COMPLETED},  # none
    {"name": "n1", "queue": "q1", "tag": "nowhere"},
    {"name": "n1", "worker_id": "w2"},
    {"created_after": at(3), "created_before": at(11)},
    {"priority": P.HIGH, "created_after": at(5)},
]


@pytest.mark.parametrize("sort", list(ORDERS))
async def test_every_page_of_every_sort_and_filter(store: Store, sort: str) -> None:
    tasks = many()
    await insert_all(store, tasks)
    for filters in FILTERS:
        for order in ("asc", "desc"):
            want = expected(tasks, sort, order, **filters)
            kw = dict(sort=sort, order=order, **filters)
            whole, total = await store.list_tasks(ListTasksQuery(limit=100, **kw))
            assert ([t.id for t in whole], total) == (want, len(want)), kw
            for size in (1, 7, 50):
                got, totals = await pages(store, size, **kw)
                assert (got, totals) == (want, {len(want)}), (kw, size)


async def test_the_last_pages_of_a_priority(store: Store) -> None:
    tasks = many()
    await insert_all(store, tasks)
    want = expected(tasks, "created_at", "desc", priority=P.HIGH)
    n = len(want)
    for skip in (n - 1, n - 3, n // 2, n // 2 + 1, n, n + 5):
        page, total = await store.list_tasks(ListTasksQuery(priority=P.HIGH, skip=skip, limit=3))
        assert ([t.id for t in page], total) == (want[skip : skip + 3], n), skip


async def test_duration_ties_and_tasks_without_one(store: Store) -> None:
    seq = itertools.count(1)
    same = NOW + 5
    a = make_task(seq=next(seq), created_at=same, duration=1.0)
    b = make_task(seq=next(seq), created_at=same, duration=1.0)  # a's twin, later seq
    c = make_task(seq=next(seq), created_at=NOW, duration=1.0)  # older: before a and b
    d = make_task(seq=next(seq), created_at=NOW, duration=None)
    e = make_task(seq=next(seq), created_at=NOW + 9, duration=None)
    f = make_task(seq=next(seq), created_at=NOW, duration=0.0)  # 0 is a duration
    g = make_task(seq=next(seq), created_at=NOW, duration=1.0000004)  # 1.0 in whole µs
    await insert_all(store, [a, b, c, d, e, f, g])
    asc = [d.id, e.id, f.id, c.id, g.id, a.id, b.id]
    got, total = await store.list_tasks(ListTasksQuery(sort="duration", order="asc"))
    assert ([t.id for t in got], total) == (asc, 7)
    got, _ = await store.list_tasks(ListTasksQuery(sort="duration", order="desc"))
    assert [t.id for t in got] == asc[::-1]


async def test_priority_and_duration_follow_changes(store: Store) -> None:
    tasks = many()
    await insert_all(store, tasks)
    old = tasks[0]  # high, pending, no duration
    new = replace(old, priority=P.LOW, status=S.COMPLETED, duration=99.0, updated_at=NOW + 5000)
    await store.write(lambda tx: tx.replace_task(old, new))
    tasks[0] = new
    gone = tasks.pop(2)  # low, with a duration
    await store.write(lambda tx: tx.delete_task(gone))
    pruned = tasks.pop(5)  # high
    await store.write(lambda tx: tx.prune_task(pruned))
    both = {"priority": P.LOW, "status": S.COMPLETED}
    for kw in ({"priority": P.HIGH}, {"priority": P.LOW}, both, {"status": S.PENDING}, {}):
        for sort in ORDERS:
            want = expected(tasks, sort, "desc", **kw)
            got, totals = await pages(store, 4, sort=sort, order="desc", **kw)
            assert (got, totals) == (want, {len(want)}), (kw, sort)
    top, _ = await store.list_tasks(ListTasksQuery(sort="duration", limit=1))
    assert top[0].id == new.id


# -- LMDB: a store from before the duration index ---------------------------------------------


def _as_version_2(path: str) -> None:
    """Make the data directory look written before index version 3: no by_duration or
    by_status_priority entries, none of their counters, the version mark at 2."""
    env = lmdb.open(path, max_dbs=len(lmdb_store.TABLES) + 2)
    with env.begin(write=True) as txn:
        for table in (b"by_duration", b"by_status_priority"):
            txn.drop(env.open_db(table, txn=txn), delete=False)
        meta = env.open_db(b"meta", txn=txn)
        from dtq.storage import codec

        counters = codec.decode_counters(txn.get(b"counters", db=meta))
        for name in [k for k in counters if k.startswith(("priority\x00", "status_priority"))]:
            del counters[name]
        txn.put(b"counters", codec.encode(counters), db=meta)
        txn.put(lmdb_store._INDEX_VERSION_KEY, (2).to_bytes(8, "big"), db=meta)
    env.close()


async def test_an_older_lmdb_store_gets_the_new_index_at_open(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name != "lmdb":
        pytest.skip("a data directory's layout version is LMDB's")
    tasks = many()
    async with running(backend.make()) as store:
        await insert_all(store, tasks)
    path = str(tmp_path / "lmdb")
    _as_version_2(path)

    async with running(backend.make()) as store:
        for sort, kw in (("duration", {}), ("duration", {"status": S.FAILED}),
                         ("created_at", {"priority": P.LOW}),
                         ("created_at", {"priority": P.LOW, "status": S.FAILED})):  # fmt: skip
            want = expected(tasks, sort, "desc", **kw)
            got, totals = await pages(store, 9, sort=sort, order="desc", **kw)
            assert (got, totals) == (want, {len(want)}), (sort, kw)
    # Built once: the mark now says 3, so the next open builds nothing (an index emptied
    # behind its back stays empty).
    env = lmdb.open(path, max_dbs=len(lmdb_store.TABLES) + 2)
    with env.begin(write=True) as txn:
        mark = txn.get(lmdb_store._INDEX_VERSION_KEY, db=env.open_db(b"meta", txn=txn))
        assert int.from_bytes(mark, "big") == lmdb_store._INDEX_VERSION == 3
        by_duration = env.open_db(b"by_duration", txn=txn)
        assert txn.stat(by_duration)["entries"] == len(tasks)
        txn.drop(by_duration, delete=False)
    env.close()
    opened = LmdbStore(path, fsync=False, map_size_bytes=8 << 20)
    try:
        with opened.env.begin() as txn:
            assert txn.stat(opened.db["by_duration"])["entries"] == 0
    finally:
        opened.close()
