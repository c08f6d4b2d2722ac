"""A task's history: one `TaskEvent` per transition, appended by the op that makes it.

Pure glue over `StoreTxn.append_task_event` (one put per transition), so the event commits
or rolls back with the change it describes.
"""

from __future__ import annotations

from typing import Any

from dtq.models import SYSTEM_ACTOR, Task, TaskError, TaskEvent, TaskEventKind
from dtq.storage.base import StoreTxn

E = TaskEventKind


def record(
    tx: StoreTxn,
    kind: TaskEventKind,
    task: Task,
    actor: str | None = SYSTEM_ACTOR,
    *,
    attempt: int | None = None,
    worker_id: str | None = None,
    lease_id: str | None = None,
    error: TaskError | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    tx.append_task_event(
        task.id,
        TaskEvent(
            at=tx.now,
            event=kind,
            attempt=task.attempts if attempt is None else attempt,
            worker_id=worker_id,
            actor=actor or SYSTEM_ACTOR,
            lease_id=lease_id,
            error=error,
            details=details,
        ),
    )


def record_lease_end(
    tx: StoreTxn, kind: TaskEventKind, old: Task, new: Task, actor: str | None
) -> None:
    """An attempt ended (completed, failed, retry scheduled, released, expired, timed out):
    the event names the attempt and lease that ended, and what the task became."""
    details: dict[str, Any] = {"status": new.status.value}
    if new.run_at is not None and new.status == "pending":
        details["run_at"] = new.run_at
    record(
        tx,
        kind,
        old,
        actor,
        worker_id=old.worker_id,
        lease_id=old.lease.id if old.lease else None,
        error=new.error if kind != E.COMPLETED and kind != E.RELEASED else None,
        details=details,
    )
