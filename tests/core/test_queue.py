"""The TaskQueue service end to end over LMDB: dispatch, long-poll, leases, retries, restart.

Time-based tests drive a manual MockClock through `advance()` (see conftest.py for why not
`autojump_clock`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dtq.clock import TrioClock
from dtq.core import ops
from dtq.core.service import TaskQueue
from dtq.errors import Conflict, InvalidRequest, InvalidTransition, LeaseLost, NotFound
from dtq.models import (
    AckItem,
    Heartbeat,
    LeaseRequest,
    ListTasksQuery,
    ListWorkersQuery,
    Priority,
    Task,
    TaskCreate,
    TaskError,
    TaskStatus,
    TaskUpdate,
    WorkerStatus,
)
from dtq.server import open_queue
from dtq.settings import Settings

from .conftest import (
    WALL0,
    advance,
    all_tasks,
    create,
    lease,
    lease_one,
    make_settings,
    recount,
    settle,
)

S = TaskStatus
H, M, L = Priority.HIGH, Priority.MEDIUM, Priority.LOW
MockClock = trio.testing.MockClock


def ids(tasks: list[Task]) -> list[str]:
    return [t.id for t in tasks]


async def drain(q: TaskQueue, **kw: Any) -> list[Task]:
    out: list[Task] = []
    while batch := await lease(q, **kw):
        out.extend(batch)
    return out


# --------------------------------------------------------------------------- dispatch order


async def test_priority_then_fifo(q: TaskQueue) -> None:
    spec = [("l1", L), ("m1", M), ("h1", H), ("l2", L), ("h2", H), ("m2", M), ("h3", H)]
    for name, prio in spec:
        await create(q, name, priority=prio)
    got = [t.name for t in await drain(q)]
    assert got == ["h1", "h2", "h3", "m1", "m2", "l1", "l2"]


async def test_batch_lease_is_in_dispatch_order(q: TaskQueue) -> None:
    for name, prio in [("l1", L), ("m1", M), ("h1", H), ("m2", M), ("h2", H)]:
        await create(q, name, priority=prio)
    first = await lease(q, max_tasks=3)
    assert [t.name for t in first] == ["h1", "h2", "m1"]
    assert all(t.status == S.RUNNING and t.lease is not None for t in first)
    rest = await lease(q, max_tasks=100)
    assert [t.name for t in rest] == ["m2", "l1"]
    assert await lease(q, max_tasks=5) == []


async def test_fifo_across_queues_without_filter(q: TaskQueue) -> None:
    for i in range(6):
        await create(q, f"t{i}", queue="a" if i % 2 else "b")
    assert [t.name for t in await drain(q)] == [f"t{i}" for i in range(6)]


async def test_queues_filter_isolates(q: TaskQueue) -> None:
    a1 = await create(q, "a1", queue="a", priority=L)
    b1 = await create(q, "b1", queue="b")
    c1 = await create(q, "c1", queue="c", priority=H)
    a2 = await create(q, "a2", queue="a", priority=H)
    assert await lease(q, queues=["missing"]) == []
    assert ids(await lease(q, queues=["b"], max_tasks=10)) == [b1.id]
    assert ids(await lease(q, queues=["a"], max_tasks=10)) == [a2.id, a1.id]
    assert ids(await lease(q, max_tasks=10)) == [c1.id]


async def test_queues_filter_across_several_queues(q: TaskQueue) -> None:
    a1 = await create(q, "a1", queue="a")
    b1 = await create(q, "b1", queue="b", priority=H)
    await create(q, "c1", queue="c", priority=H)
    a2 = await create(q, "a2", queue="a")
    got = await lease(q, queues=["a", "b"], max_tasks=10)
    assert ids(got) == [b1.id, a1.id, a2.id]


async def test_names_filter(q: TaskQueue) -> None:
    await create(q, "email", priority=H)
    r1 = await create(q, "resize")
    await create(q, "email")
    r2 = await create(q, "resize", priority=H)
    r3 = await create(q, "resize")
    got = await lease(q, names=["resize"], max_tasks=10)
    assert ids(got) == [r2.id, r1.id, r3.id]
    rest = await lease(q, max_tasks=10)
    assert [t.name for t in rest] == ["email", "email"]
    assert rest[0].priority == H


async def test_names_and_queues_filters_combine(q: TaskQueue) -> None:
    await create(q, "x", queue="a")
    want = await create(q, "y", queue="a")
    await create(q, "y", queue="b")
    assert ids(await lease(q, queues=["a"], names=["y"], max_tasks=5)) == [want.id]


async def test_priority_update_reorders(q: TaskQueue) -> None:
    first = await create(q, "first", priority=L)
    second = await create(q, "second", priority=L)
    await q.update(second.id, TaskUpdate(priority=H))
    assert ids(await drain(q)) == [second.id, first.id]


async def test_create_many_in_order(q: TaskQueue) -> None:
    rows = await q.create_many([TaskCreate(name=f"t{i}") for i in range(10)])
    assert all(created for _, created in rows)
    assert [t.name for t in await drain(q)] == [f"t{i}" for i in range(10)]


# --------------------------------------------------------------------------- scheduling


async def test_delay_not_leased_before_due(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "later", delay=10)
    assert task.run_at == WALL0 + 10
    assert await lease(q) == []
    await advance(mock_clock, q, 9.5)
    assert await lease(q) == []
    await advance(mock_clock, q, 0.5)
    assert ids(await lease(q)) == [task.id]


async def test_run_at_not_leased_before_due(q: TaskQueue, mock_clock: MockClock) -> None:
    run_at = datetime.fromtimestamp(WALL0 + 60, UTC)
    task = await create(q, "later", run_at=run_at)
    now_task = await create(q, "now")
    assert ids(await lease(q, max_tasks=10)) == [now_task.id]
    await advance(mock_clock, q, 59)
    assert await lease(q) == []
    await advance(mock_clock, q, 1)
    assert ids(await lease(q)) == [task.id]


async def test_scheduled_task_wakes_long_poll(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "later", delay=5)
    got: list[Task] = []
    async with trio.open_nursery() as nursery:

        async def poll() -> None:
            got.extend(await lease(q, wait=30))

        nursery.start_soon(poll)
        await advance(mock_clock, q, 5)
        assert ids(got) == [task.id]
        assert trio.current_time() == 5


async def test_reaper_wakes_for_an_earlier_deadline(q: TaskQueue, mock_clock: MockClock) -> None:
    """Each new deadline earlier than the reaper's plan must wake it up to re-plan."""
    await q.create_many([TaskCreate(name="long"), TaskCreate(name="short")])
    long = await lease_one(q, lease_seconds=100)
    await advance(mock_clock, q, 1)
    short = await lease_one(q, lease_seconds=10)  # t=1, expires at 11
    await advance(mock_clock, q, 1)
    later = await create(q, "later", delay=5)  # t=2, due at 7
    await q.heartbeat(Heartbeat(worker_id="w9"))  # t=2, silent from 32
    await advance(mock_clock, q, 5)  # t=7
    assert ids(await lease(q, "w2", lease_seconds=3)) == [later.id]  # expires at 10
    await advance(mock_clock, q, 3)  # t=10
    assert (await q.get(later.id)).status == S.PENDING  # lease lost: back in line
    assert (await q.get(short.id)).status == S.RUNNING
    await advance(mock_clock, q, 1)  # t=11
    assert (await q.get(short.id)).status == S.PENDING
    assert (await q.get_worker("w9")).status == WorkerStatus.ACTIVE
    await advance(mock_clock, q, 21)  # t=32
    assert (await q.get_worker("w9")).status == WorkerStatus.INACTIVE
    assert (await q.get(long.id)).status == S.RUNNING
    await advance(mock_clock, q, 69)  # t=101
    assert (await q.get(long.id)).status == S.PENDING


