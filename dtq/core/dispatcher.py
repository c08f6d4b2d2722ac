"""In-memory ready queues and long-poll waiters.

LMDB is the truth; this is the fast index in front of it. Every claim made here is verified in
the write transaction that grants the lease, so a stale entry can cost a lookup, never a
double lease. Single trio thread: no locks.

Order: priority (high, medium, low), then enqueue sequence (FIFO), across the asked queues.
Waiters are served in arrival order, and a ready task wakes exactly one waiter.

Limits (`dtq.core.limits`): a paused or full queue is skipped as a whole; a task whose
concurrency key is at its limit is parked in a per-(queue, key) line and comes back into play
when a slot of that key frees; a rate-limited queue asks the reaper to wake it when its next
token is there. So a limited queue costs nothing per lease while it waits.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import trio

from dtq.core.limits import Block, Limits
from dtq.models import DEFAULT_LEASE_S, QueueConfig

RANKS = (0, 1, 2)


class Entry:
    """A task that is ready to run (or scheduled to become ready)."""

    __slots__ = ("key", "name", "order", "queue", "rank", "task_id")

    def __init__(
        self,
        task_id: str,
        queue: str,
        rank: int,
        seq: int,
        name: str,
        ready_at: float = 0.0,
        key: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.key = key  # the concurrency key (queue limits per key)
        self.queue = queue
        self.rank = rank
        self.name = name
        # FIFO key within a priority: when it became ready, then enqueue sequence. The same
        # key orders the queues rebuilt at start-up, so a restart keeps the dispatch order.
        self.order = (ready_at, seq)

    @property
    def seq(self) -> int:
        return self.order[1]

    def __repr__(self) -> str:
        return f"<Entry {self.task_id} {self.queue}/{self.rank}@{self.order} {self.name!r}>"


def _order(entry: Entry) -> tuple[float, int]:
    return entry.order


class Waiter:
    """A parked long poll. It is woken with `claimed` entries (still to be leased) or, when a
    create reserved it, with `granted` tasks that the create's own commit already leased."""

    __slots__ = (
        "active",
        "arrival",
        "claimed",
        "event",
        "gone",
        "granted",
        "holder",
        "lease_s",
        "max_tasks",
        "names",
        "queues",
        "reserved",
        "worker_id",
    )  # fmt: skip

    def __init__(
        self,
        queues: frozenset[str] | None,
        names: frozenset[str] | None,
        max_tasks: int,
        worker_id: str = "",
        lease_s: float = DEFAULT_LEASE_S,
        holder: str | None = None,
    ) -> None:
        self.queues = queues
        self.names = names
        self.max_tasks = max_tasks
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.holder = holder  # the principal the lease is granted to
        self.reserved = False
        self.gone = False  # the long poll ended (cancelled) while a create was reserving it
        self.granted: list[Any] = []  # Task objects (the dispatcher does not look inside)
        self.claimed: list[Entry] = []
        self.event = trio.Event()
        self.arrival = 0  # set by the dispatcher: serving order
        self.active = False  # still waiting (removal is lazy: it only clears this)

    def wants(self, entry: Entry) -> bool:
        return (self.queues is None or entry.queue in self.queues) and (
            self.names is None or entry.name in self.names
        )


Ranks = tuple[deque[Entry], deque[Entry], deque[Entry]]


def _insert_sorted(dq: deque[Entry], entry: Entry) -> None:
    """Keep `dq` sorted by `order`: an append, except for the rare older entry."""
    if not dq or dq[-1].order <= entry.order:
        dq.append(entry)
        return
    i = len(dq)
    while i > 0 and dq[i - 1].order > entry.order:
        i -= 1
    dq.insert(i, entry)


