"""Counter and per-day changes of one operation: merged into its commit only if it succeeds."""

from __future__ import annotations

from dtq.models import DayStats, Task, TaskStatus, Worker, WorkerStatus
from dtq.storage.base import day_number, queue_counter


class Deltas:
    """Counter and per-day changes made by one operation, merged into the batch on success."""

    __slots__ = ("counters", "days")

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.days: dict[int, dict[str, float]] = {}

    def add(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def day(self, t: float, name: str, n: float = 1) -> None:
        d = self.days.setdefault(day_number(t), {})
        d[name] = d.get(name, 0) + n

    def task_status(self, queue: str, status: str, n: int) -> None:
        """A task of `queue` entered (n=1) or left (n=-1) `status`: the status counter and
        the queue's own one follow."""
        self.add(status, n)
        self.add(queue_counter(queue, status), n)

    def task_removed(self, task: Task) -> None:
        """A stored task is gone (deleted or pruned): the total, its status and, for a
        completed one, the duration figures no longer count it."""
        self.add("total", -1)
        self.task_status(task.queue, task.status, -1)
        if task.status == TaskStatus.COMPLETED and task.duration is not None:
            self.add("duration_sum", -task.duration)
            self.add("duration_n", -1)

    def worker_changed(self, old: Worker | None, new: Worker) -> None:
        """The dashboard's worker counters follow a worker record's insert or status change."""
        if old is None:
            self.add("workers_total")
        was_active = old is not None and old.status == WorkerStatus.ACTIVE
        is_active = new.status == WorkerStatus.ACTIVE
        if was_active != is_active:
            self.add("workers_active", 1 if is_active else -1)

    def merge(self, other: Deltas) -> None:
        for k, v in other.counters.items():
            self.add(k, v)
        for day, fields in other.days.items():
            mine = self.days.setdefault(day, {})
            for k, v in fields.items():
                mine[k] = mine.get(k, 0) + v


def apply_counters(counters: dict[str, float], d: Deltas) -> None:
    for k, v in d.counters.items():
        counters[k] = counters.get(k, 0) + v


def apply_day(stats: DayStats, fields: dict[str, float]) -> None:
    for k, v in fields.items():
        setattr(stats, k, getattr(stats, k) + v)
