"""When the reaper has something to do: lease expiries, silent workers, orphaned grants.

Pure bookkeeping, no trio and no clock of its own: every question takes `now`. Schedule
deadlines (tasks with a `run_at`) live in the dispatcher, beside the ready queues they feed;
`next_at(scheduled_at)` folds them in.

Both heaps are lazy: a lease that finished, or was extended, stays in the heap until its old
expiry and is dropped then because it no longer matches the task's live lease (no storage read).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import NamedTuple


class Due(NamedTuple):
    """What `due(now)` takes out: each list is the reaper's job for one write."""

    orphans: list[tuple[str, str]]  # (task id, lease id) granted to a long poll that had gone
    leases: list[tuple[str, str]]  # (task id, lease id) whose lease ran out
    workers: list[str]  # worker ids silent past their deadline


class Deadlines:
    def __init__(self) -> None:
        self._leases: list[tuple[float, str, str]] = []  # (expires_at, task id, lease id), lazy
        # The live lease of each running task: heap entries that no longer match it (completed,
        # extended, cancelled...) are dropped without a storage read.
        self._live_leases: dict[str, tuple[float, str]] = {}
        self._orphaned: list[tuple[str, str]] = []  # (task id, lease id) granted to no one
        self._workers: list[tuple[float, str]] = []  # (silent-by, worker id), lazy

    # -- start-up -------------------------------------------------------------------------
    def load(
        self, leases: Iterable[tuple[float, str, str]], workers: Iterable[tuple[float, str]]
    ) -> int:
        """Fill from storage (expires_at, task id, lease id) and (silent-by, worker id) rows;
        returns how many leases."""
        count = 0
        for expires_at, task_id, lease_id in leases:
            self._leases.append((expires_at, task_id, lease_id))
            self._live_leases[task_id] = (expires_at, lease_id)
            count += 1
        heapq.heapify(self._leases)
        self._workers.extend(workers)
        heapq.heapify(self._workers)
        return count

    # -- leases ---------------------------------------------------------------------------
    def track_lease(self, task_id: str, lease_id: str, expires_at: float) -> bool:
        """Plan the expiry of a task's (new or extended) lease. True when it is now the
        earliest lease deadline (the reaper must re-plan)."""
        item = (expires_at, task_id, lease_id)
        self._live_leases[task_id] = (expires_at, lease_id)
        earlier = not self._leases or item < self._leases[0]
        heapq.heappush(self._leases, item)
        if len(self._leases) > 4 * len(self._live_leases) + 10_000:
            # Finished leases linger in the heap until their old expiry: compact (amortised).
            self._leases = [(exp, tid, lid) for tid, (exp, lid) in self._live_leases.items()]
            heapq.heapify(self._leases)
        return earlier

    def drop_lease(self, task_id: str) -> None:
        """The task no longer runs under a lease (finished, released, cancelled, deleted)."""
        self._live_leases.pop(task_id, None)

    def live_lease_tasks(self) -> list[str]:
        """The ids of the tasks that hold a live lease."""
        return list(self._live_leases)

    def lease_plan_size(self) -> int:
        """Entries in the lease heap, stale ones included (bounded by compaction)."""
        return len(self._leases)

    def due_leases(self, now: float) -> list[tuple[str, str]]:
        """Take out the live leases that ran out by `now`."""
        due: list[tuple[str, str]] = []
        while self._leases and self._leases[0][0] <= now:
            expires_at, task_id, lease_id = heapq.heappop(self._leases)
            if self._live_leases.get(task_id) == (expires_at, lease_id):
                due.append((task_id, lease_id))
        return due

    def retry_leases(self, leases: Iterable[tuple[str, str]], now: float) -> None:
        """Put back leases taken out by `due_leases` that could not be expired yet."""
        for task_id, lease_id in leases:
            heapq.heappush(self._leases, (now, task_id, lease_id))

    # -- orphans --------------------------------------------------------------------------
    def add_orphan(self, task_id: str, lease_id: str) -> None:
        """A lease granted to a long poll that ended before returning it: due at once."""
        self._orphaned.append((task_id, lease_id))

    def take_orphans(self) -> list[tuple[str, str]]:
        orphans, self._orphaned = self._orphaned, []
        return orphans

    def retry_orphans(self, orphans: Iterable[tuple[str, str]]) -> None:
        self._orphaned.extend(orphans)

    # -- workers --------------------------------------------------------------------------
    def track_worker(self, worker_id: str, silent_by: float) -> bool:
        """Plan when an active worker counts as gone. True when it is now the earliest."""
        earlier = not self._workers or silent_by < self._workers[0][0]
        heapq.heappush(self._workers, (silent_by, worker_id))
        return earlier

    def due_workers(self, now: float) -> list[str]:
        """Take out the workers whose deadline passed by `now` (the write checks whether a
        heartbeat came meanwhile)."""
        silent: list[str] = []
        while self._workers and self._workers[0][0] <= now:
            silent.append(heapq.heappop(self._workers)[1])
        return silent

    def retry_workers(self, worker_ids: Iterable[str], now: float) -> None:
        for worker_id in worker_ids:
            heapq.heappush(self._workers, (now, worker_id))

    # -- planning -------------------------------------------------------------------------
    def due(self, now: float) -> Due:
        """Everything due by `now`, taken out at once."""
        return Due(self.take_orphans(), self.due_leases(now), self.due_workers(now))

    def next_at(self, scheduled_at: float | None = None) -> float | None:
        """The earliest deadline, `scheduled_at` (the dispatcher's next run_at) included;
        None when nothing is planned. Orphans are handled on the reaper's next pass."""
        times = [
            t
            for t in (
                scheduled_at,
                self._leases[0][0] if self._leases else None,
                self._workers[0][0] if self._workers else None,
            )
            if t is not None
        ]
        return min(times) if times else None
