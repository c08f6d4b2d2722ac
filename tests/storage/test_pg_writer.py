"""The PostgreSQL writer's own promises, beyond the contract suite: one failing op (the
database refusing its statement, too) rolls back to its savepoint and fails alone; a
serialization failure or deadlock re-runs the whole batch; one NOTIFY per batch that made
tasks ready; poll mode (`DTQ_PG_NOTIFY=off`) sends none and still wakes its own waiters."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from dtq.errors import StorageError
from dtq.storage.base import StoreTxn
from dtq.storage.postgres.store import PostgresStore

from ._pg_cluster import pg_url
from .conftest import make_task

try:
    import psycopg
except ImportError:  # pragma: no cover - under CI a missing driver is a failure
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

__all__ = ["pg_url"]


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    name = f"dtq_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + "/" + name


@asynccontextmanager
async def opened(url: str, **kw: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **kw)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                try:
                    yield store
                finally:
                    await store.aclose()
    finally:
        store.close()


async def _batch(store: PostgresStore, *ops: Any) -> list[Any]:
    """Run `ops` in one commit batch (queued before the writer wakes); results or errors."""
    results: list[Any] = [None] * len(ops)

    async def one(i: int, op: Any) -> None:
        try:
            results[i] = await store.write(op)
        except Exception as exc:
            results[i] = exc

    before = store.stats.commits
    async with trio.open_nursery() as nursery:
        for i, op in enumerate(ops):
            nursery.start_soon(one, i, op)
    assert store.stats.commits == before + 1, "one batch"
    return results


async def test_a_refused_statement_fails_its_op_alone(db_url: str) -> None:
    async with opened(db_url) as store:
        task = make_task(seq=1)
        first, again, other = make_task(seq=2), task, make_task(seq=3)
        await store.write(lambda tx: tx.insert_task(task))

        def dup(tx: StoreTxn) -> None:
            tx.put_setting("half", "written")  # undone with the op
            tx.insert_task(again)  # the same id: the database refuses it

        results = await _batch(store, lambda tx: tx.insert_task(first), dup,
                               lambda tx: tx.insert_task(other))  # fmt: skip
        assert isinstance(results[1], StorageError)
        assert results[0].id == first.id and results[2].id == other.id
        assert await store.get_setting("half") is None
        assert (await store.counters())["total"] == 3


async def test_a_lone_failing_op_rolls_back_alone_and_the_next_batch_works(db_url: str) -> None:
    """A batch of one op runs without a savepoint: its failure rolls the transaction back."""
    async with opened(db_url) as store:
        task = make_task(seq=1)
        await store.write(lambda tx: tx.insert_task(task))

        def dup(tx: StoreTxn) -> None:
            tx.put_setting("half", "written")  # undone with the op
            tx.count("half")
            tx.insert_task(task)  # the same id: the database refuses it

        def fails(tx: StoreTxn) -> None:
            tx.put_setting("half", "written")
            raise ValueError("the op's own failure")

        with pytest.raises(StorageError):
            await store.write(dup)
        with pytest.raises(ValueError):
            await store.write(fails)
        assert await store.get_setting("half") is None
        assert "half" not in await store.counters()
        other = make_task(seq=2)
        assert (await store.write(lambda tx: tx.insert_task(other))).id == other.id
        assert (await store.counters())["total"] == 2


async def test_a_serialization_failure_runs_the_batch_again(db_url: str) -> None:
    async with opened(db_url) as store:
        runs = {"flaky": 0, "plain": 0}

        def flaky(tx: StoreTxn) -> str:
            runs["flaky"] += 1
            tx.put_setting("flaky", str(runs["flaky"]))
            if runs["flaky"] == 1:
                raise psycopg.errors.SerializationFailure("could not serialize access")
            return "ok"

        def plain(tx: StoreTxn) -> str:
            runs["plain"] += 1
            tx.count("plain")
            return "fine"

        assert await _batch(store, plain, flaky) == ["fine", "ok"]
        # the whole batch ran again (plain ran first, or only after flaky raised)
        assert runs["flaky"] == 2 and runs["plain"] in (1, 2)
        assert (await store.counters())["plain"] == 1  # once: the first run was rolled back
        assert await store.get_setting("flaky") == "2"


async def test_one_notify_per_batch_that_made_tasks_ready(db_url: str) -> None:
    async with opened(db_url) as store:
        with psycopg.connect(db_url, autocommit=True) as listener:
            listener.execute("LISTEN dtq_ready")
            tasks = [make_task(seq=i) for i in range(5)]
            await _batch(store, *[lambda tx, t=t: tx.insert_task(t) for t in tasks])
            await store.write(lambda tx: tx.count("nothing_ready"))
            got = list(listener.notifies(timeout=1.0))
        assert [n.channel for n in got] == ["dtq_ready"]


async def test_poll_mode_sends_no_notify_and_wakes_its_own_waiters(db_url: str) -> None:
    async with opened(db_url, notify=False) as store:
        assert store.changes is not None
        fired: list[int] = []
        store.changes.subscribe(lambda: fired.append(1))
        with psycopg.connect(db_url, autocommit=True) as listener:
            listener.execute("LISTEN dtq_ready")
            task = make_task(seq=1)
            await store.write(lambda tx: tx.insert_task(task))
            assert list(listener.notifies(timeout=0.5)) == []
        assert fired == [1]


async def test_many_changes_in_one_op_are_stored_as_made(db_url: str) -> None:
    import msgspec

    from dtq.models import TaskEvent, TaskEventKind

    async with opened(db_url) as store:
        tasks = [make_task(seq=i) for i in range(4)]

        def insert(tx: StoreTxn) -> None:
            for t in tasks:
                tx.insert_task(t)

        await store.write(insert)
        r = msgspec.structs.replace
        a, b, c, d = tasks
        a2, a3 = r(a, retry_count=1), r(a, retry_count=2)
        b2 = r(b, tags=["new", "tags"])  # a tag change goes its own way
        c2, d2 = r(c, worker_id="w9", updated_at=c.updated_at + 1), r(d, retry_count=7)

        def change(tx: StoreTxn) -> None:
            tx.replace_task(a, a2)
            for i in range(5):
                tx.append_task_event(
                    a.id,
                    TaskEvent(at=float(i), event=TaskEventKind.UPDATED, attempt=0, actor=str(i)),
                )
            tx.replace_task(a2, a3)  # the same row twice: its last version wins
            tx.replace_task(b, b2)
            tx.replace_task(c, c2)
            tx.replace_task(d, d2)

        await store.write(change)
        got = [await store.get_task(t.id) for t in tasks]
        assert [g.retry_count for g in got if g] == [2, 0, 0, 7]
        assert got[1] is not None and got[1].tags == ["new", "tags"]
        assert got[2] is not None and got[2].worker_id == "w9"
        events = await store.list_task_events(a.id)
        assert [e.actor for e in events] == ["0", "1", "2", "3", "4"]


async def test_an_absent_row_found_under_its_lock_is_not_looked_up_again(db_url: str) -> None:
    # an ack of 100 tasks of an unregistered worker asked for it 100 times: one lock, one look
    async with opened(db_url) as store:
        sent: list[str] = []

        class Spy:
            def __init__(self, cur: Any) -> None:
                self._cur = cur

            def execute(self, sql: str, params: Any = None) -> Any:
                sent.append(sql)
                return self._cur.execute(sql, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._cur, name)

        def op(tx: StoreTxn) -> list[Any]:
            tx._cur = Spy(tx._cur)  # type: ignore[attr-defined]
            return [tx.get_worker("ghost") for _ in range(50)]

        assert await store.write(op) == [None] * 50
        assert sum("pg_advisory_xact_lock" in s for s in sent) == 1
        assert len(sent) == 3, sent  # look, lock, look again


async def test_a_batch_update_whose_optional_columns_are_all_null_or_wide(db_url: str) -> None:
    # the column arrays go in binary: an all-NULL array and 8-byte integers must still cast
    import msgspec

    async with opened(db_url) as store:
        tasks = [make_task(seq=2**40 + i) for i in range(3)]  # pending: no worker, no lease

        def insert(tx: StoreTxn) -> None:
            for t in tasks:
                tx.insert_task(t)

        await store.write(insert)
        changed = [msgspec.structs.replace(t, retry_count=3) for t in tasks]

        def change(tx: StoreTxn) -> None:
            for old, new in zip(tasks, changed, strict=True):
                tx.replace_task(old, new)

        await store.write(change)
        assert [await store.get_task(t.id) for t in tasks] == changed


async def test_an_unordered_op_commits_while_an_ordered_batch_is_in_the_database(
    db_url: str,
) -> None:
    entered, gate = threading.Event(), threading.Event()

    def slow(tx: StoreTxn) -> str:  # holds the main lane's transaction open until the gate
        tx.put_setting("slow", "1")
        tx.count("work", 1)
        entered.set()
        gate.wait(20)
        return "slow"

    def quick(tx: StoreTxn) -> str:
        tx.put_setting("quick", "1")
        tx.count("work", 1)
        return "quick"

    results: dict[str, str] = {}
    async with opened(db_url) as store:

        async def call(name: str, op: Any, ordered: bool) -> None:
            results[name] = await store.write(op, ordered=ordered)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "slow", slow, True)
                with trio.fail_after(10):
                    await trio.to_thread.run_sync(entered.wait, 10)
                nursery.start_soon(call, "after", lambda tx: tx.put_setting("after", "1"), True)
                with trio.fail_after(10):  # the side lane commits it beside the open batch
                    assert await store.write(quick, ordered=False) == "quick"
                assert await store.get_setting("quick") == "1"
                assert await store.get_setting("slow") is None  # not committed yet
                assert "after" not in results  # an ordered op waits for the ones before it
                gate.set()
        finally:
            gate.set()
        assert results == {"slow": "slow", "after": None}
        assert await store.get_setting("after") == "1"
        # each lane adds to counter rows of its own; a read sums them
        assert (await store.counters())["work"] == 2
