"""The API's output shapes, shared by the server (encoding) and the client (decoding).

Times are ISO 8601 UTC strings ending in `Z`, as on the wire.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class ErrorOut(Struct):
    message: str
    type: str
    traceback: str | None = None


class LeaseOut(Struct):
    id: str
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
