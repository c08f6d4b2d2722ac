"""How records map to the PostgreSQL rows (see migrations/0001_init.sql): the columns kept
beside each encoded record, computed here once so writes and reads agree."""

from __future__ import annotations

from typing import Any

from dtq.models import Task
from dtq.storage import codec

TASK_COLUMNS = (
    "id, seq, status, queue, name, priority_rank, worker_id, tags, created_us, updated_us,"
    " dur_us, completed_us, ready_at, run_at, lease_expires_at, concurrency_key, data"
)
TASK_VALUES = ", ".join(["%s"] * 17)


def us(t: float) -> int:
    """Whole microseconds, rounded down (the orders' unit, as LMDB's keys)."""
    return int(t * 1_000_000)


def key(text: str) -> bytes:
    """A user-named key as stored: its UTF-8 (any text, NUL too; byte order)."""
    return text.encode()


def task_row(task: Task) -> tuple[Any, ...]:
    d = task.duration
    return (
        task.id,  # text: PostgreSQL casts it to the uuid column
        task.seq,
        str(task.status),
        task.queue,
        key(task.name),
        task.priority.rank,
        None if task.worker_id is None else key(task.worker_id),
        [key(t) for t in task.tags],
        us(task.created_at),
        us(task.updated_at),
        None if d is None else max(us(d), 0),
        None if task.completed_at is None else us(task.completed_at),
        task.ready_at or task.created_at,
        task.run_at,
        task.lease.expires_at if task.lease is not None else None,
        task.concurrency_key,
        codec.encode(task),
    )


def decode_task(data: Any) -> Task:
    return codec.decode_task(bytes(data))
