"""What the API returns: output structs (documented in OpenAPI) and converters from the core."""

from __future__ import annotations

from msgspec import UNSET

from dtq.messages import ErrorOut, LeaseOut, TaskOut, WorkerOut
from dtq.models import Task, Worker
from dtq.net.envelope import iso

__all__ = ["LeaseOut", "TaskOut", "WorkerOut", "task_out", "worker_out"]


def task_out(t: Task, *, lease_id: bool = False) -> TaskOut:
    """The task as the API shows it. The lease id is a secret of the lease's holder: only the
    lease response passes `lease_id=True`; every other view (reads, lists, events, webhooks)
    shows who holds the lease and until when, never its id."""
    lease = t.lease
    return TaskOut(
        id=t.id,
        name=t.name,
        description=t.description,
        status=t.status.value,
        priority=t.priority.value,
        queue=t.queue,
        payload=t.payload,
        result=t.result,
        error=ErrorOut(t.error.message, t.error.type, t.error.traceback) if t.error else None,
        retry_count=t.retry_count,
        attempts=t.attempts,
        timeout=t.timeout,
        worker_id=t.worker_id,
        lease=LeaseOut(
            id=lease.id if lease_id else UNSET,
            worker_id=lease.worker_id,
            expires_at=iso(lease.expires_at),
        )
        if lease
        else None,
        tags=t.tags,
        idempotency_key=t.idempotency_key,
        run_at=iso(t.run_at),
        created_at=iso(t.created_at),
        updated_at=iso(t.updated_at),
        started_at=iso(t.started_at),
        completed_at=iso(t.completed_at),
        duration=t.duration,
        deliveries=t.deliveries,
        concurrency_key=t.concurrency_key,
    )


def worker_out(w: Worker) -> WorkerOut:
    return WorkerOut(
        worker_id=w.worker_id,
        status=w.status.value,
        current_load=w.current_load,
        max_capacity=w.max_capacity,
        last_heartbeat=iso(w.last_heartbeat),
        registered_at=iso(w.registered_at),
        hostname=w.hostname,
        queues=w.queues,
        tasks_completed=w.tasks_completed,
        tasks_failed=w.tasks_failed,
    )
