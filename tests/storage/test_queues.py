"""The storage contract, queues side: queue config records, per-queue status counters, the
running tasks read at start-up (the limits' count). Every test runs against every backend."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from dtq.errors import InvalidRequest
from dtq.models import Lease, QueueConfig, TaskStatus
from dtq.storage.base import Store, StoreTxn, queue_counts

from .conftest import NOW, Backend, make_task, running

S = TaskStatus


async def test_queue_configs_get_put_list_delete(store: Store) -> None:
    assert await store.get_queue_config("q1") is None
    assert await store.list_queue_configs() == []
    a = QueueConfig(name="b", paused=True, updated_at=NOW)
    b = QueueConfig(name="a", concurrency_limit=3, concurrency_limit_per_key=1,
                    rate_limit_per_second=2.5, updated_at=NOW)  # fmt: skip
    await store.write(lambda tx: (tx.put_queue_config(a), tx.put_queue_config(b)))
    assert await store.get_queue_config("b") == a
    assert [c.name for c in await store.list_queue_configs()] == ["a", "b"]

    def seen_in_txn(tx: StoreTxn) -> QueueConfig | None:
        return tx.get_queue_config("a")

    assert await store.write(seen_in_txn) == b
    assert await store.write(lambda tx: tx.delete_queue_config("a")) is True
    assert await store.write(lambda tx: tx.delete_queue_config("a")) is False
    assert [c.name for c in await store.list_queue_configs()] == ["b"]


async def test_a_failing_op_leaves_no_queue_config(store: Store) -> None:
    def op(tx: StoreTxn) -> None:
        tx.put_queue_config(QueueConfig(name="x", paused=True))
        raise InvalidRequest("no")

    with pytest.raises(InvalidRequest):
        await store.write(op)
    assert await store.get_queue_config("x") is None


async def test_per_queue_counters_follow_every_change(store: Store) -> None:
    t1 = make_task(seq=1, queue="mail")
    t2 = make_task(seq=2, queue="mail")
    t3 = make_task(seq=3, queue="other")
    await store.write(lambda tx: [tx.insert_task(t) for t in (t1, t2, t3)])
    assert queue_counts(await store.counters()) == {
        "mail": {"pending": 2},
        "other": {"pending": 1},
    }
    lease = Lease(id="l", worker_id="w", granted_at=NOW, expires_at=NOW + 60)
    r1 = replace(t1, status=S.RUNNING, lease=lease, worker_id="w")
    await store.write(lambda tx: tx.replace_task(t1, r1))
    f1 = replace(r1, status=S.FAILED, lease=None)
    await store.write(lambda tx: tx.replace_task(r1, f1))
    await store.write(lambda tx: tx.delete_task(t2))
    counts = queue_counts(await store.counters())
    assert counts["mail"] == {"pending": 0, "running": 0, "failed": 1}
    assert counts["other"] == {"pending": 1}


async def test_iter_running_names_queue_and_key(store: Store) -> None:
    t1 = replace(make_task(seq=1, queue="q"), concurrency_key="cust-1")
    t2 = make_task(seq=2, queue="q")
    await store.write(lambda tx: [tx.insert_task(t) for t in (t1, t2)])
    lease = Lease(id="l", worker_id="w", granted_at=NOW, expires_at=NOW + 60)
    r1 = replace(t1, status=S.RUNNING, lease=lease, worker_id="w")
    await store.write(lambda tx: tx.replace_task(t1, r1))
    assert list(store.iter_running()) == [(t1.id, "q", "cust-1")]
    rows = {row.task_id: row for row in store.iter_pending()}
    assert rows[t2.id].concurrency_key is None


async def test_pending_rows_keep_the_concurrency_key(store: Store) -> None:
    t1 = replace(make_task(seq=1, name="send mail"), concurrency_key="k:1")
    await store.write(lambda tx: tx.insert_task(t1))
    (row,) = list(store.iter_pending())
    assert (row.name, row.concurrency_key) == ("send mail", "k:1")


async def test_configs_and_counters_survive_a_restart(backend: Backend) -> None:
    if not backend.durable:
        pytest.skip("nothing survives a stop")
    task = make_task(seq=1, queue="q", status=S.FAILED)
    async with running(backend.make()) as store:
        await store.write(lambda tx: tx.put_queue_config(QueueConfig(name="q", paused=True)))
        await store.write(lambda tx: tx.insert_task(task))
    async with running(backend.make()) as store:
        assert (await store.get_queue_config("q")) == QueueConfig(name="q", paused=True)
        assert queue_counts(await store.counters())["q"] == {"failed": 1}
