"""Who asked for work, for what, and when: every lease request is recorded here (in memory,
one dict write per request) so a queue can say which workers poll it and `explain` can say
that nobody asks for a task's queue or name.

Only the last `keep_s` (the worker timeout) matters to those questions, so older entries are
dropped: `record` sweeps once every `keep_s`, which bounds the records to the workers, queues
and names seen in the last two `keep_s` whatever the number of worker ids over time, at an
amortized cost of a few dict operations per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ANY = ""  # the key for "every queue" / "every name" (real names are never empty)


class Polls:
    def __init__(self, keep_s: float = math.inf) -> None:
        self.keep_s = keep_s  # inf: keep everything (a caller then prunes itself)
        self.by_queue: dict[str, dict[str, float]] = {}  # queue -> worker id -> last poll
        self.by_name: dict[str, float] = {}  # task name -> last poll for it
        self._next_sweep = -math.inf

    def record(
        self, worker_id: str, queues: Sequence[str] | None, names: Sequence[str] | None, now: float
    ) -> None:
        if now >= self._next_sweep:
            self._next_sweep = now + self.keep_s
            self.prune(now - self.keep_s)
        for queue in queues or (ANY,):
            self.by_queue.setdefault(queue, {})[worker_id] = now
        for name in names or (ANY,):
            self.by_name[name] = now

    def workers_polling(self, queue: str, since: float) -> int:
        """Workers that asked for `queue` (by name, or for any queue) since `since`."""
        seen = {w for w, t in self.by_queue.get(queue, {}).items() if t >= since}
        seen.update(w for w, t in self.by_queue.get(ANY, {}).items() if t >= since)
        return len(seen)

    def name_polled(self, name: str, since: float) -> bool:
        return self.by_name.get(name, -1.0) >= since or self.by_name.get(ANY, -1.0) >= since

    def size(self) -> int:
        """How many (queue, worker) and name entries are held."""
        return sum(len(ws) for ws in self.by_queue.values()) + len(self.by_name)

    def prune(self, before: float) -> None:
        """Forget polls older than `before`."""
        for queue in list(self.by_queue):
            kept = {w: t for w, t in self.by_queue[queue].items() if t >= before}
            if kept:
                self.by_queue[queue] = kept
            else:
                del self.by_queue[queue]
        self.by_name = {n: t for n, t in self.by_name.items() if t >= before}
