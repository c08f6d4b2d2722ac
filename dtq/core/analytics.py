"""Read-only statistics for the dashboard: totals, one row per UTC day, trends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dtq.clock import Clock
from dtq.errors import InvalidRequest
from dtq.models import Dashboard, TaskStatus, Worker, WorkerStatus
from dtq.storage.base import Store, day_number

S = TaskStatus
TREND_METRICS = ("completion_rate", "avg_duration", "error_rate")
TREND_COUNTS = ("completed", "failed")  # on every trend point, whatever the metric


@dataclass(frozen=True)
class WorkerHealth:
    worker: Worker
    healthy: bool  # active, and heard from within the worker timeout
    seconds_since_heartbeat: float


@dataclass(frozen=True)
class WorkersHealth:
    workers: list[WorkerHealth]  # every known worker
    active: int
    total_capacity: int  # of the active workers
    current_load: int  # of the active workers

    @property
    def utilization(self) -> float:
        return round(self.current_load / self.total_capacity, 4) if self.total_capacity else 0.0


@dataclass(frozen=True)
class QueueStatistics:
    """What `/metrics` reads at scrape time: the dashboard counters and the in-memory state."""

    dashboard: Dashboard
    ready_by_queue: dict[str, int]  # tasks ready to lease now, per queue (empty queues left out)
    scheduled: int  # pending tasks waiting for their run_at
    longpolls_waiting: int
    lease_expiries: int  # since the server started


class Analytics:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def dashboard(self) -> Dashboard:
        c = await self.store.counters()

        def happened(name: str) -> float:
            # what is stored plus what retention pruned (dtq.core.retention): pruning
            # changes no figure of what happened
            return c.get(name, 0) + c.get("pruned_" + name, 0)

        total = int(happened("total"))
        completed = int(happened(S.COMPLETED.value))
        n = happened("duration_n")
        return Dashboard(
            total_tasks=total,
            completed_tasks=completed,
            failed_tasks=int(happened(S.FAILED.value)),
            pending_tasks=int(c.get(S.PENDING.value, 0)),
            running_tasks=int(c.get(S.RUNNING.value, 0)),
            cancelled_tasks=int(happened(S.CANCELLED.value)),
            completion_rate=round(completed / total, 4) if total else 0.0,
            average_duration=round(happened("duration_sum") / n, 4) if n else 0.0,
            workers_active=int(c.get("workers_active", 0)),
            workers_total=int(c.get("workers_total", 0)),
        )

    async def daily(self, days: int) -> list[dict[str, Any]]:
        """One row per UTC day, oldest first, the last `days` days including today."""
        if not 1 <= days <= 365:
            raise InvalidRequest("days must be between 1 and 365", field="days")
        today = day_number(self.clock.now())
        stored = dict(await self.store.day_stats(today - days + 1, today))
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

    async def trends(self, days: int, metric: str | None) -> dict[str, Any]:
        if metric is not None and metric not in TREND_METRICS:
            raise InvalidRequest(
                f"metric must be one of {', '.join(TREND_METRICS)}",
                field="metric",
                reason=f"unknown metric {metric!r}",
            )
        rows = await self.daily(days)
        metrics = (metric,) if metric else TREND_METRICS
        return {
            "days": days,
            "metric": metric,
            # Each point also carries the day's counts the rates come from: the throughput
            # (completed + failed) and how much weight a day's rates have.
            "series": [
                {"date": r["date"], **{m: r[m] for m in metrics}, **{c: r[c] for c in TREND_COUNTS}}
                for r in rows
            ],
        }

    async def storage_problem(self) -> str | None:
        """Why storage cannot answer a read now, or None when it can."""
        try:
            await self.store.counters()
        except Exception as exc:  # any storage fault means "not ready", never a crash
            return f"storage: {exc}"
        return None

    async def workers_health(self, worker_timeout_s: float) -> WorkersHealth:
        """Every known worker with its health, and the active workers' capacity and load."""
        workers, _ = await self.store.list_workers(None, 0, 1_000_000)
        now = self.clock.now()
        rows = []
        for w in workers:
            age = max(now - w.last_heartbeat, 0.0)
            healthy = w.status == WorkerStatus.ACTIVE and age < worker_timeout_s
            rows.append(WorkerHealth(w, healthy, age))
        active = [w for w in workers if w.status == WorkerStatus.ACTIVE]
        return WorkersHealth(
            workers=rows,
            active=len(active),
            total_capacity=sum(w.max_capacity for w in active),
            current_load=sum(w.current_load for w in active),
        )

    def pending_run_at(self) -> Iterator[tuple[str, float | None]]:
        """(task id, run_at) of every pending task, in storage order."""
        for row in self.store.iter_pending():
            yield row.task_id, row.run_at
