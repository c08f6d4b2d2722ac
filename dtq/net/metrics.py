"""Prometheus metrics: `GET /metrics` in the text exposition format (prometheus-client).

Two kinds of metric, so nothing is kept twice:

- **state** (tasks by status, ready depth, scheduled tasks, leases held, long-polls waiting,
  workers, lease expiries) is read when scraped, by `StateCollector`, from
  `TaskQueue.statistics()`;
- **events** are counted as they happen, by hooks `open_services` registers:
  `Metrics.on_task` (a task listener: task events, retries, task duration, queue wait),
  `Metrics.on_commit` (a writer commit hook: batch size, commit latency),
  `Metrics.observe_request` (the app's after-request hook) and `Metrics.webhook_delivery`.

Every app has its own `CollectorRegistry`, never the global one. Queue names are user input, so
at most `max_queues` distinct queue label values are kept; any later queue is counted under
the label `(other)`, which no queue name can spell.

Queue wait (`dtq_task_queue_wait_seconds`) is observed when a task is leased: the lease's start
minus the moment the task last became ready to run, which is its `run_at` when it was created
with a delay, its creation otherwise, and after a retry or a release the moment it went back to
pending (or the retry's backoff `run_at`). Edits while pending do not restart the wait. The ready
moment is remembered only where it differs from `created_at`, so plain tasks cost nothing. After a
restart, delayed and backed-off tasks are primed from the pending index; a task retried before the
restart without a backoff has no known ready moment and is not observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from dtq import __version__
from dtq.core.analytics import QueueStatistics
from dtq.core.service import TaskQueue
from dtq.models import Task

PATH = "/metrics"
OTHER_QUEUE = "(other)"  # parentheses are not allowed in queue names
UNMATCHED_ROUTE = "(unmatched)"  # 404/405: the path is not a label value (unbounded)
OTHER_METHOD = "(other)"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
TASK_SECONDS_BUCKETS = (
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    3 * 3600.0, 12 * 3600.0, 86400.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(13))  # 1 .. 4096 (the writer's max batch)
COMMIT_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
CHECKPOINT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0)  # fmt: skip


class _QueueSeries:
    """The label children of one queue, made once so an event costs a dict lookup."""

    __slots__ = ("duration", "events", "label", "retries", "wait")

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.label = label
        self.events = _LazyChildren(metrics.task_events, label)
        self.retries = metrics.task_retries.labels(label)
        self.duration = metrics.task_duration.labels(label)
        self.wait = metrics.queue_wait.labels(label)


class _LazyChildren(dict[str, Any]):
    """event kind -> counter child for one queue, created on first use."""

    def __init__(self, counter: Counter, queue: str) -> None:
        super().__init__()
        self._counter = counter
        self._queue = queue

    def __missing__(self, kind: str) -> Any:
        child = self[kind] = self._counter.labels(kind.removeprefix("task."), self._queue)
        return child


class ReadySince:
    """When each pending task last became ready, where that is not its `created_at`.

    Pure bookkeeping over task events; `wait(task)` is the queue wait of a just-leased task.
    """

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._since)

    def prime(self, pending: Iterable[tuple[str, float | None]]) -> None:
        """(task id, run_at) of the tasks pending at start-up."""
        for task_id, run_at in pending:
            if run_at is not None:
                self._since[task_id] = run_at

    def became_ready(self, task: Task) -> None:
        """Created with a delay, retried or released."""
        since = task.run_at if task.run_at is not None else task.updated_at
        if since != task.created_at:
            self._since[task.id] = since

    def forget(self, task_id: str) -> None:
        self._since.pop(task_id, None)

    def wait(self, task: Task) -> float | None:
        """Seconds from ready to leased, or None when the ready moment is unknown."""
        since = self._since.pop(task.id, None)
        if since is None:
            if task.attempts > 1:
                return None  # retried before a restart: not known when it became ready again
            since = task.created_at
        started = task.started_at if task.started_at is not None else task.updated_at
        return max(started - since, 0.0)


class StateCollector(Collector):
    """Gauges derived from the queue's state, read at scrape time."""

    def __init__(self, queue: TaskQueue, metrics: Metrics) -> None:
        self._queue = queue
        self._metrics = metrics
        # read (storage is async) just before each scrape: `Metrics.render` / `exposition`
        self.statistics: QueueStatistics | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.statistics
        if stats is None:  # not scraped through render/exposition
            return
        d = stats.dashboard
        tasks = GaugeMetricFamily(
            "dtq_tasks", "Tasks stored, by status (pending includes scheduled).", labels=["status"]
        )
        for status, value in (
            ("pending", d.pending_tasks),
            ("running", d.running_tasks),
            ("completed", d.completed_tasks),
            ("failed", d.failed_tasks),
            ("cancelled", d.cancelled_tasks),
        ):
            tasks.add_metric([status], value)
        yield tasks
        ready = GaugeMetricFamily(
            "dtq_ready_tasks", "Tasks ready to be leased now, by queue.", labels=["queue"]
        )
        for queue, depth in sorted(self._metrics.ready_depth(stats.ready_by_queue).items()):
            ready.add_metric([queue], depth)
        yield ready
        yield GaugeMetricFamily(
            "dtq_scheduled_tasks",
            "Pending tasks waiting for their run_at (delay or retry backoff).",
            value=stats.scheduled,
        )
        yield GaugeMetricFamily(
            "dtq_leases_held", "Leases currently held (running tasks).", value=d.running_tasks
        )
        yield CounterMetricFamily(
            "dtq_lease_expiries",
            "Leases that ran out without a result, since the server started.",
            value=stats.lease_expiries,
        )
        yield GaugeMetricFamily(
            "dtq_longpolls_waiting",
            "Lease requests waiting in a long poll.",
            value=stats.longpolls_waiting,
        )
        workers = GaugeMetricFamily("dtq_workers", "Known workers, by status.", labels=["status"])
        workers.add_metric(["active"], d.workers_active)
        workers.add_metric(["inactive"], max(d.workers_total - d.workers_active, 0))
        yield workers


