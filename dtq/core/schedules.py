"""Cron schedules: each tick submits one task, exactly once.

A tick's task and the schedule's next fire time are written by one op (`fire_op`), which
fires only while the stored `next_run_at` is still that tick (compare and set), and the task
carries the idempotency key `schedule:{name}:{tick}`: a crash before the commit leaves
neither, a crash after it leaves both, so a tick never fires twice and is never lost. On a
store shared by several servers the compare and set makes only one of them fire.

`ScheduleTimes` is the in-memory plan (name -> next fire time) the reaper sleeps on.
"""

from __future__ import annotations

import functools
import heapq
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from msgspec.structs import replace

from dtq.core import cron, ops
from dtq.core.events import EventKind as K
from dtq.errors import Conflict, InvalidRequest, NotFound
from dtq.models import (
    SYSTEM_ACTOR,
    CatchUp,
    Schedule,
    ScheduleCreate,
    ScheduleUpdate,
    Task,
    TaskCreate,
)
from dtq.storage.base import StoreTxn

if TYPE_CHECKING:
    from dtq.core.service import TaskQueue

log = structlog.get_logger("dtq.schedules")

# With catch_up "none", a tick more than this late (the server was down) is skipped.
MISFIRE_GRACE_S = 60.0


class ScheduleTimes:
    """Next fire time per active schedule; a lazy heap (stale entries are skipped)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, name: str, at: float | None) -> bool:
        """Plan (None: unplan) a schedule. True when it is now the earliest."""
        if at is None:
            self._at.pop(name, None)
            return False
        self._at[name] = at
        earliest = not self._heap or at < self._heap[0][0]
        heapq.heappush(self._heap, (at, name))
        return earliest

    def next_at(self) -> float | None:
        while self._heap and self._at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[str, float]]:
        """(name, tick) of every schedule due by `now`, taken out of the plan."""
        rows = []
        while (at := self.next_at()) is not None and at <= now:
            _, name = heapq.heappop(self._heap)
            del self._at[name]
            rows.append((name, at))
        return rows


def _check_task_body(body: TaskCreate) -> None:
    if body.run_at is not None:
        raise InvalidRequest("a schedule's task cannot have run_at (the schedule says when)",
                             field="task.run_at", reason="not allowed in a schedule")  # fmt: skip
    if body.idempotency_key is not None:
        raise InvalidRequest(
            "a schedule's task cannot have idempotency_key (each tick has its own)",
            field="task.idempotency_key",
            reason="not allowed in a schedule",
        )


def _body_of(schedule: Schedule, key: str) -> TaskCreate:
    """The tick's task. Bodies are checked when stored, but one stored by another version may
    not pass this one's model: InvalidRequest then, naming the schedule."""
    try:
        body = msgspec.convert(schedule.task, TaskCreate)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(
            f"schedule {schedule.name!r} holds a task this server cannot create: {exc}",
            field="task",
            reason="stored task no longer valid; replace it with PATCH",
        ) from None
    return replace(body, idempotency_key=key)


def _submit(tx: StoreTxn, schedule: Schedule, key: str) -> tuple[Task | None, bool]:
    try:
        return ops.create(tx, _body_of(schedule, key), SYSTEM_ACTOR)
    except Conflict:  # the key was used by a task of an earlier schedule of this name
        return None, False


def _submit_tick(tx: StoreTxn, schedule: Schedule, key: str) -> tuple[Task | None, bool]:
    """A cron tick: a task that cannot be created skips the tick (logged) and the schedule
    goes on, rather than stopping the reaper that fires every schedule."""
    try:
        return _submit(tx, schedule, key)
    except InvalidRequest as exc:
        log.warning("schedule_tick_skipped", schedule=schedule.name, error=exc.message)
        return None, False


# -- write ops -------------------------------------------------------------------------------


def create_op(tx: StoreTxn, schedule: Schedule) -> Schedule:
    if tx.get_schedule(schedule.name) is not None:
        raise Conflict(f"schedule {schedule.name!r} already exists", field="name",
                       reason="name taken")  # fmt: skip
    tx.put_schedule(schedule)
    return schedule


def _require(tx: StoreTxn, name: str) -> Schedule:
    schedule = tx.get_schedule(name)
    if schedule is None:
        raise NotFound(f"schedule {name!r} not found", field="name", reason="no such schedule")
    return schedule


def update_op(tx: StoreTxn, name: str, change: ScheduleUpdate) -> Schedule:
    old = _require(tx, name)
    fields: dict[str, Any] = {}
    if change.cron is not None:
        fields["cron"] = change.cron
    if change.timezone is not None:
        fields["timezone"] = change.timezone
    if change.task is not None:
        fields["task"] = msgspec.to_builtins(change.task)
    if change.paused is not None:
        fields["paused"] = change.paused
    if change.catch_up is not None:
        fields["catch_up"] = change.catch_up
    new = replace(old, updated_at=tx.now, **fields)
    if new.paused:
        new = replace(new, next_run_at=None)
    elif old.paused or new.cron != old.cron or new.timezone != old.timezone:
        new = replace(new, next_run_at=cron.next_after(new.cron, new.timezone, tx.now))
    tx.put_schedule(new)
    return new


