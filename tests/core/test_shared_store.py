"""Several servers, one store: two TaskQueues over one MemoryStore flagged `shared` behave as
two dtq servers over one PostgreSQL database (claims in the store, fencing in the store, expiry
by the store's clock, wake-ups through the store's change signal).

No sockets and no database: the claim path and the election logic, fast. The same behaviour
over a real PostgreSQL and real processes is `tests/e2e/test_multi_server.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from dtq.clock import TrioClock
from dtq.core.reaper import run_reaper
from dtq.core.service import TaskQueue
from dtq.errors import LeaseLost
from dtq.models import AckItem, LeaseRequest, Priority, TaskStatus
from dtq.settings import Settings
from dtq.storage.memory import MemoryStore

from .conftest import WALL0, create, lease, lease_one

S = TaskStatus
MockClock = trio.testing.MockClock


@asynccontextmanager
async def servers(n: int = 2, **kw: object) -> AsyncIterator[list[TaskQueue]]:
    clock = TrioClock(WALL0)
    store = MemoryStore(clock, shared=True)
    settings = Settings(store="memory://", **kw)  # type: ignore[arg-type]
    queues = [TaskQueue(store, clock, settings) for _ in range(n)]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for q in queues:
            await q.rebuild()
            await nursery.start(run_reaper, q)
        try:
            yield queues
        finally:
            for q in queues:
                q.begin_shutdown()
            nursery.cancel_scope.cancel()


async def test_each_task_is_leased_once_across_servers() -> None:
    async with servers() as (a, b):
        made = [await create(a if i % 2 else b, f"job{i % 3}") for i in range(60)]
        seen: list[str] = []
        for i in range(40):
            seen += [t.id for t in await lease(a if i % 2 else b, max_tasks=3)]
        assert sorted(seen) == sorted(t.id for t in made)
        assert not await lease(a) and not await lease(b)
        # the dispatcher of a shared store holds nothing: the store is the ready queue
        assert a.dispatcher.ready_count() == b.dispatcher.ready_count() == 0


async def test_claim_order_is_priority_then_fifo() -> None:
    async with servers() as (a, b):
        low = await create(a, priority=Priority.LOW)
        first = await create(b, priority=Priority.MEDIUM)
        high = await create(a, priority=Priority.HIGH)
        second = await create(b, priority=Priority.MEDIUM)
        got = [t.id for t in await lease(b, max_tasks=4)]
        assert got == [high.id, first.id, second.id, low.id]


async def test_filters_by_queue_and_name() -> None:
    async with servers() as (a, b):
        await create(a, "x", queue="q1")
        want = await create(a, "y", queue="q2")
        got = await lease(b, queues=["q2"], names=["y"], max_tasks=5)
        assert [t.id for t in got] == [want.id]


async def test_a_long_poll_on_one_server_wakes_for_a_create_on_another() -> None:
    async with servers(shared_poll_s=3600.0) as (a, b):  # no safety poll: the signal wakes it
        got: list[str] = []

        async def poll() -> None:
            got.extend(t.id for t in await a.lease(LeaseRequest(worker_id="w", wait=30)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            assert len(a.shared_waiters) == 1
            made = await create(b)
        assert got == [made.id]
        assert len(a.shared_waiters) == 0


async def test_safety_poll_finds_a_task_without_a_signal(autojump_clock: MockClock) -> None:
    async with servers(shared_poll_s=1.0) as (a, b):
        store = a.store
        assert store.changes is not None
        store.changes.unsubscribe(a.shared_waiters.wake_all)  # a lost NOTIFY
        got: list[str] = []
        started = trio.current_time()

        async def poll() -> None:
            got.extend(t.id for t in await a.lease(LeaseRequest(worker_id="w", wait=30)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            made = await create(b)
        assert got == [made.id]
        assert trio.current_time() - started <= 1.5  # the poll, not the 30 s wait


async def test_a_long_poll_wakes_at_the_next_run_at(autojump_clock: MockClock) -> None:
    async with servers(shared_poll_s=3600.0) as (a, b):
        later = await create(b, delay=5.0)
        started = trio.current_time()
        got = await a.lease(LeaseRequest(worker_id="w", wait=30))
        assert [t.id for t in got] == [later.id]
        assert 5.0 <= trio.current_time() - started < 6.0


async def test_a_stale_lease_is_refused_through_the_other_server() -> None:
    async with servers() as (a, b):
        await create(a)
        task = await lease_one(a)
        assert task.lease is not None
        with pytest.raises(LeaseLost):
            await b.complete(task.id, "not-the-lease")
        done = await b.complete(task.id, task.lease.id, {"ok": 1})  # completes elsewhere
        assert done.status == S.COMPLETED
        outcomes = await a.ack([AckItem(id=task.id, lease_id=task.lease.id, status="completed")])
        assert not outcomes[0].ok  # a resent result is refused, changes nothing
        assert (await a.get(task.id)).result == {"ok": 1}


async def test_a_lease_held_through_a_dead_server_expires_on_another(
    autojump_clock: MockClock,
) -> None:
    clock = TrioClock(WALL0)
    store = MemoryStore(clock, shared=True)
    settings = Settings(store="memory://", shared_poll_s=1.0)
    a, b = TaskQueue(store, clock, settings), TaskQueue(store, clock, settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await b.rebuild()
        await nursery.start(run_reaper, b)  # only b reaps: a "died" after granting
        await create(a)
        task = await lease_one(a, lease_seconds=10)
        assert b.deadlines.live_lease_tasks() == []  # b never saw this lease
        await trio.sleep(12)
        again = await b.get(task.id)
        assert again.status == S.PENDING and again.lease is None
        assert (await lease_one(b)).id == task.id  # and it runs again
        assert b.lease_expiries == 1
        nursery.cancel_scope.cancel()


async def test_an_expired_lease_is_expired_once_by_two_reapers(autojump_clock: MockClock) -> None:
    async with servers(shared_poll_s=1.0) as (a, b):
        await create(a, retry_count=0)
        await lease_one(a, lease_seconds=5)
        await trio.sleep(8)
        assert a.lease_expiries + b.lease_expiries == 1
        counters = await a.store.counters()
        assert counters[S.PENDING.value] == 1 and counters[S.RUNNING.value] == 0


async def test_restart_grace_is_not_given_on_a_shared_store() -> None:
    async with servers() as (a, b):
        await create(a)
        task = await lease_one(a)
        assert await b.grant_restart_grace() == 0  # a's lease stays as granted
        assert (await b.get(task.id)).lease == task.lease


async def test_lead_is_held_by_one_holder_and_taken_over_when_it_lapses(
    autojump_clock: MockClock,
) -> None:
    async with servers() as (a, _):
        store = a.store

        async def take(holder: str) -> bool:
            return await store.write(lambda tx: tx.take_lead("webhooks", holder, 10.0))  # type: ignore[attr-defined]

        assert await take("a")
        assert not await take("b")
        assert await take("a")  # renewal
        await trio.sleep(11)
        assert await take("b")  # a stopped renewing: b takes over
        assert not await take("a")


async def test_webhooks_registered_on_one_server_are_known_to_all_and_one_sends() -> None:
    from dtq.core.webhooks.delivery import WebhookService
    from dtq.core.webhooks.outbox import Outbox, WebhookCreate

    async with servers(webhook_allow_private_networks=True) as (a, b):
        services = []
        for q in (a, b):
            outbox = Outbox()
            await outbox.install(q.store)
            services.append(WebhookService(q.store, q.clock, q.settings, outbox,
                                           render=lambda d: b"{}"))  # fmt: skip
        wa, wb = services
        assert not wa.leading and not wb.leading  # shared: nobody sends before the election
        hook = await wa.create(WebhookCreate(url="http://127.0.0.1:9/h", events=["task.created"]))
        assert wb.registered() == []
        await wb.refresh_hooks()
        assert [h.id for h in wb.registered()] == [hook.id]
        assert await wa.take_lead() and not await wb.take_lead()
        # b's task changes now owe deliveries too (its outbox knows the webhook)
        await create(b)
        deliveries, total = await b.store.list_deliveries(hook.id)
        assert total == 1 and deliveries[0].event == "task.created"


async def test_live_events_of_one_server_reach_the_bus_of_another() -> None:
    from dtq.net.events import EventBus, ServerRelay

    async with servers() as (a, b), trio.open_nursery() as nursery:
        buses = []
        for q in (a, b):
            bus = EventBus(100)
            q.task_listeners.append(bus.on_task)
            relay = ServerRelay(bus, q.store)
            q.task_listeners.append(relay.on_task)
            await nursery.start(relay.run)
            buses.append(bus)
        with buses[1].subscribe() as on_b, buses[0].subscribe() as on_a:
            made = await create(a)
            with trio.fail_after(5):
                got = await on_b.next_batch()
            assert got is not None
            assert [(e.kind, e.subject_id) for e in got] == [("task.created", made.id)]  # type: ignore[union-attr]
            with trio.fail_after(5):
                mine = await on_a.next_batch()
            assert mine is not None and len(mine) == 1  # its own event once, not echoed back
        nursery.cancel_scope.cancel()


async def test_a_rate_limit_is_one_budget_across_servers() -> None:
    from dtq.core.shared_ratelimit import SharedRateLimiter

    async with servers() as (a, b):
        la, lb = SharedRateLimiter(a.store), SharedRateLimiter(b.store)
        now = WALL0 + 5  # inside one minute window
        assert all(la.hit("key", now, 10, 0).allowed for _ in range(6))
        await la.flush(now)
        assert lb.hit("key", now, 10, 0).allowed  # b has not heard of a's hits yet
        await lb.flush(now)  # now it has: 7 used in all
        verdicts = [lb.hit("key", now, 10, 0) for _ in range(5)]
        assert [v.allowed for v in verdicts] == [True] * 3 + [False] * 2
        assert verdicts[2].remaining == 0 and verdicts[3].retry_after_s >= 1
        await lb.flush(now)
        await la.flush(now)
        assert not la.hit("key", now, 10, 0).allowed  # a sees b's hits too
        assert la.hit("other", now, 10, 0).allowed  # per key
        assert lb.hit("key", now + 60, 10, 0).allowed  # the next minute starts afresh


async def test_queue_limits_hold_across_servers(autojump_clock: MockClock) -> None:
    from dtq.core import ops
    from dtq.core.shared_limits import QueueLimits

    limits = {
        "capped": QueueLimits(max_running=3),
        "paused": QueueLimits(paused=True),
        "paced": QueueLimits(leases_per_s=2.0),
    }

    def limits_of(tx: object, queue: str) -> QueueLimits | None:
        return limits.get(queue)

    async with servers() as (a, b):
        for queue in ("capped", "paused", "paced", "free"):
            for _ in range(6):
                await create(a, queue=queue)

        async def claim(q: TaskQueue, queue: str, n: int) -> list[str]:
            def op(tx: object) -> list[object]:
                return ops.claim(tx, frozenset({queue}), None, n, "w", 60.0,  # type: ignore[arg-type]
                                 limits_of=limits_of)  # fmt: skip

            return [t.id for t in await q.store.write(op)]  # type: ignore[attr-defined]

        assert len(await claim(a, "capped", 2)) == 2
        assert len(await claim(b, "capped", 5)) == 1  # 3 running in all, whoever granted them
        assert await claim(a, "capped", 5) == []
        assert await claim(b, "paused", 5) == []
        assert len(await claim(a, "paced", 5)) == 2  # one second's worth of tokens
        assert await claim(b, "paced", 5) == []  # the bucket is shared
        await trio.sleep(1.0)
        assert len(await claim(b, "paced", 5)) == 2
        assert len(await claim(a, "free", 10)) == 6  # no limits: no lock, no count