class Metrics:
    """The server's metrics: one registry, its collectors, and the hooks that feed them."""

    def __init__(self, queue: TaskQueue, *, max_queues: int = 1000) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._max_queues = max_queues
        self._queues: dict[str, _QueueSeries] = {}  # queue name -> its series (capped)
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._webhooks: dict[str, Any] = {}
        self.ready_since = ReadySince()
        self.ready_since.prime(queue.pending_run_at())

        Info("dtq_build", "The dtq server's version.", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._state = StateCollector(queue, self)
        r.register(self._state)
        self.task_events = Counter(
            "dtq_task_events", "Durable task state changes, by event and queue.",
            ["event", "queue"], registry=r,
        )  # fmt: skip
        self.task_retries = Counter(
            "dtq_task_retries", "Failed or expired attempts put back to pending, by queue.",
            ["queue"], registry=r,
        )  # fmt: skip
        self.task_duration = Histogram(
            "dtq_task_duration_seconds", "Run time of completed tasks' last attempt, by queue.",
            ["queue"], buckets=TASK_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "dtq_task_queue_wait_seconds",
            "Time from a task becoming ready (created, run_at reached, retried or released) to "
            "being leased, by queue.",
            ["queue"], buckets=TASK_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "dtq_http_requests", "HTTP requests, by route pattern, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_duration = Histogram(
            "dtq_http_request_duration_seconds",
            "Time to produce the response (long polls included), by route pattern and method.",
            ["route", "method"], buckets=HTTP_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_batch = Histogram(
            "dtq_writer_commit_batch_size", "Write operations per group commit.",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_duration = Histogram(
            "dtq_writer_commit_duration_seconds",
            "Time of one group commit (transaction and fsync).",
            buckets=COMMIT_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.webhook_deliveries = Counter(
            "dtq_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.checkpoints = Counter(
            "dtq_storage_checkpoints",
            "Checkpoints of the LMDB store (its data file synced behind the write-ahead log), "
            "by outcome (ok, failed).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.checkpoint_duration = Histogram(
            "dtq_storage_checkpoint_duration_seconds",
            "Time of one checkpoint's sync of the LMDB data file and its record.",
            buckets=CHECKPOINT_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip

    # -- hooks (called on the trio thread; they must never raise) --------------------------
    def on_task(self, kind: str, task: Task) -> None:
        """A `TaskQueue.task_listeners` entry."""
        series = self._queues.get(task.queue) or self._series(task.queue)
        series.events[kind].inc()
        if kind == "task.leased":
            wait = self.ready_since.wait(task)
            if wait is not None:
                series.wait.observe(wait)
        elif kind == "task.completed":
            if task.duration is not None:
                series.duration.observe(task.duration)
        elif kind == "task.retried":
            series.retries.inc()
            self.ready_since.became_ready(task)
        elif kind in ("task.released", "task.created"):
            self.ready_since.became_ready(task)
        elif kind in ("task.cancelled", "task.deleted"):
            self.ready_since.forget(task.id)

    def on_commit(self, batch_size: int, seconds: float) -> None:
        """A `GroupCommitWriter.commit_hooks` entry."""
        self.commit_batch.observe(batch_size)
        self.commit_duration.observe(seconds)

    def on_checkpoint(self, ok: bool, seconds: float) -> None:
        """A `GroupCommitWriter.checkpoint_hooks` entry (the LMDB store only)."""
        self.checkpoints.labels("ok" if ok else "failed").inc()
        if ok:
            self.checkpoint_duration.observe(seconds)

    def observe_request(self, route: str | None, method: str, status: int, seconds: float) -> None:
        """One finished HTTP request; `route` is the URL rule (None when nothing matched)."""
        if method not in _METHODS:
            method = OTHER_METHOD
        key = (route or UNMATCHED_ROUTE, method, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = (
                self.http_requests.labels(key[0], method, str(status)),
                self.http_duration.labels(key[0], method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def webhook_delivery(self, outcome: str) -> None:
        """Count one webhook delivery attempt, e.g. outcome "delivered", "retrying", "failed"."""
        child = self._webhooks.get(outcome)
        if child is None:
            child = self._webhooks[outcome] = self.webhook_deliveries.labels(outcome)
        child.inc()

    # -- queue labels ------------------------------------------------------------------------
    def _series(self, queue: str) -> _QueueSeries:
        if len(self._queues) < self._max_queues:
            series = self._queues[queue] = _QueueSeries(self, queue)
            return series
        other = self._queues.get(OTHER_QUEUE)
        if other is None:  # the one series past the cap; it is kept like a queue of its own
            other = self._queues[OTHER_QUEUE] = _QueueSeries(self, OTHER_QUEUE)
        return other

    def ready_depth(self, by_queue: dict[str, int]) -> dict[str, int]:
        """Ready tasks by queue label; a queue seen before and now empty shows 0."""
        depth = dict.fromkeys(self._queues, 0)  # keys are labels: names, or OTHER_QUEUE
        for queue, count in by_queue.items():
            label = (self._queues.get(queue) or self._series(queue)).label
            depth[label] = depth.get(label, 0) + count
        return depth

    # -- exposition --------------------------------------------------------------------------
    async def render(self) -> bytes:
        """The Prometheus text format (0.0.4)."""
        self._state.statistics = await self._state._queue.statistics()
        return generate_latest(self.registry)

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) for the request's `Accept` header, as prometheus-client does:
        OpenMetrics when asked for, else the text format."""
        self._state.statistics = await self._state._queue.statistics()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
