"""The one list of event kinds: what the event bus (/ws/tasks) publishes and what webhooks
subscribe to. Both sides take the kind of a task change from here, so they cannot disagree
(a queue config change's kind comes from `dtq.core.queues`, for both too).
"""

from __future__ import annotations

import enum
from typing import Literal, get_args

from dtq.models import Task, TaskStatus

S = TaskStatus


class EventKind(enum.StrEnum):
    TASK_CREATED = "task.created"
    TASK_LEASED = "task.leased"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    TASK_RETRIED = "task.retried"
    TASK_RELEASED = "task.released"
    TASK_CANCELLED = "task.cancelled"
    TASK_DELETED = "task.deleted"
    TASK_UPDATED = "task.updated"
    WORKER_ACTIVE = "worker.active"
    WORKER_INACTIVE = "worker.inactive"
    WORKER_HEARTBEAT = "worker.heartbeat"
    QUEUE_PAUSED = "queue.paused"
    QUEUE_RESUMED = "queue.resumed"
    QUEUE_UPDATED = "queue.updated"


K = EventKind
TASK_EVENT_KINDS: tuple[EventKind, ...] = tuple(k for k in EventKind if k.startswith("task."))
QUEUE_EVENT_KINDS: tuple[EventKind, ...] = tuple(k for k in EventKind if k.startswith("queue."))
# What a webhook can be sent: task changes and queue config changes (not worker liveness).
WEBHOOK_EVENT_KINDS: tuple[EventKind, ...] = (*TASK_EVENT_KINDS, *QUEUE_EVENT_KINDS)
ALL_EVENTS = "*"

# What a webhook may subscribe to, as a type (the request schema and the API document are
# built from it): the kinds above and "*". Checked against EventKind at import.
WebhookEventName = Literal[
    "task.created", "task.leased", "task.completed", "task.failed", "task.retried",
    "task.released", "task.cancelled", "task.deleted", "task.updated",
    "queue.paused", "queue.resumed", "queue.updated", "*",
]  # fmt: skip
assert set(get_args(WebhookEventName)) == {*WEBHOOK_EVENT_KINDS, ALL_EVENTS}

_FINAL_KIND = {S.COMPLETED: K.TASK_COMPLETED, S.FAILED: K.TASK_FAILED,
               S.CANCELLED: K.TASK_CANCELLED}  # fmt: skip


def attempt_kind(task: Task) -> EventKind:
    """The event that ends an attempt (complete, fail, expiry), from the task after it."""
    if task.status == S.PENDING:
        return K.TASK_RETRIED
    return _FINAL_KIND[task.status]


def task_event_kind(old: Task | None, new: Task | None) -> EventKind | None:
    """The event a task change is, from its before and after (None: inserted / deleted).

    A lease extension (running -> running) is no event, as on the event bus.
    """
    if old is None:
        return None if new is None else K.TASK_CREATED
    if new is None:
        return K.TASK_DELETED
    if old.status == new.status:
        return None if new.status == S.RUNNING else K.TASK_UPDATED
    if new.status == S.RUNNING:
        return K.TASK_LEASED
    if new.status == S.PENDING:  # running -> pending: a release gives its attempt back
        return K.TASK_RELEASED if new.attempts < old.attempts else K.TASK_RETRIED
    return _FINAL_KIND[new.status]
