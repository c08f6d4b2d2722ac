"""Issue 12 in the core: a task's history, redrive, purge, retention and schedules, all driven
by the injected clock (see conftest.py: `advance` moves a manual MockClock)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import trio
from msgspec.structs import replace
from trio.testing import MockClock

from dtq.clock import TrioClock
from dtq.core import redrive, retention
from dtq.core import schedules as sched
from dtq.core.service import TaskQueue
from dtq.errors import Conflict, InvalidRequest
from dtq.models import (
    AckItem,
    CatchUp,
    Priority,
    ScheduleCreate,
    ScheduleUpdate,
    TaskCreate,
    TaskError,
    TaskEventKind,
    TaskFilter,
    TaskStatus,
)
from dtq.server import open_queue

from .conftest import WALL0, advance, create, lease, lease_one, make_settings, settle

S = TaskStatus
E = TaskEventKind


async def kinds(q: TaskQueue, task_id: str) -> list[str]:
    return [e.event.value for e in await q.store.list_task_events(task_id)]


# -- history ---------------------------------------------------------------------------------


async def test_events_in_order_across_retries_and_lease_expiry(
    q: TaskQueue, mock_clock: MockClock
) -> None:
    task, _ = await q.create(TaskCreate(name="job", retry_count=1), actor="user:alice")
    first = await lease_one(q, lease_seconds=30)
    assert first.lease is not None
    await q.fail(task.id, first.lease.id, TaskError(message="boom"), actor="key:k1")
    await advance(mock_clock, q, 5)  # past the retry backoff (about 1 s)
    second = await lease_one(q, lease_seconds=10)
    await advance(mock_clock, q, 11)  # the lease runs out: a lost lease, no retry used
    third = await lease_one(q, "w2", lease_seconds=10)
    assert third.lease is not None
    await q.extend(task.id, third.lease.id, 20, actor="key:k1")
    await q.complete(task.id, third.lease.id, {"ok": 1}, actor="key:k1")

    events = await q.store.list_task_events(task.id)
    assert [e.event.value for e in events] == [
        "created", "leased", "retry_scheduled", "leased", "lease_expired", "leased",
        "extended", "completed",
    ]  # fmt: skip
    assert [e.attempt for e in events] == [0, 1, 1, 2, 2, 3, 3, 3]
    assert events[0].actor == "user:alice" and events[4].actor == "system"
    assert events[2].actor == "key:k1" and events[2].error == TaskError(message="boom")
    assert events[2].details is not None and events[2].details["status"] == "pending"
    assert events[4].error is not None and events[4].error.type == "lease_expired"
    assert events[4].worker_id == "w1" and events[5].worker_id == "w2"
    assert second.lease is not None and events[3].lease_id == second.lease.id
    assert all(a.at <= b.at for a, b in itertools.pairwise(events))


async def test_timeout_release_cancel_update_events(q: TaskQueue, mock_clock: MockClock) -> None:
    t = await create(q, timeout=5)
    await lease_one(q, lease_seconds=60)  # capped at the 5 s timeout
    await advance(mock_clock, q, 6)
    assert (await kinds(q, t.id))[-1] == "timed_out"
    assert (await q.get(t.id)).status == S.FAILED

    u = await create(q, name="other")
    got = await lease_one(q, names=["other"])
    assert got.lease is not None
    await q.release(u.id, got.lease.id)
    await q.update(u.id, _update(priority=Priority.HIGH), actor="user:bob")
    await q.cancel(u.id, actor="user:bob")
    events = await q.store.list_task_events(u.id)
    assert [e.event.value for e in events] == [
        "created", "leased", "released", "updated", "cancelled",
    ]  # fmt: skip
    assert events[3].details == {"fields": ["priority"]}
    assert events[4].actor == "user:bob"


def _update(**kw: Any) -> Any:
    from dtq.models import TaskUpdate

    return TaskUpdate(**kw)


async def test_ack_and_create_leased_record_events(q: TaskQueue) -> None:
    async with trio.open_nursery() as nursery:
        got: list[Any] = []

        async def poll() -> None:
            got.extend(await lease(q, wait=10))

        nursery.start_soon(poll)
        await settle(q)
        task = await create(q)  # leased to the parked poll in the same commit
    assert [t.id for t in got] == [task.id]
    lease_id = got[0].lease.id
    await q.ack([AckItem(id=task.id, lease_id=lease_id, status="failed", error="x")])
    assert await kinds(q, task.id) == ["created", "leased", "failed"]


async def test_delete_removes_the_history(q: TaskQueue) -> None:
    t = await create(q)
    await q.delete(t.id)
    assert await q.store.list_task_events(t.id) == []


# -- redrive ---------------------------------------------------------------------------------


async def _fail_all(q: TaskQueue, n: int, **kw: Any) -> list[str]:
    rows = []
    for start in range(0, n, 1000):
        bodies = [TaskCreate(name="job", **kw) for _ in range(min(1000, n - start))]
        rows += await q.create_many(bodies)
    while True:
        tasks = await lease(q, max_tasks=100)
        if not tasks:
            break
        acks = [AckItem(id=t.id, lease_id=t.lease.id, status="failed", error="no", retry=False)
                for t in tasks if t.lease]  # fmt: skip
        await q.ack(acks)
    return [t.id for t, _ in rows]


async def test_retry_one_task(q: TaskQueue) -> None:
    (task_id,) = await _fail_all(q, 1)
    again = await redrive.retry_task(q, task_id, "user:ops")
    assert again.status == S.PENDING and again.attempts == 1 and again.error is None
    got = await lease_one(q)
    assert got.id == task_id and got.attempts == 2
    assert got.lease is not None
    done = await q.fail(task_id, got.lease.id, TaskError(message="again"))
    assert done.status == S.FAILED  # the one more attempt was that one
    assert await kinds(q, task_id) == ["created", "leased", "failed", "retried", "leased",
                                        "failed"]  # fmt: skip
    with pytest.raises(Conflict):
        await redrive.retry_task(q, (await create(q)).id)  # pending: 409


async def test_retry_ten_thousand_failed_tasks(q: TaskQueue) -> None:
    ids = await _fail_all(q, 10_000)
    other = await _fail_all(q, 10, queue="other")
    result = await redrive.retry_matching(q, TaskFilter(status=S.FAILED, queue="default"))
    assert (result.matched, result.affected) == (10_000, 10_000)
    counts = await q.store.counters()
    assert counts["pending"] == 10_000 and counts["failed"] == 10
    leased = set()
    while batch := await lease(q, max_tasks=100, queues=["default"]):
        leased.update(t.id for t in batch)
    assert leased == set(ids)  # every one is back in the dispatcher
    assert (await q.get(other[0])).status == S.FAILED


async def test_bulk_filters_limit_and_status_rules(q: TaskQueue) -> None:
    await _fail_all(q, 30, tags=["red"])
    plain = await _fail_all(q, 20)
    res = await redrive.retry_matching(q, TaskFilter(status=S.FAILED, tag="red", limit=7))
    assert (res.matched, res.affected) == (7, 7)
    res = await redrive.purge_matching(q, TaskFilter(status=S.FAILED, tag="red"))
    assert (res.matched, res.affected) == (23, 23)
    assert (await q.store.counters())["failed"] == 20
    with pytest.raises(InvalidRequest) as err:
        await redrive.retry_matching(q, TaskFilter(status=S.COMPLETED))
    assert err.value.details["field"] == "status"
    with pytest.raises(InvalidRequest):
        await redrive.purge_matching(q, TaskFilter(status=S.PENDING))
    assert (await q.get(plain[0])).status == S.FAILED


# -- retention -------------------------------------------------------------------------------


@pytest.fixture
async def rq(tmp_path: Path, mock_clock: MockClock) -> Any:
    settings = make_settings(tmp_path / "r", retention_completed_s=100.0,
                             retention_failed_s=1000.0, retention_interval_s=10.0)  # fmt: skip
    async with open_queue(settings, clock=TrioClock(WALL0)) as queue:
        yield queue


async def test_retention_prunes_by_age_and_keeps_the_figures(
    rq: TaskQueue, mock_clock: MockClock
) -> None:
    q = rq
    done = await create(q)
    got = await lease_one(q)
    assert got.lease is not None
    await q.complete(done.id, got.lease.id)
    (failed_id,) = await _fail_all(q, 1)
    keep = await create(q)  # pending: never pruned
    before = await q.dashboard()
    await advance(mock_clock, q, 95)
    assert await q.store.get_task(done.id) is not None
    await advance(mock_clock, q, 20)  # the pruner's next round is past 100 s
    assert await q.store.get_task(done.id) is None
    assert await q.store.list_task_events(done.id) == []
    assert await q.store.get_task(failed_id) is not None
    assert await q.dashboard() == before  # pruning changes no figure of what happened
    await advance(mock_clock, q, 1000)
    assert await q.store.get_task(failed_id) is None
    assert await q.dashboard() == before
    assert (await q.get(keep.id)).status == S.PENDING
    _, total = await q.list_tasks(_query(status=S.COMPLETED))
    assert total == 0  # listings count what is stored


def _query(**kw: Any) -> Any:
    from dtq.models import ListTasksQuery

    return ListTasksQuery(**kw)


async def test_prune_in_batches(q: TaskQueue, mock_clock: MockClock) -> None:
    await _fail_all(q, 1200)
    await advance(mock_clock, q, 10)
    s = q.settings
    q.settings = type(s)(**{**{f: getattr(s, f) for f in s.__struct_fields__},
                            "retention_failed_s": 5.0})  # fmt: skip
    assert await retention.prune_due(q, batch=500) == 1200
    assert (await q.store.counters()).get("failed", 0) == 0
    assert (await q.dashboard()).failed_tasks == 1200


# -- schedules -------------------------------------------------------------------------------


def _every_minute(name: str = "tick", **kw: Any) -> ScheduleCreate:
    return ScheduleCreate(name=name, cron="* * * * *", task=TaskCreate(name="cron-job"), **kw)


async def scheduled_tasks(q: TaskQueue) -> list[str]:
    tasks, _ = await q.list_tasks(_query(name="cron-job", order="asc", limit=100))
    return [t.idempotency_key or "" for t in tasks]


async def test_a_schedule_fires_once_per_minute(q: TaskQueue, mock_clock: MockClock) -> None:
    s = await q.schedules.create(_every_minute())
    assert s.next_run_at is not None and s.next_run_at % 60 == 0
    first = s.next_run_at
    await advance(mock_clock, q, first - q.clock.now() - 0.5)
    assert await scheduled_tasks(q) == []
    for _ in range(3):
        await advance(mock_clock, q, 20)
        await advance(mock_clock, q, 20)
        await advance(mock_clock, q, 20)
    keys = await scheduled_tasks(q)
    assert keys == [f"schedule:tick:{int(first + 60 * i)}" for i in range(3)]
    got = await q.schedules.get("tick")
    assert got.last_run_at == first + 120 and got.next_run_at == first + 180
    assert got.last_task_id is not None
    assert (await q.get(got.last_task_id)).idempotency_key == keys[-1]


async def test_pause_resume_update_delete_trigger(q: TaskQueue, mock_clock: MockClock) -> None:
    await q.schedules.create(_every_minute(paused=True))
    await advance(mock_clock, q, 180)
    assert await scheduled_tasks(q) == []
    s, task = await q.schedules.trigger("tick")
    assert task is not None and s.last_task_id == task.id and s.next_run_at is None
    resumed = await q.schedules.update("tick", ScheduleUpdate(paused=False, cron="*/5 * * * *"))
    assert resumed.next_run_at is not None and resumed.next_run_at % 300 == 0
    await advance(mock_clock, q, resumed.next_run_at - q.clock.now() + 1)
    assert len(await scheduled_tasks(q)) == 2
    await q.schedules.delete("tick")
    await advance(mock_clock, q, 600)
    assert len(await scheduled_tasks(q)) == 2
    with pytest.raises(Conflict):
        await q.schedules.create(_every_minute("dup"))
        await q.schedules.create(_every_minute("dup"))


@pytest.mark.parametrize(
    ("cron", "tz", "field"),
    [
        ("* * *", "UTC", "cron"),
        ("61 * * * *", "UTC", "cron"),
        ("* * * * *", "Mars/Base", "timezone"),
    ],
)
async def test_bad_cron_or_timezone(q: TaskQueue, cron: str, tz: str, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        await q.schedules.create(ScheduleCreate(name="x", cron=cron, timezone=tz,
                                                task=TaskCreate(name="j")))  # fmt: skip
    assert err.value.details["field"] == field


async def test_a_tick_and_its_next_fire_time_commit_together(q: TaskQueue) -> None:
    """What a kill -9 could interrupt is one commit: it holds both or neither."""
    s = await q.schedules.create(_every_minute())
    assert s.next_run_at is not None
    tick = s.next_run_at

    def fire_then_crash(tx: Any) -> None:
        sched.fire_op(tx, "tick", tick)
        raise RuntimeError("the process dies before the commit")

    with pytest.raises(RuntimeError):
        await q.store.write(fire_then_crash)
    assert await scheduled_tasks(q) == []
    assert (await q.schedules.get("tick")).next_run_at == tick  # still due: fires later
    # committed once, a second attempt at the same tick (a restart replaying it) is a no-op
    fired = await q.store.write(lambda tx: sched.fire_op(tx, "tick", tick))
    assert fired is not None and fired[1] is not None
    assert await q.store.write(lambda tx: sched.fire_op(tx, "tick", tick)) is None
    assert len(await scheduled_tasks(q)) == 1


async def test_a_stored_task_this_version_refuses_skips_its_ticks_only(
    q: TaskQueue, mock_clock: MockClock
) -> None:
    """A schedule whose stored task no longer validates (stored by another version) must not
    stop the reaper: its ticks are skipped, every other schedule goes on, and a trigger says
    what is wrong."""
    await q.schedules.create(_every_minute("broken"))
    good = await q.schedules.create(_every_minute())
    broken = await q.schedules.get("broken")
    stale = replace(broken, task={"name": "cron-job", "priority": "urgent"})
    await q.store.write(lambda tx: tx.put_schedule(stale))
    assert good.next_run_at is not None
    await advance(mock_clock, q, good.next_run_at - q.clock.now() + 1)
    await advance(mock_clock, q, 60)
    assert await scheduled_tasks(q) == [f"schedule:tick:{int(good.next_run_at + 60 * i)}"
                                        for i in range(2)]  # fmt: skip
    after = await q.schedules.get("broken")
    assert after.last_task_id is None and after.next_run_at == good.next_run_at + 120
    with pytest.raises(InvalidRequest) as err:
        await q.schedules.trigger("broken")
    assert err.value.details["field"] == "task"


@pytest.mark.parametrize("catch_up", [CatchUp.NONE, CatchUp.ONE])
async def test_catch_up_after_downtime(tmp_path: Path, mock_clock: MockClock,
                                       catch_up: CatchUp) -> None:  # fmt: skip
    settings = make_settings(tmp_path / "d")
    every_10 = ScheduleCreate(name="tick", cron="*/10 * * * *", task=TaskCreate(name="cron-job"),
                              catch_up=catch_up)  # fmt: skip
    async with open_queue(settings, clock=TrioClock(WALL0)) as q:
        s = await q.schedules.create(every_10)
        assert s.next_run_at is not None
        first = s.next_run_at
    # down across three ticks, the latest 90 s ago (more than the 60 s grace), then up again
    async with open_queue(settings, clock=TrioClock(first + 1290.5)) as q:
        await settle(q)
        keys = await scheduled_tasks(q)
        assert keys == ([f"schedule:tick:{int(first + 1200)}"] if catch_up == CatchUp.ONE else [])
        assert (await q.schedules.get("tick")).next_run_at == first + 1800
        await advance(mock_clock, q, 510)
        assert len(await scheduled_tasks(q)) == len(keys) + 1
