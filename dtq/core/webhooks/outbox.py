"""Webhooks: records, pure decisions, and the transactional outbox.

Durability comes from an outbox. The store reports every task change to `Outbox.sink` inside
the write transaction of the operation that makes it, and a queue config change is reported to
`Outbox.queue_sink` by its op (`dtq.core.queues.put_config`) the same way; the sinks write one
`Delivery` per matching webhook into that same transaction (`StoreTxn.put_delivery`, which
keeps the due index). A change and the deliveries it owes therefore commit together or not at all,
and the delivery loop (`dtq.core.webhooks.delivery`) works only from what storage holds, so a
delivery owed before a crash is sent after the restart (at least once: a receiver may see a
delivery id twice and should deduplicate on `X-DTQ-Delivery`).

The sink runs in the writer's thread: it reads one immutable `_Snapshot`, swapped whole on the
trio thread, and touches nothing but the transaction. With no webhook registered the store
holds no sink at all, so the task hot path pays one attribute check.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated

from msgspec import Meta, Struct
from msgspec.structs import replace

from dtq.core.events import (
    ALL_EVENTS,
    WEBHOOK_EVENT_KINDS,
    EventKind,
    WebhookEventName,
    task_event_kind,
)
from dtq.core.webhooks.targets import WEBHOOK_URL_PATTERN
from dtq.models import (
    Attempt,
    Delivery,
    DeliveryRef,
    DeliveryStatus,
    QueueConfig,
    Task,
    TaskStatus,
    Webhook,
)
from dtq.retry import RetryPolicy
from dtq.storage.base import Store, StoreTxn

__all__ = [
    "ALL_EVENTS", "DELIVERY_HEADER", "EVENT_HEADER", "EVENT_KINDS", "SIGNATURE_HEADER",
    "Attempt", "Delivery", "DeliveryRef", "DeliveryStatus", "Outbox", "Webhook",
    "WebhookCreate", "after_attempt", "delete_webhook", "drop_deliveries", "put_webhook",
    "record_attempt", "sign", "task_event_kind", "verify",
]  # fmt: skip

S = TaskStatus

EVENT_KINDS = WEBHOOK_EVENT_KINDS
SIGNATURE_HEADER = "X-DTQ-Signature"
EVENT_HEADER = "X-DTQ-Event"
DELIVERY_HEADER = "X-DTQ-Delivery"


class WebhookCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=2048,
            # documented, not enforced here: check_url enforces it and says what is wrong
            extra_json_schema={"pattern": WEBHOOK_URL_PATTERN},
            description="An absolute http or https URL with a host; no spaces or control "
            "characters.",
        ),
    ]
    events: Annotated[list[WebhookEventName], Meta(min_length=1, max_length=len(EVENT_KINDS) + 1)]
    secret: Annotated[str, Meta(min_length=16, max_length=256)] | None = None
    description: Annotated[str, Meta(max_length=500)] | None = None


# -- pure decisions ---------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The `X-DTQ-Signature` value: HMAC-SHA256 of the exact body bytes, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature)


def after_attempt(
    delivery: Delivery,
    attempt: Attempt,
    *,
    max_attempts: int,
    policy: RetryPolicy,
    rand: float,
    now: float,
) -> Delivery:
    """The delivery once `attempt` is recorded: delivered, given up, or due again later.

    The n-th failure waits about `policy.base_s * 2**(n-1)` (capped, jittered) before the next.
    """
    attempts = [*delivery.attempts, attempt]
    if attempt.ok:
        return replace(delivery, attempts=attempts, status=DeliveryStatus.DELIVERED,
                       next_attempt_at=None, completed_at=now)  # fmt: skip
    if len(attempts) >= max_attempts:
        return replace(delivery, attempts=attempts, status=DeliveryStatus.FAILED,
                       next_attempt_at=None, completed_at=now)  # fmt: skip
    delay = policy.delay_s(len(attempts), rand)
    return replace(delivery, attempts=attempts, next_attempt_at=now + delay)


# -- write operations (run by the group-commit writer, in its thread) ---------------------------


def put_webhook(tx: StoreTxn, hook: Webhook) -> Webhook:
    tx.put_webhook(hook)
    return hook


def delete_webhook(tx: StoreTxn, webhook_id: str) -> bool:
    return tx.delete_webhook(webhook_id)


def drop_deliveries(tx: StoreTxn, refs: Iterable[DeliveryRef]) -> int:
    """Remove deliveries (and their due entries); reads each, since it may have moved on."""
    dropped = 0
    for ref in refs:
        delivery = tx.get_delivery(ref)
        if delivery is None:
            continue
        tx.delete_delivery(delivery)
        dropped += 1
    return dropped


def record_attempt(
    tx: StoreTxn,
    ref: DeliveryRef,
    attempt: Attempt,
    *,
    max_attempts: int,
    policy: RetryPolicy,
    rand: float,
) -> Delivery | None:
    """Store an attempt's outcome and move the delivery in the due index (or out of it)."""
    old = tx.get_delivery(ref)
    if old is None:
        return None  # its webhook was deleted meanwhile
    if old.status != DeliveryStatus.PENDING:
        return old
    new = after_attempt(
        old, attempt, max_attempts=max_attempts, policy=policy, rand=rand, now=tx.now
    )
    tx.put_delivery(old, new)
    return new