# --------------------------------------------------------------------------- long poll


class Waiters:
    """Long-polling lease calls started one at a time (so their arrival order is known)."""

    def __init__(self, q: TaskQueue, nursery: trio.Nursery) -> None:
        self.q = q
        self.nursery = nursery
        self.results: dict[str, list[Task]] = {}

    async def start(self, key: str, **kw: Any) -> None:
        async def run() -> None:
            self.results[key] = await lease(self.q, f"w-{key}", **kw)

        self.nursery.start_soon(run)
        await settle(self.q)


async def test_long_poll_wakes_on_create(q: TaskQueue, mock_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        await w.start("a", wait=30)
        await advance(mock_clock, q, 5)
        assert "a" not in w.results
        task = await create(q, "x")
        await settle(q)
        assert ids(w.results["a"]) == [task.id]
        assert w.results["a"][0].worker_id == "w-a"
        assert w.results["a"][0].status == S.RUNNING
        assert trio.current_time() == 5
    assert q.dispatcher.waiting_count() == 0


async def test_long_poll_times_out_empty(q: TaskQueue, mock_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        await w.start("a", wait=30)
        await advance(mock_clock, q, 29.9)
        assert "a" not in w.results
        await advance(mock_clock, q, 0.1)
        assert w.results["a"] == []
    assert q.dispatcher.waiting_count() == 0


async def test_wait_zero_returns_at_once(q: TaskQueue) -> None:
    assert await lease(q, wait=0) == []
    assert q.dispatcher.waiting_count() == 0


async def test_waiters_served_in_arrival_order(q: TaskQueue, mock_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        for key in "abc":
            await w.start(key, wait=30)
        t1 = await create(q, "t1")
        await settle(q)
        assert set(w.results) == {"a"} and ids(w.results["a"]) == [t1.id]
        t2 = await create(q, "t2")
        await settle(q)
        assert set(w.results) == {"a", "b"} and ids(w.results["b"]) == [t2.id]
        t3 = await create(q, "t3")
        await settle(q)
        assert ids(w.results["c"]) == [t3.id]


async def test_one_task_wakes_exactly_one_waiter(q: TaskQueue, mock_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        for key in "abcd":
            await w.start(key, wait=30)
        assert q.dispatcher.waiting_count() == 4
        task = await create(q, "only")
        await settle(q)
        assert list(w.results) == ["a"]
        assert ids(w.results["a"]) == [task.id]
        assert q.dispatcher.waiting_count() == 3
        await advance(mock_clock, q, 30)
        assert {k: v for k, v in w.results.items() if k != "a"} == {"b": [], "c": [], "d": []}


async def test_batch_create_wakes_as_many_waiters_as_tasks(
    q: TaskQueue, mock_clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        for key in "abcd":
            await w.start(key, wait=30)
        await q.create_many([TaskCreate(name="x"), TaskCreate(name="y")])
        await settle(q)
        assert [t.name for t in w.results["a"]] == ["x"]
        assert [t.name for t in w.results["b"]] == ["y"]
        assert set(w.results) == {"a", "b"}
        await advance(mock_clock, q, 30)
        assert w.results["c"] == w.results["d"] == []


async def test_waiter_only_takes_matching_tasks(q: TaskQueue, mock_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        await w.start("a", wait=30, queues=["emails"])
        await w.start("b", wait=30, names=["resize"])
        other = await create(q, "other")
        await settle(q)
        assert w.results == {}
        resize = await create(q, "resize")
        await settle(q)
        assert list(w.results) == ["b"] and ids(w.results["b"]) == [resize.id]
        email = await create(q, "send", queue="emails")
        await settle(q)
        assert ids(w.results["a"]) == [email.id]
    assert ids(await lease(q)) == [other.id]


async def test_waiter_with_max_tasks_tops_up(q: TaskQueue, mock_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        await w.start("a", wait=30, max_tasks=3)
        await q.create_many([TaskCreate(name=f"t{i}") for i in range(5)])
        await settle(q)
        assert [t.name for t in w.results["a"]] == ["t0", "t1", "t2"]
    assert [t.name for t in await drain(q, max_tasks=10)] == ["t3", "t4"]


async def test_shutdown_answers_long_polls(settings: Settings, mock_clock: MockClock) -> None:
    got: list[list[Task]] = []
    async with trio.open_nursery() as nursery:
        async with open_queue(settings, clock=TrioClock(WALL0)) as q:

            async def poll() -> None:
                got.append(await lease(q, wait=60))

            nursery.start_soon(poll)
            await settle(q)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [[]]
        assert trio.current_time() == 0


# --------------------------------------------------------------------------- leases


async def test_complete(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x")
    leased = await lease_one(q)
    assert leased.id == task.id and leased.attempts == 1 and leased.lease is not None
    assert leased.lease.expires_at == WALL0 + q.settings.lease_default_s
    await advance(mock_clock, q, 3)
    done = await q.complete(task.id, leased.lease.id, {"r": 1})
    assert done.status == S.COMPLETED and done.result == {"r": 1}
    assert done.duration == 3 and done.completed_at == WALL0 + 3
    assert await q.get(task.id) == done
    # the finished lease can no longer act
    with pytest.raises(LeaseLost):
        await q.complete(task.id, leased.lease.id, {"r": 2})
    assert (await q.get(task.id)).result == {"r": 1}


async def test_complete_with_stale_lease_changes_nothing(q: TaskQueue) -> None:
    await create(q, "x")
    leased = await lease_one(q)
    before = await q.get(leased.id)
    counters = await q.store.counters()
    commits = q.store.stats.commits
    with pytest.raises(LeaseLost) as info:
        await q.complete(leased.id, "0" * 32, {"r": 1})
    assert info.value.details["field"] == "lease_id"
    with pytest.raises(LeaseLost):
        await q.fail(leased.id, "0" * 32, TaskError(message="m"))
    with pytest.raises(LeaseLost):
        await q.extend(leased.id, "0" * 32, 100)
    assert await q.get(leased.id) == before
    assert await q.store.counters() == counters
    assert q.store.stats.commits == commits + 3


async def test_lease_expiry_gives_the_task_back_without_a_retry_until_max_deliveries(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    """retry_count 0 (the default): lost leases put the task back; only the poison guard
    (max_deliveries lost leases) fails it, with `lease_expired`."""
    settings = make_settings(tmp_path / "data", max_deliveries=3)
    async with open_queue(settings, clock=TrioClock(WALL0)) as q:
        task = await create(q, "x")
        first = await lease_one(q, lease_seconds=10)
        await advance(mock_clock, q, 9.9)
        assert (await q.get(task.id)).status == S.RUNNING
        await advance(mock_clock, q, 0.1)
        after = await q.get(task.id)
        assert after.status == S.PENDING  # not failed: no retry was used
        assert after.error is not None and after.error.type == "lease_expired"
        assert after.attempts == 1 and after.lease is None and after.run_at is None
        assert after.deliveries == 1
        assert q.lease_expiries == 1

        assert first.lease is not None
        with pytest.raises(LeaseLost):
            await q.complete(task.id, first.lease.id)

        second = await lease_one(q, "w2", lease_seconds=10)
        assert second.attempts == 2 and second.worker_id == "w2" and second.deliveries == 2
        await advance(mock_clock, q, 10)
        assert (await q.get(task.id)).status == S.PENDING
        await lease_one(q, "w3", lease_seconds=10)
        await advance(mock_clock, q, 10)
        final = await q.get(task.id)
        assert final.status == S.FAILED  # the third lost lease: max_deliveries
        assert final.error is not None and final.error.type == "lease_expired"
        assert final.deliveries == 3
        assert await lease(q) == []
        assert (await q.dashboard()).failed_tasks == 1


async def test_expired_task_is_ready_for_waiter(q: TaskQueue, mock_clock: MockClock) -> None:
    await create(q, "x", retry_count=3)
    first = await lease_one(q, lease_seconds=10)
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        await w.start("b", wait=60)
        await advance(mock_clock, q, 10)
        [again] = w.results["b"]
        assert again.id == first.id and again.attempts == 2 and again.worker_id == "w-b"


async def test_expiry_of_task_timeout(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x", timeout=5)
    leased = await lease_one(q, lease_seconds=60)
    assert leased.lease is not None and leased.lease.expires_at == WALL0 + 5
    await advance(mock_clock, q, 5)
    final = await q.get(task.id)
    assert final.status == S.FAILED
    assert final.error is not None and final.error.type == "timeout"


async def test_extend(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x", timeout=100)
    leased = await lease_one(q, lease_seconds=10)
    assert leased.lease is not None
    await advance(mock_clock, q, 8)
    ext = await q.extend(task.id, leased.lease.id, 10)
    assert ext.lease is not None and ext.lease.expires_at == WALL0 + 18
    assert ext.lease.id == leased.lease.id
    await advance(mock_clock, q, 5)  # past the first expiry
    assert (await q.get(task.id)).status == S.RUNNING
    capped = await q.extend(task.id, leased.lease.id, 1000)
    assert capped.lease is not None and capped.lease.expires_at == WALL0 + 100
    await advance(mock_clock, q, 86)
    assert (await q.get(task.id)).status == S.RUNNING
    done = await q.complete(task.id, leased.lease.id, "ok")
    assert done.status == S.COMPLETED


async def test_extend_uses_default_lease(q: TaskQueue, mock_clock: MockClock) -> None:
    await create(q, "x")
    leased = await lease_one(q, lease_seconds=5)
    assert leased.lease is not None
    ext = await q.extend(leased.id, leased.lease.id)
    assert ext.lease is not None
    assert ext.lease.expires_at == WALL0 + q.settings.lease_default_s


async def test_fail_retries_with_backoff(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x", retry_count=2)
    leased = await lease_one(q)
    assert leased.lease is not None
    failed = await q.fail(task.id, leased.lease.id, TaskError(message="boom", type="IOError"))
    assert failed.status == S.PENDING
    assert failed.run_at is not None
    assert WALL0 + 0.75 <= failed.run_at <= WALL0 + 1.25
    assert failed.error == TaskError(message="boom", type="IOError")
    assert await lease(q) == []
    await advance(mock_clock, q, 1.25)
    again = await lease_one(q)
    assert again.attempts == 2
    assert again.lease is not None
    final = await q.fail(task.id, again.lease.id, TaskError(message="x"), retry=False)
    assert final.status == S.FAILED and final.attempts == 2
    day = (await q.daily(1))[0]
    assert (day["retried"], day["failed"]) == (1, 1)


async def test_ack_batch(q: TaskQueue) -> None:
    a = await create(q, "a")
    b = await create(q, "b", retry_count=1)
    c = await create(q, "c")
    la, lb, lc = await lease(q, max_tasks=3)
    assert la.lease and lb.lease and lc.lease
    outcomes = await q.ack(
        [
            AckItem(id=a.id, lease_id=la.lease.id, status="completed", result=1),
            AckItem(id=b.id, lease_id=lb.lease.id, status="failed", error="nope"),
            AckItem(id=c.id, lease_id="stale", status="completed"),
            AckItem(id="not-a-uuid", lease_id="x", status="completed"),
        ]
    )
    assert [(o.ok, o.task.status if o.task else None) for o in outcomes] == [
        (True, S.COMPLETED),
        (True, S.PENDING),
        (False, None),
        (False, None),
    ]
    assert outcomes[2].error is not None and outcomes[2].error.code == "CONFLICT"
    assert outcomes[3].error is not None
    assert outcomes[3].error.code == "INVALID_REQUEST"
    assert outcomes[3].error.details["field"] == "id"
    assert (await q.get(a.id)).result == 1
    assert (await q.get(b.id)).error == TaskError(message="nope")
    assert (await q.get(c.id)).status == S.RUNNING


async def test_release(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x")
    leased = await lease_one(q, lease_seconds=10)
    assert leased.lease is not None
    async with trio.open_nursery() as nursery:
        w = Waiters(q, nursery)
        await w.start("b", wait=30)
        released = await q.release(task.id, leased.lease.id)
        assert released.status == S.PENDING and released.attempts == 0
        await settle(q)
        [again] = w.results["b"]
    assert again.id == task.id and again.attempts == 1 and again.worker_id == "w-b"
    with pytest.raises(LeaseLost):
        await q.release(task.id, leased.lease.id)
    await advance(mock_clock, q, 10)  # the released lease's deadline: nothing happens
    after = await q.get(task.id)
    assert after.status == S.RUNNING and after.lease == again.lease and after.attempts == 1


# --------------------------------------------------------------------------- cancel / delete


async def test_cancel_pending(q: TaskQueue) -> None:
    task = await create(q, "x")
    other = await create(q, "y")
    cancelled = await q.cancel(task.id)
    assert cancelled.status == S.CANCELLED
    assert ids(await drain(q)) == [other.id]
    assert (await q.cancel(task.id)).status == S.CANCELLED  # twice is fine
    assert (await q.daily(1))[0]["cancelled"] == 1


async def test_cancel_scheduled(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x", delay=5)
    await q.cancel(task.id)
    await advance(mock_clock, q, 10)
    assert await lease(q) == []
    assert (await q.get(task.id)).status == S.CANCELLED


async def test_cancel_running(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x", retry_count=3)
    leased = await lease_one(q, lease_seconds=10)
    assert leased.lease is not None
    await q.update(task.id, TaskUpdate(status=S.CANCELLED))
    with pytest.raises(LeaseLost):
        await q.complete(task.id, leased.lease.id, "late")
    with pytest.raises(LeaseLost):
        await q.extend(task.id, leased.lease.id, 10)
    await advance(mock_clock, q, 20)  # the old lease's deadline passes: nothing happens
    final = await q.get(task.id)
    assert final.status == S.CANCELLED and final.result is None and final.lease is None
    assert await lease(q) == []


async def test_cannot_cancel_finished(q: TaskQueue) -> None:
    await create(q, "x")
    leased = await lease_one(q)
    assert leased.lease is not None
    await q.complete(leased.id, leased.lease.id)
    with pytest.raises(InvalidTransition):
        await q.cancel(leased.id)
    with pytest.raises(InvalidRequest):
        await q.update(leased.id, TaskUpdate(status=S.PENDING))
    assert (await q.get(leased.id)).status == S.COMPLETED


async def test_update_only_while_pending(q: TaskQueue) -> None:
    task = await create(q, "x")
    updated = await q.update(task.id, TaskUpdate(description="d", payload={"p": 2}))
    assert updated.description == "d" and updated.payload == {"p": 2}
    await lease_one(q)
    with pytest.raises(InvalidTransition):
        await q.update(task.id, TaskUpdate(description="e"))
    assert (await q.get(task.id)).description == "d"


async def test_delete(q: TaskQueue) -> None:
    task = await create(q, "x", idempotency_key="k")
    other = await create(q, "y")
    deleted = await q.delete(task.id)
    assert deleted.id == task.id
    with pytest.raises(NotFound):
        await q.get(task.id)
    with pytest.raises(NotFound):
        await q.delete(task.id)
    assert ids(await drain(q)) == [other.id]
    assert (await q.dashboard()).total_tasks == 1
    # the idempotency key is free again
    again, created = await q.create(TaskCreate(name="x", idempotency_key="k"))
    assert created and again.id != task.id


async def test_delete_running(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x")
    leased = await lease_one(q, lease_seconds=10)
    assert leased.lease is not None
    await q.delete(task.id)
    with pytest.raises(NotFound):
        await q.complete(task.id, leased.lease.id)
    await advance(mock_clock, q, 20)  # its lease deadline passes harmlessly
    assert await all_tasks(q) == []
    assert (await q.dashboard()).running_tasks == 0


# --------------------------------------------------------------------------- idempotency, ids


async def test_idempotency_key(q: TaskQueue) -> None:
    body = TaskCreate(name="x", payload={"a": 1}, idempotency_key="order-42")
    first, created = await q.create(body)
    assert created
    again, created = await q.create(
        TaskCreate(name="x", payload={"a": 1}, idempotency_key="order-42")
    )
    assert not created and again.id == first.id
    with pytest.raises(Conflict) as info:
        await q.create(TaskCreate(name="x", payload={"a": 2}, idempotency_key="order-42"))
    assert info.value.details["field"] == "idempotency_key"
    assert info.value.details["task_id"] == first.id
    assert len(await all_tasks(q)) == 1
    assert (await q.dashboard()).total_tasks == 1
    assert ids(await drain(q)) == [first.id]  # leased once, not twice


async def test_idempotency_key_concurrent(q: TaskQueue) -> None:
    results: list[tuple[Task, bool]] = []

    async def one() -> None:
        results.append(await q.create(TaskCreate(name="x", idempotency_key="same")))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert len({t.id for t, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(await all_tasks(q)) == 1


@pytest.mark.parametrize(
    "bad", ["nope", "", "123", "g" * 32, "12345678-1234-1234-1234-12345678901"]
)
async def test_invalid_task_id(q: TaskQueue, bad: str) -> None:
    calls = [
        lambda: q.complete(bad, "l"),
        lambda: q.fail(bad, "l", TaskError(message="m")),
        lambda: q.extend(bad, "l"),
        lambda: q.cancel(bad),
        lambda: q.delete(bad),
        lambda: q.update(bad, TaskUpdate(description="d")),
    ]
    with pytest.raises(InvalidRequest) as info:
        await q.get(bad)
    assert info.value.details == {"field": "task_id", "reason": "Not a valid UUID"}
    for call in calls:
        with pytest.raises(InvalidRequest) as info:
            await call()
        assert info.value.details["field"] == "task_id"


async def test_unknown_task_id(q: TaskQueue) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFound):
        await q.get(missing)
    with pytest.raises(NotFound):
        await q.complete(missing, "l")
    with pytest.raises(NotFound):
        await q.cancel(missing)


async def test_task_id_forms_are_canonicalised(q: TaskQueue) -> None:
    task = await create(q, "x")
    assert (await q.get(task.id.upper())).id == task.id
    assert (await q.get(task.id.replace("-", ""))).id == task.id


# --------------------------------------------------------------------------- analytics


async def mixed_workload(q: TaskQueue, mock_clock: MockClock) -> None:
    for i in range(12):
        await create(q, f"t{i}", priority=[H, M, L][i % 3], retry_count=i % 2)
    tasks = await lease(q, max_tasks=8, lease_seconds=30)
    await advance(mock_clock, q, 2)
    for t in tasks[:3]:
        assert t.lease is not None
        await q.complete(t.id, t.lease.id, {"i": t.name})
    for t in tasks[3:5]:
        assert t.lease is not None
        await q.fail(t.id, t.lease.id, TaskError(message="e"))
    pending = [t for t in await all_tasks(q) if t.status == S.PENDING and t.run_at is None]
    await q.cancel(pending[0].id)
    await q.delete(pending[1].id)
    await q.delete(tasks[0].id)  # a completed one
    await advance(mock_clock, q, 30)  # the rest of the leases expire


async def test_dashboard_matches_recount(q: TaskQueue, mock_clock: MockClock) -> None:
    await mixed_workload(q, mock_clock)
    counts = await recount(q)
    d = await q.dashboard()
    assert d.total_tasks == sum(counts.values()) == len(await all_tasks(q))
    assert d.pending_tasks == counts[S.PENDING]
    assert d.running_tasks == counts[S.RUNNING]
    assert d.completed_tasks == counts[S.COMPLETED]
    assert d.failed_tasks == counts[S.FAILED]
    assert d.cancelled_tasks == counts[S.CANCELLED]
    assert d.completion_rate == round(counts[S.COMPLETED] / d.total_tasks, 4)
    completed = [t for t in await all_tasks(q) if t.status == S.COMPLETED]
    assert completed and d.average_duration == pytest.approx(
        sum(t.duration or 0 for t in completed) / len(completed)
    )
    for status in S:
        _, total = await q.list_tasks(ListTasksQuery(status=status))
        assert total == counts[status]


async def test_dashboard_empty(q: TaskQueue) -> None:
    d = await q.dashboard()
    assert (d.total_tasks, d.completion_rate, d.average_duration) == (0, 0.0, 0.0)


async def test_daily_and_trends(q: TaskQueue, mock_clock: MockClock) -> None:
    await mixed_workload(q, mock_clock)
    [today] = await q.daily(1)
    assert today["date"] == "2023-11-14"
    assert today["created"] == 12
    assert today["completed"] == 3
    failed = today["failed"]
    assert failed == len([t for t in await all_tasks(q) if t.status == S.FAILED])
    assert today["cancelled"] == 1
    assert today["completion_rate"] == round(3 / (3 + failed), 4)
    assert today["error_rate"] == round(failed / (3 + failed), 4)
    assert today["avg_duration"] == 2.0
    await advance(mock_clock, q, 2 * 3600)  # past midnight UTC
    await create(q, "tomorrow")
    rows = await q.daily(3)
    assert [r["date"] for r in rows] == ["2023-11-13", "2023-11-14", "2023-11-15"]
    assert [r["created"] for r in rows] == [0, 12, 1]
    trends = await q.trends(2, "error_rate")
    assert trends["days"] == 2 and trends["metric"] == "error_rate"
    assert trends["series"][0] == {
        "date": "2023-11-14", "error_rate": today["error_rate"], "completed": 3, "failed": failed
    }  # fmt: skip
    assert set((await q.trends(2, None))["series"][1]) == {
        "date",
        "completion_rate",
        "avg_duration",
        "error_rate",
        "completed",
        "failed",
    }
    for days in (0, 366):
        with pytest.raises(InvalidRequest):
            await q.daily(days)
    with pytest.raises(InvalidRequest) as info:
        await q.trends(7, "nope")
    assert info.value.details["field"] == "metric"


# --------------------------------------------------------------------------- workers


async def test_heartbeat_and_inactive(q: TaskQueue, mock_clock: MockClock) -> None:
    timeout = q.settings.worker_timeout_s
    worker = await q.heartbeat(Heartbeat(worker_id="w1", max_capacity=4, hostname="h"))
    assert worker.status == WorkerStatus.ACTIVE and worker.last_heartbeat == WALL0
    assert (await q.dashboard()).workers_active == 1 and (await q.dashboard()).workers_total == 1
    await advance(mock_clock, q, timeout / 2)
    await q.heartbeat(Heartbeat(worker_id="w1", current_load=2))
    await advance(mock_clock, q, timeout - 0.5)  # silent for less than the timeout
    assert (await q.get_worker("w1")).status == WorkerStatus.ACTIVE
    await advance(mock_clock, q, 0.5)
    w = await q.get_worker("w1")
    assert w.status == WorkerStatus.INACTIVE and w.current_load == 0
    assert w.hostname == "h" and w.max_capacity == 1
    assert (await q.dashboard()).workers_active == 0 and (await q.dashboard()).workers_total == 1
    await q.heartbeat(Heartbeat(worker_id="w1"))
    assert (await q.get_worker("w1")).status == WorkerStatus.ACTIVE
    assert (await q.dashboard()).workers_active == 1
    workers, total = await q.list_workers(ListWorkersQuery(status=WorkerStatus.ACTIVE))
    assert total == 1 and workers[0].worker_id == "w1"
    with pytest.raises(NotFound):
        await q.get_worker("nobody")


async def test_worker_task_counters(q: TaskQueue) -> None:
    await q.heartbeat(Heartbeat(worker_id="w1"))
    await q.create_many([TaskCreate(name="a"), TaskCreate(name="b")])
    a, b = await lease(q, "w1", max_tasks=2)
    assert a.lease and b.lease
    await q.complete(a.id, a.lease.id)
    await q.fail(b.id, b.lease.id, TaskError(message="m"))
    w = await q.get_worker("w1")
    assert (w.tasks_completed, w.tasks_failed) == (1, 1)


# --------------------------------------------------------------------------- restart


async def test_restart_keeps_pending_order(tmp_path: Path, mock_clock: MockClock) -> None:
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    spec = [("l1", L, "a"), ("h1", H, "b"), ("m1", M, "a"), ("h2", H, "a"), ("m2", M, "b")]
    async with open_queue(settings, clock=clock) as q:
        for name, prio, queue in spec:
            await create(q, name, priority=prio, queue=queue)
        await create(q, "later", delay=100)
        before = await all_tasks(q)
    async with open_queue(settings, clock=clock) as q:
        assert await all_tasks(q) == before
        leased = await drain(q, lease_seconds=1000)
        assert [t.name for t in leased] == ["h1", "h2", "m1", "m2", "l1"]
        await advance(mock_clock, q, 100)
        assert [t.name for t in await drain(q)] == ["later"]


async def test_restart_gives_running_leases_their_length_again(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    """A lease live at the stop gets its own length from the restart (here 30 s from t=50,
    though it ran out at t=30 while the server was down); expiring then uses no retry."""
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        task = await create(q, "x")
        leased = await lease_one(q, lease_seconds=30)
        await advance(mock_clock, q, 10)
    assert leased.lease is not None
    mock_clock.jump(40)  # down from t=10 to t=50
    async with open_queue(settings, clock=clock) as q:
        after = await q.get(task.id)
        assert after.status == S.RUNNING and after.lease is not None
        assert after.lease.id == leased.lease.id
        assert after.lease.expires_at == WALL0 + 50 + 30
        assert await lease(q) == []  # not handed out again while leased
        await advance(mock_clock, q, 29.5)
        assert (await q.get(task.id)).status == S.RUNNING
        # the worker that held it before the restart can still finish... or it expires:
        await advance(mock_clock, q, 0.5)
        expired = await q.get(task.id)
        assert expired.status == S.PENDING  # retry_count 0, yet not failed
        assert expired.error is not None and expired.error.type == "lease_expired"
        assert ids(await lease(q)) == [task.id]


async def test_a_worker_that_kept_running_reports_after_a_restart(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        task = await create(q, "x")
        leased = await lease_one(q, lease_seconds=20)
    assert leased.lease is not None
    mock_clock.jump(60)  # the server was down three times the lease's length
    async with open_queue(settings, clock=clock) as q:
        await settle(q)
        done = await q.complete(task.id, leased.lease.id, "kept running")
        assert done.status == S.COMPLETED and done.result == "kept running"


async def test_restart_lease_survives_and_can_complete(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        await create(q, "x")
        leased = await lease_one(q, lease_seconds=30)
    assert leased.lease is not None
    async with open_queue(settings, clock=clock) as q:
        done = await q.complete(leased.id, leased.lease.id, "ok")
        assert done.status == S.COMPLETED
        await advance(mock_clock, q, 60)
        assert (await q.get(leased.id)).status == S.COMPLETED


async def test_restart_keeps_counters_workers_and_idempotency(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        await mixed_workload(q, mock_clock)
        await q.heartbeat(Heartbeat(worker_id="w1"))
        first, _ = await q.create(TaskCreate(name="k", idempotency_key="key"))
        dashboard = await q.dashboard()
        daily = await q.daily(2)
    async with open_queue(settings, clock=clock) as q:
        assert await q.dashboard() == dashboard
        assert await q.daily(2) == daily
        again, created = await q.create(TaskCreate(name="k", idempotency_key="key"))
        assert again.id == first.id and not created
        assert (await q.get_worker("w1")).status == WorkerStatus.ACTIVE
        await advance(mock_clock, q, q.settings.worker_timeout_s)
        assert (await q.get_worker("w1")).status == WorkerStatus.INACTIVE
        fresh = await create(q, "fresh")
        assert fresh.seq > again.seq


# --------------------------------------------------------------------------- listing


async def listing_fixture(q: TaskQueue, mock_clock: MockClock) -> dict[str, Task]:
    """Six tasks created one second apart, in various states."""
    names = ["a", "b", "c", "d", "e", "f"]
    prios = [H, M, L, H, M, L]
    made = {}
    for name, prio in zip(names, prios, strict=True):
        made[name] = await create(q, name, priority=prio)
        await advance(mock_clock, q, 1)
    # a, d leased by w1 (high); b, e by w2 (medium)
    la, ld = await lease(q, "w1", max_tasks=2)
    lb, _ = await lease(q, "w2", max_tasks=2)
    await advance(mock_clock, q, 1)
    assert la.lease and ld.lease and lb.lease
    await q.complete(ld.id, ld.lease.id)  # duration 1
    await advance(mock_clock, q, 2)
    await q.complete(la.id, la.lease.id)  # duration 3
    await q.fail(lb.id, lb.lease.id, TaskError(message="m"))  # failed, duration 3
    await advance(mock_clock, q, 1)
    await q.cancel(made["c"].id)
    return made


def names(tasks: list[Task]) -> list[str]:
    return [t.name for t in tasks]


async def listing(q: TaskQueue, **kw: Any) -> tuple[list[str], int]:
    tasks, total = await q.list_tasks(ListTasksQuery(**kw))
    return names(tasks), total


async def test_list_sort_and_order(q: TaskQueue, mock_clock: MockClock) -> None:
    await listing_fixture(q, mock_clock)
    assert await listing(q) == (list("fedcba"), 6)  # default: created_at desc
    assert await listing(q, order="asc") == (list("abcdef"), 6)
    # updated_at: f (creation), e (lease), d (complete), a, b (complete/fail), c (cancel)
    got, total = await listing(q, sort="updated_at", order="asc")
    assert total == 6
    assert got[:3] == ["f", "e", "d"] and set(got[3:5]) == {"a", "b"} and got[5] == "c"
    assert (await listing(q, sort="updated_at", order="desc"))[0][0] == "c"
    # duration: d=1, a=3, b=3; others have none and come first ascending, last descending
    got, _ = await listing(q, sort="duration", order="asc")
    assert set(got[:3]) == {"c", "e", "f"} and got[3] == "d" and set(got[4:]) == {"a", "b"}
    got, _ = await listing(q, sort="duration", order="desc")
    assert set(got[:2]) == {"a", "b"} and got[2] == "d"


async def test_list_filters(q: TaskQueue, mock_clock: MockClock) -> None:
    await listing_fixture(q, mock_clock)
    assert await listing(q, status=S.COMPLETED, order="asc") == (["a", "d"], 2)
    assert await listing(q, status=S.RUNNING) == (["e"], 1)
    assert await listing(q, status=S.PENDING) == (["f"], 1)
    assert await listing(q, status=S.FAILED) == (["b"], 1)
    assert await listing(q, status=S.CANCELLED) == (["c"], 1)
    assert await listing(q, priority=H, order="asc") == (["a", "d"], 2)
    assert await listing(q, priority=L) == (["f", "c"], 2)
    assert await listing(q, worker_id="w1", order="asc") == (["a", "d"], 2)
    assert await listing(q, worker_id="w2", order="asc") == (["b", "e"], 2)
    assert await listing(q, worker_id="w3") == ([], 0)
    assert await listing(q, status=S.COMPLETED, priority=H, order="asc") == (["a", "d"], 2)
    assert await listing(q, status=S.FAILED, worker_id="w2") == (["b"], 1)
    assert await listing(q, priority=M, worker_id="w2", order="asc") == (["b", "e"], 2)
    assert await listing(q, status=S.RUNNING, sort="updated_at") == (["e"], 1)
    assert await listing(q, worker_id="w1", sort="duration", order="desc") == (["a", "d"], 2)


async def test_list_paging(q: TaskQueue, mock_clock: MockClock) -> None:
    await listing_fixture(q, mock_clock)
    assert await listing(q, order="asc", skip=0, limit=4) == (list("abcd"), 6)
    assert await listing(q, order="asc", skip=4, limit=4) == (list("ef"), 6)
    assert await listing(q, order="asc", skip=6, limit=4) == ([], 6)
    assert await listing(q, order="desc", skip=1, limit=2) == (list("ed"), 6)
    assert await listing(q, status=S.COMPLETED, skip=1, limit=1) == (["a"], 2)
    assert await listing(q, priority=L, order="asc", skip=1, limit=1) == (["f"], 2)
    assert await listing(q, sort="updated_at", order="asc", skip=5, limit=10) == (["c"], 6)
    assert await listing(q, sort="duration", order="desc", skip=2, limit=1) == (["d"], 6)
    assert await listing(q, worker_id="w2", skip=1, limit=1) == (["b"], 2)


async def test_list_worker_index_follows_re_lease(q: TaskQueue, mock_clock: MockClock) -> None:
    task = await create(q, "x", retry_count=1)
    await lease_one(q, "w1", lease_seconds=10)
    await advance(mock_clock, q, 10)
    await lease_one(q, "w2", lease_seconds=10)
    assert await listing(q, worker_id="w1") == ([], 0)
    assert await listing(q, worker_id="w2") == (["x"], 1)
    await q.delete(task.id)
    assert await listing(q, worker_id="w2") == ([], 0)


# --------------------------------------------------------------------------- bugs


async def test_list_same_commit_in_creation_order(q: TaskQueue) -> None:
    await q.create_many([TaskCreate(name=f"t{i:02}") for i in range(30)])
    assert (await listing(q, order="asc", limit=100))[0] == [f"t{i:02}" for i in range(30)]


async def order_after(settings: Settings, restart: bool, mock_clock: MockClock) -> list[str]:
    clock = TrioClock(WALL0 + trio.current_time())
    async with open_queue(settings, clock=clock) as q:
        await create(q, "delayed", delay=5)
        await create(q, "retried", retry_count=1)
        leased = await lease_one(q, lease_seconds=60)
        assert leased.name == "retried" and leased.lease is not None
        await create(q, "plain")
        await q.fail(leased.id, leased.lease.id, TaskError(message="m"))  # back in ~1 s
        await advance(mock_clock, q, 10)
        if not restart:
            return [t.name for t in await drain(q)]
    async with open_queue(settings, clock=clock) as q:
        return [t.name for t in await drain(q)]


async def test_dispatch_order_same_with_and_without_restart(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    without = await order_after(make_settings(tmp_path / "a"), False, mock_clock)
    with_restart = await order_after(make_settings(tmp_path / "b"), True, mock_clock)
    assert without == with_restart


# Deadlines read back from LMDB index keys are whole microseconds (keys.micros truncates). If
# rebuild() took them from there, the reaper would act up to 1 us early after a restart, the op
# would find "not yet due" and the entry would be dropped for good.
SUB_MICRO = 2.0**-21  # ~0.48 us, exactly representable next to WALL0


async def test_restart_lease_with_sub_microsecond_expiry_still_expires(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        task = await create(q, "x", retry_count=1)
        leased = await lease_one(q, lease_seconds=60 + SUB_MICRO)
        assert leased.lease is not None and leased.lease.expires_at == WALL0 + 60 + SUB_MICRO
    async with open_queue(settings, clock=clock) as q:
        await advance(mock_clock, q, 60)  # exactly the truncated key time
        await advance(mock_clock, q, 10)
        assert (await q.get(task.id)).status == S.PENDING


async def test_restart_run_at_with_sub_microsecond_is_not_lost(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    settings = make_settings(tmp_path / "data")
    clock = TrioClock(WALL0)
    async with open_queue(settings, clock=clock) as q:
        task = await create(q, "x", delay=10 + SUB_MICRO)
    async with open_queue(settings, clock=clock) as q:
        await advance(mock_clock, q, 10)  # exactly the truncated run_at
        assert await lease(q) == []  # not due yet: fine
        await advance(mock_clock, q, 5)
        assert ids(await lease(q)) == [task.id]


async def test_cancelled_lease_call_leaves_no_stale_ready_entry(q: TaskQueue) -> None:
    first = await create(q, "first")
    second = await create(q, "second")
    scope = trio.CancelScope()

    async def call() -> None:
        with scope:
            await lease(q, "gone")

    # hold the writer's thread, so that the grant is still being committed when cancelled
    async with trio.open_nursery() as nursery, q.store.writer._one_thread:
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
    await settle(q)
    assert (await q.get(first.id)).status == S.RUNNING  # granted to the caller that went away
    assert q.dispatcher.ready_count() == 1
    assert ids(await lease(q)) == [second.id]


async def test_cancelled_waiter_hands_its_task_to_the_next(
    q: TaskQueue, mock_clock: MockClock
) -> None:
    first_scope = trio.CancelScope()
    results: dict[str, list[Task]] = {}

    async def waiter(key: str, scope: trio.CancelScope) -> None:
        with scope:
            results[key] = await lease(q, key, wait=30)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a", first_scope)
        await settle(q)
        nursery.start_soon(waiter, "b", trio.CancelScope())
        await settle(q)
        # Commit two writes in one batch: the first one's on_commit cancels waiter a, the
        # second creates a task, which is handed to a before a has run.
        async with q.store.writer._one_thread:
            nursery.start_soon(q.store.write, lambda tx: None)
            await trio.testing.wait_all_tasks_blocked()  # the writer holds that one
            nursery.start_soon(q.store.write, lambda tx: None, lambda _: first_scope.cancel())
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(create, q, "x")
            await trio.testing.wait_all_tasks_blocked()
        await settle(q)
        assert "a" not in results  # cancelled
        got_b = [t.name for t in results.get("b", [])]
        await advance(mock_clock, q, 30)
    assert got_b == ["x"]


async def test_reprioritise_scheduled_task(settings: Settings, mock_clock: MockClock) -> None:
    async with open_queue(settings, clock=TrioClock(WALL0)) as q:
        low = await create(q, "low", priority=L)
        later = await create(q, "later", priority=L, delay=10)
        updated = await q.update(later.id, TaskUpdate(priority=H))
        assert updated.priority == H and updated.run_at == WALL0 + 10
        assert ids(await drain(q)) == [low.id]
        await advance(mock_clock, q, 10)
        assert ids(await drain(q)) == [later.id]


# --------------------------------------------------------------------------- misc


async def test_lease_request_defaults(q: TaskQueue) -> None:
    await create(q, "x")
    [t] = await q.lease(LeaseRequest(worker_id="w", wait=0))
    assert t.lease is not None
    assert t.lease.expires_at - t.lease.granted_at == q.settings.lease_default_s


async def test_finished_leases_cost_the_reaper_no_storage_work(
    q: TaskQueue, mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease that ended (completed, extended) is dropped from the reaper's plan in memory:
    when its old expiry passes, nothing is written."""
    await create(q)
    await create(q)
    done = await lease_one(q, lease_seconds=10)
    assert done.lease is not None
    await q.complete(done.id, done.lease.id)
    kept = await lease_one(q, lease_seconds=10)
    assert kept.lease is not None
    await q.extend(kept.id, kept.lease.id, 60)
    expire_calls: list[object] = []
    real_expire = ops.expire
    monkeypatch.setattr(
        ops,
        "expire",
        lambda tx, due, policy: expire_calls.append(due) or real_expire(tx, due, policy),
    )
    await advance(mock_clock, q, 30)
    assert expire_calls == []
    assert (await q.get(kept.id)).status == TaskStatus.RUNNING


async def test_a_parked_worker_gets_a_new_task_in_the_creates_own_commit(q: TaskQueue) -> None:
    """Wake-up path: the create and the lease to the waiting worker are one durable commit."""
    got: list[Task] = []

    async def worker() -> None:
        got.extend(await lease(q, "w1", wait=30))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await settle(q)
        commits = q.store.stats.commits
        task = await create(q, "x")
        await trio.testing.wait_all_tasks_blocked()
        assert q.store.stats.commits == commits + 1
    assert [t.id for t in got] == [task.id]
    assert got[0].status == TaskStatus.RUNNING and got[0].worker_id == "w1"
    assert (await q.get(task.id)).lease == got[0].lease
    assert (await recount(q))[TaskStatus.RUNNING] == 1


async def test_a_replayed_create_does_not_strand_the_parked_worker(q: TaskQueue) -> None:
    """An idempotent replay creates nothing: the reserved worker goes back to waiting and
    still gets the next task."""
    first = await create(q, "x", idempotency_key="k")
    await lease_one(q, "w0")  # nothing is ready now
    got: list[Task] = []

    async def worker() -> None:
        got.extend(await lease(q, "w1", wait=30))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await settle(q)
        replay, created = await q.create(TaskCreate(name="x", idempotency_key="k"))
        assert (replay.id, created) == (first.id, False)
        await settle(q)
        assert got == []  # nothing new: still waiting
        fresh = await create(q, "y")
        await settle(q)
    assert [t.id for t in got] == [fresh.id]


async def test_the_lease_plan_stays_small_when_leases_finish(q: TaskQueue) -> None:
    """Each grant plans an expiry; finished ones are compacted away, not kept for a minute."""
    for _ in range(30):
        await q.create_many([TaskCreate(name="x")] * 1000)
        leased = await lease(q, max_tasks=100)
        while leased:
            await q.ack(
                [AckItem(id=t.id, lease_id=t.lease.id, status="completed") for t in leased]  # type: ignore[union-attr]
            )
            leased = await lease(q, max_tasks=100)
    assert q.deadlines.lease_plan_size() <= 10_000 + 1
