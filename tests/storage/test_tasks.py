"""The storage contract, tasks side: records, indexes and listing, idempotency, counters and
day stats, workers, the start-up reads. Every test runs against every backend."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from msgspec.structs import replace

from dtq.errors import InvalidRequest
from dtq.models import Lease, ListTasksQuery, Priority, Task, TaskStatus, Worker, WorkerStatus
from dtq.storage.base import Store, StoreTxn, day_number

from .conftest import NOW, make_task

S = TaskStatus


async def insert(store: Store, *tasks: Task) -> None:
    def op(tx: StoreTxn) -> None:
        for task in tasks:
            tx.insert_task(task)

    await store.write(op)


async def ids(store: Store, **kw: Any) -> tuple[list[str], int]:
    tasks, total = await store.list_tasks(ListTasksQuery(**kw))
    return [t.id for t in tasks], total


# -- records ---------------------------------------------------------------------------------


async def test_insert_get_replace_delete(store: Store) -> None:
    task = make_task(seq=1)
    await insert(store, task)
    assert await store.get_task(task.id) == task
    got = await store.get_task(task.id)
    assert got is not None and got is not task  # a copy: changing it changes nothing stored

    running = replace(task, status=S.RUNNING, worker_id="w1", updated_at=NOW + 1)
    await store.write(lambda tx: tx.replace_task(task, running))
    assert await store.get_task(task.id) == running
    c = await store.counters()
    assert (c["total"], c.get("pending", 0), c["running"]) == (1, 0, 1)

    await store.write(lambda tx: tx.delete_task(running))
    assert await store.get_task(task.id) is None
    assert await ids(store) == ([], 0)
    c = await store.counters()
    assert (c["total"], c["running"]) == (0, 0)


async def test_an_op_sees_its_own_writes_and_earlier_ones(store: Store) -> None:
    task = make_task(seq=1)

    def op(tx: StoreTxn) -> Task | None:
        tx.insert_task(task)
        return tx.get_task(task.id)

    assert await store.write(op) == task
    assert await store.write(lambda tx: tx.get_task(task.id)) == task


async def test_sequence_numbers_increase(store: Store) -> None:
    first = await store.write(lambda tx: [tx.next_seq() for _ in range(3)])
    second = await store.write(lambda tx: tx.next_seq())
    assert first == sorted(set(first)) and second > first[-1]


# -- listing ---------------------------------------------------------------------------------


@pytest.fixture
async def listed(store: Store) -> dict[str, Task]:
    """Six tasks over two queues, three names, all states, created one second apart; `e` and
    `f` share a created_at (one commit) and differ by seq."""
    seq = itertools.count(1)
    specs = {
        "a": dict(queue="q1", name="resize", status=S.PENDING, priority=Priority.LOW),
        "b": dict(queue="q2", name="resize", status=S.RUNNING, worker_id="w1"),
        "c": dict(queue="q1", name="mail", status=S.COMPLETED, worker_id="w1", duration=3.0),
        "d": dict(queue="q2", name="mail", status=S.FAILED, worker_id="w2", duration=1.0,
                  priority=Priority.HIGH),
        "e": dict(queue="q1", name="odd\x00name", status=S.CANCELLED),
        "f": dict(queue="q1", name="resize", status=S.COMPLETED, duration=2.0),
    }  # fmt: skip
    made: dict[str, Task] = {}
    for i, (key, spec) in enumerate(specs.items()):
        created = NOW + min(i, 4)
        made[key] = make_task(seq=next(seq), created_at=created, updated_at=NOW + 100 - i,
                              **spec)  # type: ignore[arg-type]  # fmt: skip
    await insert(store, *made.values())
    return made


def of(made: dict[str, Task], keys: str) -> list[str]:
    return [made[k].id for k in keys]


async def test_list_sorts_and_orders(store: Store, listed: dict[str, Task]) -> None:
    assert await ids(store) == (of(listed, "fedcba"), 6)  # created_at desc by default
    assert await ids(store, order="asc") == (of(listed, "abcdef"), 6)
    assert await ids(store, sort="updated_at", order="asc") == (of(listed, "fedcba"), 6)
    assert await ids(store, sort="updated_at", order="desc") == (of(listed, "abcdef"), 6)
    # duration: tasks without one first (asc), ties in created order; desc is asc reversed
    assert await ids(store, sort="duration", order="asc") == (of(listed, "abedfc"), 6)
    assert await ids(store, sort="duration", order="desc") == (of(listed, "cfdeba"), 6)


async def test_list_filters_and_totals(store: Store, listed: dict[str, Task]) -> None:
    assert await ids(store, status=S.COMPLETED, order="asc") == (of(listed, "cf"), 2)
    assert await ids(store, priority=Priority.HIGH) == (of(listed, "d"), 1)
    assert await ids(store, priority=Priority.MEDIUM, order="asc") == (of(listed, "bcef"), 4)
    assert await ids(store, worker_id="w1", order="asc") == (of(listed, "bc"), 2)
    assert await ids(store, queue="q1", order="asc") == (of(listed, "acef"), 4)
    assert await ids(store, name="resize", order="asc") == (of(listed, "abf"), 3)
    assert await ids(store, name="odd\x00name") == (of(listed, "e"), 1)
    assert await ids(store, queue="q1", name="resize", order="asc") == (of(listed, "af"), 2)
    assert await ids(store, queue="q1", status=S.COMPLETED, sort="updated_at") == (
        of(listed, "cf"), 2)  # fmt: skip
    assert await ids(store, queue="nowhere") == ([], 0)
    assert await ids(store, worker_id="w1", status=S.FAILED) == ([], 0)


async def test_list_pages(store: Store, listed: dict[str, Task]) -> None:
    assert await ids(store, skip=1, limit=2) == (of(listed, "ed"), 6)
    assert await ids(store, skip=5, limit=2) == (of(listed, "a"), 6)
    assert await ids(store, skip=9) == ([], 6)
    assert await ids(store, queue="q1", skip=1, limit=1, order="asc") == (of(listed, "c"), 4)
    assert await ids(store, status=S.COMPLETED, skip=1, limit=1) == (of(listed, "c"), 2)
    assert await ids(store, sort="duration", skip=1, limit=2, order="asc") == (
        of(listed, "be"), 6)  # fmt: skip


async def test_listing_follows_changes(store: Store, listed: dict[str, Task]) -> None:
    a = listed["a"]
    moved = replace(a, status=S.RUNNING, worker_id="w2", queue="q2", name="mail",
                    priority=Priority.HIGH, updated_at=NOW + 500)  # fmt: skip
    await store.write(lambda tx: tx.replace_task(a, moved))
    assert await ids(store, status=S.PENDING) == ([], 0)
    assert await ids(store, worker_id="w2", order="asc") == (of(listed, "ad"), 2)
    assert await ids(store, queue="q2", name="mail", order="asc") == (of(listed, "ad"), 2)
    assert await ids(store, priority=Priority.LOW) == ([], 0)
    assert (await ids(store, sort="updated_at", limit=1))[0] == [a.id]
    await store.write(lambda tx: tx.delete_task(moved))
    assert await ids(store, worker_id="w2") == (of(listed, "d"), 1)


async def test_an_unknown_sort_is_refused(store: Store) -> None:
    query = ListTasksQuery()
    query.sort = "name"
    with pytest.raises(InvalidRequest):
        await store.list_tasks(query)


# -- idempotency -----------------------------------------------------------------------------


async def test_idempotency_keys(store: Store) -> None:
    task = make_task(seq=1, idempotency_key="k1")

    def op(tx: StoreTxn) -> None:
        tx.insert_task(task)
        tx.put_idempotent("k1", task.id, b"\x01fp")

    await store.write(op)
    assert await store.write(lambda tx: tx.get_idempotent("k1")) == (task.id, b"\x01fp")
    assert await store.write(lambda tx: tx.get_idempotent("k2")) is None
    await store.write(lambda tx: tx.delete_task(task))  # the key goes with its task
    assert await store.write(lambda tx: tx.get_idempotent("k1")) is None


# -- counters and day stats ------------------------------------------------------------------


async def test_counters_and_day_stats(store: Store) -> None:
    today = day_number(NOW)

    def op(tx: StoreTxn) -> None:
        tx.count("retried", 2)
        tx.count("duration_sum", 1.5)
        tx.count_day(NOW, "completed")
        tx.count_day(NOW, "completed")
        tx.count_day(NOW - 2 * 86400, "failed", 3)

    await store.write(op)
    await insert(store, make_task(seq=1, created_at=NOW))
    c = await store.counters()
    assert c["retried"] == 2 and c["duration_sum"] == 1.5 and c["total"] == 1
    rows = await store.day_stats(today - 5, today)
    assert [day for day, _ in rows] == [today - 2, today]  # days with no activity are absent
    assert rows[0][1].failed == 3
    assert (rows[1][1].completed, rows[1][1].created) == (2, 1)
    assert await store.day_stats(today + 1, today + 9) == []
    assert [d for d, _ in await store.day_stats(today, today)] == [today]


# -- workers ---------------------------------------------------------------------------------


def worker(worker_id: str, status: WorkerStatus = WorkerStatus.ACTIVE) -> Worker:
    return Worker(worker_id=worker_id, status=status, current_load=0, max_capacity=4,
                  last_heartbeat=NOW, registered_at=NOW)  # fmt: skip


async def test_workers(store: Store) -> None:
    w1, w2, w3 = worker("w1"), worker("w2", WorkerStatus.INACTIVE), worker("w3")

    def op(tx: StoreTxn) -> None:
        for w in (w3, w1, w2):
            tx.put_worker(None, w)

    await store.write(op)
    assert await store.get_worker("w2") == w2
    assert await store.get_worker("nobody") is None
    assert await store.write(lambda tx: tx.get_worker("w1")) == w1
    listed, total = await store.list_workers(None, 0, 10)
    assert [w.worker_id for w in listed] == ["w1", "w2", "w3"] and total == 3
    active, total = await store.list_workers(WorkerStatus.ACTIVE, 1, 10)
    assert [w.worker_id for w in active] == ["w3"] and total == 2
    c = await store.counters()
    assert (c["workers_total"], c["workers_active"]) == (3, 2)
    gone = replace(w1, status=WorkerStatus.INACTIVE)
    await store.write(lambda tx: tx.put_worker(w1, gone))
    c = await store.counters()
    assert (c["workers_total"], c["workers_active"]) == (3, 1)


# -- start-up reads --------------------------------------------------------------------------


async def test_pending_in_queue_priority_seq_order_and_leases(store: Store) -> None:
    tasks = [
        make_task(seq=5, queue="b"),
        make_task(seq=4, queue="a", priority=Priority.LOW),
        make_task(seq=3, queue="a", priority=Priority.HIGH, run_at=NOW + 10.0000004),
        make_task(seq=2, queue="a"),
        make_task(seq=1, queue="ab"),
    ]
    lease = Lease(id="L1", worker_id="w", granted_at=NOW, expires_at=NOW + 60)
    running = make_task(seq=6, status=S.RUNNING, worker_id="w")
    running = replace(running, lease=lease)
    await insert(store, *tasks, running)
    rows = list(store.iter_pending())
    assert [(r.queue, r.rank, r.seq) for r in rows] == [
        ("a", Priority.HIGH.rank, 3), ("a", Priority.MEDIUM.rank, 2), ("a", Priority.LOW.rank, 4),
        ("ab", Priority.MEDIUM.rank, 1), ("b", Priority.MEDIUM.rank, 5),
    ]  # fmt: skip
    first = rows[0]
    assert first.task_id == tasks[2].id and first.name == "t" and first.ready_at == NOW
    assert first.run_at == pytest.approx(NOW + 10.000001, abs=2e-6)  # rounded up to the µs
    assert list(store.iter_leases()) == [(NOW + 60, running.id, "L1")]