def delete_op(tx: StoreTxn, name: str) -> Schedule:
    schedule = _require(tx, name)
    tx.delete_schedule(name)
    return schedule


Fired = tuple[Schedule, Task | None, bool]


def fire_op(tx: StoreTxn, name: str, tick: float) -> Fired | None:
    """Fire the tick `tick` of a schedule (and plan its next), unless it fired already or
    the schedule changed meanwhile (then None)."""
    s = tx.get_schedule(name)
    if s is None or s.paused or s.next_run_at != tick:
        return None
    now = tx.now
    latest = cron.last_at_or_before(s.cron, s.timezone, tick, now) if tick <= now else tick
    fire = s.catch_up == CatchUp.ONE or now - latest <= MISFIRE_GRACE_S
    key = f"schedule:{name}:{int(latest)}"
    task, created = _submit_tick(tx, s, key) if fire else (None, False)
    new = replace(s, next_run_at=cron.next_after(s.cron, s.timezone, max(latest, now)))
    if fire:
        new = replace(new, last_run_at=latest, last_task_id=task.id if task else None)
    tx.put_schedule(new)
    return new, task, created


def trigger_op(tx: StoreTxn, name: str) -> Fired:
    """Run now, outside the cron plan (the next tick stays as planned)."""
    s = _require(tx, name)
    task, created = _submit(tx, s, f"schedule:{name}:trigger:{int(tx.now * 1_000_000)}")
    new = replace(s, last_run_at=tx.now, last_task_id=task.id if task else None)
    tx.put_schedule(new)
    return new, task, created


# -- the service -----------------------------------------------------------------------------


class Schedules:
    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.times = ScheduleTimes()
        self.fired = 0  # ticks that submitted a task, since start

    def _plan(self, schedule: Schedule) -> None:
        if self.times.set(schedule.name, None if schedule.paused else schedule.next_run_at):
            self.queue.dispatcher.schedule_changed.set()

    def _fired(self, res: Fired | None) -> None:
        if res is None:
            return
        schedule, task, created = res
        self._plan(schedule)
        if task is not None and created:
            self.fired += 1
            self.queue._became_pending(task)
            self.queue._emit(K.TASK_CREATED, task)

    async def load(self) -> int:
        """Start-up: plan every active schedule from its stored next fire time."""
        rows = await self.queue.store.list_schedules()
        for schedule in rows:
            self.times.set(schedule.name, None if schedule.paused else schedule.next_run_at)
        return len(rows)

    async def create(self, body: ScheduleCreate, actor: str = SYSTEM_ACTOR) -> Schedule:
        cron.check(body.cron)
        cron.zone(body.timezone)
        _check_task_body(body.task)
        now = self.queue.clock.now()
        schedule = Schedule(
            name=body.name,
            cron=body.cron,
            timezone=body.timezone,
            task=msgspec.to_builtins(body.task),
            created_at=now,
            updated_at=now,
            paused=body.paused,
            catch_up=body.catch_up,
            next_run_at=None if body.paused else cron.next_after(body.cron, body.timezone, now),
            created_by=actor,
        )
        return await self.queue.store.write(lambda tx: create_op(tx, schedule), self._plan)

    async def update(self, name: str, change: ScheduleUpdate) -> Schedule:
        if change.cron is not None:
            cron.check(change.cron)
        if change.timezone is not None:
            cron.zone(change.timezone)
        if change.task is not None:
            _check_task_body(change.task)
        return await self.queue.store.write(lambda tx: update_op(tx, name, change), self._plan)

    async def delete(self, name: str) -> Schedule:
        def on_commit(schedule: Schedule) -> None:
            self.times.set(schedule.name, None)

        return await self.queue.store.write(lambda tx: delete_op(tx, name), on_commit)

    async def get(self, name: str) -> Schedule:
        schedule = await self.queue.store.get_schedule(name)
        if schedule is None:
            raise NotFound(f"schedule {name!r} not found", field="name",
                           reason="no such schedule")  # fmt: skip
        return schedule

    async def list(self, skip: int, limit: int) -> tuple[list[Schedule], int]:
        store = self.queue.store
        return await store.list_schedules(skip, limit), await store.count_schedules()

    async def trigger(self, name: str) -> tuple[Schedule, Task | None]:
        schedule, task, _ = await self.queue.store.write(
            lambda tx: trigger_op(tx, name), self._fired
        )
        return schedule, task

    async def fire_due(self, now: float) -> int:
        """The reaper's share: fire every tick due by `now`. Returns how many fired."""
        due = self.times.due(now)
        fired = 0
        for i, (name, tick) in enumerate(due):
            try:
                res = await self.queue.store.write(
                    functools.partial(fire_op, name=name, tick=tick), self._fired
                )
            except BaseException:
                for rest, at in due[i:]:  # not fired: keep them planned, due at once
                    self.times.set(rest, at)
                raise
            fired += res is not None and res[1] is not None
        return fired
