"""Listing by queue and by task name: served from the by_queue/by_name indexes, kept in the same
transaction as the task, and built at open for a data directory written before they existed."""

from __future__ import annotations

from typing import Any

import lmdb
import trio.testing

from dtq.clock import TrioClock
from dtq.core.service import TaskQueue
from dtq.models import ListTasksQuery, TaskStatus
from dtq.server import open_queue
from dtq.settings import Settings
from dtq.storage.lmdb import store as lmdb_store

from .conftest import WALL0, advance, create, lease_one


async def listing(q: TaskQueue, **kw: Any) -> tuple[list[str], int]:
    tasks, total = await q.list_tasks(ListTasksQuery(**kw))
    return [t.id for t in tasks], total


async def test_list_by_queue_and_name(q: TaskQueue, mock_clock: trio.testing.MockClock) -> None:
    a = await create(q, "resize", queue="images")
    await advance(mock_clock, q, 1)
    b = await create(q, "resize", queue="videos")
    await advance(mock_clock, q, 1)
    c = await create(q, "encode", queue="videos")
    await advance(mock_clock, q, 1)
    odd = await create(q, "res\x00ize", queue="images")  # a NUL in a name: no prefix confusion

    assert await listing(q, queue="videos", order="asc") == ([b.id, c.id], 2)
    assert await listing(q, queue="images", order="asc") == ([a.id, odd.id], 2)
    assert await listing(q, queue="nowhere") == ([], 0)
    assert await listing(q, name="resize", order="asc") == ([a.id, b.id], 2)
    assert await listing(q, name="res\x00ize") == ([odd.id], 1)
    assert await listing(q, name="resize", queue="videos") == ([b.id], 1)
    assert await listing(q, queue="videos", skip=1, limit=1) == ([b.id], 2)  # desc: c, b
    assert await listing(q, queue="videos", sort="updated_at", order="asc") == ([b.id, c.id], 2)

    leased = await lease_one(q, "w1", queues=["videos"])
    assert leased.id == b.id
    assert await listing(q, queue="videos", status=TaskStatus.RUNNING) == ([b.id], 1)
    await q.delete(c.id)
    assert await listing(q, queue="videos") == ([b.id], 1)
    assert await listing(q, name="encode") == ([], 0)


async def test_indexes_are_built_for_an_older_store(
    settings: Settings, mock_clock: trio.testing.MockClock
) -> None:
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        made = [await create(q, f"n{i % 2}", queue=f"q{i % 3}") for i in range(12)]
    # As a store written before these indexes: empty tables and no version mark.
    env = lmdb.open(settings.data_dir, max_dbs=len(lmdb_store.TABLES) + 2)
    with env.begin(write=True) as txn:
        for name in ("by_queue", "by_name"):
            txn.drop(env.open_db(name.encode(), txn=txn), delete=False)
        txn.delete(lmdb_store._INDEX_VERSION_KEY, db=env.open_db(b"meta", txn=txn))
    env.close()

    async with open_queue(settings, clock=clock) as q:
        ids, total = await listing(q, queue="q1", order="asc", limit=100)
        assert (ids, total) == ([t.id for t in made if t.queue == "q1"], 4)
        ids, total = await listing(q, name="n0", order="asc", limit=100)
        assert (ids, total) == ([t.id for t in made if t.name == "n0"], 6)


async def test_tag_and_finish_indexes_are_built_for_a_version_1_store(
    settings: Settings, mock_clock: trio.testing.MockClock
) -> None:
    from dtq.core import redrive
    from dtq.models import TaskFilter

    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        made = [await create(q, tags=["t"] if i % 2 else []) for i in range(6)]
        await q.cancel(made[0].id)
        await q.cancel(made[1].id)
    # As a store written by version 1: by_queue/by_name there, by_tag/by_finished empty.
    env = lmdb.open(settings.data_dir, max_dbs=len(lmdb_store.TABLES) + 2)
    with env.begin(write=True) as txn:
        for name in ("by_tag", "by_finished"):
            txn.drop(env.open_db(name.encode(), txn=txn), delete=False)
        txn.put(lmdb_store._INDEX_VERSION_KEY, (1).to_bytes(8, "big"),
                db=env.open_db(b"meta", txn=txn))  # fmt: skip
    env.close()

    async with open_queue(settings, clock=clock) as q:
        ids, total = await listing(q, tag="t", order="asc", limit=100)
        assert (ids, total) == ([t.id for t in made if t.tags], 3)
        result = await redrive.retry_matching(q, TaskFilter(status=TaskStatus.CANCELLED))
        assert (result.matched, result.affected) == (2, 2)
