"""The storage contract for queue-event deliveries (a queue config instead of a task), and
delivery records written before queue events existed still decoding. Every backend."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from msgspec import Struct
from msgspec.structs import replace

from dtq.models import Attempt, Delivery, DeliveryStatus, QueueConfig, Task
from dtq.storage import memory
from dtq.storage.base import Store
from dtq.storage.lmdb import layouts

from .conftest import NOW, make_task


class _DeliveryBeforeQueueEvents(Struct, array_like=True, kw_only=True):
    """`Delivery` as it was stored before queue.* events (no `queue`, `task` required)."""

    id: str
    webhook_id: str
    event: str
    task: Task
    created_at: float
    status: DeliveryStatus = DeliveryStatus.PENDING
    next_attempt_at: float | None = None
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    completed_at: float | None = None


def queue_delivery(hook_id: str, created_at: float) -> Delivery:
    config = QueueConfig(name="emails", paused=True, concurrency_limit=3, updated_at=created_at)
    return Delivery(id=str(uuid.uuid4()), webhook_id=hook_id, event="queue.paused", task=None,
                    queue=config, created_at=created_at, next_attempt_at=created_at)  # fmt: skip


async def test_a_queue_delivery_round_trips_with_the_due_index(store: Store) -> None:
    hook_id = str(uuid.uuid4())
    made = queue_delivery(hook_id, NOW)
    await store.write(lambda tx: tx.put_delivery(None, made))
    assert await store.get_delivery(made.ref) == made
    assert await store.due_deliveries(10) == [(pytest.approx(NOW), made.ref)]
    [listed], total = await store.list_deliveries(hook_id)
    assert listed == made and total == 1
    assert listed.task is None and listed.queue is not None and listed.queue.paused
    done = replace(made, status=DeliveryStatus.DELIVERED, next_attempt_at=None,
                   attempts=[Attempt(started_at=NOW, finished_at=NOW + 1, status_code=200)],
                   completed_at=NOW + 1)  # fmt: skip
    await store.write(lambda tx: tx.put_delivery(made, done))
    assert await store.write(lambda tx: tx.get_delivery(made.ref)) == done
    assert await store.due_deliveries(10) == []


@pytest.mark.parametrize(
    "decode", [layouts.decode_delivery, memory._dec_delivery], ids=["lmdb", "memory"]
)
def test_a_delivery_stored_before_queue_events_decodes(decode: object) -> None:
    task = make_task(seq=7)
    old = _DeliveryBeforeQueueEvents(
        id=str(uuid.uuid4()), webhook_id=str(uuid.uuid4()), event="task.created", task=task,
        created_at=NOW, status=DeliveryStatus.DELIVERED, completed_at=NOW + 2,
        attempts=[Attempt(started_at=NOW, finished_at=NOW + 2, status_code=204)],
    )  # fmt: skip
    raw = msgspec.msgpack.encode(old)
    got = decode(raw)  # type: ignore[operator]
    assert isinstance(got, Delivery)
    assert got.task == task and got.queue is None
    assert (got.id, got.status, got.completed_at, got.attempts) == (
        old.id, old.status, old.completed_at, old.attempts,
    )  # fmt: skip
