"""The worker runtime: runs your functions as tasks, anywhere the server can be reached.

    from dtq import Worker
    worker = Worker()                      # DTQ_URL / DTQ_API_KEY / DTQ_TOKEN

    @worker.task("Process Data")
    def process(payload: dict) -> dict:    # sync handlers run on a pool of threads, async in trio
        ...

    worker.run()                           # or: dtq worker mymodule:worker

Leases as many tasks as it has free slots (one long poll), of the names it has handlers for
(`any_name=True` for every name); while tasks run, it asks again once a quarter of its slots
are free or 2 ms after the first one freed, so a busy worker asks for batches, not one task per
finished one. It extends each lease at a third of its
length, reports results in batches, and hands unfinished tasks back on shutdown. It only uses
the public HTTP API or the fast lane (push mode, `transport_push`), through `WorkerTransport`.
"""

from __future__ import annotations

import gc
import inspect
import os
import random
import signal
import socket
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

import httpx
import msgspec
import structlog
import trio

from dtq.client._async import AsyncClient
from dtq.client._threadpool import HandlerThreads
from dtq.client.transport_push import worker_transport
from dtq.errors import Conflict, DtqError, NotFound, RateLimited, Unavailable
from dtq.messages import TaskOut, WorkerOut
from dtq.models import DEFAULT_LEASE_S, AckItem, AckOutcome, TaskErrorIn
from dtq.retry import RetryPolicy

log = structlog.get_logger("dtq.worker")
Handler = Callable[[Any], Any]
_TRANSIENT = (httpx.TransportError, Unavailable, RateLimited)
MAX_LEASE_NAMES = 100  # LeaseRequest.names accepts at most this many
MAX_LEASE_BATCH = 100  # LeaseRequest.max_tasks accepts at most this many
# A busy worker waits at most this long for a batch of slots to free before asking for more
# (Nagle-like: a worker with nothing running asks at once, so an idle worker loses nothing).
REFILL_WAIT_S = 0.002
_json_check = msgspec.json.Encoder().encode
T = TypeVar("T")
# Leasing or acknowledging again after a connection error or a refusal: 0.4 s, 0.8 s, 1.6 s, ...
# up to 10 s, each scaled by a random factor in [0.5, 1.5).
WORKER_RETRY = RetryPolicy(base_s=0.4, cap_s=10.0, jitter=0.5)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A worker's tunables; `Worker(...)` takes each as a keyword argument."""

    queues: list[str] | None = None  # None: every queue
    concurrency: int = 4  # tasks at once
    threads: int | None = None  # sync handlers at once, on a fixed pool; None: `concurrency`
    lease_seconds: float = DEFAULT_LEASE_S  # extended at a third of it while the handler runs
    heartbeat_interval_s: float = 10.0
    grace_period_s: float = 30.0  # on shutdown, for running tasks to finish
    poll_wait_s: float = 20.0  # the lease long poll
    # By default a worker leases only the task names it has handlers for, so a misrouted
    # worker leaves other tasks pending instead of failing them as UnknownTask.
    any_name: bool = False
    retry: RetryPolicy = WORKER_RETRY  # after a failed lease or ack call

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")


_DEFAULTS = WorkerConfig()  # `Worker(...)` keyword defaults: the config's, written once


