"""Group commit on PostgreSQL, over two connections (lanes; see `PgWriter`).

The main lane takes every op waiting at that moment and runs them in ONE transaction, in a worker
thread (psycopg's sync driver: its async one is asyncio-only): `now` read from the database
once, a SAVEPOINT per op when there are several (an op that raises rolls back to it and fails
alone; a lone op that raises rolls the transaction back), the batch's counter deltas under
the lane's own rows, one NOTIFY if any op made a task ready, one COMMIT (`synchronous_commit`
on: a 2xx means committed). A serialization failure or deadlock re-runs the whole batch; a
lost connection fails every op of it with `Unavailable` and the next batch connects again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import structlog
import trio

from dtq.errors import StorageError, Unavailable
from dtq.storage.base import StoreTxn, WriterStats
from dtq.storage.batching import Pending, settle_committed
from dtq.storage.counting import Deltas
from dtq.storage.postgres.notify import notify_ready
from dtq.storage.postgres.txn import PgTxn

if TYPE_CHECKING:
    from dtq.storage.postgres.store import PostgresStore

T = TypeVar("T")
log = structlog.get_logger("dtq.storage.postgres")

_MAX_BATCH = 1024
_RETRIES = 10  # serialization / deadlock: the batch runs again, this many times at most
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
_BATCH_START = "SELECT extract(epoch FROM now())::double precision, nextval('dtq_task_seq')"
# errors of the batch (run it again, or fail it whole), never one op's
_BATCH_ERRORS = (*_RETRYABLE, psycopg.OperationalError, psycopg.InterfaceError)


def _refused(exc: Exception) -> Exception:
    """An op's own failure as its caller sees it: the database's refusal as a StorageError."""
    if isinstance(exc, psycopg.Error):
        return StorageError(f"the database refused a write: {exc}", reason="database_error")
    return exc


class _Lane:
    """One writer connection and the thread it is used in, with counter rows of its own (so
    the two lanes' commits never wait on one row)."""

    def __init__(self, counter_id: str) -> None:
        self.conn: Any = None
        self.counter_id = counter_id
        self.thread = trio.CapacityLimiter(1)
        self.failing: str | None = None
        self.busy = False

    def drop(self) -> None:
        """Close the connection; the lane's next batch connects again."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class PgWriter:
    """Two lanes, each a connection. The main lane commits every kind of op, in call order,
    in batches; the side lane commits one unordered op at a time (`write(ordered=False)`: a
    claim, an ack) beside it, so Python prepares one commit while PostgreSQL runs the other
    (one lane alone leaves one of them idle at any moment). Row locks order the two lanes'
    transactions as they order two servers'.

    Deadlocks: a lone ack locks its task rows in id order, then its worker's row; a lone claim
    skips locked task rows and waits only on a configured queue's row or a limited queue's
    lock. So the lanes can wait on each other in a cycle only when one main-lane batch both
    holds such a row or lock and wants a task row of the side lane's op (a cancel of a task
    being claimed or acked, say); PostgreSQL then breaks the cycle (after `deadlock_timeout`)
    and the batch runs again, as it does between two servers."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._main = _Lane(store.server_id)
        self._side = _Lane(store.server_id + ".side")
        self._queue: list[Pending[Any]] = []  # in call order
        self._changed = trio.Event()  # an op arrived or a lane finished a commit
        self._closing = False
        self._stopped = trio.Event()
        self.stats = WriterStats()
        self.commit_hooks: list[Callable[[int, float], None]] = []

    async def write(
        self,
        op: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        ordered: bool = True,
    ) -> T:
        if self._closing:
            raise Unavailable("the server is shutting down")
        pending = Pending(op, on_commit, ordered=ordered)
        self._queue.append(pending)
        self._changed.set()
        await pending.done.wait()
        if pending.ok:
            return pending.result
        raise pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_lane, self._main)
                nursery.start_soon(self._run_lane, self._side)
                task_status.started()
        finally:
            self._stopped.set()

    def _take(self, lane: _Lane) -> list[Pending[Any]]:
        """The ops `lane` commits next (none: it waits)."""
        queue = self._queue
        if lane is self._side:
            # one unordered op, when the main lane has work of its own
            if self._main.busy or len(queue) > 1:
                for i, p in enumerate(queue):
                    if not p.ordered:
                        return [queue.pop(i)]
            return []
        if not queue:
            return []
        spare = None
        if not self._side.busy and len(queue) > 1:  # leave the last unordered op to the side
            spare = next((i for i in range(len(queue) - 1, -1, -1) if not queue[i].ordered),
                         None)  # fmt: skip
        kept = [] if spare is None else [queue.pop(spare)]
        batch = queue[:_MAX_BATCH]
        del queue[:_MAX_BATCH]
        queue[:0] = kept
        return batch

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            batch = self._take(lane)
            if not batch:
                if self._closing and not self._queue:
                    return
                if self._changed.is_set():
                    self._changed = trio.Event()
                await self._changed.wait()
                continue
            if self._queue:
                self._changed.set()  # the other lane may take what is left
            lane.busy = True
            try:
                with trio.CancelScope(shield=True):  # a commit is never left half-known
                    await self._commit(lane, batch)
            finally:
                lane.busy = False
                self._changed.set()

    async def aclose(self) -> None:
        self._closing = True
        self._changed.set()
        await self._stopped.wait()

    def close(self) -> None:
        self._main.drop()
        self._side.drop()

    async def _commit(self, lane: _Lane, batch: list[Pending[Any]]) -> None:
        fns = [p.fn for p in batch]
        started = time.perf_counter()
        try:
            outcomes, made_ready = await trio.to_thread.run_sync(
                self._run_batch, lane, fns, limiter=lane.thread
            )
        except (psycopg.Error, OSError) as exc:
            self._fail(lane, batch, exc)
            return
        if lane.failing is not None:
            log.warning("database writes work again", after=lane.failing)
            lane.failing = None
        settle_committed(
            batch, outcomes, time.perf_counter() - started, self.stats, self.commit_hooks
        )
        if made_ready and self._store.changes is not None and not self._store.notifying:
            self._store.changes.fire()  # poll mode: at least this server's waiters look again

    def _fail(self, lane: _Lane, batch: list[Pending[Any]], exc: BaseException) -> None:
        reason = type(exc).__name__
        if reason != lane.failing:  # once per outage, not once per batch
            log.error("database writes fail", error=str(exc), reason=reason, batch=len(batch))
            lane.failing = reason
        lane.drop()
        for p in batch:
            p.result = StorageError(f"the database is unavailable: {exc}".strip(),
                                    reason="database_unavailable")  # fmt: skip
            p.done.set()

    # -- in the worker thread -----------------------------------------------------------------
    def _run_batch(
        self, lane: _Lane, fns: list[Callable[[StoreTxn], Any]]
    ) -> tuple[list[tuple[bool, Any]], bool]:
        if lane.conn is None or lane.conn.closed:
            lane.conn = self._store.connect()
        conn = lane.conn
        for attempt in range(_RETRIES):
            try:
                return self._try_batch(conn, lane.counter_id, fns)
            except _RETRYABLE:
                conn.rollback()
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.001 * (attempt + 1))
            except BaseException:
                if not conn.closed and conn.info.transaction_status != 0:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        conn.close()
                raise
        raise AssertionError("unreachable")

    def _try_batch(
        self, conn: Any, counter_id: str, fns: list[Callable[[StoreTxn], Any]]
    ) -> tuple[list[tuple[bool, Any]], bool]:
        outcomes: list[tuple[bool, Any]] = []
        batch = Deltas()
        made_ready = False
        # One op alone needs no savepoint: if it fails, the whole transaction is rolled back
        # instead (two round trips fewer on the one-at-a-time path: a wake-up, a submit), and
        # its held-back writes go out with the COMMIT.
        solo = len(fns) == 1
        with conn.cursor() as cur:
            # the clock, and a task sequence number for the batch's first create (a round
            # trip fewer on a one-by-one submit; other batches leave a gap, which is harmless)
            with conn.pipeline():  # with the BEGIN psycopg sends first: one round trip
                cur.execute(_BATCH_START)
                now, seq = cur.fetchone()
            spare_seq = [int(seq)]
            for fn in fns:
                if not solo:
                    cur.execute("SAVEPOINT op")
                view = PgTxn(self._store, cur, now, spare_seq)
                try:
                    result = fn(view)
                    if not solo:
                        view.flush()  # its held-back writes, still inside its savepoint
                except _BATCH_ERRORS:
                    raise  # the batch's, not this op's
                except Exception as exc:  # this op's own failure; the others go on
                    if solo:
                        conn.rollback()
                        return [(False, _refused(exc))], False
                    cur.execute("ROLLBACK TO SAVEPOINT op")
                    outcomes.append((False, _refused(exc)))
                    continue
                if not solo:
                    cur.execute("RELEASE SAVEPOINT op")
                batch.merge(view.deltas)
                made_ready = made_ready or view.made_ready
                outcomes.append((True, result))
            try:
                # The rest only writes: sent in one go with the COMMIT, one round trip.
                with conn.pipeline():
                    if solo:
                        view.flush()
                    self._apply_deltas(cur, counter_id, batch)
                    if made_ready and self._store.notifying:
                        notify_ready(cur)
                    conn.commit()
            except _BATCH_ERRORS:
                raise
            except psycopg.Error as exc:
                if not solo:
                    raise  # a statement of the batch's own failed: it fails whole
                conn.rollback()  # the lone op's held-back write was refused
                return [(False, _refused(exc))], False
        return outcomes, made_ready

    def _apply_deltas(self, cur: Any, server: str, d: Deltas) -> None:
        if d.counters:
            names = sorted(d.counters)  # rows locked in name order: no deadlock between batches
            cur.execute(
                "INSERT INTO dtq_counters AS c (server, name, value) "
                "SELECT %s, n, v FROM unnest(%s::bytea[], %s::float8[]) AS u(n, v) ORDER BY n "
                "ON CONFLICT (server, name) DO UPDATE SET value = c.value + EXCLUDED.value",
                (server, [n.encode() for n in names], [float(d.counters[n]) for n in names]),
            )
        rows = sorted((day, name, float(v)) for day, f in d.days.items() for name, v in f.items())
        if rows:
            cur.execute(
                "INSERT INTO dtq_day_stats AS s (day, server, name, value) "
                "SELECT d, %s, n, v FROM unnest(%s::int[], %s::text[], %s::float8[]) "
                "AS u(d, n, v) ORDER BY d, n "
                "ON CONFLICT (day, server, name) DO UPDATE SET value = s.value + EXCLUDED.value",
                (server, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
            )
