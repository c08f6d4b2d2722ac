"""Start-up: the in-memory structures (ready queues, schedule, lease and worker deadlines)
rebuilt from storage. Running tasks keep their expiry."""

from __future__ import annotations

import gc

from dtq.core.deadlines import Deadlines
from dtq.core.dispatcher import Dispatcher, Entry
from dtq.models import Worker
from dtq.storage.base import Store


def rebuild(
    store: Store,
    workers: list[Worker],
    dispatcher: Dispatcher,
    deadlines: Deadlines,
    active_workers: set[str],
    now: float,
    worker_timeout_s: float,
) -> int:
    """Fill `dispatcher`, `deadlines` and `active_workers` (from the active `workers`);
    returns how many tasks are live."""
    count = 0
    ready: list[Entry] = []
    scheduled: list[tuple[float, Entry]] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a million new objects would trigger many useless collections
    try:
        for row in store.iter_pending():
            entry = Entry(
                row.task_id, row.queue, row.rank, row.seq, row.name, row.ready_at,
                row.concurrency_key,
            )  # fmt: skip
            if row.run_at is not None and row.run_at > now:
                scheduled.append((row.run_at, entry))
            else:
                ready.append(entry)
        count = len(ready) + len(scheduled)
        dispatcher.load(ready, scheduled)  # in the order they were live
    finally:
        if gc_was_enabled:
            gc.enable()
    if count > 100_000:
        # Long-lived: keep the cyclic collector from rescanning them (long pauses at 1M).
        gc.freeze()
    # Leases already running hold their queue-limit slots (before any new lease is granted).
    for task_id, queue, key in store.iter_running():
        dispatcher.started(task_id, queue, key)
    active_workers.update(worker.worker_id for worker in workers)
    count += deadlines.load(
        store.iter_leases(),
        [(worker.last_heartbeat + worker_timeout_s, worker.worker_id) for worker in workers],
    )
    return count
