"""Queues as first-class records: their figures, their config (paused, limits), purge and a
task's explanation. Config writes are plain ops of a `StoreTxn` like every other write; the
dispatcher applies a config right after its commit, and listeners hear `queue.*` events.

A config change also owes webhook deliveries: `Queues.config_sink` (the webhook outbox's,
set by the composition root) is called inside the op's transaction, so the change and its
deliveries commit together, as the store's event sink does for task changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from msgspec.structs import replace

from dtq.core.events import EventKind as K
from dtq.core.explain import Explanation, Facts, explain
from dtq.errors import NotFound
from dtq.models import ListTasksQuery, QueueConfig, QueueInfo, QueueUpdate, Task, TaskStatus
from dtq.storage.base import StoreTxn, queue_counts

if TYPE_CHECKING:
    from dtq.core.service import TaskQueue

S = TaskStatus
PURGE_BATCH = 500  # tasks per write: a purge never holds the writer for long

# Called in the writer's thread, inside the transaction of the change (like `EventSink`).
ConfigSink = Callable[[StoreTxn, K, QueueConfig], None]


def apply_update(
    old: QueueConfig | None, name: str, change: QueueUpdate, now: float
) -> QueueConfig:
    base = old if old is not None else QueueConfig(name=name)
    fields = {f: getattr(change, f) for f in change.__struct_fields__}
    given = {f: v for f, v in fields.items() if v is not msgspec.UNSET}
    return replace(base, **given, updated_at=now)


def put_config(
    tx: StoreTxn, name: str, change: QueueUpdate, sink: ConfigSink | None = None
) -> tuple[QueueConfig | None, QueueConfig]:
    old = tx.get_queue_config(name)
    new = apply_update(old, name, change, tx.now)
    tx.put_queue_config(new)  # kept even with nothing set: a configured queue stays listed
    if sink is not None:
        sink(tx, change_kind(old, new), new)
    return old, new


def purge_pending(tx: StoreTxn, task_ids: list[str]) -> list[Task]:
    """Delete those of `task_ids` that are still pending."""
    gone = []
    for task_id in task_ids:
        task = tx.get_task(task_id)
        if task is not None and task.status == S.PENDING:
            tx.delete_task(task)
            gone.append(task)
    return gone


def change_kind(old: QueueConfig | None, new: QueueConfig) -> K:
    """The event a config change is: the paused flag flipped, else an update."""
    was_paused = old is not None and old.paused
    if new.paused != was_paused:
        return K.QUEUE_PAUSED if new.paused else K.QUEUE_RESUMED
    return K.QUEUE_UPDATED


class Queues:
    """The queue operations of one `TaskQueue` (its store, dispatcher and poll records)."""

    def __init__(self, tq: TaskQueue) -> None:
        self.tq = tq
        self.config_sink: ConfigSink | None = None

    async def _names(self) -> tuple[dict[str, QueueConfig], dict[str, dict[str, int]]]:
        configs = {c.name: c for c in await self.tq.store.list_queue_configs()}
        counts = queue_counts(await self.tq.store.counters())
        return configs, counts

    def _info(self, name: str, config: QueueConfig | None, counts: dict[str, int]) -> QueueInfo:
        tq = self.tq
        now = tq.clock.now()
        ready = tq.dispatcher.ready_by_queue().get(name, 0)
        stored_pending = counts.get(S.PENDING, 0)
        since = now - tq.settings.worker_timeout_s
        return QueueInfo(
            name=name,
            paused=bool(config and config.paused),
            pending=ready,
            scheduled=max(0, stored_pending - ready),
            running=counts.get(S.RUNNING, 0),
            failed=counts.get(S.FAILED, 0),
            concurrency_limit=config.concurrency_limit if config else None,
            concurrency_limit_per_key=config.concurrency_limit_per_key if config else None,
            rate_limit_per_second=config.rate_limit_per_second if config else None,
            oldest_pending_age_s=tq.dispatcher.queue_head_age(name, now),
            workers_polling=tq.polls.workers_polling(name, since),
        )

    async def list(self, skip: int, limit: int) -> tuple[list[QueueInfo], int]:
        configs, counts = await self._names()
        names = sorted(set(configs) | set(counts), key=str.encode)
        page = names[skip : skip + limit]
        return [self._info(n, configs.get(n), counts.get(n, {})) for n in page], len(names)

    async def get(self, name: str) -> QueueInfo:
        config = await self.tq.store.get_queue_config(name)
        counts = queue_counts(await self.tq.store.counters()).get(name)
        if config is None and counts is None:
            raise NotFound(f"queue {name!r} not found", field="name", reason="no such queue")
        return self._info(name, config, counts or {})

    async def update(self, name: str, change: QueueUpdate) -> QueueInfo:
        tq = self.tq

        def on_commit(res: tuple[QueueConfig | None, QueueConfig]) -> None:
            old, new = res
            tq.dispatcher.configure(new)
            kind = change_kind(old, new)
            for listener in tq.queue_listeners:
                listener(kind, new)

        sink = self.config_sink
        await tq.store.write(lambda tx: put_config(tx, name, change, sink), on_commit)
        return await self.get(name)

    async def pause(self, name: str) -> QueueInfo:
        await self.get(name)  # 404 for a queue nobody named
        return await self.update(name, QueueUpdate(paused=True))

    async def resume(self, name: str) -> QueueInfo:
        await self.get(name)
        return await self.update(name, QueueUpdate(paused=False))

    async def purge(self, name: str) -> int:
        """Delete the queue's pending tasks, a batch per write; returns how many."""
        await self.get(name)
        tq = self.tq
        purged = 0

        def on_commit(gone: list[Task]) -> None:
            for task in gone:
                tq.dispatcher.discard(task.id)
                tq._emit(K.TASK_DELETED, task)

        while True:
            # (built, not decoded: the page may be larger than a client may ask for)
            query = ListTasksQuery(queue=name, status=S.PENDING, limit=PURGE_BATCH, order="asc")
            page, _ = await tq.store.list_tasks(query)
            if not page:
                return purged
            ids = [t.id for t in page]
            gone = await tq.store.write(functools.partial(purge_pending, task_ids=ids), on_commit)
            purged += len(gone)
            if not gone:  # every one left pending meanwhile: nothing more to take
                return purged

    async def explain(self, task_id: str) -> Explanation:
        tq = self.tq
        task = await tq.get(task_id)
        now = tq.clock.now()
        limits = tq.dispatcher.limits
        config = await tq.store.get_queue_config(task.queue)
        token_at = limits.next_token_at(task.queue, now)
        since = now - tq.settings.worker_timeout_s
        facts = Facts(
            now=now,
            config=config,
            running_in_queue=limits.running[task.queue],
            running_for_key=limits.running_per_key[(task.queue, task.concurrency_key)],
            next_token_at=token_at if token_at is not None and token_at > now else None,
            queue_polled=tq.polls.workers_polling(task.queue, since) > 0,
            name_polled=tq.polls.name_polled(task.name, since),
            position=tq.dispatcher.position(task.id),
        )
        return explain(task, facts)
