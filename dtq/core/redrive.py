"""Redrive and purge: failed or cancelled work sent back to pending, finished work removed.

One task at a time (`retry`), or every finished task matching a filter (`retry_matching`,
`purge_matching`), walked along the finish-time index in batches: each batch is one write op
of at most `BATCH` tasks, so other writers' ops commit between batches and never wait long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec.structs import replace

from dtq.core import history, ops
from dtq.core.events import EventKind as K
from dtq.core.history import E
from dtq.errors import Conflict, InvalidRequest, NotFound
from dtq.models import SYSTEM_ACTOR, BulkResult, Task, TaskFilter, TaskStatus, epoch
from dtq.storage.base import StoreTxn

if TYPE_CHECKING:
    from dtq.core.service import TaskQueue

S = TaskStatus
BATCH = 250  # tasks changed per write op (one op of 250 holds a commit ~10-20 ms)
SCAN = 2_000  # index entries looked at per write op (bounds an op when few match)
RETRYABLE = frozenset({S.FAILED, S.CANCELLED})
FINISHED = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})


def redriven(task: Task, now: float) -> Task:
    """A failed or cancelled task, pending again at once. `attempts` is kept, and one more
    attempt is allowed even when its retries were used up."""
    if task.status not in RETRYABLE:
        raise Conflict(
            f"task {task.id} is {task.status}; only failed or cancelled tasks can be retried",
            field="status",
            reason=f"task is {task.status}",
        )
    retries_used = max(task.attempts - task.lost_leases, 0)
    return replace(
        task,
        status=S.PENDING,
        retry_count=max(task.retry_count, retries_used),
        lease=None,
        result=None,
        error=None,
        run_at=None,
        ready_at=now,
        started_at=None,
        completed_at=None,
        duration=None,
        updated_at=now,
    )


def retry_one(tx: StoreTxn, task: Task, actor: str) -> Task:
    new = redriven(task, tx.now)
    tx.replace_task(task, new)
    tx.count_day(tx.now, "retried")
    history.record(tx, E.RETRIED, new, actor, details={"from": task.status.value})
    return new


def retry_op(tx: StoreTxn, task_id: str, actor: str = SYSTEM_ACTOR) -> Task:
    task = tx.get_task(task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found", field="task_id", reason="no such task")
    return retry_one(tx, task, actor)


def _matches(task: Task, f: TaskFilter) -> bool:
    return (
        (f.queue is None or task.queue == f.queue)
        and (f.name is None or task.name == f.name)
        and (f.tag is None or f.tag in task.tags)
    )


class _Walk:
    """Where a bulk walk is along the index, and what it did so far."""

    def __init__(self, f: TaskFilter) -> None:
        self.filter = f
        self.since = epoch(f.finished_after)
        self.before = epoch(f.finished_before)
        self.after: tuple[int, int] | None = None
        self.matched = 0
        self.affected = 0
        self.done = False

    def batch(self, tx: StoreTxn, act: Callable[[StoreTxn, Task], Task | None]) -> list[Task]:
        """One write op's share: act on up to BATCH matches, looking at up to SCAN entries
        (read BATCH at a time, so nothing is decoded twice)."""
        f = self.filter
        changed: list[Task] = []
        scanned = 0
        while scanned < SCAN and len(changed) < BATCH and not self.done:
            rows = tx.finished_tasks(
                f.status, after=self.after, since=self.since, before=self.before, limit=BATCH
            )
            if len(rows) < BATCH:
                self.done = True  # the walk reached the end (after acting on these)
            for task in rows:
                scanned += 1
                assert task.completed_at is not None
                self.after = (int(task.completed_at * 1_000_000), task.seq)
                if not _matches(task, f):
                    continue
                self.matched += 1
                result = act(tx, task)
                if result is not None:
                    changed.append(result)
                if f.limit is not None and self.matched >= f.limit:
                    self.done = True
                    break
                if len(changed) >= BATCH:
                    if task is not rows[-1]:
                        self.done = False  # stopped early: more to look at
                    break
        self.affected += len(changed)
        return changed


def check_filter(f: TaskFilter, allowed: frozenset[TaskStatus], what: str) -> None:
    if f.status not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise InvalidRequest(
            f"{what} takes tasks of status {names}", field="status", reason="not allowed here"
        )


async def retry_task(queue: TaskQueue, task_id: str, actor: str = SYSTEM_ACTOR) -> Task:
    task_id = ops.parse_task_id(task_id)

    def on_commit(task: Task) -> None:
        queue._became_pending(task)
        queue._emit(K.TASK_RETRIED, task)

    return await queue.store.write(lambda tx: retry_op(tx, task_id, actor), on_commit)


async def _run(queue: TaskQueue, walk: _Walk, act: Callable[[StoreTxn, Task], Task | None],
               on_commit: Callable[[list[Task]], None]) -> BulkResult:  # fmt: skip
    while not walk.done:
        # Each batch is its own op: other writers' ops commit in between.
        await queue.store.write(lambda tx: walk.batch(tx, act), on_commit)
    return BulkResult(matched=walk.matched, affected=walk.affected)


async def retry_matching(queue: TaskQueue, f: TaskFilter, actor: str = SYSTEM_ACTOR) -> BulkResult:
    check_filter(f, RETRYABLE, "retry")

    def on_commit(tasks: list[Task]) -> None:
        for task in tasks:
            queue._became_pending(task)
            queue._emit(K.TASK_RETRIED, task)

    return await _run(queue, _Walk(f), lambda tx, t: retry_one(tx, t, actor), on_commit)


def _purge_one(tx: StoreTxn, task: Task) -> Task:
    tx.delete_task(task)
    return task


async def purge_matching(queue: TaskQueue, f: TaskFilter) -> BulkResult:
    check_filter(f, FINISHED, "purge")

    def on_commit(tasks: list[Task]) -> None:
        for task in tasks:
            queue._emit(K.TASK_DELETED, task)

    return await _run(queue, _Walk(f), _purge_one, on_commit)
