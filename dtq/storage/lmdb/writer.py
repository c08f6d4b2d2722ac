"""Group commit for the LMDB backend: one writer owns every write transaction.

Callers `await writer.write(op)`. The writer takes every operation waiting at that moment,
runs them in ONE LMDB transaction in ONE worker thread (begin, write and commit in the same
thread: stack-findings trap 3), fsyncs once, then resolves them all. A caller returns only
after its transaction is durable, so a 2xx built on that return is durable too.

A quick op (`write(op, quick=True)`: one task's create and the like) that is alone in its
batch, while commits are quick, commits on the trio thread instead: with nobody else writing
there is nothing to overlap, and the two thread hand-offs (there and back, each a wake-up of a
sleeping thread) cost a sequential producer ~0.1 ms per write and an idle server's first write
~0.3 ms. Other ops (a purge, a prune, a batch ack: they may take tens of ms) always go to the
thread, and once commits slow down (a busy or slow disk) so does every batch, so the event loop
never waits long on the disk.

With the write-ahead log (`dtq.storage.lmdb.logged`), the writer also starts each checkpoint
between two batches; its sync runs in another thread while the commits go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import structlog
import trio

from dtq.clock import Clock, TrioClock
from dtq.errors import StorageError, Unavailable
from dtq.storage.base import StoreTxn, WriterStats
from dtq.storage.batching import Pending, settle_committed
from dtq.storage.faults import write_failure
from dtq.storage.lmdb.logged import CHECKPOINT_INTERVAL_S

if TYPE_CHECKING:
    from dtq.storage.lmdb.logged import CommitLog
    from dtq.storage.lmdb.store import LmdbStore

T = TypeVar("T")
log = structlog.get_logger("dtq.writer")

_MAX_BATCH = 4096
# A lone quick op commits on the trio thread while the commits' average stays below this.
INLINE_COMMIT_MAX_S = 0.002
_AVERAGE_WEIGHT = 0.25  # of the newest commit in that average


class GroupCommitWriter:
    def __init__(self, store: LmdbStore, clock: Clock | None) -> None:
        self._store = store
        self._clock = clock  # None: a TrioClock, made when the writer starts
        self._queue: list[Pending[Any]] = []
        self._wakeup = trio.Event()
        self._closing = False
        self._stopped = trio.Event()
        self._one_thread = trio.CapacityLimiter(1)
        self.stats = WriterStats()
        self._failing: str | None = (
            None  # details.reason of the last failed commit, until one works
        )
        self.commit_hooks: list[Callable[[int, float], None]] = []  # (batch size, seconds)
        self.recent_commit_s = 0.0  # running average of commit times: inline or thread
        self._checkpointing: trio.Event | None = None  # set when the one in flight ends
        self.checkpoint_interval_s = CHECKPOINT_INTERVAL_S
        # (ok, seconds) after each background checkpoint's sync and record
        self.checkpoint_hooks: list[Callable[[bool, float], None]] = []
        self._checkpointed_at = 0.0  # trio.current_time() when the last checkpoint began

    async def write(
        self,
        op: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        quick: bool = False,
    ) -> T:
        """Run `op` in the next group commit and return its result once durable.

        `on_commit(result)` runs on the trio thread right after the commit, before any other
        caller resumes, so in-memory state follows commit order.
        """
        if self._closing:
            raise Unavailable("the server is shutting down")
        pending = Pending(op, on_commit, quick=quick)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.ok:
            return pending.result
        raise pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._clock is None:
            self._clock = TrioClock()
        try:
            async with trio.open_nursery() as nursery:  # a checkpoint's sync, in the background
                task_status.started()
                await self._loop(nursery)
        finally:
            self._stopped.set()

    async def _loop(self, nursery: trio.Nursery) -> None:
        commit_log = self._store.log
        self._checkpointed_at = trio.current_time()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup = trio.Event()
                with trio.move_on_after(self._idle_s(commit_log)):
                    await self._wakeup.wait()
            else:
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                await self._commit(batch)
            if commit_log is not None and self._checkpoint_due(commit_log):
                await self._begin_checkpoint(commit_log, nursery)

    def _idle_s(self, commit_log: CommitLog | None) -> float:
        """How long to wait for a write before a checkpoint is due."""
        if commit_log is None or not commit_log.uncheckpointed:
            return math.inf
        since = trio.current_time() - self._checkpointed_at
        return max(0.0, self.checkpoint_interval_s - since)

    def _checkpoint_due(self, commit_log: CommitLog) -> bool:
        if self._checkpointing is not None or not commit_log.uncheckpointed:
            return False
        since = trio.current_time() - self._checkpointed_at
        return commit_log.wal.checkpoint_due or since >= self.checkpoint_interval_s

    async def _begin_checkpoint(self, commit_log: CommitLog, nursery: trio.Nursery) -> None:
        try:
            snap = await trio.to_thread.run_sync(
                commit_log.begin_checkpoint, limiter=self._one_thread
            )
        except (lmdb.Error, OSError, RuntimeError) as exc:
            log.error("checkpoint failed", error=str(exc))
            return
        finally:
            self._checkpointed_at = trio.current_time()  # (after a failure: try again then)
        done = self._checkpointing = trio.Event()

        async def finish() -> None:
            started = time.perf_counter()
            ok = False
            try:
                await trio.to_thread.run_sync(commit_log.finish_checkpoint, snap)
            except (OSError, ValueError) as exc:  # (ValueError: a damaged checkpoint file)
                # The last good checkpoint stays, and so do the records after it.
                log.error("checkpoint failed", error=str(exc))
                commit_log.checkpoint_failed(snap)
            else:
                commit_log.hold(snap)
                ok = True
            finally:
                self._checkpointing = None
                done.set()
            for hook in self.checkpoint_hooks:
                hook(ok, time.perf_counter() - started)

        nursery.start_soon(finish)

    async def aclose(self) -> None:
        """Stop taking new writes, flush the queued ones, wait for the writer to finish."""
        self._closing = True
        self._wakeup.set()
        await self._stopped.wait()

    async def _commit(self, batch: list[Pending[Any]]) -> None:
        fns = [p.fn for p in batch]
        clock = self._clock
        assert clock is not None, "the writer runs"
        while True:
            started = time.perf_counter()
            try:
                if (
                    len(batch) == 1
                    and batch[0].quick
                    and self.recent_commit_s < INLINE_COMMIT_MAX_S
                    and not self._checkpoint_first()
                    and self._take_token()
                ):
                    try:
                        outcomes = self._store.run_batch(fns, clock.now())
                    finally:
                        self._one_thread.release()
                else:
                    # Never abandon: a cancelled caller must not leave a commit half-known.
                    outcomes = await trio.to_thread.run_sync(
                        self._store.run_batch, fns, clock.now(), limiter=self._one_thread
                    )
            except lmdb.MapFullError:
                # No transaction is open now (reads never span an await), so growing is safe
                # once a checkpoint in flight has its pin (growing ends it: the next batch
                # then checkpoints first, in the thread).
                if self._checkpointing is not None:
                    await self._checkpointing.wait()
                try:
                    size = self._store.grow()
                except lmdb.Error as exc:  # no memory or address space for a larger map
                    self._fail(batch, write_failure(exc, self._store.path, growing=True))
                    return
                log.info("storage map grown", map_size_bytes=size)
                continue
            except (lmdb.Error, OSError) as exc:
                # The transaction was aborted: nothing of it is stored, nothing before it is
                # touched (LMDB never overwrites committed pages), and the next batch gets a
                # fresh transaction, so writes work again as soon as the disk does.
                self._fail(batch, write_failure(exc, self._store.path))
                return
            break
        self._settle(batch, outcomes, started)

    def _checkpoint_first(self) -> bool:
        """The next batch must checkpoint before it commits (the map grew): not a job for
        the event loop."""
        commit_log = self._store.log
        return commit_log is not None and commit_log.pin_lost

    def _take_token(self) -> bool:
        """The one-writer token without waiting (tests hold it to stop commits)."""
        try:
            self._one_thread.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def _settle(self, batch: list[Pending[Any]], outcomes: list[Any], started: float) -> None:
        elapsed_s = time.perf_counter() - started
        self.recent_commit_s += (elapsed_s - self.recent_commit_s) * _AVERAGE_WEIGHT
        if self._failing is not None:
            log.warning("storage writes work again", after=self._failing)
            self._failing = None
        settle_committed(batch, outcomes, elapsed_s, self.stats, self.commit_hooks)

    def _fail(self, batch: list[Pending[Any]], err: StorageError) -> None:
        reason = err.details.get("reason")
        if reason != self._failing:  # once per outage, not once per batch
            log.error("storage writes fail", error=err.message, reason=reason, batch=len(batch))
            self._failing = str(reason)
        for p in batch:
            p.result = err
            p.done.set()