# -- the outbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    webhook_id: str
    kinds: frozenset[str]


@dataclass(frozen=True)
class _Snapshot:
    """Immutable: the writer thread reads it while the trio thread may swap in a new one."""

    by_id: Mapping[str, Webhook]
    routes: tuple[_Route, ...]
    wanted: frozenset[str]

    @classmethod
    def of(cls, hooks: Iterable[Webhook]) -> _Snapshot:
        ordered = sorted(hooks, key=lambda h: (h.created_at, h.id))
        routes = tuple(
            _Route(
                h.id,
                frozenset(EVENT_KINDS) if ALL_EVENTS in h.events else frozenset(h.events),
            )
            for h in ordered
        )
        wanted: frozenset[str] = frozenset().union(*(r.kinds for r in routes))
        return cls(MappingProxyType({h.id: h for h in ordered}), routes, wanted)


class Outbox:
    """The writer-thread side: task changes become delivery records in the same transaction."""

    def __init__(self) -> None:
        self._snapshot = _Snapshot.of(())
        self._store: Store | None = None
        self.wrote = False  # set in the writer thread, cleared on the trio thread after commit
        self.on_write: Callable[[], None] | None = None

    async def install(self, store: Store) -> None:
        """Load the registered webhooks; call before the store takes its first write."""
        self._store = store
        self.set_hooks(await store.list_webhooks())

    @property
    def hooks(self) -> Mapping[str, Webhook]:
        """Registered webhooks by id, oldest first."""
        return self._snapshot.by_id

    def set_hooks(self, hooks: Iterable[Webhook]) -> None:
        """Swap the snapshot (trio thread, after the commit that changed the webhooks)."""
        self._snapshot = _Snapshot.of(hooks)
        if self._store is not None:
            self._store.set_event_sink(self.sink if self._snapshot.routes else None)

    def sink(self, tx: StoreTxn, old: Task | None, new: Task | None) -> None:
        snapshot = self._snapshot
        kind = task_event_kind(old, new)
        if kind not in snapshot.wanted:
            return
        task = new if new is not None else old
        assert task is not None
        now = tx.now
        for route in snapshot.routes:
            if kind not in route.kinds:
                continue
            delivery = Delivery(id=str(uuid.uuid4()), webhook_id=route.webhook_id, event=kind,
                                task=task, created_at=now, next_attempt_at=now)  # fmt: skip
            tx.put_delivery(None, delivery)
        self.wrote = True

    def queue_sink(self, tx: StoreTxn, kind: EventKind, config: QueueConfig) -> None:
        """`dtq.core.queues.ConfigSink`: a queue config change, in its own transaction.

        Always installed (config changes are rare; with no webhook wanting the kind it costs
        one set lookup)."""
        snapshot = self._snapshot
        if kind not in snapshot.wanted:
            return
        now = tx.now
        for route in snapshot.routes:
            if kind not in route.kinds:
                continue
            delivery = Delivery(id=str(uuid.uuid4()), webhook_id=route.webhook_id, event=kind,
                                task=None, queue=config, created_at=now,
                                next_attempt_at=now)  # fmt: skip
            tx.put_delivery(None, delivery)
        self.wrote = True

    def after_commit(self, batch_size: int, seconds: float) -> None:
        """A writer commit hook: wake the delivery loop when the batch owed deliveries.

        (An op whose nested transaction was rolled back may have set `wrote` too: the loop
        then looks at storage and finds nothing new, which is harmless.)
        """
        if self.wrote:
            self.wrote = False
            if self.on_write is not None:
                self.on_write()
