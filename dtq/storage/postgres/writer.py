"""Group commit on PostgreSQL: one connection owns every write transaction.

The writer takes every op waiting at that moment and runs them in ONE transaction, in a worker
thread (psycopg's sync driver: its async one is asyncio-only): `now` read from the database
once, a SAVEPOINT per op when there are several (an op that raises rolls back to it and fails
alone; a lone op that raises rolls the transaction back), the batch's counter deltas under
this server's rows, one NOTIFY if any op made a task ready, one COMMIT (`synchronous_commit`
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
from dtq.storage.postgres import shared_sql
from dtq.storage.postgres.notify import notify_ready
from dtq.storage.postgres.txn import PgTxn

if TYPE_CHECKING:
    from dtq.storage.postgres.store import PostgresStore

T = TypeVar("T")
log = structlog.get_logger("dtq.storage.postgres")

_MAX_BATCH = 1024
_RETRIES = 10  # serialization / deadlock: the batch runs again, this many times at most
_RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


class PgWriter:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn: Any = None
        self._queue: list[Pending[Any]] = []
        self._wakeup = trio.Event()
        self._closing = False
        self._stopped = trio.Event()
        self._one_thread = trio.CapacityLimiter(1)
        self.stats = WriterStats()
        self.commit_hooks: list[Callable[[int, float], None]] = []
        self._failing: str | None = None

    async def write(
        self, op: Callable[[StoreTxn], T], on_commit: Callable[[T], None] | None = None
    ) -> T:
        if self._closing:
            raise Unavailable("the server is shutting down")
        pending = Pending(op, on_commit)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.ok:
            return pending.result
        raise pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                with trio.CancelScope(shield=True):  # a commit is never left half-known
                    await self._commit(batch)
        finally:
            self._stopped.set()

    async def aclose(self) -> None:
        self._closing = True
        self._wakeup.set()
        await self._stopped.wait()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _commit(self, batch: list[Pending[Any]]) -> None:
        fns = [p.fn for p in batch]
        started = time.perf_counter()
        try:
            outcomes, made_ready = await trio.to_thread.run_sync(
                self._run_batch, fns, limiter=self._one_thread
            )
        except (psycopg.Error, OSError) as exc:
            self._fail(batch, exc)
            return
        if self._failing is not None:
            log.warning("database writes work again", after=self._failing)
            self._failing = None
        settle_committed(
            batch, outcomes, time.perf_counter() - started, self.stats, self.commit_hooks
        )
        if made_ready and self._store.changes is not None and not self._store.notifying:
            self._store.changes.fire()  # poll mode: at least this server's waiters look again

    def _fail(self, batch: list[Pending[Any]], exc: BaseException) -> None:
        reason = type(exc).__name__
        if reason != self._failing:  # once per outage, not once per batch
            log.error("database writes fail", error=str(exc), reason=reason, batch=len(batch))
            self._failing = reason
        self.close()  # the next batch connects again
        for p in batch:
            p.result = StorageError(f"the database is unavailable: {exc}".strip(),
                                    reason="database_unavailable")  # fmt: skip
            p.done.set()

    # -- in the worker thread -----------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._store.connect()
        return self._conn

    def _run_batch(
        self, fns: list[Callable[[StoreTxn], Any]]
    ) -> tuple[list[tuple[bool, Any]], bool]:
        conn = self._connection()
        for attempt in range(_RETRIES):
            try:
                return self._try_batch(conn, fns)
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
        self, conn: Any, fns: list[Callable[[StoreTxn], Any]]
    ) -> tuple[list[tuple[bool, Any]], bool]:
        outcomes: list[tuple[bool, Any]] = []
        batch = Deltas()
        made_ready = False
        # One op alone needs no savepoint: if it fails, the whole transaction is rolled back
        # instead (two round trips fewer on the one-at-a-time path: a wake-up, a submit).
        solo = len(fns) == 1
        with conn.cursor() as cur:
            now = shared_sql.db_now(cur)
            for fn in fns:
                if not solo:
                    cur.execute("SAVEPOINT op")
                view = PgTxn(self._store, cur, now)
                try:
                    result = fn(view)
                    view.flush()  # its held-back writes, still inside its savepoint
                except (*_RETRYABLE, psycopg.OperationalError, psycopg.InterfaceError):
                    raise  # the batch's, not this op's
                except Exception as exc:  # this op's own failure; the others go on
                    if isinstance(exc, psycopg.Error):
                        exc = StorageError(f"the database refused a write: {exc}",
                                           reason="database_error")  # fmt: skip
                    if solo:
                        conn.rollback()
                        return [(False, exc)], False
                    cur.execute("ROLLBACK TO SAVEPOINT op")
                    outcomes.append((False, exc))
                    continue
                if not solo:
                    cur.execute("RELEASE SAVEPOINT op")
                batch.merge(view.deltas)
                made_ready = made_ready or view.made_ready
                outcomes.append((True, result))
            self._apply_deltas(cur, batch)
            if made_ready and self._store.notifying:
                notify_ready(cur)
        conn.commit()
        return outcomes, made_ready

    def _apply_deltas(self, cur: Any, d: Deltas) -> None:
        server = self._store.server_id
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
