"""Two servers, one real PostgreSQL: two TaskQueues, each over its own `PostgresStore` (own
writer, pool and LISTEN connection) on one database. Claims, fencing, wake-ups by NOTIFY,
relayed live events and shared rate limits, as `tests/core/test_shared_store.py` checks them
over a shared memory store; here through the real SQL and a real NOTIFY."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from dtq.clock import TrioClock
from dtq.core.auth.shared_throttle import SharedLoginThrottle
from dtq.core.auth.throttle import ThrottleRules
from dtq.core.reaper import run_reaper
from dtq.core.service import TaskQueue
from dtq.errors import LeaseLost
from dtq.models import AckItem, LeaseRequest, Priority, TaskCreate, TaskStatus
from dtq.settings import Settings
from dtq.storage.postgres.store import PostgresStore

from ._pg_cluster import pg_url

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
async def running_stores(url: str, n: int) -> AsyncIterator[list[PostgresStore]]:
    """`n` stores on one database, as `n` servers have them (each its own writer and pool)."""
    stores = [PostgresStore(url) for _ in range(n)]
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for s in stores:
                    await nursery.start(s.run)
                try:
                    yield stores
                finally:
                    for s in stores:
                        await s.aclose()
                    nursery.cancel_scope.cancel()
    finally:
        for s in stores:
            s.close()


@asynccontextmanager
async def servers(url: str, n: int = 2, **kw: object) -> AsyncIterator[list[TaskQueue]]:
    clock = TrioClock()
    settings = Settings(store=url, **kw)  # type: ignore[arg-type]
    async with running_stores(url, n) as stores, trio.open_nursery() as nursery:
        queues = [TaskQueue(s, clock, settings) for s in stores]
        for q in queues:
            await q.rebuild()
            await nursery.start(run_reaper, q)
        try:
            yield queues
        finally:
            for q in queues:
                q.begin_shutdown()
            nursery.cancel_scope.cancel()


async def create(q: TaskQueue, name: str = "job", **kw: object) -> str:
    task, created = await q.create(TaskCreate(name=name, **kw))  # type: ignore[arg-type]
    assert created
    return task.id


async def lease(q: TaskQueue, **kw: object) -> list[str]:
    kw.setdefault("wait", 0)
    return [t.id for t in await q.lease(LeaseRequest(worker_id="w1", **kw))]  # type: ignore[arg-type]


async def test_each_task_is_leased_once_in_priority_then_fifo_order(db_url: str) -> None:
    async with servers(db_url) as (a, b):
        low = await create(a, priority=Priority.LOW)
        first = await create(b, priority=Priority.MEDIUM)
        high = await create(a, priority=Priority.HIGH)
        second = await create(b, priority=Priority.MEDIUM)
        assert await lease(b, max_tasks=2) == [high, first]
        assert await lease(a, max_tasks=5) == [second, low]
        assert not await lease(a) and not await lease(b)
        made = [await create(a if i % 2 else b, f"job{i % 3}") for i in range(30)]
        async with trio.open_nursery() as nursery:  # both servers claim at once
            seen: list[str] = []

            async def drain(q: TaskQueue) -> None:
                while got := await lease(q, max_tasks=3):
                    seen.extend(got)

            nursery.start_soon(drain, a)
            nursery.start_soon(drain, b)
        assert sorted(seen) == sorted(made)


async def test_a_long_poll_on_one_server_wakes_for_a_create_on_another(db_url: str) -> None:
    async with servers(db_url, shared_poll_s=3600.0) as (a, b):  # no safety poll: NOTIFY
        got: list[str] = []

        async def poll() -> None:
            got.extend(await lease(a, wait=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            with trio.fail_after(10):
                while len(a.shared_waiters) != 1:  # it parks after a claim in a thread
                    await trio.sleep(0.01)
            made = await create(b)
        assert got == [made]


async def test_a_stale_lease_is_refused_through_the_other_server(db_url: str) -> None:
    async with servers(db_url) as (a, b):
        await create(a)
        [task] = await a.lease(LeaseRequest(worker_id="w1", wait=0))
        assert task.lease is not None
        with pytest.raises(LeaseLost):
            await b.complete(task.id, "not-the-lease")
        done = await b.complete(task.id, task.lease.id, {"ok": 1})
        assert done.status == TaskStatus.COMPLETED
        outcomes = await a.ack([AckItem(id=task.id, lease_id=task.lease.id, status="completed")])
        assert not outcomes[0].ok
        assert (await a.get(task.id)).result == {"ok": 1}


async def test_live_events_of_one_server_reach_the_bus_of_another(db_url: str) -> None:
    from dtq.net.events import EventBus, ServerRelay

    async with servers(db_url) as (a, b), trio.open_nursery() as nursery:
        buses = []
        for q in (a, b):
            bus = EventBus(100)
            q.task_listeners.append(bus.on_task)
            relay = ServerRelay(bus, q.store)
            q.task_listeners.append(relay.on_task)
            await nursery.start(relay.run)
            buses.append(bus)
        with buses[1].subscribe() as on_b:
            made = await create(a)
            with trio.fail_after(10):
                got = await on_b.next_batch()
            assert got is not None
            assert [(e.kind, e.subject_id) for e in got] == [("task.created", made)]  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_a_rate_limit_is_one_budget_across_servers(db_url: str) -> None:
    from dtq.core.shared_ratelimit import SharedRateLimiter

    async with servers(db_url) as (a, b):
        la, lb = SharedRateLimiter(a.store), SharedRateLimiter(b.store)
        # a window a minute ahead: no minute boundary of the database's clock (which drops
        # lapsed counters) can pass during the test
        now = (time.time() // 60 + 2) * 60 + 1
        assert all(la.hit("key", now, 10, 0).allowed for _ in range(6))
        await la.flush(now)
        assert lb.hit("key", now, 10, 0).allowed
        await lb.flush(now)  # 7 used in all
        verdicts = [lb.hit("key", now, 10, 0) for _ in range(5)]
        assert [v.allowed for v in verdicts] == [True] * 3 + [False] * 2
        await lb.flush(now)
        await la.flush(now)
        assert not la.hit("key", now, 10, 0).allowed  # a sees b's hits too


async def test_counters_are_summed_across_servers_and_folded_at_a_start(db_url: str) -> None:
    async with servers(db_url) as (a, b):
        for q in (a, b, a):
            await create(q)
        await lease(b, max_tasks=1)
        want = await a.store.counters()
        assert (want["total"], want["pending"], want["running"]) == (3, 2, 1)
        assert await b.store.counters() == want
    with psycopg.connect(db_url) as conn:
        servers_before = conn.execute("SELECT count(DISTINCT server) FROM dtq_counters").fetchone()
    assert servers_before == (2,)
    third = PostgresStore(db_url)  # a start folds the rows of every other server into one
    try:
        assert await third.counters() == want
        with psycopg.connect(db_url) as conn:
            rows = conn.execute("SELECT DISTINCT server FROM dtq_counters").fetchall()
        assert rows == [("folded",)]
        days = await third.day_stats(0, 10**6)
        assert [d.created for _, d in days] == [3]
    finally:
        third.close()


async def test_one_idempotency_key_on_two_servers_at_once_makes_one_task(db_url: str) -> None:
    async with servers(db_url) as (a, b):
        for round_ in range(5):
            key = f"order-{round_}"
            got: list[tuple[str, bool]] = []

            async def make(q: TaskQueue, key: str = key, got: list[tuple[str, bool]] = got) -> None:
                task, created = await q.create(TaskCreate(name="pay", idempotency_key=key))
                got.append((task.id, created))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(make, a)
                nursery.start_soon(make, b)
            assert len({tid for tid, _ in got}) == 1, got  # one task, whichever server won
            assert sorted(created for _, created in got) == [False, True]
        assert (await a.store.counters())["total"] == 5


async def test_login_failures_at_two_servers_all_count(db_url: str) -> None:
    """The login throttle's records: attempts at two servers at once take turns on the row
    (none lost), a right password clears it, and records past their time are dropped."""
    rules = ThrottleRules(free_failures=100)
    async with running_stores(db_url, 2) as stores:
        throttles = [SharedLoginThrottle(s, rules) for s in stores]
        async with trio.open_nursery() as attempts:
            for i in range(20):
                attempts.start_soon(throttles[i % 2].begin, "alice")
        record = await stores[1].write(lambda tx: tx.login_failures("alice"))
        assert record is not None and record[0] == 20
        await stores[0].write(lambda tx: tx.put_login_failures("stale", (3, 1.0, 0.0), 2.0))
        await throttles[1].succeeded("alice")
        await throttles[0].begin("bob")  # (each attempt drops what has had its time)
        assert await stores[0].write(lambda tx: tx.login_failures("alice")) is None
        assert await stores[0].write(lambda tx: tx.login_failures("stale")) is None
        bob = await stores[1].write(lambda tx: tx.login_failures("bob"))
        assert bob is not None and bob[0] == 1
        # a login's username may hold any character, NUL too (text in SQL cannot)
        await throttles[1].begin("nul\x00name")
        nul = await stores[0].write(lambda tx: tx.login_failures("nul\x00name"))
        assert nul is not None and nul[0] == 1
