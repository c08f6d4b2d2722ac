"""The API's output shapes, shared by the server (encoding) and the client (decoding).

Times are ISO 8601 UTC strings ending in `Z`, as on the wire.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import UNSET, Meta, Struct, UnsetType


class ErrorOut(Struct):
    message: str
    type: str
    traceback: str | None = None


LeaseId = Annotated[
    str,
    Meta(
        description="The fencing token. Present only in the lease response "
        "(`POST /api/v1/tasks/lease`), to the worker that took the lease; everywhere else "
        "(task reads, lists, events, webhooks) it is left out."
    ),
]


class LeaseOut(Struct, kw_only=True):
    """A running task's lease."""

    id: LeaseId | UnsetType = UNSET
    worker_id: str
    expires_at: str | None


class TaskOut(Struct):
    id: str
    name: str
    description: str | None
    status: str
    priority: str
    queue: str
    payload: Any
    result: Any
    error: ErrorOut | None
    retry_count: int
    attempts: int
    timeout: float
    worker_id: str | None
    lease: LeaseOut | None
    tags: list[str]
    idempotency_key: str | None
    run_at: str | None
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    completed_at: str | None
    duration: float | None
    deliveries: Annotated[
        int,
        Meta(
            description="How many times the task was leased, lost and handed-back leases "
            "included. A lease that runs out without a result puts the task back without "
            "using a retry; after DTQ_MAX_DELIVERIES such leases the task fails with "
            "error type `lease_expired`."
        ),
    ] = 0
    concurrency_key: str | None = None


class WorkerOut(Struct):
    worker_id: str
    status: str
    current_load: int
    max_capacity: int
    last_heartbeat: str | None
    registered_at: str | None
    hostname: str | None
    queues: list[str]
    tasks_completed: int
    tasks_failed: int
