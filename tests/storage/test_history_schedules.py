"""The storage contract for issue 12: task events, the finish-time index, pruning, schedules
and the tag / created-range listing filters. Every test runs against every backend."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from msgspec.structs import replace

from dtq.models import (
    ListTasksQuery,
    Schedule,
    Task,
    TaskError,
    TaskEvent,
    TaskEventKind,
    TaskStatus,
)
from dtq.storage.base import Store, StoreTxn

from .conftest import NOW, Backend, make_task, running

S = TaskStatus
E = TaskEventKind


async def insert(store: Store, *tasks: Task) -> None:
    def op(tx: StoreTxn) -> None:
        for task in tasks:
            tx.insert_task(task)

    await store.write(op)


def event(kind: E, at: float, attempt: int = 0, **kw: Any) -> TaskEvent:
    return TaskEvent(at=at, event=kind, attempt=attempt, **kw)


def finished(seq: int, status: S, at: float, **kw: Any) -> Task:
    task = make_task(seq=seq, status=status, **kw)
    return replace(task, completed_at=at, duration=1.0 if status == S.COMPLETED else None)


# -- events ----------------------------------------------------------------------------------


async def test_events_come_back_in_append_order_per_task(store: Store) -> None:
    a, b = make_task(seq=1), make_task(seq=2)
    await insert(store, a, b)
    err = TaskError(message="boom", type="ValueError")

    def op(tx: StoreTxn) -> None:
        tx.append_task_event(a.id, event(E.CREATED, NOW, actor="system"))
        tx.append_task_event(b.id, event(E.CREATED, NOW))
        tx.append_task_event(a.id, event(E.LEASED, NOW, 1, worker_id="w", lease_id="L1"))

    await store.write(op)
    # a later commit, same timestamp: order is append order, not time
    await store.write(lambda tx: tx.append_task_event(a.id, event(E.FAILED, NOW, 1, error=err,
                                                                  details={"k": [1]})))  # fmt: skip
    got = await store.list_task_events(a.id)
    assert [e.event for e in got] == [E.CREATED, E.LEASED, E.FAILED]
    assert got[1].lease_id == "L1" and got[1].worker_id == "w" and got[0].actor == "system"
    assert got[2].error == err and got[2].details == {"k": [1]}
    assert [e.event for e in await store.list_task_events(b.id)] == [E.CREATED]
    assert await store.list_task_events(make_task(seq=3).id) == []


async def test_many_events_keep_their_order(store: Store) -> None:
    task = make_task(seq=1)
    await insert(store, task)
    for i in range(300):  # past one byte of event number
        await store.write(lambda tx, i=i: tx.append_task_event(task.id, event(E.EXTENDED, NOW, i)))
    assert [e.attempt for e in await store.list_task_events(task.id)] == list(range(300))
    # one page at a time, and the count
    page = await store.list_task_events(task.id, skip=250, limit=20)
    assert [e.attempt for e in page] == list(range(250, 270))
    assert [e.attempt for e in await store.list_task_events(task.id, 290, 50)] == list(
        range(290, 300)
    )
    assert await store.list_task_events(task.id, skip=300, limit=5) == []
    assert await store.count_task_events(task.id) == 300
    assert await store.count_task_events(make_task(seq=9).id) == 0


async def test_a_failed_op_leaves_no_event(store: Store) -> None:
    task = make_task(seq=1)
    await insert(store, task)

    def op(tx: StoreTxn) -> None:
        tx.append_task_event(task.id, event(E.UPDATED, NOW))
        raise RuntimeError("no")

    with contextlib.suppress(RuntimeError):
        await store.write(op)
    assert await store.list_task_events(task.id) == []


async def test_delete_and_prune_remove_the_events(store: Store) -> None:
    a, b, c = make_task(seq=1), make_task(seq=2), make_task(seq=3)
    await insert(store, a, b, c)
    for t in (a, b, c):
        await store.write(lambda tx, t=t: tx.append_task_event(t.id, event(E.CREATED, NOW)))
    await store.write(lambda tx: tx.delete_task(a))
    await store.write(lambda tx: tx.prune_task(b))
    assert await store.list_task_events(a.id) == []
    assert await store.list_task_events(b.id) == []
    assert len(await store.list_task_events(c.id)) == 1  # its neighbours' events stay
    assert await store.get_task(b.id) is None


async def test_prune_tells_no_event_sink(store: Store) -> None:
    a, b = make_task(seq=1), make_task(seq=2)
    await insert(store, a, b)
    seen: list[tuple[Any, Any]] = []
    store.set_event_sink(lambda tx, old, new: seen.append((old, new)))
    await store.write(lambda tx: tx.prune_task(a))
    await store.write(lambda tx: tx.delete_task(b))
    store.set_event_sink(None)
    assert seen == [(b, None)]
    c = await store.counters()
    assert c["total"] == 0


async def test_events_survive_a_restart(backend: Backend) -> None:
    if not backend.durable:
        return
    task = make_task(seq=1)
    async with running(backend.make()) as store:
        await insert(store, task)
        await store.write(lambda tx: tx.append_task_event(task.id, event(E.CREATED, NOW)))
    async with running(backend.make()) as store:
        assert [e.event for e in await store.list_task_events(task.id)] == [E.CREATED]


# -- the finish-time index -------------------------------------------------------------------


async def test_finished_tasks_in_finish_order_with_bounds_and_resume(store: Store) -> None:
    t1 = finished(1, S.FAILED, NOW + 30)
    t2 = finished(2, S.FAILED, NOW + 10)
    t3 = finished(3, S.FAILED, NOW + 10)  # same finish time: seq order
    t4 = finished(4, S.COMPLETED, NOW + 5)
    t5 = make_task(seq=5)  # pending: not in the index
    await insert(store, t1, t2, t3, t4, t5)

    def read(**kw: Any) -> Any:
        return store.write(lambda tx: [t.id for t in tx.finished_tasks(S.FAILED, **kw)])

    assert await read() == [t2.id, t3.id, t1.id]
    assert await read(limit=2) == [t2.id, t3.id]
    assert await read(before=NOW + 30) == [t2.id, t3.id]
    assert await read(since=NOW + 11) == [t1.id]
    assert await read(after=(int((NOW + 10) * 1_000_000), 2)) == [t3.id, t1.id]
    got = await store.write(lambda tx: [t.id for t in tx.finished_tasks(S.COMPLETED)])
    assert got == [t4.id]


async def test_the_index_follows_status_changes(store: Store) -> None:
    task = make_task(seq=1, status=S.RUNNING)
    await insert(store, task)
    done = replace(task, status=S.FAILED, completed_at=NOW + 1)
    await store.write(lambda tx: tx.replace_task(task, done))
    ids = await store.write(lambda tx: [t.id for t in tx.finished_tasks(S.FAILED)])
    assert ids == [task.id]
    again = replace(done, status=S.PENDING, completed_at=None)
    await store.write(lambda tx: tx.replace_task(done, again))
    assert await store.write(lambda tx: tx.finished_tasks(S.FAILED)) == []
    gone = replace(again, status=S.CANCELLED, completed_at=NOW + 2)
    await store.write(lambda tx: tx.replace_task(again, gone))
    await store.write(lambda tx: tx.delete_task(gone))
    assert await store.write(lambda tx: tx.finished_tasks(S.CANCELLED)) == []


# -- schedules -------------------------------------------------------------------------------


def schedule(name: str, **kw: Any) -> Schedule:
    return Schedule(name=name, cron="* * * * *", timezone="UTC", task={"name": "t"},
                    created_at=NOW, updated_at=NOW, next_run_at=NOW + 60, **kw)  # fmt: skip


async def test_schedules_crud_in_name_order(store: Store) -> None:
    for name in ("b", "a", "c"):
        await store.write(lambda tx, name=name: tx.put_schedule(schedule(name)))
    assert [s.name for s in await store.list_schedules()] == ["a", "b", "c"]
    assert [s.name for s in await store.list_schedules(1, 1)] == ["b"]
    assert await store.count_schedules() == 3
    changed = replace(schedule("a"), paused=True, next_run_at=None, last_task_id="x")
    await store.write(lambda tx: tx.put_schedule(changed))
    assert await store.get_schedule("a") == changed
    assert await store.write(lambda tx: tx.get_schedule("a")) == changed
    assert await store.write(lambda tx: tx.delete_schedule("a")) is True
    assert await store.write(lambda tx: tx.delete_schedule("a")) is False
    assert await store.get_schedule("a") is None
    assert await store.count_schedules() == 2


# -- listing filters -------------------------------------------------------------------------


async def test_tag_and_created_range_filters(store: Store) -> None:
    a = replace(make_task(seq=1, created_at=NOW), tags=["red", "big"])
    b = replace(make_task(seq=2, created_at=NOW + 10, queue="q2"), tags=["red"])
    c = make_task(seq=3, created_at=NOW + 20)
    await insert(store, a, b, c)

    async def ids(**kw: Any) -> tuple[list[str], int]:
        tasks, total = await store.list_tasks(ListTasksQuery(**kw))
        return [t.id for t in tasks], total

    def at(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    assert await ids(tag="red") == ([b.id, a.id], 2)
    assert await ids(tag="red", order="asc") == ([a.id, b.id], 2)
    assert await ids(tag="big") == ([a.id], 1)
    assert await ids(tag="red", queue="q2") == ([b.id], 1)
    assert await ids(created_after=at(NOW + 10)) == ([c.id, b.id], 2)
    assert await ids(created_before=at(NOW + 10)) == ([a.id], 1)
    rng = {"created_after": at(NOW + 5), "created_before": at(NOW + 25)}
    assert await ids(**rng, order="asc") == ([b.id, c.id], 2)
    assert await ids(**rng, limit=1, skip=1) == ([b.id], 2)
    assert await ids(**rng, tag="red") == ([b.id], 1)
    assert await ids(**rng, sort="updated_at") == ([c.id, b.id], 2)
    assert await ids(**rng, status=S.PENDING) == ([c.id, b.id], 2)
    # a tag change moves the task in the tag index
    await store.write(lambda tx: tx.replace_task(c, replace(c, tags=["red"])))
    await store.write(lambda tx: tx.replace_task(a, replace(a, tags=["big"])))
    assert await ids(tag="red") == ([c.id, b.id], 2)
