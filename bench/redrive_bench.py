"""Redrive, purge and retention pruning of many finished tasks, in process (TaskQueue over
LMDB, fsync), with a writer of single creates running beside them to show they never stall it.

    python bench/redrive_bench.py [--tasks 100000]

Figures:
  retry      POST /tasks/retry's core: every failed task of a queue back to pending, tasks/s
  purge      POST /tasks/purge's core: every failed task deleted (with its events), tasks/s
  prune      retention: completed tasks past their retention removed, tasks/s
  stall      the median and longest wait of single creates committed meanwhile (ms)
Each stored task carries three history events (created, leased, failed/completed), as real ones do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from typing import Any

import trio

from dtq.core import redrive, retention
from dtq.core.service import TaskQueue
from dtq.models import Task, TaskCreate, TaskEvent, TaskEventKind, TaskFilter, TaskStatus
from dtq.server import open_queue
from dtq.settings import Settings

S = TaskStatus
E = TaskEventKind


async def fill(q: TaskQueue, n: int, status: S, finished_at: float) -> None:
    """n finished tasks (as their life would have left them), 5,000 per commit."""
    for start in range(0, n, 5000):

        def op(tx: Any, start: int = start) -> None:
            for i in range(start, min(start + 5000, n)):
                seq = tx.next_seq()
                task = Task(
                    id=str(uuid.uuid4()), name="job", description=None,
                    priority="medium", status=status, queue="bulk", payload={"i": i},
                    retry_count=0, timeout=60.0, created_at=finished_at - 10,
                    updated_at=finished_at, seq=seq, attempts=1, completed_at=finished_at,
                    duration=1.0, worker_id="w1",
                )  # fmt: skip
                tx.insert_task(task)
                end = E.COMPLETED if status == S.COMPLETED else E.FAILED
                for kind in (E.CREATED, E.LEASED, end):
                    tx.append_task_event(task.id, TaskEvent(at=finished_at, event=kind, attempt=1))

        await q.store.write(op)


async def timed_with_writer(q: TaskQueue, work: Any) -> tuple[float, Any, tuple[float, float], int]:
    """(seconds, result, (median, longest) single-create wait in s, creates done) of `work()`
    while one caller creates tasks one by one."""
    waits: list[float] = []
    done = trio.Event()

    async def writer() -> None:
        while not done.is_set():
            t = time.perf_counter()
            await q.create(TaskCreate(name="beside", queue="other"))
            waits.append(time.perf_counter() - t)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        t0 = time.perf_counter()
        result = await work()
        elapsed = time.perf_counter() - t0
        done.set()
    waits.sort()
    median = waits[len(waits) // 2] if waits else 0.0
    return elapsed, result, (median, max(waits, default=0.0)), len(waits)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp, retention_completed_s=0, retention_failed_s=0,
                            map_size_bytes=2 << 30)  # fmt: skip
        async with open_queue(settings) as q:
            now = q.clock.now()
            rows = []
            await fill(q, n, S.FAILED, now - 3600)
            f = TaskFilter(status=S.FAILED, queue="bulk")
            secs, res, stall, creates = await timed_with_writer(
                q, lambda: redrive.retry_matching(q, f)
            )
            assert res.affected == n, res
            rows.append(("retry", n, secs, stall, creates))
            # back to failed for the purge: the same tasks, failed again
            while batch := await q.lease(_lease(), holder=None):
                await q.ack([_fail(t) for t in batch])
            secs, res, stall, creates = await timed_with_writer(
                q, lambda: redrive.purge_matching(q, f)
            )
            assert res.affected == n, res
            rows.append(("purge", n, secs, stall, creates))
            await fill(q, n, S.COMPLETED, now - 8 * 86400)
            q.settings = Settings(data_dir=tmp, retention_completed_s=7 * 86400.0,
                                  retention_failed_s=0)  # fmt: skip
            secs, pruned, stall, creates = await timed_with_writer(
                q, lambda: retention.prune_due(q)
            )
            assert pruned == n, pruned
            rows.append(("prune", n, secs, stall, creates))
            print(f"{'what':<8}{'tasks':>9}{'seconds':>9}{'tasks/s':>10}"
                  f"{'create wait p50 / max (ms)':>28}{'creates meanwhile':>19}")  # fmt: skip
            for what, count, secs, (p50, top), creates in rows:
                waits = f"{p50 * 1000:.1f} / {top * 1000:.1f}"
                print(f"{what:<8}{count:>9,}{secs:>9.2f}{count / secs:>10,.0f}"
                      f"{waits:>28}{creates:>19,}")  # fmt: skip


def _lease() -> Any:
    from dtq.models import LeaseRequest

    return LeaseRequest(worker_id="bench", queues=["bulk"], max_tasks=100, wait=0)


def _fail(task: Task) -> Any:
    from dtq.models import AckItem

    assert task.lease is not None
    return AckItem(id=task.id, lease_id=task.lease.id, status="failed", error="again", retry=False)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    trio.run(main, ap.parse_args().tasks)
