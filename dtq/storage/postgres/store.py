"""The PostgreSQL store: the storage port over a database that several dtq servers share.

Writes go through one writer connection (`writer.PgWriter`: group commit, a savepoint per op);
reads through a small `psycopg_pool` pool, each in a worker thread (psycopg's async API is
asyncio-only). The pool is open and the schema migrated when the constructor returns, so a
store can be read before `run`. `run` adds the LISTEN connection that fires `changes` and the
publisher that relays task events between servers (`notify.py`), unless poll mode is asked for.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg
import psycopg_pool
import trio

from dtq.errors import StorageError
from dtq.models import (
    ApiKey,
    DayStats,
    Delivery,
    DeliveryRef,
    DeliveryStatus,
    QueueConfig,
    Schedule,
    Task,
    TaskEvent,
    User,
    Webhook,
    Worker,
    WorkerStatus,
)
from dtq.storage import codec
from dtq.storage.base import ChangeSignal, EventSink, PendingRow, StoreTxn, TaskQuery
from dtq.storage.postgres.listing import task_query
from dtq.storage.postgres.migrate import migrate
from dtq.storage.postgres.notify import Listener, Publisher
from dtq.storage.postgres.rows import decode_task, key
from dtq.storage.postgres.writer import PgWriter

T = TypeVar("T")
_dec_user = msgspec.msgpack.Decoder(User).decode
_dec_key = msgspec.msgpack.Decoder(ApiKey).decode
_dec_hook = msgspec.msgpack.Decoder(Webhook).decode
_dec_delivery = msgspec.msgpack.Decoder(Delivery).decode
_dec_queue = msgspec.msgpack.Decoder(QueueConfig).decode
_DAY_INT_FIELDS = frozenset(f for f in DayStats.__struct_fields__ if f != "duration_sum")
_READERS = 4
_CONNECT_TIMEOUT_S = 10
# a read waits this long for a pooled connection: when the database is gone, /ready and reads
# answer 503 within it instead of hanging
_POOL_WAIT_S = 3.0


FOLDED = "folded"  # the counter rows of servers that started before this one, summed


def _fold_counters(conn: Any) -> None:
    """Sum every server's counter and day rows into one set (`FOLDED`), so rows do not pile
    up with each server start. Sums stay exact while other servers run: a row this deletes
    is locked until commit, and a server adding to it meanwhile then inserts a fresh one.
    Best effort: a deadlock with a running server's commit leaves the rows for next time."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                "WITH gone AS (DELETE FROM dtq_counters WHERE server <> %(f)s"
                " RETURNING name, value)"
                " INSERT INTO dtq_counters AS c (server, name, value)"
                " SELECT %(f)s, name, sum(value) FROM gone GROUP BY name ORDER BY name"
                " ON CONFLICT (server, name) DO UPDATE SET value = c.value + EXCLUDED.value",
                {"f": FOLDED},
            )
            cur.execute(
                "WITH gone AS (DELETE FROM dtq_day_stats WHERE server <> %(f)s"
                " RETURNING day, name, value)"
                " INSERT INTO dtq_day_stats AS s (day, server, name, value)"
                " SELECT day, %(f)s, name, sum(value) FROM gone GROUP BY day, name"
                " ORDER BY day, name"
                " ON CONFLICT (day, server, name) DO UPDATE SET value = s.value + EXCLUDED.value",
                {"f": FOLDED},
            )
        conn.commit()
    except psycopg.errors.DeadlockDetected:
        conn.rollback()


