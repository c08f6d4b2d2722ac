"""Group commit: batching, isolation of a failing op, storage errors, map growth, shutdown."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio
import trio.testing

from dtq.clock import TrioClock
from dtq.core import ops
from dtq.core.service import TaskQueue
from dtq.errors import StorageError, Unavailable
from dtq.models import TaskCreate, TaskStatus
from dtq.server import open_queue
from dtq.settings import Settings
from dtq.storage.lmdb.store import LmdbStore, LmdbTxn
from dtq.storage.lmdb.writer import INLINE_COMMIT_MAX_S

from .conftest import WALL0, all_tasks, create, make_settings, recount

NOW = 1_700_000_000.0


class Boom(Exception):
    pass


def create_then_raise(tx: LmdbTxn) -> None:
    """Writes a task, its indexes, an idempotency key and counters, then fails."""
    ops.create(tx, TaskCreate(name="doomed", idempotency_key="doomed-key"))
    tx.count_day(tx.now, "created", 100)
    raise Boom("after writing")


def table_sizes(store: LmdbStore) -> dict[str, int]:
    with store.env.begin() as txn:
        return {name: txn.stat(db)["entries"] for name, db in store.db.items()}


# --------------------------------------------------------------------------- batching


async def test_concurrent_writers_share_commits(q: TaskQueue) -> None:
    before = (q.store.stats.commits, q.store.stats.ops)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await create(q, f"t{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    commits = q.store.stats.commits - before[0]
    assert q.store.stats.ops - before[1] == 50
    assert 1 <= commits < 50
    assert q.store.stats.max_batch > 1
    assert len({t.id for t in results}) == 50
    assert len(await all_tasks(q)) == 50
    assert (await q.dashboard()).total_tasks == 50
    assert len({t.seq for t in results}) == 50


async def test_commit_hooks_see_each_batch(q: TaskQueue) -> None:
    seen: list[int] = []
    q.store.commit_hooks.append(lambda size, seconds: seen.append(size))
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(create, q, f"t{i}")
    assert sum(seen) == 10
    assert q.store.stats.last_batch == seen[-1]


async def test_failing_op_does_not_affect_its_batch(q: TaskQueue) -> None:
    before_sizes = table_sizes(q.store)
    outcomes: dict[str, Any] = {}

    async def run(key: str, fn: Any) -> None:
        try:
            outcomes[key] = await q.store.write(fn)
        except Boom as exc:
            outcomes[key] = exc

    # Hold the writer's thread so that the next three writes are queued together, in this
    # order, and committed as one batch.
    async with trio.open_nursery() as nursery, q.store.writer._one_thread:
        nursery.start_soon(run, "first-batch", lambda tx: None)
        await trio.testing.wait_all_tasks_blocked()
        for key, fn in [
            ("a", lambda tx: ops.create(tx, TaskCreate(name="a"))),
            ("bad", create_then_raise),
            ("b", lambda tx: ops.create(tx, TaskCreate(name="b"))),
        ]:
            nursery.start_soon(run, key, fn)
            await trio.testing.wait_all_tasks_blocked()
    assert q.store.stats.last_batch == 3
    assert isinstance(outcomes["bad"], Boom)
    a, b = outcomes["a"][0], outcomes["b"][0]
    assert sorted(t.name for t in await all_tasks(q)) == ["a", "b"]
    assert await q.store.get_task(a.id) is not None and await q.store.get_task(b.id) is not None
    # nothing of the failed op is left: no task, index entry, idempotency key or counter
    sizes = table_sizes(q.store)
    for table in ("tasks", "pending", "by_created", "by_updated", "by_status", "by_priority"):
        assert sizes[table] == before_sizes[table] + 2, table
    assert sizes["idem"] == before_sizes["idem"]
    assert (await q.dashboard()).total_tasks == 2
    assert (await q.daily(1))[0]["created"] == 2
    assert b.seq > a.seq
    # the key of the failed op was never taken
    _, created = await q.create(TaskCreate(name="doomed", idempotency_key="doomed-key"))
    assert created


async def test_run_batch_isolates_ops(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path), fsync=False)
    try:
        before = table_sizes(store)
        outcomes = store.run_batch(
            [
                lambda tx: ops.create(tx, TaskCreate(name="a")),
                create_then_raise,
                lambda tx: ops.create(tx, TaskCreate(name="b")),
            ],
            NOW,
        )
        assert [ok for ok, _ in outcomes] == [True, False, True]
        assert isinstance(outcomes[1][1], Boom)
        after = table_sizes(store)
        assert after["tasks"] == before["tasks"] + 2
        assert after["pending"] == before["pending"] + 2
        assert after["idem"] == before["idem"]
        counters = await store.counters()
        assert counters["total"] == 2 and counters["pending"] == 2
        [(_, day)] = list(await store.day_stats(0, 10**9))
        assert day.created == 2
    finally:
        store.close()


async def test_run_batch_storage_error_aborts_everything(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path), fsync=False)
    try:
        [(ok, _)] = store.run_batch([lambda tx: ops.create(tx, TaskCreate(name="a"))], NOW)
        assert ok
        seq_before = store._seq

        def storage_fails(tx: LmdbTxn) -> None:
            raise lmdb.BadValsizeError("simulated")

        with pytest.raises(lmdb.Error):
            store.run_batch([lambda tx: ops.create(tx, TaskCreate(name="b")), storage_fails], NOW)
        assert (await store.counters())["total"] == 1
        assert table_sizes(store)["tasks"] == 1
        # a seq handed out in the aborted batch is skipped, never reused
        [(ok, (task, _))] = store.run_batch([lambda tx: ops.create(tx, TaskCreate(name="c"))], NOW)
        assert ok and task.seq > seq_before
    finally:
        store.close()


async def test_storage_error_fails_the_batch_and_writer_goes_on(q: TaskQueue) -> None:
    def storage_fails(tx: LmdbTxn) -> None:
        raise lmdb.BadValsizeError("simulated")

    with pytest.raises(StorageError) as info:
        await q.store.write(storage_fails)
    assert isinstance(info.value, Unavailable) and info.value.status == 503
    task = await create(q, "after")
    assert [t.id for t in await all_tasks(q)] == [task.id]


async def test_write_after_close_is_unavailable(settings: Settings) -> None:
    async with open_queue(settings) as q:
        await create(q, "x")
    with pytest.raises(Unavailable):
        await q.create(TaskCreate(name="y"))


async def test_on_commit_runs_in_commit_order(q: TaskQueue) -> None:
    order: list[int] = []

    async def one(i: int) -> None:
        await q.store.write(lambda tx: i, order.append)

    async with trio.open_nursery() as nursery, q.store.writer._one_thread:
        nursery.start_soon(one, -1)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
    assert order == [-1, 0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- map growth


async def test_map_grows_when_full(tmp_path: Path) -> None:
    small = 64 * 1024
    settings = make_settings(tmp_path / "data", map_size_bytes=small)
    payload = {"blob": "x" * 2000}
    async with open_queue(settings, clock=TrioClock(WALL0)) as q:
        assert q.store.env.info()["map_size"] == small
        made = []
        for start in range(0, 300, 50):
            rows = await q.create_many(
                [TaskCreate(name=f"t{i}", payload=payload) for i in range(start, start + 50)]
            )
            made.extend(task for task, _ in rows)
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(create, q, f"c{i}")
        grown = q.store.env.info()["map_size"]
        assert grown >= 8 * small
        assert len(await all_tasks(q)) == 350
        assert (await recount(q))[TaskStatus.PENDING] == (await q.dashboard()).pending_tasks == 350
        for task in made:
            assert (await q.get(task.id)).payload == payload
    # reopening with the small setting keeps everything
    async with open_queue(settings, clock=TrioClock(WALL0)) as q:
        reopened = q.store.env.info()["map_size"]
        assert reopened > small  # LMDB maps at least the file
        assert len(await all_tasks(q)) == 350
        assert q.dispatcher.ready_count() == 350
        # and it can grow again from there
        await q.create_many([TaskCreate(name="more", payload=payload) for _ in range(300)])
        assert q.store.env.info()["map_size"] > reopened
        assert (await q.dashboard()).total_tasks == len(await all_tasks(q)) == 650


def test_tiny_map_size_at_open(tmp_path: Path) -> None:
    try:
        store = LmdbStore(str(tmp_path), fsync=False, map_size_bytes=4096)
    except StorageError:
        return  # a clear error is acceptable
    store.close()


# --------------------------------------------------------------------------- where it commits


async def test_a_lone_quick_write_commits_on_the_event_loop_until_commits_turn_slow(
    q: TaskQueue,
) -> None:
    """A lone quick op while commits are quick skips the two thread hand-offs; an op not
    marked quick (it may be a purge of thousands), a batch of several, or any op once commits
    have turned slow runs on the writer's thread, so the event loop never waits long."""
    loop_thread = threading.get_ident()
    writer = q.store.writer

    async def thread_of_write(hold_s: float = 0.0, *, quick: bool = True) -> int:
        def op(tx: LmdbTxn) -> int:
            time.sleep(hold_s)  # a slow commit, as a slow disk makes it
            return threading.get_ident()

        thread: int = await q.store.write(op, quick=quick)
        return thread

    writer.recent_commit_s = 0.0
    assert await thread_of_write() == loop_thread
    assert await thread_of_write(quick=False) != loop_thread

    threads: list[int] = []

    async def record() -> None:
        threads.append(await thread_of_write())

    # Hold the writer: the first write waits in it alone, the next three queue together.
    async with trio.open_nursery() as nursery, writer._one_thread:
        nursery.start_soon(thread_of_write)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            nursery.start_soon(record)
            await trio.testing.wait_all_tasks_blocked()
    assert q.store.stats.last_batch == 3
    assert set(threads) != {loop_thread} and len(set(threads)) == 1

    writer.recent_commit_s = 0.0
    assert await thread_of_write(hold_s=INLINE_COMMIT_MAX_S * 8) == loop_thread  # turns slow
    assert writer.recent_commit_s > INLINE_COMMIT_MAX_S
    assert await thread_of_write() != loop_thread
    for _ in range(50):  # quick commits bring the average back down: inline again
        if writer.recent_commit_s < INLINE_COMMIT_MAX_S:
            break
        await thread_of_write()
    assert await thread_of_write() == loop_thread
