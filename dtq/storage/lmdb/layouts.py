"""LMDB key layouts of the accounts and webhook tables (task layouts: `dtq.storage.keys`).

    users         username (utf-8)                          -> User
    api_keys      key id (utf-8)                            -> ApiKey
    kv            setting name (utf-8)                      -> value (utf-8)
    webhooks      webhook id (16)                           -> Webhook
    deliveries    webhook id (16) | created_us (8) | id (16) -> Delivery
    delivery_due  next_attempt_us (8) | deliveries key (40)  -> b""   (pending deliveries only)
    queues        queue name (utf-8)                        -> QueueConfig
    by_duration   has (1) | duration_us (8) | created_us (8) | seq (8) | task key (16) -> b""
                  (every task; has = 0 and duration 0 for one without a duration, so those
                  come first in ascending order, as `Store.list_tasks` says)
    by_status_priority status (1) | priority (1) | created_us (8) | seq (8) | task key (16) -> b""

Big-endian numbers, so LMDB order is index order.
"""

from __future__ import annotations

import uuid

import msgspec

from dtq.models import (
    ApiKey,
    Delivery,
    DeliveryRef,
    Priority,
    QueueConfig,
    Task,
    TaskStatus,
    User,
    Webhook,
)
from dtq.storage import keys as K

USERS = "users"
API_KEYS = "api_keys"
KV = "kv"
WEBHOOKS = "webhooks"
DELIVERIES = "deliveries"
DUE = "delivery_due"
QUEUES = "queues"
BY_DURATION = "by_duration"
BY_STATUS_PRIORITY = "by_status_priority"

decode_user = msgspec.msgpack.Decoder(User).decode
decode_api_key = msgspec.msgpack.Decoder(ApiKey).decode
decode_webhook = msgspec.msgpack.Decoder(Webhook).decode
decode_delivery = msgspec.msgpack.Decoder(Delivery).decode
decode_queue = msgspec.msgpack.Decoder(QueueConfig).decode


def webhook_key(webhook_id: str) -> bytes:
    return uuid.UUID(webhook_id).bytes


def delivery_key(ref: DeliveryRef) -> bytes:
    return webhook_key(ref.webhook_id) + K.u64(ref.created_us) + uuid.UUID(ref.id).bytes


def due_key(next_attempt_at: float, dkey: bytes) -> bytes:
    return K.u64(K.micros(next_attempt_at)) + dkey


def split_due_key(key: bytes) -> tuple[float, bytes]:
    """(when, deliveries key) of a `delivery_due` key."""
    return K.from_u64(key[:8]) / 1_000_000, key[8:]


def ref_of_key(dkey: bytes) -> DeliveryRef:
    return DeliveryRef(
        str(uuid.UUID(bytes=dkey[:16])),
        K.from_u64(dkey[16:24]),
        str(uuid.UUID(bytes=dkey[24:40])),
    )


def duration_key(task: Task, tkey: bytes) -> bytes:
    """The `by_duration` key: (has a duration, whole µs, created µs, seq, id), the order
    `Store.list_tasks` sorts by duration in (negative durations count as 0)."""
    d = task.duration
    head = b"\x00" + K.u64(0) if d is None else b"\x01" + K.u64(max(K.micros(d), 0))
    return head + K.time_id_key(task.created_at, task.seq, tkey)


def status_priority_key(task: Task, tkey: bytes) -> bytes:
    """The `by_status_priority` key: a status and priority filter together, in created order."""
    return status_priority_prefix(task.status, task.priority) + K.time_id_key(
        task.created_at, task.seq, tkey
    )


def status_priority_prefix(status: TaskStatus, priority: Priority) -> bytes:
    return K.STATUS_BYTE[status] + K.PRIORITY_BYTE[priority]


def status_priority_counter(status: str, priority: str) -> str:
    """The counter of tasks in a status with a priority (LMDB only, as `priority_counter`)."""
    return f"status_priority\x00{status}\x00{priority}"


def priority_counter(priority: str) -> str:
    """The counter of tasks of a priority (LMDB only: it makes the filter's total one read)."""
    return f"priority\x00{priority}"
