"""Queue limits as pure decisions: paused, running per queue, running per concurrency key,
leases started per second (a token bucket). No trio, no store: the dispatcher asks, and the
state it keeps here (who is running where) can be rebuilt from the store's running tasks, so a
shared-database backend can make the same decisions in SQL from the same facts.
"""

from __future__ import annotations

import collections
import enum

from dtq.models import QueueConfig


class Block(enum.StrEnum):
    """Why a queue grants no lease now (as a whole, before looking at any task)."""

    PAUSED = "queue_paused"
    CONCURRENCY = "queue_concurrency_limit"
    RATE = "queue_rate_limit"


class TokenBucket:
    """`rate` tokens per second, at most one second's worth saved up (the burst)."""

    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)  # a full bucket: a fresh limit lets one second's worth go
        self.updated = now

    @property
    def capacity(self) -> float:
        return max(self.rate, 1.0)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def next_token_at(self, now: float) -> float:
        """When the next whole token is there (now if one is)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return now
        return now + (1.0 - self.tokens) / self.rate


Slot = tuple[str, str | None]  # (queue, concurrency key)


class Limits:
    """Every queue's config, and the slots held: a task holds one from the moment the
    dispatcher hands it out (claimed, about to be leased) until its lease ends (acked,
    released, expired) or the claim is given back."""

    def __init__(self) -> None:
        self.configs: dict[str, QueueConfig] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.holding: dict[str, Slot] = {}  # task id -> its slot
        self.running: collections.Counter[str] = collections.Counter()
        self.running_per_key: collections.Counter[Slot] = collections.Counter()

    # -- configuration --------------------------------------------------------------------
    def configure(self, config: QueueConfig, now: float) -> None:
        if config.is_default:
            self.configs.pop(config.name, None)
        else:
            self.configs[config.name] = config
        rate = config.rate_limit_per_second
        bucket = self.buckets.get(config.name)
        if rate is None:
            self.buckets.pop(config.name, None)
        elif bucket is None:
            self.buckets[config.name] = TokenBucket(rate, now)
        elif bucket.rate != rate:
            bucket.rate = rate
            bucket.tokens = min(bucket.tokens, bucket.capacity)

    def config(self, queue: str) -> QueueConfig | None:
        return self.configs.get(queue)

    def constrains(self, queue: str) -> bool:
        """Whether the queue has any limit or is paused (else no check is needed at all)."""
        return queue in self.configs

    # -- decisions --------------------------------------------------------------------------
    def queue_block(self, queue: str, now: float) -> Block | None:
        """Why no task of `queue` may start now, or None."""
        config = self.configs.get(queue)
        if config is None:
            return None
        if config.paused:
            return Block.PAUSED
        if config.concurrency_limit is not None and self.running[queue] >= config.concurrency_limit:
            return Block.CONCURRENCY
        bucket = self.buckets.get(queue)
        if bucket is not None and not bucket.available(now):
            return Block.RATE
        return None

    def key_blocked(self, queue: str, key: str | None) -> bool:
        """Whether `key`'s tasks of `queue` are at the per-key limit."""
        if key is None:
            return False
        config = self.configs.get(queue)
        if config is None or config.concurrency_limit_per_key is None:
            return False
        return self.running_per_key[(queue, key)] >= config.concurrency_limit_per_key

    def next_token_at(self, queue: str, now: float) -> float | None:
        bucket = self.buckets.get(queue)
        return None if bucket is None else bucket.next_token_at(now)

    # -- slots ------------------------------------------------------------------------------
    def claim(self, task_id: str, queue: str, key: str | None, now: float) -> None:
        """A task of `queue` starts (callers checked `queue_block` and `key_blocked`)."""
        if task_id in self.holding:
            return
        self.holding[task_id] = (queue, key)
        self.running[queue] += 1
        if key is not None:
            self.running_per_key[(queue, key)] += 1
        bucket = self.buckets.get(queue)
        if bucket is not None:
            bucket.take(now)

    def hold(self, task_id: str, queue: str, key: str | None) -> None:
        """A task already running (leased in a create's commit, or found at start-up): it
        counts, and it costs no token (none was asked for)."""
        if task_id in self.holding:
            return
        self.holding[task_id] = (queue, key)
        self.running[queue] += 1
        if key is not None:
            self.running_per_key[(queue, key)] += 1

    def release(self, task_id: str) -> Slot | None:
        """The task's slot is free again (None: it held none)."""
        slot = self.holding.pop(task_id, None)
        if slot is None:
            return None
        queue, key = slot
        self.running[queue] -= 1
        if not self.running[queue]:
            del self.running[queue]
        if key is not None:
            self.running_per_key[slot] -= 1
            if not self.running_per_key[slot]:
                del self.running_per_key[slot]
        return slot