class PostgresStore:
    """`SharedStore` on PostgreSQL (`dtq serve --store postgresql://...`)."""

    durability = "fsync"  # synchronous_commit on: a commit is on the server's disk
    shared = True

    def __init__(self, url: str, *, notify: bool = True, server_id: str | None = None) -> None:
        self.url = url
        self.notifying = notify
        # this server's counter rows (summed with every other server's on read)
        self.server_id = server_id or uuid.uuid4().hex
        self.changes: ChangeSignal | None = ChangeSignal()
        self.event_sink: EventSink | None = None
        self._writer = PgWriter(self)
        self.stats = self._writer.stats
        self.commit_hooks = self._writer.commit_hooks
        self._readers = trio.CapacityLimiter(_READERS)
        self._publisher = Publisher(url)
        try:
            with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
                migrate(conn)
                _fold_counters(conn)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open the database: {exc}", reason="database_unavailable"
                               ) from exc  # fmt: skip
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=_READERS,
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_S},
            open=True,
            name="dtq-read",
        )
        self._pool.wait(timeout=_CONNECT_TIMEOUT_S)

    def connect(self) -> Any:
        """A new connection for the writer (autocommit off, every commit synchronous)."""
        conn = psycopg.connect(self.url, connect_timeout=_CONNECT_TIMEOUT_S)
        conn.execute("SET synchronous_commit = on")
        conn.commit()
        return conn

    # -- life cycle and writes --------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.notifying:
                assert self.changes is not None
                await nursery.start(Listener(self.url, self.changes).run)
                await nursery.start(self._publisher.run)
            await self._writer.run(task_status=task_status)
            nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        await self._writer.aclose()

    def close(self) -> None:
        self._writer.close()
        self._pool.close()

    async def write(
        self,
        op: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        ordered: bool = True,
        quick: bool = False,  # (every commit is a database round trip: the writer's thread)
    ) -> T:
        return await self._writer.write(op, on_commit, ordered=ordered)

    def set_event_sink(self, sink: EventSink | None) -> None:
        self.event_sink = sink

    # -- reads ------------------------------------------------------------------------------
    def _read_now(self, fn: Callable[[Any], T]) -> T:
        # Reads change nothing, so one that met a connection the database had dropped (the
        # pool hands it out unchecked, then discards it) runs again once on a fresh one.
        for attempt in (1, 2):
            try:
                pool, wait_s = self._pool, _POOL_WAIT_S
                with pool.connection(timeout=wait_s) as conn, conn.cursor() as cur:
                    return fn(cur)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if attempt == 1:
                    continue
                failure: Exception = exc
            except psycopg_pool.PoolTimeout as exc:
                failure = exc
            break
        raise StorageError(f"the database is unavailable: {failure}",
                           reason="database_unavailable") from failure  # fmt: skip

    async def _read(self, fn: Callable[[Any], T]) -> T:
        return await trio.to_thread.run_sync(self._read_now, fn, limiter=self._readers)

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        def fn(cur: Any) -> list[Any]:
            cur.execute(sql, params)
            return list(cur.fetchall())

        return await self._read(fn)

    async def _data(self, sql: str, params: Sequence[Any] = ()) -> bytes | None:
        rows = await self._rows(sql, params)
        return bytes(rows[0][0]) if rows else None

    # -- tasks ------------------------------------------------------------------------------
    async def get_task(self, task_id: str) -> Task | None:
        raw = await self._data("SELECT data FROM dtq_tasks WHERE id = %s", (uuid.UUID(task_id),))
        return None if raw is None else decode_task(raw)

    async def list_tasks(self, query: TaskQuery) -> tuple[list[Task], int]:
        page, page_params, count, count_params = task_query(query)

        def fn(cur: Any) -> tuple[list[Task], int]:
            cur.execute(page, page_params)
            tasks = [decode_task(r[0]) for r in cur.fetchall()]
            cur.execute(count, count_params)
            return tasks, int(cur.fetchone()[0])

        return await self._read(fn)

    async def list_task_events(
        self, task_id: str, skip: int = 0, limit: int | None = None
    ) -> list[TaskEvent]:
        rows = await self._rows(
            "SELECT data FROM dtq_task_events WHERE task_id = %s ORDER BY id LIMIT %s OFFSET %s",
            (uuid.UUID(task_id), limit, skip),
        )
        return [codec.decode_event(bytes(r[0])) for r in rows]

    async def count_task_events(self, task_id: str) -> int:
        rows = await self._rows("SELECT count(*) FROM dtq_task_events WHERE task_id = %s",
                                (uuid.UUID(task_id),))  # fmt: skip
        return int(rows[0][0])

    async def counters(self) -> dict[str, float]:
        rows = await self._rows("SELECT name, sum(value) FROM dtq_counters GROUP BY name")
        return {bytes(n).decode(): float(v) for n, v in rows}

    async def day_stats(self, first_day: int, last_day: int) -> list[tuple[int, DayStats]]:
        rows = await self._rows(
            "SELECT day, name, sum(value) FROM dtq_day_stats WHERE day BETWEEN %s AND %s "
            "GROUP BY day, name ORDER BY day",
            (first_day, last_day),
        )
        days: dict[int, DayStats] = {}
        for day, name, value in rows:
            stats = days.setdefault(int(day), DayStats())
            if name in DayStats.__struct_fields__:
                setattr(stats, name, int(value) if name in _DAY_INT_FIELDS else float(value))
        return sorted(days.items())

    # -- workers ----------------------------------------------------------------------------
    async def get_worker(self, worker_id: str) -> Worker | None:
        raw = await self._data("SELECT data FROM dtq_workers WHERE id = %s", (key(worker_id),))
        return None if raw is None else codec.decode_worker(raw)

    async def list_workers(
        self, status: WorkerStatus | None, skip: int, limit: int
    ) -> tuple[list[Worker], int]:
        cond, params = ("", []) if status is None else (" WHERE status = %s", [str(status)])

        def fn(cur: Any) -> tuple[list[Worker], int]:
            cur.execute(f"SELECT data FROM dtq_workers{cond} ORDER BY id LIMIT %s OFFSET %s",
                        [*params, limit, skip])  # fmt: skip
            workers = [codec.decode_worker(bytes(r[0])) for r in cur.fetchall()]
            cur.execute(f"SELECT count(*) FROM dtq_workers{cond}", params)
            return workers, int(cur.fetchone()[0])

        return await self._read(fn)

    # -- start-up (sync) --------------------------------------------------------------------
    def _sync_tasks(self, where: str) -> list[Task]:
        def fn(cur: Any) -> list[Task]:
            cur.execute(f"SELECT data FROM dtq_tasks WHERE {where} ORDER BY created_us, seq, id")
            return [decode_task(r[0]) for r in cur.fetchall()]

        return self._read_now(fn)

    def iter_pending(self) -> Iterator[PendingRow]:
        rows = [
            PendingRow(
                t.queue,
                t.priority.rank,
                t.seq,
                t.id,
                t.name,
                math.ceil(t.run_at * 1_000_000) / 1_000_000 if t.run_at else None,
                int((t.ready_at or t.created_at) * 1_000_000) / 1_000_000,
                t.concurrency_key,
            )
            for t in self._sync_tasks("status = 'pending'")
        ]
        rows.sort(key=lambda r: (r.queue.encode(), r.rank, r.seq))
        yield from rows

    def iter_leases(self) -> Iterator[tuple[float, str, str]]:
        for t in self._sync_tasks("status = 'running'"):
            if t.lease is not None:
                yield t.lease.expires_at, t.id, t.lease.id

    def iter_running(self) -> Iterator[tuple[str, str, str | None]]:
        for t in self._sync_tasks("status = 'running'"):
            yield t.id, t.queue, t.concurrency_key

    # -- queue configs ----------------------------------------------------------------------
    async def get_queue_config(self, name: str) -> QueueConfig | None:
        raw = await self._data("SELECT data FROM dtq_queues WHERE name = %s", (key(name),))
        return None if raw is None else _dec_queue(raw)

    async def list_queue_configs(self) -> list[QueueConfig]:
        rows = await self._rows("SELECT data FROM dtq_queues ORDER BY name")
        return [_dec_queue(bytes(r[0])) for r in rows]

    # -- accounts ---------------------------------------------------------------------------
    async def get_user(self, username: str) -> User | None:
        raw = await self._data("SELECT data FROM dtq_users WHERE username = %s", (key(username),))
        return None if raw is None else _dec_user(raw)

    async def list_users(self) -> list[User]:
        rows = await self._rows("SELECT data FROM dtq_users ORDER BY username")
        return [_dec_user(bytes(r[0])) for r in rows]

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        raw = await self._data("SELECT data FROM dtq_api_keys WHERE id = %s", (key(key_id),))
        return None if raw is None else _dec_key(raw)

    async def list_api_keys(self) -> list[ApiKey]:
        rows = await self._rows("SELECT data FROM dtq_api_keys ORDER BY id")
        return [_dec_key(bytes(r[0])) for r in rows]

    async def get_setting(self, name: str) -> str | None:
        raw = await self._data("SELECT value FROM dtq_settings WHERE name = %s", (key(name),))
        return None if raw is None else raw.decode()

    # -- schedules --------------------------------------------------------------------------
    async def get_schedule(self, name: str) -> Schedule | None:
        raw = await self._data("SELECT data FROM dtq_schedules WHERE name = %s", (key(name),))
        return None if raw is None else codec.decode_schedule(raw)

    async def list_schedules(self, skip: int = 0, limit: int | None = None) -> list[Schedule]:
        rows = await self._rows("SELECT data FROM dtq_schedules ORDER BY name LIMIT %s OFFSET %s",
                                (limit, skip))  # fmt: skip
        return [codec.decode_schedule(bytes(r[0])) for r in rows]

    async def count_schedules(self) -> int:
        return int((await self._rows("SELECT count(*) FROM dtq_schedules"))[0][0])

    # -- webhooks ---------------------------------------------------------------------------
    async def list_webhooks(self) -> list[Webhook]:
        rows = await self._rows("SELECT data FROM dtq_webhooks ORDER BY id")
        return [_dec_hook(bytes(r[0])) for r in rows]

    async def get_delivery(self, ref: DeliveryRef) -> Delivery | None:
        raw = await self._data(
            "SELECT data FROM dtq_deliveries WHERE (webhook_id, created_us, id) = (%s, %s, %s)",
            (uuid.UUID(ref.webhook_id), ref.created_us, uuid.UUID(ref.id)),
        )
        return None if raw is None else _dec_delivery(raw)

    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None = None,
        newest_first: bool = True,
        skip: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Delivery], int]:
        cond = "webhook_id = %s"
        params: list[Any] = [uuid.UUID(webhook_id)]
        if status is not None:
            cond += " AND status = %s"
            params.append(str(status))
        d = "DESC" if newest_first else "ASC"

        def fn(cur: Any) -> tuple[list[Delivery], int]:
            cur.execute(f"SELECT data FROM dtq_deliveries WHERE {cond} "
                        f"ORDER BY created_us {d}, id {d} LIMIT %s OFFSET %s",
                        [*params, limit, skip])  # fmt: skip
            found = [_dec_delivery(bytes(r[0])) for r in cur.fetchall()]
            cur.execute(f"SELECT count(*) FROM dtq_deliveries WHERE {cond}", params)
            return found, int(cur.fetchone()[0])

        return await self._read(fn)

    async def due_deliveries(self, limit: int) -> list[tuple[float, DeliveryRef]]:
        rows = await self._rows(
            "SELECT due_us, webhook_id, created_us, id FROM dtq_deliveries "
            "WHERE due_us IS NOT NULL ORDER BY due_us, webhook_id, created_us, id LIMIT %s",
            (limit,),
        )
        return [(due / 1_000_000, DeliveryRef(str(w), int(c), str(i))) for due, w, c, i in rows]

    # -- shared ----------------------------------------------------------------------------
    async def next_run_at(self) -> float | None:
        rows = await self._rows(
            "SELECT min(run_at) FROM dtq_tasks WHERE status = 'pending' "
            "AND run_at > extract(epoch FROM now())::double precision"
        )
        return None if rows[0][0] is None else float(rows[0][0])

    def publish_events(self, origin: str, events: Sequence[tuple[str, Task]]) -> None:
        if self.notifying:
            self._publisher.publish(origin, events)
        elif self.changes is not None:
            self.changes.deliver_events(origin, list(events))  # poll mode: this server's own
