"""In-memory ready queues and long-poll waiters.

LMDB is the truth; this is the fast index in front of it. Every claim made here is verified in
the write transaction that grants the lease, so a stale entry can cost a lookup, never a
double lease. Single trio thread: no locks.

Order: priority (high, medium, low), then enqueue sequence (FIFO), across the asked queues.
Waiters are served in arrival order, and a ready task wakes exactly one waiter.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

import trio

from dtq.models import DEFAULT_LEASE_S

RANKS = (0, 1, 2)


class Entry:
    """A task that is ready to run (or scheduled to become ready)."""

    __slots__ = ("name", "order", "queue", "rank", "task_id")

    def __init__(
        self, task_id: str, queue: str, rank: int, seq: int, name: str, ready_at: float = 0.0
    ) -> None:
        self.task_id = task_id
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


class Dispatcher:
    def __init__(self) -> None:
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
        chosen = self._first_taker(self._waiters_any, entry)
        by_queue = self._waiters_by_queue.get(entry.queue)
        if by_queue is not None:
            other = self._first_taker(by_queue, entry)
            if other is not None and (chosen is None or other.arrival < chosen.arrival):
                chosen = other
        if chosen is None:
            self._enqueue(entry)
            return
        chosen.claimed.append(entry)
        chosen.event.set()

    def reserve(self, queue: str, name: str) -> Waiter | None:
        """The waiter a new task for (queue, name) would go to, taken out of line so that a
        create can lease the task to it in its own commit. Only idle waiters (nothing
        claimed yet) are reserved; None when there is none."""
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
            self.push(entry)

    def _enqueue(self, entry: Entry) -> None:
        """Insert keeping each deque sorted by `order`: an append, except for the rare task
        that is older than the tail (given back, re-prioritised)."""
        if self._ready.get(entry.task_id) is None:
            self._ready_per_queue[entry.queue] += 1
        self._ready[entry.task_id] = entry
        dq = self._deques(entry.queue)[entry.rank]
        if not dq or dq[-1].order <= entry.order:
            dq.append(entry)
            return
        i = len(dq)
        while i > 0 and dq[i - 1].order > entry.order:
            i -= 1
        dq.insert(i, entry)

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
        return heap[0][0] if heap else None

    def promote_due(self, now: float) -> int:
        """Move scheduled tasks whose time has come to the ready queues."""
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
        candidates = (
            list(self._queues.values())
            if queues is None
            else [self._queues[q] for q in queues if q in self._queues]
        )
        for rank in RANKS:
            best: deque[Entry] | None = None
            best_entry: Entry | None = None
            for qs in candidates:
                dq = qs[rank]
                head = self._live_head(dq, names)
                if head is not None and (best_entry is None or head.order < best_entry.order):
                    best, best_entry = dq, head
            if best is not None and best_entry is not None:
                if names is None or best[0] is best_entry:
                    best.popleft()  # the usual case, also with a names filter: the head
                else:
                    best.remove(best_entry)
                del self._ready[best_entry.task_id]
                self._ready_per_queue[best_entry.queue] -= 1
                return best_entry
        return None

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
