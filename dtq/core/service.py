"""The queue service: the core API the HTTP layer, the tests and the bench call.

The only trio glue of the core: write ops (`ops`) go through the group-commit writer; after
each commit, in commit order, the in-memory dispatcher and the deadlines (`deadlines`) follow,
and listeners hear the event. The long poll is `longpoll`, the reaper `reaper`, the start-up
rebuild `rebuild`, the dashboard figures `analytics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import trio

from dtq.clock import Clock
from dtq.core import ops
from dtq.core.analytics import Analytics, QueueStatistics, WorkersHealth
from dtq.core.deadlines import Deadlines
from dtq.core.dispatcher import Dispatcher, Entry
from dtq.core.events import EventKind, attempt_kind
from dtq.core.events import EventKind as K
from dtq.core.longpoll import SharedWaiters, wait_for_tasks
from dtq.core.polls import Polls
from dtq.core.queues import Queues
from dtq.core.reaper import reap, run_reaper
from dtq.core.rebuild import rebuild
from dtq.core.schedules import Schedules
from dtq.core.shared_limits import limits_of_config
from dtq.errors import DtqError, NotFound
from dtq.models import (
    SYSTEM_ACTOR,
    AckItem,
    Dashboard,
    Heartbeat,
    LeaseRequest,
    ListTasksQuery,
    ListWorkersQuery,
    QueueConfig,
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
from dtq.storage.base import SharedStore, Store

S = TaskStatus
# A lease or ack of at most this many tasks is a quick write (`Store.write(quick=True)`): an
# embedded store may commit it on the event loop when it is alone. Larger ones may take long.
QUICK_BATCH = 8
EventListener = Callable[[EventKind, Task], None]
WorkerListener = Callable[[EventKind, Worker], None]
QueueListener = Callable[[EventKind, QueueConfig], None]
__all__ = ["EventListener", "TaskQueue", "WorkerListener", "run_reaper"]


def _entry(task: Task) -> Entry:
    ready_at = task.ready_at if task.ready_at is not None else task.created_at
    return Entry(
        task.id, task.queue, task.priority.rank, task.seq, task.name, ready_at, task.concurrency_key
    )


class TaskQueue:
    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.policy = RetryPolicy(settings.retry_backoff_base_s, settings.retry_backoff_max_s)
        self.dispatcher = Dispatcher(clock.now)
        # who asked for which queue/name, when (explain, workers_polling); the worker timeout
        # back is all that is asked about, so older polls are dropped
        self.polls = Polls(settings.worker_timeout_s)
        self.queue_listeners: list[QueueListener] = []
        self.queues = Queues(self)  # queue records, limits, purge, explain
        self.deadlines = Deadlines()
        self.analytics = Analytics(store, clock)
        self.task_listeners: list[EventListener] = []
        self.worker_listeners: list[WorkerListener] = []
        self.lease_expiries = 0
        self.tasks_pruned = 0  # by retention, since start (dtq.core.retention)
        self.schedules = Schedules(self)
        self._active_workers: set[str] = set()
        self.closing = False
        # A shared store (several servers on one database) claims in the database: the
        # dispatcher's ready queues stay empty and long polls park here instead.
        self.shared = store.shared
        self.shared_waiters = SharedWaiters()
        if store.changes is not None:
            store.changes.subscribe(self.shared_waiters.wake_all)

    # -- start-up -----------------------------------------------------------------------
    async def rebuild(self) -> int:
        """Rebuild the in-memory structures from storage; running tasks keep their expiry."""
        workers, _ = await self.store.list_workers(WorkerStatus.ACTIVE, 0, 1_000_000)
        for config in await self.store.list_queue_configs():
            self.dispatcher.configure(config)
        await self.schedules.load()
        if self.shared:
            # The database is the ready queue and the lease plan: only this server's view of
            # the workers is kept in memory.
            self._active_workers.update(w.worker_id for w in workers)
            timeout_s = self.settings.worker_timeout_s
            self.deadlines.load((), [(w.last_heartbeat + timeout_s, w.worker_id) for w in workers])
            return 0
        return rebuild(
            self.store,
            workers,
            self.dispatcher,
            self.deadlines,
            self._active_workers,
            self.clock.now(),
            self.settings.worker_timeout_s,
        )

    async def grant_restart_grace(self) -> int:
        """Start-up, before the reaper runs: leases held when the server stopped get their own
        length again from now, so workers that kept running can still report (a crash must not
        cost them their work). Returns how many.

        Not on a shared store: the other servers are still running, and the leases they
        granted are live; a lease held through a server that died simply runs out."""
        if self.shared:
            return 0
        task_ids = self.deadlines.live_lease_tasks()
        if not task_ids:
            return 0

        def on_commit(changed: list[Task]) -> None:
            for task in changed:
                self._track_lease(task)

        changed = await self.store.write(lambda tx: ops.restart_grace(tx, task_ids), on_commit)
        return len(changed)

    # -- events -------------------------------------------------------------------------
    def _emit(self, event: EventKind, task: Task) -> None:
        if task.status != S.RUNNING or event == K.TASK_DELETED:
            self.deadlines.drop_lease(task.id)
            self.dispatcher.finished(task.id)  # a queue-limit slot frees
        else:
            self.dispatcher.started(task.id, task.queue, task.concurrency_key)
        for listener in self.task_listeners:
            listener(event, task)

    def _became_pending(self, task: Task) -> None:
        if self.shared:
            if task.run_at is None or task.run_at <= self.clock.now():
                self.shared_waiters.wake_for(task.queue, task.name)
            else:
                self.dispatcher.schedule_changed.set()  # the reaper's wake-up may be sooner
            return
        if task.run_at is not None and task.run_at > self.clock.now():
            self.dispatcher.schedule(_entry(task), task.run_at)
        else:
            self.dispatcher.push(_entry(task))

    def _track_lease(self, task: Task) -> None:
        assert task.lease is not None
        if self.deadlines.track_lease(task.id, task.lease.id, task.lease.expires_at):
            self.dispatcher.schedule_changed.set()

    def _after_attempt(self, task: Task) -> None:
        if task.status == S.PENDING:
            self._became_pending(task)
        self._emit(attempt_kind(task), task)

    # -- producers ----------------------------------------------------------------------
    # `actor`: who acts (`Principal.identity`, or "system"), as the task's history records it.
    async def create(self, body: TaskCreate, actor: str = SYSTEM_ACTOR) -> tuple[Task, bool]:
        waiter = None
        if body.run_at is None and body.delay is None and not self.closing and not self.shared:
            waiter = self.dispatcher.reserve(body.queue, body.name)
        if waiter is None:

            def on_commit(res: tuple[Task, bool]) -> None:
                task, created = res
                if created:
                    self._became_pending(task)
                    self._emit(K.TASK_CREATED, task)

            return await self.store.write(
                lambda tx: ops.create(tx, body, actor), on_commit, quick=True
            )

        # A worker is parked waiting for exactly this: lease the task to it in the same
        # commit (one fsync on the wake-up path instead of two).
        parked = waiter

        def on_leased(res: tuple[Task, Task | None, bool]) -> None:
            task, leased, created = res
            if created:
                self._emit(K.TASK_CREATED, task)
            if leased is not None:
                self._track_lease(leased)
                self._emit(K.TASK_LEASED, leased)
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
                task, leased, created = await self.store.write(
                    lambda tx: ops.create_leased(
                        tx, body, parked.worker_id, parked.lease_s, parked.holder, actor
                    ),
                    on_leased,
                    quick=True,
                )
        except DtqError:
            parked.event.set()  # nothing was leased to it: it goes back to waiting
            raise
        if leased is not None:
            # The worker's wake-up and this caller's reply are ready in the same scheduler
            # round, in random order: step aside once so the task reaches its worker first.
            await trio.lowlevel.cancel_shielded_checkpoint()
        return task, created

    async def create_many(
        self, bodies: Sequence[TaskCreate], actor: str = SYSTEM_ACTOR
    ) -> list[tuple[Task, bool]]:
        def on_commit(rows: list[tuple[Task, bool]]) -> None:
            for task, created in rows:
                if created:
                    self._became_pending(task)
                    self._emit(K.TASK_CREATED, task)

        return await self.store.write(lambda tx: ops.create_many(tx, bodies, actor), on_commit)

    async def get(self, task_id: str) -> Task:
        task = await self.store.get_task(ops.parse_task_id(task_id))
        if task is None:
            raise NotFound(f"task {task_id} not found", field="task_id", reason="no such task")
        return task

    async def list_tasks(self, query: ListTasksQuery) -> tuple[list[Task], int]:
        return await self.store.list_tasks(query)

    async def update(self, task_id: str, change: TaskUpdate, actor: str = SYSTEM_ACTOR) -> Task:
        task_id = ops.parse_task_id(task_id)

        def on_commit(res: tuple[Task, Task]) -> None:
            old, new = res
            if new is old:
                return
            if new.status == S.CANCELLED and old.status != S.CANCELLED:
                self.dispatcher.discard(new.id)
                self._emit(K.TASK_CANCELLED, new)
                return
            if new.status == S.PENDING and new.priority != old.priority:
                self._became_pending(new)
            self._emit(K.TASK_UPDATED, new)

        _, new = await self.store.write(
            lambda tx: ops.update(tx, task_id, change, actor), on_commit
        )
        return new

    async def cancel(self, task_id: str, actor: str = SYSTEM_ACTOR) -> Task:
        return await self.update(task_id, TaskUpdate(status=S.CANCELLED), actor)

    async def delete(self, task_id: str) -> Task:
        task_id = ops.parse_task_id(task_id)

        def on_commit(task: Task) -> None:
            self.dispatcher.discard(task.id)
            self._emit(K.TASK_DELETED, task)

        return await self.store.write(lambda tx: ops.delete(tx, task_id), on_commit)

    # -- the worker protocol -------------------------------------------------------------
    async def lease(self, req: LeaseRequest, holder: str | None = None) -> list[Task]:
        """Ready tasks at once, else a long poll until one is ready or `wait` passes.

        `holder` (the caller's identity) is stored on each lease: only it, or a caller passing
        no identity (an admin), may then complete, fail, extend or release the task."""
        queues = frozenset(req.queues) if req.queues else None
        names = frozenset(req.names) if req.names else None
        lease_s = req.lease_seconds or self.settings.lease_default_s
        self.polls.record(req.worker_id, req.queues, req.names, self.clock.now())
        if self.shared:
            return await self._lease_shared(
                queues, names, req.max_tasks, req.wait, req.worker_id, lease_s, holder
            )
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
                self._emit(K.TASK_LEASED, task)
            if len(granted) < len(ids):  # claims that fell through give their slots back
                leased = {task.id for task in granted}
                for task_id in ids:
                    if task_id not in leased:
                        self.dispatcher.finished(task_id)
            for task in not_due:  # claimed a hair early: back to the schedule
                self._became_pending(task)

        try:
            # Shielded: once submitted, the grant's outcome must be known, or tasks it granted
            # could be put back in line while leased. A caller that went away meanwhile
            # leaves leases that expire and retry (at-least-once).
            with trio.CancelScope(shield=True):
                granted, _ = await self.store.write(
                    lambda tx: ops.lease(tx, ids, req.worker_id, lease_s, holder),
                    on_commit,
                    quick=len(ids) <= QUICK_BATCH,
                )
        except DtqError:
            self.dispatcher.give_back(claimed)  # nothing was granted
            raise
        return granted

    async def _lease_shared(
        self,
        queues: frozenset[str] | None,
        names: frozenset[str] | None,
        max_tasks: int,
        wait_s: float,
        worker_id: str,
        lease_s: float,
        holder: str | None,
    ) -> list[Task]:
        """The lease on a shared store: claim and grant in one transaction; with nothing
        ready, park until a local commit, the store's cross-server signal, the next `run_at`
        or the safety poll, then claim again."""
        deadline = trio.current_time() + wait_s
        waiters = self.shared_waiters
        store: SharedStore = self.store  # type: ignore[assignment]
        poll_s = self.settings.shared_poll_s

        def on_commit(granted: list[Task]) -> None:
            for task in granted:
                self._track_lease(task)
                self._emit(K.TASK_LEASED, task)

        while True:
            ticket = waiters.ticket(queues, names)
            try:
                # Shielded: once submitted, the grant's outcome must be known (see `lease`).
                # Unordered: a create it does not see yet wakes `ticket`, and it claims again.
                with trio.CancelScope(shield=True):
                    granted = await self.store.write(
                        lambda tx: ops.claim(
                            tx,  # type: ignore[arg-type]
                            queues, names, max_tasks, worker_id, lease_s, holder,
                            limits_of=limits_of_config,
                        ),
                        on_commit,
                        ordered=False,
                    )  # fmt: skip
                if granted:
                    return granted
                now = trio.current_time()
                if wait_s <= 0 or self.closing or now >= deadline:
                    return []
                wake_at = min(deadline, now + poll_s)
                next_run_at = await store.next_run_at()
                if next_run_at is not None:
                    wake_at = min(wake_at, self.clock.to_trio(next_run_at))
                await waiters.wait(ticket, wake_at)
            finally:
                waiters.done(ticket)

    def _orphan(self, tasks: list[Task]) -> None:
        """Tasks leased to a long poll that ended before it could return them: the reaper
        hands them back at once instead of letting the lease run out."""
        for task in tasks:
            assert task.lease is not None
            self.deadlines.add_orphan(task.id, task.lease.id)
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
        return await wait_for_tasks(
            self.dispatcher,
            self._orphan,
            lambda: self.closing,
            queues,
            names,
            max_tasks,
            wait_s,
            worker_id,
            lease_s,
            holder,
        )

    # `caller`: the acting principal's identity, checked against the lease's holder; None
    # (an admin, or the server itself) acts on any lease whose id it gives.
    async def complete(
        self,
        task_id: str,
        lease_id: str,
        result: Any = None,
        caller: str | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> Task:
        task_id = ops.parse_task_id(task_id)
        return await self.store.write(
            lambda tx: ops.complete(tx, task_id, lease_id, result, caller, actor),
            self._after_attempt,
            quick=True,
        )

    async def fail(
        self,
        task_id: str,
        lease_id: str,
        error: TaskError,
        retry: bool | None = None,
        caller: str | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> Task:
        task_id = ops.parse_task_id(task_id)
        return await self.store.write(
            lambda tx: ops.fail(
                tx, task_id, lease_id, error, retry, self.policy, caller=caller, actor=actor
            ),
            self._after_attempt,
            quick=True,
        )

    async def release(
        self,
        task_id: str,
        lease_id: str,
        caller: str | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> Task:
        task_id = ops.parse_task_id(task_id)

        def on_commit(task: Task) -> None:
            self._became_pending(task)
            self._emit(K.TASK_RELEASED, task)

        return await self.store.write(
            lambda tx: ops.release(tx, task_id, lease_id, caller, actor), on_commit, quick=True
        )

    async def extend(
        self,
        task_id: str,
        lease_id: str,
        lease_s: float | None = None,
        caller: str | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> Task:
        task_id = ops.parse_task_id(task_id)
        seconds = lease_s or self.settings.lease_default_s
        return await self.store.write(
            lambda tx: ops.extend(tx, task_id, lease_id, seconds, caller, actor),
            self._track_lease,
            quick=True,
        )

    async def ack(
        self, items: Sequence[AckItem], caller: str | None = None, actor: str = SYSTEM_ACTOR
    ) -> list[ops.Acked]:
        def on_commit(res: tuple[list[ops.Acked], list[Task]]) -> None:
            for task in res[1]:
                self._after_attempt(task)

        # Unordered: an ack depends on no write still waiting (on PostgreSQL it may commit
        # beside them, in the writer's second lane).
        outcomes, _ = await self.store.write(
            lambda tx: ops.ack(tx, items, self.policy, caller, actor),
            on_commit,
            ordered=False,
            quick=len(items) <= QUICK_BATCH,
        )
        return outcomes

    async def heartbeat(self, hb: Heartbeat) -> Worker:
        def on_commit(worker: Worker) -> None:
            if worker.status == WorkerStatus.ACTIVE:
                deadline = worker.last_heartbeat + self.settings.worker_timeout_s
                if self.deadlines.track_worker(worker.worker_id, deadline):
                    self.dispatcher.schedule_changed.set()
            active = worker.status == WorkerStatus.ACTIVE
            was_active = worker.worker_id in self._active_workers
            if active != was_active:
                kind = K.WORKER_ACTIVE if active else K.WORKER_INACTIVE
                (self._active_workers.add if active else self._active_workers.discard)(
                    worker.worker_id
                )
            else:
                kind = K.WORKER_HEARTBEAT
            for listener in self.worker_listeners:
                listener(kind, worker)

        return await self.store.write(lambda tx: ops.heartbeat(tx, hb), on_commit, quick=True)

    async def get_worker(self, worker_id: str) -> Worker:
        worker = await self.store.get_worker(worker_id)
        if worker is None:
            raise NotFound(
                f"worker {worker_id} not found", field="worker_id", reason="no such worker"
            )
        return worker

    async def list_workers(self, query: ListWorkersQuery) -> tuple[list[Worker], int]:
        return await self.store.list_workers(query.status, query.skip, query.limit)

    # -- the reaper's side ----------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earliest moment the reaper has something to do (on a shared store, also the
        next safety poll: leases granted through other servers expire here too)."""
        times = [
            t
            for t in (self.dispatcher.next_scheduled_at(), self.schedules.times.next_at())
            if t is not None
        ]
        planned = self.deadlines.next_at(min(times) if times else None)
        if self.shared:
            poll_at = self.clock.now() + self.settings.shared_poll_s
            return poll_at if planned is None else min(planned, poll_at)
        return planned

    async def reap(self) -> None:
        """Promote due tasks, expire due leases, mark silent workers inactive, hand back
        tasks granted to long polls that had gone."""
        await reap(self)

    def _worker_went_inactive(self, worker: Worker) -> None:
        self._active_workers.discard(worker.worker_id)
        for listener in self.worker_listeners:
            listener(K.WORKER_INACTIVE, worker)

    # -- analytics -----------------------------------------------------------------------
    async def dashboard(self) -> Dashboard:
        return await self.analytics.dashboard()

    async def daily(self, days: int) -> list[dict[str, Any]]:
        """One row per UTC day, oldest first, the last `days` days including today."""
        return await self.analytics.daily(days)

    async def trends(self, days: int, metric: str | None) -> dict[str, Any]:
        return await self.analytics.trends(days, metric)

    async def statistics(self) -> QueueStatistics:
        d = self.dispatcher
        return QueueStatistics(
            dashboard=await self.dashboard(),
            ready_by_queue=d.ready_by_queue(),
            scheduled=d.scheduled_count(),
            longpolls_waiting=d.waiting_count() + len(self.shared_waiters),
            lease_expiries=self.lease_expiries,
        )

    async def workers_health(self) -> WorkersHealth:
        return await self.analytics.workers_health(self.settings.worker_timeout_s)

    def pending_run_at(self) -> Iterator[tuple[str, float | None]]:
        """(task id, run_at) of every pending task (start-up: when each became ready)."""
        return self.analytics.pending_run_at()

    async def ready_problem(self) -> str | None:
        """Why the server should not get traffic now (shutting down, storage failing), or None."""
        if self.closing:
            return "shutting down"
        return await self.analytics.storage_problem()

    # -- shutdown --------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Open long-polls answer now (empty unless a task was already handed to them)."""
        self.closing = True
        self.dispatcher.wake_all_waiters()
        self.shared_waiters.wake_all()
