"""The queue service: the core API the HTTP layer, the tests and the bench call.

Glues the pure pieces together: write ops go through the group-commit writer; after each
commit, in commit order, the in-memory dispatcher and lease/worker deadlines follow.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from dtq.clock import Clock
from dtq.core import ops
from dtq.core.dispatcher import Dispatcher, Entry, Waiter
from dtq.errors import DtqError, InvalidRequest, NotFound, Unavailable
from dtq.models import (
    AckItem,
    AckOutcome,
    Dashboard,
    Heartbeat,
    LeaseRequest,
    ListTasksQuery,
    ListWorkersQuery,
    Task,
    TaskCreate,
    TaskError,
    TaskStatus,
    TaskUpdate,
    Worker,
    WorkerStatus,
)
from dtq.retry import RetryPolicy
from dtq.settings import Settings
from dtq.storage.lmdb.store import LmdbStore, day_number
from dtq.storage.writer import GroupCommitWriter

S = TaskStatus
EventListener = Callable[[str, Task], None]
WorkerListener = Callable[[str, Worker], None]
TREND_METRICS = ("completion_rate", "avg_duration", "error_rate")


def _entry(task: Task) -> Entry:
    ready_at = task.ready_at if task.ready_at is not None else task.created_at
    return Entry(task.id, task.queue, task.priority.rank, task.seq, task.name, ready_at)


class TaskQueue:
    def __init__(
        self, store: LmdbStore, writer: GroupCommitWriter, clock: Clock, settings: Settings
    ) -> None:
        self.store = store
        self.writer = writer
        self.clock = clock
        self.settings = settings
        self.policy = RetryPolicy(settings.retry_backoff_base_s, settings.retry_backoff_max_s)
        self.dispatcher = Dispatcher()
        self._leases: list[tuple[float, str, str]] = []  # (expires_at, task id, lease id), lazy
        # The live lease of each running task: heap entries that no longer match it (completed,
        # extended, cancelled...) are dropped by the reaper without a storage read.
        self._live_leases: dict[str, tuple[float, str]] = {}
        self._orphaned: list[tuple[str, str]] = []  # (task id, lease id) granted to no one
        self._worker_deadlines: list[tuple[float, str]] = []  # (silent-by, worker id), lazy
        self.task_listeners: list[EventListener] = []
        self.worker_listeners: list[WorkerListener] = []
        self.lease_expiries = 0
        self._active_workers: set[str] = set()
        self.closing = False

    # -- start-up -----------------------------------------------------------------------
    def rebuild(self) -> int:
        """Rebuild the in-memory structures from storage; running tasks keep their expiry."""
        now = self.clock.now()
        count = 0
        ready: list[Entry] = []
        scheduled: list[tuple[float, Entry]] = []
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a million new objects would trigger many useless collections
        try:
            for row in self.store.iter_pending():
                entry = Entry(row.task_id, row.queue, row.rank, row.seq, row.name, row.ready_at)
                if row.run_at is not None and row.run_at > now:
                    scheduled.append((row.run_at, entry))
                else:
                    ready.append(entry)
            count = len(ready) + len(scheduled)
            self.dispatcher.load(ready, scheduled)  # in the order they were live
        finally:
            if gc_was_enabled:
                gc.enable()
        if count > 100_000:
            # Long-lived: keep the cyclic collector from rescanning them (long pauses at 1M).
            gc.freeze()
        for expires_at, task_id, lease_id in self.store.iter_leases():
            self._leases.append((expires_at, task_id, lease_id))
            self._live_leases[task_id] = (expires_at, lease_id)
            count += 1
        heapq.heapify(self._leases)
        workers, _ = self.store.list_workers(WorkerStatus.ACTIVE, 0, 1_000_000)
        for worker in workers:
            self._active_workers.add(worker.worker_id)
            self._worker_deadlines.append(
                (worker.last_heartbeat + self.settings.worker_timeout_s, worker.worker_id)
            )
        heapq.heapify(self._worker_deadlines)
        return count

    async def grant_restart_grace(self) -> int:
        """Start-up, before the reaper runs: leases held when the server stopped get their own
        length again from now, so workers that kept running can still report (a crash must not
        cost them their work). Returns how many."""
        task_ids = list(self._live_leases)
        if not task_ids:
            return 0

        def on_commit(changed: list[Task]) -> None:
            for task in changed:
                self._track_lease(task)

        changed = await self.writer.write(lambda tx: ops.restart_grace(tx, task_ids), on_commit)
        return len(changed)

    # -- events -------------------------------------------------------------------------
    def _emit(self, event: str, task: Task) -> None:
        if task.status != S.RUNNING or event == "task.deleted":
            self._live_leases.pop(task.id, None)
        for listener in self.task_listeners:
            listener(event, task)

    def _became_pending(self, task: Task) -> None:
        if task.run_at is not None and task.run_at > self.clock.now():
            self.dispatcher.schedule(_entry(task), task.run_at)
        else:
            self.dispatcher.push(_entry(task))

    def _track_lease(self, task: Task) -> None:
        assert task.lease is not None
        item = (task.lease.expires_at, task.id, task.lease.id)
        self._live_leases[task.id] = (task.lease.expires_at, task.lease.id)
        if not self._leases or item < self._leases[0]:
            self.dispatcher.schedule_changed.set()
        heapq.heappush(self._leases, item)
        if len(self._leases) > 4 * len(self._live_leases) + 10_000:
            # Finished leases linger in the heap until their old expiry: compact (amortised).
            self._leases = [(exp, tid, lid) for tid, (exp, lid) in self._live_leases.items()]
            heapq.heapify(self._leases)

    def _after_attempt(self, task: Task) -> None:
        if task.status == S.PENDING:
            self._became_pending(task)
            self._emit("task.retried", task)
        else:
            self._emit(f"task.{task.status.value}", task)

    # -- producers ----------------------------------------------------------------------
    async def create(self, body: TaskCreate) -> tuple[Task, bool]:
        waiter = None
        if body.run_at is None and body.delay is None and not self.closing:
            waiter = self.dispatcher.reserve(body.queue, body.name)
        if waiter is None:

            def on_commit(res: tuple[Task, bool]) -> None:
                task, created = res
                if created:
                    self._became_pending(task)
                    self._emit("task.created", task)

            return await self.writer.write(lambda tx: ops.create(tx, body), on_commit)

        # A worker is parked waiting for exactly this: lease the task to it in the same
        # commit (one fsync on the wake-up path instead of two).
        parked = waiter

        def on_leased(res: tuple[Task, Task | None, bool]) -> None:
            task, leased, created = res
            if created:
                self._emit("task.created", task)
            if leased is not None:
                self._track_lease(leased)
                self._emit("task.leased", leased)
                if parked.gone:  # its long poll was cancelled meanwhile: hand it back
                    self._orphan([leased])
                else:
                    parked.granted.append(leased)
            elif created:
                self._became_pending(task)
            parked.event.set()  # with the task, or with nothing: it goes back to waiting

        try:
            # Shielded: the parked worker waits for this commit's outcome either way.
            with trio.CancelScope(shield=True):
                task, _, created = await self.writer.write(
                    lambda tx: ops.create_leased(
                        tx, body, parked.worker_id, parked.lease_s, parked.holder
                    ),
                    on_leased,
                )
        except DtqError:
            parked.event.set()  # nothing was leased to it: it goes back to waiting
            raise
        return task, created

    async def create_many(self, bodies: Sequence[TaskCreate]) -> list[tuple[Task, bool]]:
        def on_commit(rows: list[tuple[Task, bool]]) -> None:
            for task, created in rows:
                if created:
                    self._became_pending(task)
                    self._emit("task.created", task)

        return await self.writer.write(lambda tx: ops.create_many(tx, bodies), on_commit)

    def get(self, task_id: str) -> Task:
        task = self.store.get_task(ops.parse_task_id(task_id))
        if task is None:
            raise NotFound(f"task {task_id} not found", field="task_id", reason="no such task")
        return task

    def list_tasks(self, query: ListTasksQuery) -> tuple[list[Task], int]:
        return self.store.list_tasks(query)

    async def update(self, task_id: str, change: TaskUpdate) -> Task:
        task_id = ops.parse_task_id(task_id)

        def on_commit(res: tuple[Task, Task]) -> None:
            old, new = res
            if new is old:
                return
            if new.status == S.CANCELLED and old.status != S.CANCELLED:
                self.dispatcher.discard(new.id)
                self._emit("task.cancelled", new)
                return
            if new.status == S.PENDING and new.priority != old.priority:
                self._became_pending(new)
            self._emit("task.updated", new)

        _, new = await self.writer.write(lambda tx: ops.update(tx, task_id, change), on_commit)
        return new

    async def cancel(self, task_id: str) -> Task:
        return await self.update(task_id, TaskUpdate(status=S.CANCELLED))

    async def delete(self, task_id: str) -> Task:
        task_id = ops.parse_task_id(task_id)

        def on_commit(task: Task) -> None:
            self.dispatcher.discard(task.id)
            self._emit("task.deleted", task)

        return await self.writer.write(lambda tx: ops.delete(tx, task_id), on_commit)

    # -- the worker protocol -------------------------------------------------------------
    async def lease(self, req: LeaseRequest, holder: str | None = None) -> list[Task]:
        """Ready tasks at once, else a long poll until one is ready or `wait` passes.

        `holder` (the caller's identity) is stored on each lease: only it, or a caller passing
        no identity (an admin), may then complete, fail, extend or release the task."""
        queues = frozenset(req.queues) if req.queues else None
        names = frozenset(req.names) if req.names else None
        lease_s = req.lease_seconds or self.settings.lease_default_s
        claimed = self.dispatcher.take(queues, names, req.max_tasks)
        if not claimed and req.wait > 0 and not self.closing:
            claimed, granted = await self._wait_for_tasks(
                queues, names, req.max_tasks, req.wait, req.worker_id, lease_s, holder
            )
            if granted:
                return granted  # leased by the create that woke us
        if not claimed:
            return []
        ids = [e.task_id for e in claimed]

        def on_commit(result: tuple[list[Task], list[Task]]) -> None:
            granted, not_due = result
            for task in granted:
                self._track_lease(task)
                self._emit("task.leased", task)
            for task in not_due:  # claimed a hair early: back to the schedule
                self._became_pending(task)

        try:
            # Shielded: once submitted, the grant's outcome must be known, or tasks it granted
            # could be put back in line while leased. A caller that went away meanwhile
            # leaves leases that expire and retry (at-least-once).
            with trio.CancelScope(shield=True):
                granted, _ = await self.writer.write(
                    lambda tx: ops.lease(tx, ids, req.worker_id, lease_s, holder), on_commit
                )
        except DtqError:
            self.dispatcher.give_back(claimed)  # nothing was granted
            raise
        return granted

    def _orphan(self, tasks: list[Task]) -> None:
        """Tasks leased to a long poll that ended before it could return them: the reaper
        hands them back at once instead of letting the lease run out."""
        for task in tasks:
            assert task.lease is not None
            self._orphaned.append((task.id, task.lease.id))
        if tasks:
            self.dispatcher.schedule_changed.set()

    async def _wait_for_tasks(
        self,
        queues: frozenset[str] | None,
        names: frozenset[str] | None,
        max_tasks: int,
        wait_s: float,
        worker_id: str,
        lease_s: float,
        holder: str | None = None,
    ) -> tuple[list[Entry], list[Task]]:
        """(entries handed over, still to be leased) or (none, tasks already leased to us)."""
        deadline = trio.current_time() + wait_s
        while True:
            waiter = Waiter(queues, names, max_tasks, worker_id, lease_s, holder)
            self.dispatcher.add_waiter(waiter)
            try:
                with trio.move_on_at(deadline):
                    await waiter.event.wait()
                if waiter.reserved and not waiter.event.is_set():
                    # A create is committing a task leased to us: its outcome decides.
                    with trio.CancelScope(shield=True):
                        await waiter.event.wait()
            except BaseException:
                waiter.gone = True
                self.dispatcher.remove_waiter(waiter)
                self.dispatcher.give_back(waiter.claimed)  # to the next waiter, or back in line
                self._orphan(waiter.granted)  # leased to us, but we are not there to say so
                raise
            self.dispatcher.remove_waiter(waiter)
            if waiter.granted:
                return [], waiter.granted
            claimed = waiter.claimed
            if claimed:
                if len(claimed) < max_tasks:
                    claimed.extend(self.dispatcher.take(queues, names, max_tasks - len(claimed)))
                return claimed, []
            if not waiter.reserved or self.closing or trio.current_time() >= deadline:
                return [], []
            # A reservation fell through (replayed idempotency key, not due): wait again.

    # `caller`: the acting principal's identity, checked against the lease's holder; None
    # (an admin, or the server itself) acts on any lease whose id it gives.
    async def complete(
        self, task_id: str, lease_id: str, result: Any = None, caller: str | None = None
    ) -> Task:
        task_id = ops.parse_task_id(task_id)
        return await self.writer.write(
            lambda tx: ops.complete(tx, task_id, lease_id, result, caller), self._after_attempt
        )

    async def fail(
        self,
        task_id: str,
        lease_id: str,
        error: TaskError,
        retry: bool | None = None,
        caller: str | None = None,
    ) -> Task:
        task_id = ops.parse_task_id(task_id)
        return await self.writer.write(
            lambda tx: ops.fail(tx, task_id, lease_id, error, retry, self.policy, caller=caller),
            self._after_attempt,
        )

    async def release(self, task_id: str, lease_id: str, caller: str | None = None) -> Task:
        task_id = ops.parse_task_id(task_id)

        def on_commit(task: Task) -> None:
            self._became_pending(task)
            self._emit("task.released", task)

        return await self.writer.write(
            lambda tx: ops.release(tx, task_id, lease_id, caller), on_commit
        )

    async def extend(
        self,
        task_id: str,
        lease_id: str,
        lease_s: float | None = None,
        caller: str | None = None,
    ) -> Task:
        task_id = ops.parse_task_id(task_id)
        seconds = lease_s or self.settings.lease_default_s
        return await self.writer.write(
            lambda tx: ops.extend(tx, task_id, lease_id, seconds, caller), self._track_lease
        )

    async def ack(self, items: Sequence[AckItem], caller: str | None = None) -> list[AckOutcome]:
        def on_commit(res: tuple[list[AckOutcome], list[Task]]) -> None:
            for task in res[1]:
                self._after_attempt(task)

        outcomes, _ = await self.writer.write(
            lambda tx: ops.ack(tx, items, self.policy, caller), on_commit
        )
        return outcomes

    async def heartbeat(self, hb: Heartbeat) -> Worker:
        def on_commit(worker: Worker) -> None:
            if worker.status == WorkerStatus.ACTIVE:
                deadline = worker.last_heartbeat + self.settings.worker_timeout_s
                if not self._worker_deadlines or deadline < self._worker_deadlines[0][0]:
                    self.dispatcher.schedule_changed.set()
                heapq.heappush(self._worker_deadlines, (deadline, worker.worker_id))
            active = worker.status == WorkerStatus.ACTIVE
            was_active = worker.worker_id in self._active_workers
            if active != was_active:
                kind = "worker.active" if active else "worker.inactive"
                (self._active_workers.add if active else self._active_workers.discard)(
                    worker.worker_id
                )
            else:
                kind = "worker.heartbeat"
            for listener in self.worker_listeners:
                listener(kind, worker)

        return await self.writer.write(lambda tx: ops.heartbeat(tx, hb), on_commit)

    def get_worker(self, worker_id: str) -> Worker:
        worker = self.store.get_worker(worker_id)
        if worker is None:
            raise NotFound(
                f"worker {worker_id} not found", field="worker_id", reason="no such worker"
            )
        return worker

    def list_workers(self, query: ListWorkersQuery) -> tuple[list[Worker], int]:
        return self.store.list_workers(query.status, query.skip, query.limit)

    # -- the reaper's side ----------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest moment the reaper has something to do."""
        times = [
            t
            for t in (
                self.dispatcher.next_scheduled_at(),
                self._leases[0][0] if self._leases else None,
                self._worker_deadlines[0][0] if self._worker_deadlines else None,
            )
            if t is not None
        ]
        return min(times) if times else None

    async def reap(self) -> None:
        """Promote due tasks, expire due leases, mark silent workers inactive, hand back
        tasks granted to long polls that had gone."""
        now = self.clock.now()
        self.dispatcher.promote_due(now)
        if self._orphaned:
            orphans, self._orphaned = self._orphaned, []

            def on_released(released: list[Task]) -> None:
                for task in released:
                    self._became_pending(task)
                    self._emit("task.released", task)

            try:
                await self.writer.write(lambda tx: ops.release_orphans(tx, orphans), on_released)
            except BaseException:
                self._orphaned.extend(orphans)
                raise
        due: list[tuple[str, str]] = []
        while self._leases and self._leases[0][0] <= now:
            expires_at, task_id, lease_id = heapq.heappop(self._leases)
            if self._live_leases.get(task_id) == (expires_at, lease_id):
                due.append((task_id, lease_id))
        if due:
            max_deliveries = self.settings.max_deliveries

            def on_expired(changed: list[Task]) -> None:
                self.lease_expiries += len(changed)
                for task in changed:
                    self._after_attempt(task)

            try:
                await self.writer.write(
                    lambda tx: ops.expire(tx, due, self.policy, max_deliveries), on_expired
                )
            except BaseException:
                for task_id, lease_id in due:  # not expired yet: keep them for the next pass
                    heapq.heappush(self._leases, (now, task_id, lease_id))
                raise
        silent: list[str] = []
        while self._worker_deadlines and self._worker_deadlines[0][0] <= now:
            silent.append(heapq.heappop(self._worker_deadlines)[1])
        if silent:
            timeout_s = self.settings.worker_timeout_s

            def on_inactive(changed: list[Worker]) -> None:
                for worker in changed:
                    self._active_workers.discard(worker.worker_id)
                    for listener in self.worker_listeners:
                        listener("worker.inactive", worker)

            try:
                await self.writer.write(
                    lambda tx: ops.mark_inactive(tx, silent, timeout_s), on_inactive
                )
            except BaseException:
                for worker_id in silent:
                    heapq.heappush(self._worker_deadlines, (now, worker_id))
                raise

    # -- analytics -----------------------------------------------------------------------
    def dashboard(self) -> Dashboard:
        c = self.store.counters()
        total = int(c.get("total", 0))
        completed = int(c.get(S.COMPLETED.value, 0))
        n = c.get("duration_n", 0)
        return Dashboard(
            total_tasks=total,
            completed_tasks=completed,
            failed_tasks=int(c.get(S.FAILED.value, 0)),
            pending_tasks=int(c.get(S.PENDING.value, 0)),
            running_tasks=int(c.get(S.RUNNING.value, 0)),
            cancelled_tasks=int(c.get(S.CANCELLED.value, 0)),
            completion_rate=round(completed / total, 4) if total else 0.0,
            average_duration=round(c.get("duration_sum", 0.0) / n, 4) if n else 0.0,
            workers_active=int(c.get("workers_active", 0)),
            workers_total=int(c.get("workers_total", 0)),
        )

    def daily(self, days: int) -> list[dict[str, Any]]:
        """One row per UTC day, oldest first, the last `days` days including today."""
        if not 1 <= days <= 365:
            raise InvalidRequest("days must be between 1 and 365", field="days")
        today = day_number(self.clock.now())
        stored = dict(self.store.day_stats(today - days + 1, today))
        rows = []
        for day in range(today - days + 1, today + 1):
            s = stored.get(day)
            created = s.created if s else 0
            completed = s.completed if s else 0
            failed = s.failed if s else 0
            finished = completed + failed
            rows.append(
                {
                    "date": datetime.fromtimestamp(day * 86400, UTC).date().isoformat(),
                    "created": created,
                    "completed": completed,
                    "failed": failed,
                    "retried": s.retried if s else 0,
                    "cancelled": s.cancelled if s else 0,
                    "completion_rate": round(completed / finished, 4) if finished else 0.0,
                    "error_rate": round(failed / finished, 4) if finished else 0.0,
                    "avg_duration": round(s.duration_sum / completed, 4)
                    if s and completed
                    else 0.0,
                }
            )
        return rows

    def trends(self, days: int, metric: str | None) -> dict[str, Any]:
        if metric is not None and metric not in TREND_METRICS:
            raise InvalidRequest(
                f"metric must be one of {', '.join(TREND_METRICS)}",
                field="metric",
                reason=f"unknown metric {metric!r}",
            )
        rows = self.daily(days)
        metrics = (metric,) if metric else TREND_METRICS
        return {
            "days": days,
            "metric": metric,
            "series": [{"date": r["date"], **{m: r[m] for m in metrics}} for r in rows],
        }

    # -- shutdown --------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Open long-polls answer now (empty unless a task was already handed to them)."""
        self.closing = True
        self.dispatcher.wake_all_waiters()


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