class _Tunable(Generic[T]):
    """A `Worker` attribute that reads, and on assignment replaces, a field of its `config`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, worker: Worker, owner: type | None = None) -> T:
        value: T = getattr(worker.config, self.name)
        return value

    def __set__(self, worker: Worker, value: T) -> None:
        changes: dict[str, Any] = {self.name: value}
        worker.config = replace(worker.config, **changes)


class WorkerTransport(Protocol):
    """What the worker needs from the server (HTTP today, a WebSocket session later)."""

    async def lease(self, worker_id: str, **kw: Any) -> list[TaskOut]: ...
    async def ack(self, acks: Sequence[AckItem]) -> list[AckOutcome]: ...
    async def extend(self, task_id: str, lease_id: str, lease_seconds: float) -> TaskOut: ...
    async def release(self, task_id: str, lease_id: str) -> TaskOut: ...
    async def heartbeat(self, worker_id: str, **fields: Any) -> WorkerOut: ...
    async def aclose(self) -> None: ...


class _Running:
    """A task this worker is running."""

    __slots__ = ("extended_at", "lease_id", "lost", "scope")

    def __init__(self, lease_id: str, now: float) -> None:
        self.lease_id = lease_id
        self.extended_at = now  # trio time of the grant or the last extension
        self.lost = False
        self.scope = trio.CancelScope()


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs registered handlers for leased tasks. Its tunables are in `config` (a frozen
    `WorkerConfig`); each is also an attribute (`worker.concurrency = 8` replaces `config`)."""

    queues: _Tunable[list[str] | None] = _Tunable()
    concurrency: _Tunable[int] = _Tunable()
    threads: _Tunable[int | None] = _Tunable()
    lease_seconds: _Tunable[float] = _Tunable()
    heartbeat_interval_s: _Tunable[float] = _Tunable()
    grace_period_s: _Tunable[float] = _Tunable()
    poll_wait_s: _Tunable[float] = _Tunable()
    any_name: _Tunable[bool] = _Tunable()

    def __init__(
        self,
        url: str | Sequence[str] | None = None,  # several: servers sharing one store
        *,
        api_key: str | None = None,
        token: str | None = None,
        queues: Sequence[str] | None = None,
        concurrency: int = _DEFAULTS.concurrency,
        threads: int | None = _DEFAULTS.threads,
        worker_id: str | None = None,
        lease_seconds: float = _DEFAULTS.lease_seconds,
        heartbeat_interval_s: float = _DEFAULTS.heartbeat_interval_s,
        grace_period_s: float = _DEFAULTS.grace_period_s,
        poll_wait_s: float = _DEFAULTS.poll_wait_s,
        any_name: bool = _DEFAULTS.any_name,
        transport: str | None = None,
    ) -> None:
        self.url = url
        # "auto" | "tcp" | "ws" | "http" (else DTQ_TRANSPORT): over tcp/ws, tasks are pushed
        self.transport = transport
        self.api_key = api_key
        self.token = token
        self.worker_id = worker_id or _default_worker_id()
        self.config = WorkerConfig(
            queues=list(queues) if queues else None,
            concurrency=concurrency,
            threads=threads,
            lease_seconds=lease_seconds,
            heartbeat_interval_s=heartbeat_interval_s,
            grace_period_s=grace_period_s,
            poll_wait_s=poll_wait_s,
            any_name=any_name,
        )
        self.handlers: dict[str, Handler] = {}
        self._running: dict[str, _Running] = {}
        self._slot_freed = trio.Event()
        self._acks: list[AckItem] = []
        self._acks_ready = trio.Event()
        # Sync handlers: a fixed pool, made in `serve` (`dtq worker --concurrency/--threads` may
        # change the sizes after this); a handler abandoned after its timeout or a lost lease
        # keeps its thread, and the pool replaces it so it takes no slot from new work.
        self._pool: HandlerThreads | None = None
        self.completed = 0
        self.failed = 0

    def task(self, name: str | None = None) -> Callable[[Handler], Handler]:
        """Register a handler for tasks called `name` (default: the function's name)."""

        def decorator(fn: Handler) -> Handler:
            self.handlers[name or fn.__name__] = fn
            return fn

        return decorator

    def lease_names(self) -> list[str] | None:
        """The `names` filter of this worker's lease requests (None: any name)."""
        if self.any_name:
            return None
        if not self.handlers:
            raise ValueError(
                "this worker has no handlers: register one with @worker.task(...), "
                "or pass any_name=True (dtq worker --any-name) to lease every task name"
            )
        if len(self.handlers) > MAX_LEASE_NAMES:
            raise ValueError(
                f"a lease request names at most {MAX_LEASE_NAMES} task names and this worker "
                f"has {len(self.handlers)} handlers: split it, or pass any_name=True"
            )
        return sorted(self.handlers)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Run until SIGTERM/SIGINT (drains); a second signal stops at once."""
        self.lease_names()  # ValueError here, before trio, if this worker could lease nothing
        gc.collect()
        gc.freeze()  # this process's start-up objects live on: no rescans (latency pauses)
        trio.run(self._run_with_signals)

    async def _run_with_signals(self) -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        if not stop.is_set():
                            log.info("draining", signal=signal.Signals(signum).name)
                            stop.set()
                        else:
                            log.warning("stopping now", signal=signal.Signals(signum).name)
                            nursery.cancel_scope.cancel()
                            return

            nursery.start_soon(watch_signals)
            await self.serve(stop)
            nursery.cancel_scope.cancel()

    async def serve(
        self,
        stop: trio.Event,
        transport: WorkerTransport | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Work until `stop` is set, then drain: finish running tasks within the grace period,
        hand the rest back, flush results."""
        names = self.lease_names()  # a worker that could lease nothing fails here, in one line
        client = transport or AsyncClient(
            self.url, api_key=self.api_key, token=self.token, transport=self.transport
        )
        pool = self._pool = HandlerThreads(self.threads or self.concurrency)
        log.info("worker started", worker_id=self.worker_id, handlers=sorted(self.handlers),
                 concurrency=self.concurrency, queues=self.queues,
                 leases="any name" if names is None else "handled names only")  # fmt: skip
        try:
            async with trio.open_nursery() as background:
                client = await worker_transport(client)  # push mode over the fast lane
                if (run_push := getattr(client, "run_push", None)) is not None:
                    await background.start(run_push, self._task_cancelled)
                background.start_soon(self._ack_loop, client)
                background.start_soon(self._heartbeat_loop, client)
                background.start_soon(self._lease_keeper, client)
                async with trio.open_nursery() as tasks:
                    task_status.started()
                    with trio.CancelScope() as lease_scope:
                        tasks.start_soon(self._cancel_on, stop, lease_scope)
                        await self._lease_loop(client, tasks)
                    if (stop_leasing := getattr(client, "stop_leasing", None)) is not None:
                        await stop_leasing()  # push mode: no more pushes, untaken ones back
                    await self._drain(client, tasks)
                await self._flush_acks(client)
                background.cancel_scope.cancel()
            with trio.move_on_after(2):
                await client.heartbeat(self.worker_id, status="inactive", current_load=0,
                                       max_capacity=self.concurrency)  # fmt: skip
        except* _TRANSIENT:
            pass  # the final heartbeat is best effort
        finally:
            pool.close()
            with trio.CancelScope(shield=True):
                await client.aclose()
        log.info("worker stopped", worker_id=self.worker_id, completed=self.completed,
                 failed=self.failed)  # fmt: skip

    def _task_cancelled(self, task_id: str) -> None:
        """The server says a task we run was cancelled or deleted: stop its handler."""
        running = self._running.get(task_id)
        if running is not None:
            running.lost = True
            running.scope.cancel()

    @staticmethod
    async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async def _lease_loop(self, client: WorkerTransport, tasks: trio.Nursery) -> None:
        failures = 0
        names = self.lease_names()
        while True:
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed = trio.Event()
                await self._slot_freed.wait()
                continue
            if self._running and free < self._refill_batch():
                await self._gather_free_slots()
                free = self.concurrency - len(self._running)
            try:
                leased = await client.lease(
                    self.worker_id, queues=self.queues, names=names,
                    max_tasks=min(free, MAX_LEASE_BATCH),
                    wait=self.poll_wait_s, lease_seconds=self.lease_seconds,
                )  # fmt: skip
                failures = 0
            except _TRANSIENT as exc:
                failures += 1
                delay = self.config.retry.delay_s(failures, random.random())
                log.warning("lease failed; retrying", error=str(exc) or type(exc).__name__,
                            retry_in_s=round(delay, 2))  # fmt: skip
                await trio.sleep(delay)
                continue
            for task in leased:
                # The lease response is the only one that carries the lease id (the fencing
                # token): keep it, it cannot be read back later.
                lease_id = task.lease.id if task.lease is not None else None
                if not isinstance(lease_id, str):
                    log.warning("leased task came without a lease id; skipped", task_id=task.id)
                    continue
                running = _Running(lease_id, trio.current_time())
                self._running[task.id] = running
                tasks.start_soon(self._run_task, task, running)

    def _refill_batch(self) -> int:
        """While tasks run, ask for more only once this many slots are free (or after
        REFILL_WAIT_S): a busy worker then asks for a batch, not one task per finished one."""
        return max(1, min(self.concurrency // 4, MAX_LEASE_BATCH))

    async def _gather_free_slots(self) -> None:
        with trio.move_on_after(REFILL_WAIT_S):
            while self._running and self.concurrency - len(self._running) < self._refill_batch():
                self._slot_freed = trio.Event()
                await self._slot_freed.wait()

    async def _drain(self, client: WorkerTransport, tasks: trio.Nursery) -> None:
        """Stop leasing; give running tasks the grace period, then hand them back."""
        if not self._running:
            return
        log.info("waiting for running tasks", running=len(self._running),
                 grace_period_s=self.grace_period_s)  # fmt: skip
        with trio.move_on_after(self.grace_period_s):
            while self._running:
                self._slot_freed = trio.Event()
                await self._slot_freed.wait()
        leftovers = {tid: r.lease_id for tid, r in self._running.items() if not r.lost}
        for running in self._running.values():
            running.scope.cancel()
        for task_id, lease_id in leftovers.items():
            with trio.move_on_after(5):
                try:
                    await client.release(task_id, lease_id)
                    log.info("handed back", task_id=task_id)
                except (*_TRANSIENT, Conflict, NotFound) as exc:
                    log.warning("could not hand back; its lease will expire", task_id=task_id,
                                error=str(exc))  # fmt: skip

    # -- one task --------------------------------------------------------------------------
    async def _run_task(self, task: TaskOut, running: _Running) -> None:
        outcome: AckItem | None = None
        try:
            with running.scope:
                outcome = await self._execute(task, running.lease_id)
        finally:
            del self._running[task.id]
            self._slot_freed.set()
        if running.lost or outcome is None:
            if running.lost:
                log.info("result dropped: lease lost or task cancelled", task_id=task.id)
            return
        self._acks.append(outcome)
        self._acks_ready.set()

    async def _execute(self, task: TaskOut, lease_id: str) -> AckItem:
        handler = self.handlers.get(task.name)
        if handler is None:
            return self._failed(task, lease_id, "UnknownTask",
                                f"no handler for task name {task.name!r} on worker "
                                f"{self.worker_id} (known: {sorted(self.handlers)})", None)  # fmt: skip
        with trio.move_on_after(task.timeout) as deadline:
            try:
                if inspect.iscoroutinefunction(handler):
                    result = await handler(task.payload)
                else:
                    assert self._pool is not None, "serve() made the pool"
                    result = await self._pool.run(handler, task.payload)
                _json_check(result)
            except Exception as exc:
                tb = _user_traceback(exc)
                return self._failed(task, lease_id, type(exc).__name__, str(exc) or repr(exc), tb)
            self.completed += 1
            return AckItem(id=task.id, lease_id=lease_id, status="completed", result=result)
        assert deadline.cancelled_caught
        return self._failed(task, lease_id, "TimeoutError",
                            f"handler ran past the task timeout of {task.timeout:g} s", None)  # fmt: skip

    def _failed(
        self, task: TaskOut, lease_id: str, kind: str, message: str, tb: str | None
    ) -> AckItem:
        self.failed += 1
        log.warning("task failed", task_id=task.id, name=task.name, error_type=kind, error=message)
        error = TaskErrorIn(message=message[:10_000], type=kind[:200],
                            traceback=tb[-100_000:] if tb else None)  # fmt: skip
        return AckItem(id=task.id, lease_id=lease_id, status="failed", error=error)

    async def _lease_keeper(self, client: WorkerTransport) -> None:
        """One loop for all running tasks: extend each lease once a third of it has passed;
        stop a handler whose lease the server says is gone (expired, cancelled, deleted)."""
        every_s = self.lease_seconds / 3
        while True:
            await trio.sleep(every_s / 2)
            now = trio.current_time()
            due = [
                (tid, r) for tid, r in self._running.items()
                if not r.lost and now - r.extended_at >= every_s
            ]  # fmt: skip
            if due:
                async with trio.open_nursery() as nursery:
                    for task_id, running in due:
                        nursery.start_soon(self._extend, client, task_id, running)

    async def _extend(self, client: WorkerTransport, task_id: str, running: _Running) -> None:
        try:
            await client.extend(task_id, running.lease_id, self.lease_seconds)
            running.extended_at = trio.current_time()
        except (Conflict, NotFound):
            running.lost = True
            running.scope.cancel()
        except _TRANSIENT as exc:
            log.warning("lease extension failed; will retry", task_id=task_id, error=str(exc))

    # -- results and heartbeats ----------------------------------------------------------
    async def _ack_loop(self, client: WorkerTransport) -> None:
        while True:
            if not self._acks:
                self._acks_ready = trio.Event()
                await self._acks_ready.wait()
            await self._send_acks(client)

    async def _send_acks(self, client: WorkerTransport) -> None:
        """Send what is buffered; retried until the server answers (never lost, never doubled:
        the lease id fences a resend)."""
        batch = self._acks[:500]
        failures = 0
        outcomes: list[AckOutcome] = []
        while True:
            try:
                outcomes = await client.ack(batch)
                break
            except _TRANSIENT as exc:
                failures += 1
                delay = self.config.retry.delay_s(failures, random.random())
                log.warning("ack failed; retrying", error=str(exc) or type(exc).__name__,
                            pending=len(self._acks), retry_in_s=round(delay, 2))  # fmt: skip
                await trio.sleep(delay)
            except DtqError as exc:  # the batch itself was refused (e.g. auth): drop it, say so
                if len(batch) > 1:  # e.g. too large together (413): one bad item sinks only itself
                    batch = batch[: len(batch) // 2]
                    continue
                log.error("ack rejected", error=exc.message, dropped=len(batch))
                break
        del self._acks[: len(batch)]
        for outcome in outcomes:
            if not outcome.ok:
                if failures and await self._landed_before(client, outcome.id):
                    continue  # an earlier send (maybe through a server now down) recorded it
                log.info("result not recorded", task_id=outcome.id, error=outcome.error)

    async def _landed_before(self, client: WorkerTransport, task_id: str) -> bool:
        """After a resent ack: did a send that got no answer record this worker's result?"""
        get = getattr(client, "get", None)
        if get is None:
            return False
        try:
            task = await get(task_id)
        except (*_TRANSIENT, DtqError):
            return False
        return bool(task.status in ("completed", "failed") and task.worker_id == self.worker_id)

    async def _flush_acks(self, client: WorkerTransport) -> None:
        with trio.move_on_after(max(self.grace_period_s, 5)):
            while self._acks:
                await self._send_acks(client)

    async def _heartbeat_loop(self, client: WorkerTransport) -> None:
        hostname = socket.gethostname()
        while True:
            try:
                await client.heartbeat(
                    self.worker_id, status="active", current_load=len(self._running),
                    max_capacity=self.concurrency, hostname=hostname, queues=self.queues,
                )  # fmt: skip
            except _TRANSIENT as exc:
                log.warning("heartbeat failed", error=str(exc) or type(exc).__name__)
            except DtqError as exc:
                log.error("heartbeat rejected", error=exc.message)
            await trio.sleep(self.heartbeat_interval_s)


_PLUMBING = (
    "/trio/",
    "/outcome/",
    os.sep + os.path.join("dtq", "client", "worker.py"),
    os.sep + os.path.join("dtq", "client", "_threadpool.py"),
)


def _user_traceback(exc: BaseException) -> str:
    """The traceback without trio's thread plumbing and this module's frames."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not any(part in f.filename for part in _PLUMBING)
    ]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def load_worker(spec: str) -> Worker:
    """`module:attr` -> the Worker object (for `dtq worker`)."""
    import importlib
    import sys

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:  # a one-line error from `dtq worker`
        raise ValueError(f"cannot load {spec}: {exc}") from exc
    if not isinstance(obj, Worker):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a dtq.Worker")
    return obj
