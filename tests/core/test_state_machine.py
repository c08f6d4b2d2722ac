"""Stateful test of the core against a simple model.

Drives the public service, `TaskQueue`, at an explicit wall-clock `now`: each rule is one call
(`create`, `lease`, `complete`, ..., `reap`) in its own `trio.run` with the group-commit writer
running, so every commit hook runs as in the server. Rules: create, lease, complete, fail,
release, extend, cancel, delete, reprioritise, advance time (a reaper pass), restart (close and
reopen LMDB: `rebuild()`, then `grant_restart_grace()`).

Every event the queue emits is the kind `dtq.core.events.task_event_kind` gives for the change
(the event bus and webhooks name changes alike). Invariants: no task is lost (each model task is stored with the model's state, nothing more),
at most one live lease per task (grants only from pending; one lease index entry per running
task), dispatch order (priority, then FIFO by seq), counters equal a recount, and the storage
indexes and the in-memory dispatcher agree with the model.

FIFO is by the time a task became ready (then seq): a task that re-enters the ready queue
(delayed, retried, expired, released) lines up by that time, so for those the model checks only
the priority part of the order; test_queue.py checks the exact order, live and after restart.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dtq.core.events import EventKind, task_event_kind
from dtq.core.service import TaskQueue
from dtq.errors import Conflict, DtqError, InvalidTransition, LeaseLost
from dtq.models import LeaseRequest, Priority, Task, TaskCreate, TaskError, TaskStatus, TaskUpdate
from dtq.settings import Settings
from dtq.storage.lmdb.store import LmdbStore

S = TaskStatus
MAX_DELIVERIES = 3  # small, so runs reach the poison guard
WALL0 = 1_700_000_000.0
QUEUES = ("a", "b")


class ManualClock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def to_trio(self, wall_s: float) -> float:
        return wall_s


@dataclasses.dataclass
class Model:
    id: str
    queue: str
    rank: int
    seq: int
    retry_count: int
    timeout: float
    idem: str | None
    status: TaskStatus = S.PENDING
    attempts: int = 0
    run_at: float | None = None
    lease_id: str | None = None
    lease_exp: float | None = None
    started_at: float | None = None
    holder: str | None = None  # who took the lease
    lease_s: float = 0.0  # its length as last asked for
    grace: bool = False  # renewed by a restart (its expiry is then a lost lease)
    lost: int = 0  # leases lost without a result: they use no retry
    old_leases: list[str] = dataclasses.field(default_factory=list)
    reentered: bool = False  # back in the ready queue out of seq order (see module doc)
    error_type: str | None = None

    @property
    def retries_used(self) -> int:
        return self.attempts - 1 - self.lost

    def ready(self, now: float) -> bool:
        return self.status == S.PENDING and (self.run_at is None or self.run_at <= now)

    def drop_lease(self) -> None:
        if self.lease_id is not None:
            self.old_leases.append(self.lease_id)
        self.lease_id = self.lease_exp = None


T = TypeVar("T")


def at_once(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a store read that never waits (LMDB answers at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the read waited")


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dtq-sm-")
        self.clock = ManualClock(WALL0)
        self.settings = Settings(data_dir=self.dir, max_deliveries=MAX_DELIVERIES)
        self.store: LmdbStore | None = None
        self.last: dict[str, Task] = {}  # each task as its last event showed it
        self.events: list[tuple[EventKind, Task]] = []  # since the rule began
        self.open()
        self.model: dict[str, Model] = {}
        self.idem: dict[str, tuple[str, tuple[Any, ...]]] = {}

    # -- plumbing ----------------------------------------------------------------------
    def open(self) -> None:
        self.store = LmdbStore(self.dir, fsync=False, map_size_bytes=8 << 20, clock=self.clock)
        self.q = TaskQueue(self.store, self.clock, self.settings)
        self.q.task_listeners.append(self.heard)
        trio.run(self.q.rebuild)

    def heard(self, kind: EventKind, task: Task) -> None:
        new = None if kind == EventKind.TASK_DELETED else task
        assert task_event_kind(self.last.get(task.id), new) == kind, (kind, task)
        self.events.append((kind, task))
        self.last[task.id] = task

    @property
    def now(self) -> float:
        return self.clock.t

    def call(self, fn: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """(True, result) or (False, the DtqError it raised): one service call, in its own trio
        run with the writer running (nothing else: no reaper, no long poll waits)."""
        self.events = []

        async def main() -> tuple[bool, Any]:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.q.store.run)
                try:
                    return True, await fn()
                except DtqError as exc:
                    return False, exc
                finally:
                    nursery.cancel_scope.cancel()

        return trio.run(main)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pick(self, data: st.DataObject, prefer: TaskStatus | None = None) -> Model:
        """A task, usually one in the `prefer` state (so rules seldom do nothing)."""
        by_seq = sorted(self.model.values(), key=lambda m: m.seq)  # ids are random uuids
        preferred = [m for m in by_seq if m.status == prefer]
        if preferred and data.draw(st.booleans(), label="prefer"):
            by_seq = preferred
        return data.draw(st.sampled_from(by_seq), label="task")

    def lease_id_for(self, m: Model, data: st.DataObject) -> str:
        choices = [m.lease_id] if m.lease_id else []
        choices += [*m.old_leases[-2:], "f" * 32]
        return data.draw(st.sampled_from(choices), label="lease_id")

    def caller_for(self, m: Model, data: st.DataObject) -> str | None:
        """The holder, another principal, or None (an admin)."""
        return data.draw(st.sampled_from([m.holder, "key:other", None]), label="caller")

    def lease_valid(self, m: Model, lease_id: str, caller: str | None) -> bool:
        return (
            m.status == S.RUNNING
            and lease_id == m.lease_id
            and (caller is None or caller == m.holder)
            and m.lease_exp is not None
            and m.lease_exp > self.now
        )

    # -- rules -------------------------------------------------------------------------
    @initialize(
        tasks=st.lists(
            st.tuples(st.sampled_from(Priority), st.sampled_from(QUEUES), st.integers(0, 2)),
            max_size=6,
        )
    )
    def some_tasks(self, tasks: list[tuple[Priority, str, int]]) -> None:
        for priority, queue, retry_count in tasks:
            self.create(priority, queue, None, retry_count, 3600.0, None)

    @rule(
        priority=st.sampled_from(Priority),
        queue=st.sampled_from(QUEUES),
        delay=st.sampled_from([None, None, 0.0, 3.0, 20.0]),
        retry_count=st.integers(0, 2),
        timeout=st.sampled_from([15.0, 3600.0]),
        idem=st.sampled_from([None, None, None, "k1", "k2"]),
    )
    def create(
        self,
        priority: Priority,
        queue: str,
        delay: float | None,
        retry_count: int,
        timeout: float,
        idem: str | None,
    ) -> None:
        body = TaskCreate(
            name="job",
            priority=priority,
            queue=queue,
            delay=delay,
            retry_count=retry_count,
            timeout=timeout,
            idempotency_key=idem,
        )
        shape = (priority, queue, delay, retry_count, timeout)
        ok, res = self.call(lambda: self.q.create(body))
        seen = self.idem.get(idem) if idem else None
        if seen is not None and seen[1] != shape:
            assert not ok and isinstance(res, Conflict)
            return
        assert ok, res
        task, created = res
        if seen is not None:
            assert not created and task.id == seen[0]
            return
        assert created
        expected_run_at = self.now + delay if delay else None
        assert task.run_at == expected_run_at
        self.model[task.id] = Model(
            id=task.id,
            queue=queue,
            rank=priority.rank,
            seq=task.seq,
            retry_count=retry_count,
            timeout=timeout,
            idem=idem,
            run_at=expected_run_at,
            reentered=expected_run_at is not None,
        )
        if idem:
            self.idem[idem] = (task.id, shape)

    @rule(
        queues=st.sampled_from([None, ("a",), ("b",), ("a", "b")]),
        max_tasks=st.integers(1, 3),
        lease_s=st.sampled_from([2.0, 5.0, 30.0]),
        worker=st.sampled_from(["w1", "w2"]),
    )
    def lease(
        self, queues: tuple[str, ...] | None, max_tasks: int, lease_s: float, worker: str
    ) -> None:
        wanted = frozenset(queues) if queues else None
        holder = f"key:{worker}"
        req = LeaseRequest(
            worker_id=worker, queues=list(queues) if queues else None, max_tasks=max_tasks,
            wait=0, lease_seconds=lease_s,
        )  # fmt: skip
        ok, granted = self.call(lambda: self.q.lease(req, holder))
        assert ok, granted
        assert [k for k, _ in self.events] == [EventKind.TASK_LEASED] * len(granted)
        candidates = [
            m
            for m in self.model.values()
            if m.ready(self.now) and (wanted is None or m.queue in wanted)
        ]
        for task in granted:
            m = self.model[task.id]
            assert m in candidates, f"leased {m} which is not ready (no double lease)"
            best = min(candidates, key=lambda c: (c.rank, c.seq))
            if any(c.reentered for c in candidates):
                assert m.rank == best.rank, "priority order"
            else:
                assert m is best, "priority then FIFO order"
            candidates.remove(m)
            assert task.lease is not None
            m.status = S.RUNNING
            m.attempts += 1
            m.run_at = None
            m.reentered = False
            m.lease_id = task.lease.id
            m.started_at = self.now
            m.lease_exp = min(self.now + lease_s, self.now + m.timeout)
            m.holder, m.lease_s, m.grace = holder, lease_s, False
            assert task.lease.expires_at == m.lease_exp
            assert task.attempts == m.attempts
        if len(granted) < max_tasks:
            assert not candidates, "a ready task was not handed out"

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        m = self.pick(data, S.RUNNING)
        lease_id = self.lease_id_for(m, data)
        caller = self.caller_for(m, data)
        valid = self.lease_valid(m, lease_id, caller)
        ok, res = self.call(lambda: self.q.complete(m.id, lease_id, {"ok": True}, caller))
        assert ok == valid, res
        if not valid:
            assert isinstance(res, LeaseLost)
            return
        m.status = S.COMPLETED
        m.error_type = None  # a success clears the last attempt's error
        m.drop_lease()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), retry=st.sampled_from([None, True, False]))
    def fail(self, data: st.DataObject, retry: bool | None) -> None:
        m = self.pick(data, S.RUNNING)
        lease_id = self.lease_id_for(m, data)
        caller = self.caller_for(m, data)
        valid = self.lease_valid(m, lease_id, caller)
        error = TaskError(message="boom")
        ok, res = self.call(lambda: self.q.fail(m.id, lease_id, error, retry, caller))
        assert ok == valid, res
        if not valid:
            assert isinstance(res, LeaseLost)
            return
        m.drop_lease()
        m.error_type = "Error"
        if retry is not False and m.retries_used < m.retry_count:
            m.status = S.PENDING
            raw = min(2.0**m.retries_used, 3600.0)
            assert res.run_at is not None
            assert raw * 0.75 <= res.run_at - self.now <= raw * 1.25 + 1e-6
            m.run_at = res.run_at
            m.reentered = True
        else:
            m.status = S.FAILED

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        m = self.pick(data, S.RUNNING)
        lease_id = self.lease_id_for(m, data)
        caller = self.caller_for(m, data)
        valid = self.lease_valid(m, lease_id, caller)
        ok, res = self.call(lambda: self.q.release(m.id, lease_id, caller))
        assert ok == valid, res
        if not valid:
            assert isinstance(res, LeaseLost)
            return
        m.status = S.PENDING
        m.attempts -= 1
        m.run_at = None
        m.reentered = True
        m.drop_lease()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), lease_s=st.sampled_from([1.0, 10.0, 100.0]))
    def extend(self, data: st.DataObject, lease_s: float) -> None:
        m = self.pick(data, S.RUNNING)
        lease_id = self.lease_id_for(m, data)
        caller = self.caller_for(m, data)
        valid = self.lease_valid(m, lease_id, caller)
        ok, res = self.call(lambda: self.q.extend(m.id, lease_id, lease_s, caller))
        assert ok == valid, res
        if not valid:
            assert isinstance(res, LeaseLost)
            return
        assert self.events == [], "an extension is no event"
        assert m.lease_exp is not None and m.started_at is not None
        wanted = min(self.now + lease_s, m.started_at + m.timeout)
        if wanted > m.lease_exp:
            m.lease_exp, m.grace = wanted, False
        m.lease_s = lease_s
        assert res.lease.expires_at == m.lease_exp

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m = self.pick(data)
        ok, res = self.call(lambda: self.q.cancel(m.id))
        if m.status in (S.COMPLETED, S.FAILED):
            assert not ok and isinstance(res, InvalidTransition)
            return
        assert ok, res
        m.status = S.CANCELLED
        m.drop_lease()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), priority=st.sampled_from(Priority))
    def reprioritise(self, data: st.DataObject, priority: Priority) -> None:
        m = self.pick(data, S.PENDING)
        ok, res = self.call(lambda: self.q.update(m.id, TaskUpdate(priority=priority)))
        if m.status != S.PENDING:
            assert not ok and isinstance(res, InvalidTransition)
            return
        assert ok, res
        if priority.rank != m.rank:
            m.rank = priority.rank
            m.reentered = True

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        m = self.pick(data)
        ok, res = self.call(lambda: self.q.delete(m.id))
        assert ok, res
        del self.model[m.id]
        if m.idem is not None:
            del self.idem[m.idem]

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0, 31.0]))
    def advance(self, dt: float) -> None:
        """Time passes; then one reaper pass."""
        self.clock.t += dt
        now = self.now
        expiries = self.q.lease_expiries
        ok, res = self.call(self.q.reap)
        assert ok, res
        changed = [task for _, task in self.events]
        assert self.q.lease_expiries - expiries == len(changed)
        assert {k for k, _ in self.events} <= {EventKind.TASK_RETRIED, EventKind.TASK_FAILED}
        expected = set()
        for m in self.model.values():
            if m.status != S.RUNNING or m.lease_exp is None or m.lease_exp > now:
                continue
            expected.add(m.id)
            assert m.started_at is not None
            timed_out = not m.grace and m.lease_exp >= m.started_at + m.timeout
            m.error_type = "timeout" if timed_out else "lease_expired"
            m.drop_lease()
            if not timed_out:
                m.lost += 1  # a lost lease: no retry used, until the poison guard
            if (m.retries_used < m.retry_count) if timed_out else (m.lost < MAX_DELIVERIES):
                m.status = S.PENDING
                m.reentered = True
            else:
                m.status = S.FAILED
        assert {t.id for t in changed} == expected

    @rule()
    def restart(self) -> None:
        assert self.store is not None
        self.store.close()
        self.store = None
        self.open()  # rebuild() restores the live order: (ready_at, seq) within a priority
        # ... and the start-up grace: each live lease gets its own length again from now
        ok, renewed = self.call(self.q.grant_restart_grace)
        assert ok, renewed
        assert self.events == [], "the start-up grace is no event"
        for m in self.model.values():
            if m.status == S.RUNNING and m.lease_exp is not None:
                m.lease_exp, m.grace = max(m.lease_exp, self.now + m.lease_s), True
        assert renewed == sum(1 for m in self.model.values() if m.status == S.RUNNING)

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def every_task_is_stored_as_modelled(self) -> None:
        assert self.store is not None
        for m in self.model.values():
            task = at_once(self.store.get_task(m.id))
            assert task is not None, f"lost {m}"
            assert task.status == m.status, (task, m)
            assert task.attempts == m.attempts
            assert task.priority.rank == m.rank and task.seq == m.seq
            assert task.run_at == (m.run_at if m.status == S.PENDING else task.run_at)
            if m.status == S.RUNNING:
                assert task.lease is not None
                assert (task.lease.id, task.lease.expires_at) == (m.lease_id, m.lease_exp)
            else:
                assert task.lease is None
            assert (task.error.type if task.error else None) == m.error_type

    @invariant()
    def counters_equal_a_recount(self) -> None:
        assert self.store is not None
        with self.store.env.begin() as txn:
            stored = txn.stat(self.store.db["tasks"])["entries"]
        assert stored == len(self.model), "a task exists that the model does not know"
        counters = at_once(self.store.counters())
        assert counters.get("total", 0) == len(self.model)
        for status in S:
            expected = sum(1 for m in self.model.values() if m.status == status)
            assert counters.get(status.value, 0) == expected, status

    @invariant()
    def indexes_agree(self) -> None:
        assert self.store is not None
        pending = [row[3] for row in self.store.iter_pending()]
        assert sorted(pending) == sorted(m.id for m in self.model.values() if m.status == S.PENDING)
        leases = sorted(self.store.iter_leases(), key=lambda row: row[1])
        assert leases == sorted(
            ((m.lease_exp, m.id, m.lease_id) for m in self.model.values() if m.status == S.RUNNING),
            key=lambda row: row[1],
        ), "running tasks and their leases"

    @invariant()
    def dispatcher_agrees(self) -> None:
        d = self.q.dispatcher
        ready = sum(1 for m in self.model.values() if m.ready(self.now))
        scheduled = sum(
            1 for m in self.model.values() if m.status == S.PENDING and not m.ready(self.now)
        )
        assert d.ready_count() == ready
        assert d.scheduled_count() == scheduled
        by_queue: dict[str, int] = {}
        for m in self.model.values():
            if m.ready(self.now):
                by_queue[m.queue] = by_queue.get(m.queue, 0) + 1
        assert d.ready_by_queue() == by_queue


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
