"""The reaper: at each deadline, promote due tasks, expire due leases, fire due schedules,
mark silent workers inactive and hand back tasks granted to long polls that had gone."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from dtq.core import ops
from dtq.core.events import EventKind as K
from dtq.errors import Unavailable
from dtq.models import Task, Worker

if TYPE_CHECKING:
    from dtq.core.service import TaskQueue


async def reap(queue: TaskQueue) -> None:
    """One pass over what is due now; each kind of work is one write. What a failed write
    took out is put back, due at once."""
    now = queue.clock.now()
    queue.dispatcher.promote_due(now)
    deadlines = queue.deadlines
    orphans = deadlines.take_orphans()
    if orphans:

        def on_released(released: list[Task]) -> None:
            for task in released:
                queue._became_pending(task)
                queue._emit(K.TASK_RELEASED, task)

        try:
            await queue.store.write(lambda tx: ops.release_orphans(tx, orphans), on_released)
        except BaseException:
            deadlines.retry_orphans(orphans)
            raise
    due = deadlines.due_leases(now)
    if queue.shared:
        await _expire_shared(queue)
    elif due:
        max_deliveries = queue.settings.max_deliveries

        def on_expired(changed: list[Task]) -> None:
            queue.lease_expiries += len(changed)
            for task in changed:
                queue._after_attempt(task)

        try:
            await queue.store.write(
                lambda tx: ops.expire(tx, due, queue.policy, max_deliveries), on_expired
            )
        except BaseException:
            deadlines.retry_leases(due, now)  # not expired yet: keep them for the next pass
            raise
    await queue.schedules.fire_due(now)
    silent = deadlines.due_workers(now)
    if silent:
        timeout_s = queue.settings.worker_timeout_s

        def on_inactive(changed: list[Worker]) -> None:
            for worker in changed:
                queue._worker_went_inactive(worker)

        try:
            await queue.store.write(
                lambda tx: ops.mark_inactive(tx, silent, timeout_s), on_inactive
            )
        except BaseException:
            deadlines.retry_workers(silent, now)
            raise


async def _expire_shared(queue: TaskQueue) -> None:
    """A shared store: expire what ran out by the database's clock, whichever server granted
    it (claimed with SKIP LOCKED, so each lease is expired once across servers)."""
    max_deliveries = queue.settings.max_deliveries

    def on_expired(changed: list[Task]) -> None:
        queue.lease_expiries += len(changed)
        for task in changed:
            queue._after_attempt(task)

    while True:
        changed = await queue.store.write(
            lambda tx: ops.expire_claimed(tx, queue.policy, max_deliveries),  # type: ignore[arg-type]
            on_expired,
        )
        if len(changed) < 500:
            return


async def run_reaper(
    queue: TaskQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Sleeps until the earliest deadline (or until an earlier one appears), then reaps."""
    task_status.started()
    while True:
        queue.dispatcher.schedule_changed = trio.Event()
        try:
            await queue.reap()
        except Unavailable:
            if queue.closing:
                return
            await trio.sleep(1.0)  # storage trouble: retry, at most once a second
            continue
        deadline = queue.next_deadline()
        wake_at = math.inf if deadline is None else queue.clock.to_trio(deadline)
        with trio.move_on_at(wake_at):
            await queue.dispatcher.schedule_changed.wait()
