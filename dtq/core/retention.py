"""Retention: finished tasks are pruned once older than their status's retention period.

Walks the finish-time index oldest first, `BATCH` tasks per write op (other writers' ops
commit between batches), so it never scans and never holds the writer long. Pruned tasks are
counted under `pruned_*` counters, so the dashboard's "what happened" figures do not change
(`dtq.core.analytics` adds them back); the listing totals count only the tasks still stored.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

from dtq.errors import Unavailable
from dtq.models import Task, TaskStatus
from dtq.storage.base import StoreTxn

if TYPE_CHECKING:
    from dtq.core.service import TaskQueue

S = TaskStatus
BATCH = 250  # per write op: a commit that holds one stays short for other writers
PRUNED_PREFIX = "pruned_"


def cutoffs(now: float, completed_s: float, failed_s: float) -> list[tuple[TaskStatus, float]]:
    """(status, finished before this are due) for each status that has a retention period."""
    rows = []
    if completed_s > 0:
        rows.append((S.COMPLETED, now - completed_s))
    if failed_s > 0:
        rows.extend([(S.FAILED, now - failed_s), (S.CANCELLED, now - failed_s)])
    return rows


def prune_batch(tx: StoreTxn, status: TaskStatus, before: float, limit: int = BATCH) -> list[Task]:
    """Remove up to `limit` of the oldest tasks of `status` finished before `before`."""
    tasks = tx.finished_tasks(status, before=before, limit=limit)
    for task in tasks:
        tx.prune_task(task)
        # delete_task's counter changes undone into pruned_* (what happened stays counted)
        tx.count(PRUNED_PREFIX + "total")
        tx.count(PRUNED_PREFIX + status.value)
        if status == S.COMPLETED and task.duration is not None:
            tx.count(PRUNED_PREFIX + "duration_sum", task.duration)
            tx.count(PRUNED_PREFIX + "duration_n")
    return tasks


async def prune_due(queue: TaskQueue, batch: int = BATCH) -> int:
    """Prune every task whose retention ran out by now; returns how many."""
    s = queue.settings
    pruned = 0
    for status, before in cutoffs(queue.clock.now(), s.retention_completed_s,
                                  s.retention_failed_s):  # fmt: skip
        op = functools.partial(prune_batch, status=status, before=before, limit=batch)
        while True:
            tasks = await queue.store.write(op)
            pruned += len(tasks)
            for task in tasks:
                queue.dispatcher.discard(task.id)
            if len(tasks) < batch:
                break
    queue.tasks_pruned += pruned
    return pruned


async def run_retention(
    queue: TaskQueue, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Prunes every `retention_interval_s` (of the queue's clock) until cancelled."""
    task_status.started()
    s = queue.settings
    if s.retention_completed_s <= 0 and s.retention_failed_s <= 0:
        return
    while not queue.closing:
        # First look one interval after start: start-up writes (restart grace) go first.
        await trio.sleep_until(queue.clock.to_trio(queue.clock.now() + s.retention_interval_s))
        try:
            await prune_due(queue)
        except Unavailable:
            if queue.closing:
                return
