"""Why a task is (not) running: pure logic over facts the service gathers from live state.

Each reason is a dict with `code` and `message`, plus the figures it is about, so a person
reads the message and a script reads the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgspec import Struct

from dtq.models import QueueConfig, Task, TaskStatus

S = TaskStatus


class Explanation(Struct):
    status: TaskStatus
    runnable: bool
    reasons: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Facts:
    """What the live state says about the task's queue and its place in it."""

    now: float
    config: QueueConfig | None
    running_in_queue: int
    running_for_key: int
    next_token_at: float | None  # None: no rate limit, or a token is there now
    queue_polled: bool  # a worker asked for this queue (or any queue) recently
    name_polled: bool  # a worker asked for this name (or any name) recently
    position: int | None  # ready tasks of the queue ahead of it (None: not in line)


def _reason(code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **fields}


def explain(task: Task, facts: Facts) -> Explanation:
    if task.status.is_final:
        return Explanation(task.status, False, [_reason(
            "finished", f"the task is {task.status.value}",
            completed_at=task.completed_at,
        )])  # fmt: skip
    if task.status == S.RUNNING:
        lease = task.lease
        return Explanation(task.status, False, [_reason(
            "running", f"worker {task.worker_id} holds its lease",
            worker_id=task.worker_id, lease_expires_at=lease.expires_at if lease else None,
        )])  # fmt: skip
    reasons: list[dict[str, Any]] = []
    waiting_for_time = task.run_at is not None and task.run_at > facts.now
    if waiting_for_time:
        assert task.run_at is not None
        if task.attempts > 0 and task.error is not None:
            reasons.append(_reason(
                "retry_backoff", "waiting before its next retry", until=task.run_at,
            ))  # fmt: skip
        else:
            reasons.append(_reason("scheduled", "scheduled for later", run_at=task.run_at))
    config = facts.config
    if config is not None:
        if config.paused:
            reasons.append(_reason("queue_paused", f"queue {task.queue!r} is paused"))
        limit = config.concurrency_limit
        if limit is not None and facts.running_in_queue >= limit:
            reasons.append(_reason(
                "queue_concurrency_limit",
                f"{facts.running_in_queue} of at most {limit} tasks of the queue are running",
                running=facts.running_in_queue, limit=limit,
            ))  # fmt: skip
        per_key = config.concurrency_limit_per_key
        key = task.concurrency_key
        if key is not None and per_key is not None and facts.running_for_key >= per_key:
            reasons.append(_reason(
                "key_concurrency_limit",
                f"{facts.running_for_key} of at most {per_key} tasks with key {key!r} are "
                "running",
                concurrency_key=key, running=facts.running_for_key, limit=per_key,
            ))  # fmt: skip
        if config.rate_limit_per_second is not None and facts.next_token_at is not None:
            reasons.append(_reason(
                "queue_rate_limit",
                f"the queue starts at most {config.rate_limit_per_second:g} tasks per second",
                rate_limit_per_second=config.rate_limit_per_second,
                next_at=facts.next_token_at,
            ))  # fmt: skip
    if not facts.queue_polled:
        reasons.append(_reason(
            "no_worker_polling", f"no worker asked for queue {task.queue!r} recently",
            queue=task.queue,
        ))  # fmt: skip
    elif not facts.name_polled:
        reasons.append(_reason(
            "no_worker_polling", f"no worker asked for tasks named {task.name!r} recently",
            name=task.name,
        ))  # fmt: skip
    if facts.position:
        reasons.append(_reason(
            "position", f"{facts.position} ready tasks are ahead of it", ahead=facts.position,
        ))  # fmt: skip
    blocking = {"scheduled", "retry_backoff", "queue_paused", "queue_concurrency_limit",
                "key_concurrency_limit", "queue_rate_limit"}  # fmt: skip
    runnable = not any(r["code"] in blocking for r in reasons)
    return Explanation(task.status, runnable, reasons)