class Dispatcher:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.limits = Limits()
        # (queue, key) -> parked entries per rank: their key was at its limit when met
        self._parked: dict[tuple[str, str | None], Ranks] = {}
        # queue -> keys with parked entries that may run again (a slot freed)
        self._unblocked: dict[str, set[str | None]] = {}
        self._rate_wake: dict[str, float] = {}  # queue -> when its next token is there
        # queue -> one deque per priority rank; entries are live only while _ready maps
        # their task id to that very Entry object (lazy deletion).
        self._queues: dict[str, tuple[deque[Entry], deque[Entry], deque[Entry]]] = {}
        self._ready: dict[str, Entry] = {}
        self._ready_per_queue: collections.Counter[str] = collections.Counter()
        self._scheduled: list[tuple[float, int, int, Entry]] = []
        self._tiebreak = itertools.count()  # heap entries never compare Entry objects
        self._scheduled_live: dict[str, Entry] = {}
        # Waiters are indexed by the queues they asked for (plus one line for "any queue"),
        # so a new task looks only at waiters that could take it, even with 10,000 parked.
        self._waiters_any: deque[Waiter] = deque()
        self._waiters_by_queue: dict[str, deque[Waiter]] = {}
        self._arrivals = itertools.count()
        self._waiting = 0
        self.schedule_changed = trio.Event()  # the reaper re-plans when this fires

    # -- statistics -------------------------------------------------------------------
    def ready_count(self) -> int:
        return len(self._ready)

    def scheduled_count(self) -> int:
        return len(self._scheduled_live)

    def waiting_count(self) -> int:
        return self._waiting

    def ready_by_queue(self) -> dict[str, int]:
        """Ready tasks per queue (kept as counts: /metrics reads this on every scrape)."""
        return {queue: n for queue, n in self._ready_per_queue.items() if n}

    # -- making tasks ready -----------------------------------------------------------
    def push(self, entry: Entry) -> None:
        """A task became ready: hand it to the oldest matching waiter, else queue it."""
        self.discard(entry.task_id)
        limits = self.limits
        if limits.constrains(entry.queue):
            now = self._now()
            block = limits.queue_block(entry.queue, now)
            if block is not None:
                if block == Block.RATE:
                    self._arm_rate_wake(entry.queue, now)
                self._enqueue(entry)
                return
            if limits.key_blocked(entry.queue, entry.key):
                self._park(entry)
                return
        chosen = self._first_taker(self._waiters_any, entry)
        by_queue = self._waiters_by_queue.get(entry.queue)
        if by_queue is not None:
            other = self._first_taker(by_queue, entry)
            if other is not None and (chosen is None or other.arrival < chosen.arrival):
                chosen = other
        if chosen is None:
            self._enqueue(entry)
            return
        limits.claim(entry.task_id, entry.queue, entry.key, self._now())
        chosen.claimed.append(entry)
        chosen.event.set()

    def reserve(self, queue: str, name: str) -> Waiter | None:
        """The waiter a new task for (queue, name) would go to, taken out of line so that a
        create can lease the task to it in its own commit. Only idle waiters (nothing
        claimed yet) are reserved; None when there is none."""
        if self.limits.constrains(queue):
            return None  # limits decide per task, in `push` and `take`
        probe = Entry("", queue, 0, 0, name)
        chosen = self._first_taker(self._waiters_any, probe)
        by_queue = self._waiters_by_queue.get(queue)
        if by_queue is not None:
            other = self._first_taker(by_queue, probe)
            if other is not None and (chosen is None or other.arrival < chosen.arrival):
                chosen = other
        if chosen is None or chosen.claimed or chosen.event.is_set():
            return None
        self.remove_waiter(chosen)
        chosen.reserved = True
        return chosen

    @staticmethod
    def _first_taker(line: deque[Waiter], entry: Entry) -> Waiter | None:
        """The longest-waiting waiter in `line` with room that wants `entry`."""
        while line and not line[0].active:
            line.popleft()  # left already
        for waiter in line:
            if waiter.active and len(waiter.claimed) < waiter.max_tasks and waiter.wants(entry):
                return waiter
        return None

    def load(self, ready: list[Entry], scheduled: list[tuple[float, Entry]]) -> None:
        """Start-up: fill an empty dispatcher in bulk (one sort per queue, one heapify)."""
        ready.sort(key=_order)
        for entry in ready:
            self._deques(entry.queue)[entry.rank].append(entry)
        self._ready.update((e.task_id, e) for e in ready)
        for entry in ready:
            self._ready_per_queue[entry.queue] += 1
        for run_at, entry in scheduled:
            self._scheduled_live[entry.task_id] = entry
            self._scheduled.append((run_at, entry.seq, next(self._tiebreak), entry))
        heapq.heapify(self._scheduled)
        self.schedule_changed.set()

    def give_back(self, entries: Iterable[Entry]) -> None:
        """Claimed tasks that were not leased: to a waiting worker, else back in line."""
        for entry in entries:
            self.limits.release(entry.task_id)
            self.push(entry)

    def _enqueue(self, entry: Entry) -> None:
        """Insert keeping each deque sorted by `order`: an append, except for the rare task
        that is older than the tail (given back, re-prioritised)."""
        if self._ready.get(entry.task_id) is None:
            self._ready_per_queue[entry.queue] += 1
        self._ready[entry.task_id] = entry
        _insert_sorted(self._deques(entry.queue)[entry.rank], entry)

    def _park(self, entry: Entry) -> None:
        """Ready, but its key is at its limit: out of the queue's line until a slot frees."""
        if self._ready.get(entry.task_id) is None:
            self._ready_per_queue[entry.queue] += 1
        self._ready[entry.task_id] = entry
        slot = (entry.queue, entry.key)
        parked = self._parked.get(slot)
        if parked is None:
            parked = self._parked[slot] = (deque(), deque(), deque())
        _insert_sorted(parked[entry.rank], entry)

    def _deques(self, queue: str) -> tuple[deque[Entry], deque[Entry], deque[Entry]]:
        qs = self._queues.get(queue)
        if qs is None:
            qs = self._queues[queue] = (deque(), deque(), deque())
        return qs

    def schedule(self, entry: Entry, run_at: float) -> None:
        self.discard(entry.task_id)
        self._scheduled_live[entry.task_id] = entry
        first = self._scheduled[0][0] if self._scheduled else None
        heapq.heappush(self._scheduled, (run_at, entry.seq, next(self._tiebreak), entry))
        if first is None or run_at < first:
            self.schedule_changed.set()

    def next_scheduled_at(self) -> float | None:
        heap = self._scheduled
        while heap and self._scheduled_live.get(heap[0][3].task_id) is not heap[0][3]:
            heapq.heappop(heap)
        first = heap[0][0] if heap else None
        if self._rate_wake:
            wake = min(self._rate_wake.values())
            first = wake if first is None else min(first, wake)
        return first

    def _arm_rate_wake(self, queue: str, now: float) -> None:
        at = self.limits.next_token_at(queue, now)
        if at is None or queue in self._rate_wake:
            return
        self._rate_wake[queue] = at
        self.schedule_changed.set()

    def promote_due(self, now: float) -> int:
        """Move scheduled tasks whose time has come to the ready queues (and wake waiters of
        rate-limited queues whose next token is there)."""
        for queue, at in list(self._rate_wake.items()):
            if at <= now:
                del self._rate_wake[queue]
                self.serve_waiters(queue)
        moved = 0
        heap = self._scheduled
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[3]
            if self._scheduled_live.get(entry.task_id) is entry:
                del self._scheduled_live[entry.task_id]
                self.push(entry)
                moved += 1
        return moved

    def discard(self, task_id: str) -> None:
        """Forget a task (leased elsewhere, cancelled, deleted, re-prioritised)."""
        gone = self._ready.pop(task_id, None)
        if gone is not None:
            self._ready_per_queue[gone.queue] -= 1
        self._scheduled_live.pop(task_id, None)

    # -- taking tasks -----------------------------------------------------------------
    def take(
        self, queues: frozenset[str] | None, names: frozenset[str] | None, max_tasks: int
    ) -> list[Entry]:
        taken: list[Entry] = []
        while len(taken) < max_tasks:
            entry = self._take_one(queues, names)
            if entry is None:
                break
            taken.append(entry)
        return taken

    def _take_one(
        self, queues: frozenset[str] | None, names: frozenset[str] | None
    ) -> Entry | None:
        limits = self.limits
        candidates = (
            list(self._queues) if queues is None else [q for q in queues if q in self._queues]
        )
        if limits.configs:
            now = self._now()
            open_queues = []
            for q in candidates:
                block = limits.queue_block(q, now)
                if block is None:
                    open_queues.append(q)
                elif block == Block.RATE:
                    self._arm_rate_wake(q, now)
            candidates = open_queues
        for rank in RANKS:
            best: deque[Entry] | None = None
            best_entry: Entry | None = None
            for q in candidates:
                dq = self._queues[q][rank]
                head = self._live_head(dq, names)
                if head is not None and limits.key_blocked(q, head.key):
                    head = self._park_blocked(q, dq, names)
                if head is not None and (best_entry is None or head.order < best_entry.order):
                    best, best_entry = dq, head
                for key in self._unblocked.get(q, ()):
                    pdq = self._parked[(q, key)][rank]
                    phead = self._live_head(pdq, names)
                    if phead is not None and (best_entry is None or phead.order < best_entry.order):
                        best, best_entry = pdq, phead
            if best is not None and best_entry is not None:
                if best[0] is best_entry:
                    best.popleft()  # the usual case, also with a names filter: the head
                else:
                    best.remove(best_entry)
                del self._ready[best_entry.task_id]
                self._ready_per_queue[best_entry.queue] -= 1
                self._claimed(best_entry)
                return best_entry
        return None

    def _claimed(self, entry: Entry) -> None:
        limits = self.limits
        now = self._now() if entry.queue in limits.buckets else 0.0  # (only a bucket asks)
        limits.claim(entry.task_id, entry.queue, entry.key, now)
        keys = self._unblocked.get(entry.queue)
        if keys is None or entry.key not in keys:
            return
        slot = (entry.queue, entry.key)
        drained = not any(self._parked[slot])
        if drained:
            del self._parked[slot]  # nobody of this key waits any more
        if drained or limits.key_blocked(entry.queue, entry.key):
            keys.discard(entry.key)
            if not keys:
                del self._unblocked[entry.queue]

    def _park_blocked(
        self, queue: str, dq: deque[Entry], names: frozenset[str] | None
    ) -> Entry | None:
        """Move key-blocked entries met at the front of `dq` to their parking lines; the first
        entry that may run, or None."""
        limits = self.limits
        while True:
            head = self._live_head(dq, names)
            if head is None or not limits.key_blocked(queue, head.key):
                return head
            if dq[0] is head:
                dq.popleft()
            else:
                dq.remove(head)
            del self._ready[head.task_id]
            self._ready_per_queue[queue] -= 1
            self._park(head)

    def _live_head(self, dq: deque[Entry], names: frozenset[str] | None) -> Entry | None:
        ready = self._ready
        while dq and ready.get(dq[0].task_id) is not dq[0]:
            dq.popleft()  # drop stale entries as we meet them
        if names is None:
            return dq[0] if dq else None
        for entry in dq:
            if entry.name in names and ready.get(entry.task_id) is entry:
                return entry
        return None

    # -- limits: slots taken and freed, configs, and the waiters they affect --------------
    def configure(self, config: QueueConfig) -> None:
        """A queue's config changed: apply it, and serve waiters it may now let through."""
        self.limits.configure(config, self._now())
        self._rate_wake.pop(config.name, None)
        keys = {k for (q, k) in self._parked if q == config.name}
        keys = {k for k in keys if not self.limits.key_blocked(config.name, k)}
        if keys:
            self._unblocked[config.name] = keys
        else:
            self._unblocked.pop(config.name, None)
        self.serve_waiters(config.name)

    def started(self, task_id: str, queue: str, key: str | None) -> None:
        """A task is running (granted without passing through `take`, or found at start-up)."""
        self.limits.hold(task_id, queue, key)

    def finished(self, task_id: str) -> None:
        """A task's lease ended (or its claim fell through): its slot frees, and tasks that
        were waiting for that slot go ahead."""
        slot = self.limits.release(task_id)
        if slot is None or not self.limits.constrains(slot[0]):
            return
        queue, key = slot
        if (queue, key) in self._parked and not self.limits.key_blocked(queue, key):
            self._unblocked.setdefault(queue, set()).add(key)
        self.serve_waiters(queue)

    def serve_waiters(self, queue: str) -> None:
        """Hand `queue`'s ready tasks to its waiters, oldest first, while its limits allow."""
        if not self._waiting:
            return  # the usual case under load: workers are busy, nobody is parked
        lines = [self._waiters_any, self._waiters_by_queue.get(queue, deque())]
        waiters = sorted(
            (w for line in lines for w in line
             if w.active and len(w.claimed) < w.max_tasks
             and (w.queues is None or queue in w.queues)),
            key=lambda w: w.arrival,
        )  # fmt: skip
        only = frozenset((queue,))
        for waiter in waiters:
            got = False
            while len(waiter.claimed) < waiter.max_tasks:
                entry = self._take_one(only, waiter.names)
                if entry is None:
                    break
                waiter.claimed.append(entry)
                got = True
            if got:
                waiter.event.set()
            if self.limits.queue_block(queue, self._now()) is not None:
                return

    def queue_head_age(self, queue: str, now: float) -> float | None:
        """Seconds since the oldest ready task of `queue` became ready (None: none ready)."""
        oldest: float | None = None
        lines = list(self._queues.get(queue, ()))
        for (q, _), parked in self._parked.items():
            if q == queue:
                lines.extend(parked)
        for dq in lines:
            for entry in dq:  # sorted: the first live entry is the oldest of its line
                if self._ready.get(entry.task_id) is entry:
                    if oldest is None or entry.order[0] < oldest:
                        oldest = entry.order[0]
                    break
        return None if oldest is None else max(0.0, now - oldest)

    def position(self, task_id: str) -> int | None:
        """How many ready tasks of its queue go before this one (None: it is not ready)."""
        entry = self._ready.get(task_id)
        if entry is None:
            return None
        mine = (entry.rank, entry.order)
        lines = list(self._queues.get(entry.queue, ()))
        lines.extend(p for (q, _), ps in self._parked.items() if q == entry.queue for p in ps)
        return sum(
            1
            for dq in lines
            for e in dq
            if self._ready.get(e.task_id) is e and (e.rank, e.order) < mine
        )

    def ready_entry(self, task_id: str) -> Entry | None:
        return self._ready.get(task_id)

    def is_parked(self, task_id: str) -> bool:
        entry = self._ready.get(task_id)
        if entry is None:
            return False
        parked = self._parked.get((entry.queue, entry.key))
        return parked is not None and entry in parked[entry.rank]

    def add_waiter(self, waiter: Waiter) -> None:
        waiter.arrival = next(self._arrivals)
        waiter.active = True
        self._waiting += 1
        if waiter.queues is None:
            self._append(self._waiters_any, waiter)
        else:
            for queue in waiter.queues:
                line = self._waiters_by_queue.get(queue)
                if line is None:
                    line = self._waiters_by_queue[queue] = deque()
                self._append(line, waiter)

    def _append(self, line: deque[Waiter], waiter: Waiter) -> None:
        if len(line) > 2 * self._waiting + 64:  # departed waiters pile up behind a long one
            kept = [w for w in line if w.active]
            line.clear()
            line.extend(kept)
        line.append(waiter)

    def remove_waiter(self, waiter: Waiter) -> None:
        if waiter.active:
            waiter.active = False
            self._waiting -= 1
            if waiter.queues is not None:  # drop lines that only hold departed waiters
                for queue in waiter.queues:
                    line = self._waiters_by_queue.get(queue)
                    while line and not line[0].active:
                        line.popleft()
                    if line is not None and not line:
                        del self._waiters_by_queue[queue]

    def wake_all_waiters(self) -> None:
        """Shutdown: every long-poll returns now (with whatever it has claimed)."""
        for line in (self._waiters_any, *self._waiters_by_queue.values()):
            for waiter in line:
                waiter.event.set()
