"""Queue limits on a shared store, exact across servers: decided inside the claim's transaction.

On an embedded store the dispatcher keeps the running counts and the token buckets in memory.
With several servers no memory sees every lease, so the claim (`ops.claim`) hands its
candidates to `admit`, which for each limited queue takes the queue's lock in the database
(`SharedTxn.lock_queue`: two servers' claims on one limited queue run one after the other),
then reads the facts there (`count_running`, `take_tokens`) and keeps what fits. A queue
without limits costs nothing: no lock, no count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from dtq.models import Task
from dtq.storage.base import SharedTxn


class QueueLimits(NamedTuple):
    """What a claim must respect for one queue (None: no such limit)."""

    paused: bool = False
    max_running: int | None = None
    max_running_per_key: int | None = None
    leases_per_s: float | None = None

    @property
    def unlimited(self) -> bool:
        return (
            not self.paused
            and self.max_running is None
            and self.max_running_per_key is None
            and self.leases_per_s is None
        )


# (txn, queue) -> its limits, read in the claim's transaction (None: none)
LimitsOf = Callable[[SharedTxn, str], QueueLimits | None]
OVERFETCH = 4  # candidates claimed per wanted task when some queue has limits


def _key(task: Task) -> str | None:
    return task.concurrency_key


def admit(tx: SharedTxn, candidates: list[Task], limits_of: LimitsOf, limit: int) -> list[Task]:
    """The first `limit` candidates (in dispatch order) that their queues' limits let
    through."""
    limits: dict[str, QueueLimits | None] = {}
    for queue in sorted({t.queue for t in candidates}):  # locks in one order: no deadlock
        found = limits_of(tx, queue)
        limits[queue] = None if found is None or found.unlimited else found
        if limits[queue] is not None:
            tx.lock_queue(queue)
    room: dict[str, int] = {}
    key_room: dict[tuple[str, str | None], int] = {}
    fits: list[Task] = []
    for task in candidates:
        lim, q, key = limits[task.queue], task.queue, _key(task)
        if lim is not None:
            if lim.paused:
                continue
            if lim.max_running is not None:
                if q not in room:
                    room[q] = lim.max_running - tx.count_running(q)
                if room[q] <= 0:
                    continue
            if lim.max_running_per_key is not None and key is not None:
                if (q, key) not in key_room:
                    key_room[(q, key)] = lim.max_running_per_key - tx.count_running(q, key)
                if key_room[(q, key)] <= 0:
                    continue
                key_room[(q, key)] -= 1
            if q in room:
                room[q] -= 1
        fits.append(task)
        if len(fits) == limit:
            break
    # Tokens last, and only as many as fit otherwise: a token is a lease started.
    wanted = Counter(t.queue for t in fits if (lim := limits[t.queue]) and lim.leases_per_s)
    tokens = {
        q: tx.take_tokens(q, limits[q].leases_per_s or 0.0, n)  # type: ignore[union-attr]
        for q, n in sorted(wanted.items())
    }
    admitted: list[Task] = []
    for task in fits:
        if task.queue in tokens:
            if tokens[task.queue] <= 0:
                continue
            tokens[task.queue] -= 1
        admitted.append(task)
    return admitted


def limits_of_config(tx: SharedTxn, queue: str) -> QueueLimits | None:
    """A queue's limits from its stored `QueueConfig`, read in the claim's transaction (so a
    pause or a new limit set through any server holds at once on every server)."""
    config = tx.get_queue_config(queue)
    if config is None or config.is_default:
        return None
    return QueueLimits(
        paused=config.paused,
        max_running=config.concurrency_limit,
        max_running_per_key=config.concurrency_limit_per_key,
        leases_per_s=config.rate_limit_per_second,
    )
