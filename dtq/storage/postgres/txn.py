"""`SharedTxn` on PostgreSQL: one op's view of the writer's transaction (inside the op's own
savepoint). Sync: it runs in the writer's thread, on the writer's connection."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from dtq.models import (
    ApiKey,
    Delivery,
    DeliveryRef,
    QueueConfig,
    Schedule,
    Task,
    TaskEvent,
    TaskStatus,
    User,
    Worker,
)
from dtq.storage import codec
from dtq.storage.base import LoginFailures
from dtq.storage.counting import Deltas
from dtq.storage.postgres import shared_sql
from dtq.storage.postgres.migrate import TASKS_TABLE
from dtq.storage.postgres.rows import TASK_COLUMNS, TASK_VALUES, decode_task, key, task_row, us

if TYPE_CHECKING:
    from dtq.storage.postgres.store import PostgresStore

_dec_user = msgspec.msgpack.Decoder(User).decode
_dec_delivery = msgspec.msgpack.Decoder(Delivery).decode
_dec_queue = msgspec.msgpack.Decoder(QueueConfig).decode

_TASK_UPDATE = f"UPDATE dtq_tasks SET ({TASK_COLUMNS}) = ({TASK_VALUES}) WHERE id = %s"
# Many task rows whose tags did not change, in one statement: a column array each (a row's
# tags would make a ragged 2-D array, so they are left as they are).
_SAME_TAGS = "-- same tags"  # the held-back form: a full `task_row`
_UNNEST_TYPES = (
    ("id", "text[]::uuid"),  # ids are sent as text and cast (no uuid.UUID objects in Python)
    ("seq", "bigint"), ("status", "text"), ("queue", "text"), ("name", "bytea"),
    ("priority_rank", "smallint"), ("worker_id", "bytea"), ("created_us", "bigint"),
    ("updated_us", "bigint"), ("dur_us", "bigint"), ("completed_us", "bigint"),
    ("ready_at", "float8"), ("run_at", "float8"), ("lease_expires_at", "float8"),
    ("concurrency_key", "text"), ("data", "bytea"),
)  # fmt: skip
_EVENT_INSERT = "INSERT INTO dtq_task_events (task_id, data) VALUES (%s, %s)"
# many events in one statement, ids handed out in the order they were appended
_EVENTS_INSERT = (
    "INSERT INTO dtq_task_events (task_id, data) SELECT t, d FROM "
    "unnest(%b::text[]::uuid[], %b::bytea[]) WITH ORDINALITY AS u(t, d, n) ORDER BY n"
)
_TAGS_AT = 7  # its index in `task_row`
# `t.id = ANY(ids)` beside the join: without it the planner hashes the whole table (a seq
# scan per batch) for any table of up to some 30,000 rows; with it, the rows come by the key.
_BATCH_UPDATE = (
    "UPDATE dtq_tasks AS t SET ({cols}) = ({ucols}) FROM unnest({arrays}) AS u({names}) "
    "WHERE t.id = u.id AND t.id = ANY(%b::text[]::uuid[])"
).format(
    cols=", ".join(c for c, _ in _UNNEST_TYPES[1:]),
    ucols=", ".join(f"u.{c}" for c, _ in _UNNEST_TYPES[1:]),
    arrays=", ".join(f"%b::{t}[]" for _, t in _UNNEST_TYPES),
    names=", ".join(c for c, _ in _UNNEST_TYPES),
)


class PgTxn:
    """One op's writes; counter changes are kept in `deltas` and merged only if it succeeds.

    Writes whose answer nobody needs are held back and sent together (`flush`: consecutive
    statements of one table and text as one `executemany`, one round trip in pipeline mode),
    before any read they could change and at the op's end, so a lease or ack of 100 tasks costs
    a few round trips, not hundreds. Tables share no keys or triggers, so only the order within
    a table matters, and it is kept."""

    def __init__(
        self, store: PostgresStore, cur: Any, now: float, spare_seq: list[int] | None = None
    ) -> None:
        self._store = store
        self._cur = cur
        self.now = now
        self._spare_seq = spare_seq if spare_seq is not None else []  # the batch's, shared
        self.deltas = Deltas()
        self.made_ready = False  # the batch then sends one NOTIFY
        self._pending: list[tuple[str, str, Sequence[Any]]] = []  # (table, sql, params)
        self._dirty: dict[str, set[Any]] = {}  # table -> keys with writes held back (None: any)
        # rows this op read (and so locked): nobody else can change them until the commit;
        # table -> key -> {what: row}. Task ids are kept as text (PostgreSQL casts them).
        self._seen: dict[str, dict[Any, dict[str, Any]]] = {}

    def _write(self, table: str, sql: str, params: Sequence[Any], k: Any = None) -> None:
        """Hold a write back; `k`: the row key it touches (None: any row of `table`)."""
        self._pending.append((table, sql, params))
        self._dirty.setdefault(table, set()).add(k)
        seen = self._seen.get(table)
        if seen:
            if k is None:
                del self._seen[table]
            else:
                seen.pop(k, None)

    def flush(self) -> None:
        """Send the held-back writes (the writer calls it at the op's end, in its savepoint)."""
        if not self._pending:
            return
        pending = sorted(self._pending, key=lambda w: w[0])  # stable: in order per table
        self._pending = []
        self._dirty.clear()
        i = 0
        while i < len(pending):
            _, sql, params = pending[i]
            j = i + 1
            while j < len(pending) and pending[j][1] == sql:
                j += 1
            if sql == _SAME_TAGS:
                self._update_tasks([w[2] for w in pending[i:j]])
            elif sql == _EVENT_INSERT and j - i > 1:
                rows = [w[2] for w in pending[i:j]]
                self._cur.execute(_EVENTS_INSERT, ([r[0] for r in rows], [r[1] for r in rows]))
            elif j - i == 1:
                self._cur.execute(sql, params)
            else:
                self._cur.executemany(sql, [w[2] for w in pending[i:j]])
            i = j

    def _update_tasks(self, rows: list[Sequence[Any]]) -> None:
        if len(rows) == 1:
            self._cur.execute(_TASK_UPDATE, (*rows[0], rows[0][0]))
            return
        latest = {row[0]: row for row in rows}  # a row changed twice: its last version
        columns = list(zip(*((*r[:_TAGS_AT], *r[_TAGS_AT + 1 :]) for r in latest.values()),
                           strict=True))  # fmt: skip
        arrays = [list(c) for c in columns]
        self._cur.execute(_BATCH_UPDATE, [*arrays, arrays[0]])

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        self.flush()
        self._cur.execute(sql, params)
        return self._cur.fetchone()

    def _row(self, table: str, col: str, k: Any, what: str = "data") -> Any:
        """The row of `table` whose `col` is `k`, locked until the batch commits (so two
        servers' read-then-write of one row take turns, and none overwrites the other's).
        Held-back writes go first only if they touch it."""
        cached = self._seen.get(table, {}).get(k)
        if cached is not None and what in cached:
            return cached[what]
        dirty = self._dirty.get(table)
        if dirty is not None and (k in dirty or None in dirty):
            self.flush()
        self._cur.execute(f"SELECT {what} FROM {table} WHERE {col} = %s FOR UPDATE", (k,))
        row = self._cur.fetchone()
        if row is not None:  # an absent row is not locked: another server may insert it
            self._seen.setdefault(table, {}).setdefault(k, {})[what] = row
        return row

    def _lock(self, name: str) -> None:
        """Serialize read-then-insert on `name` across servers until the batch commits."""
        # text cannot hold NUL (a username may): two names sharing a lock only take turns
        self._cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                          (name.replace("\x00", "\\0"),))  # fmt: skip

    def _deleted(self, sql: str, params: Sequence[Any]) -> bool:
        self.flush()
        self._cur.execute(sql, params)
        return bool(self._cur.rowcount)

    # -- tasks ------------------------------------------------------------------------------
    def _locked_row(self, table: str, col: str, k: Any, lock: str, what: str = "data") -> Any:
        """`_row`, for rows made by read-then-insert: when absent, take the advisory lock
        `lock` (every server takes it before inserting one) and look again; then the
        answer stays true until the commit, absent or not."""
        cached = self._seen.get(table, {}).get(k)
        if cached is not None and what in cached:  # absent under the lock counts: no 2nd lock
            return cached[what]
        row = self._row(table, col, k, what)
        if row is None:
            self._lock(lock)
            row = self._row(table, col, k, what)
            self._seen.setdefault(table, {}).setdefault(k, {})[what] = row
        return row

    def prefetch_tasks(self, task_ids: Sequence[str]) -> None:
        seen = self._seen.setdefault("dtq_tasks", {})
        ids = sorted({t for t in task_ids if "data" not in seen.get(t, ())})
        if not ids:
            return
        if "dtq_tasks" in self._dirty:
            self.flush()
        # locked in id order, as every batch does: two servers' acks never deadlock on them
        self._cur.execute("SELECT id::text, data FROM dtq_tasks "
                          "WHERE id = ANY(%b::text[]::uuid[]) ORDER BY id FOR UPDATE",
                          (ids,))  # fmt: skip
        for tid, data in self._cur.fetchall():
            seen.setdefault(tid, {})["data"] = (data,)

    def get_task(self, task_id: str) -> Task | None:
        row = self._row("dtq_tasks", "id", task_id)
        return None if row is None else decode_task(row[0])

    def next_seq(self) -> int:
        if self._spare_seq:  # taken with the batch's clock, before any other this batch
            return self._spare_seq.pop()
        self._cur.execute("SELECT nextval('dtq_task_seq')")  # no held-back write changes it
        return int(self._cur.fetchone()[0])

    def insert_task(self, task: Task) -> Task:
        self._write("dtq_tasks", f"INSERT INTO dtq_tasks ({TASK_COLUMNS}) VALUES ({TASK_VALUES})",
                    task_row(task), task.id)  # fmt: skip
        if task.status == TaskStatus.PENDING:
            self.made_ready = True
        self.deltas.add("total")
        self.deltas.task_status(task.queue, task.status, 1)
        self.deltas.day(task.created_at, "created")
        if (sink := self._store.event_sink) is not None:
            sink(self, None, task)
        return task

    def replace_task(self, old: Task, new: Task) -> None:
        row = task_row(new)
        if old.tags == new.tags:
            self._write("dtq_tasks", _SAME_TAGS, row, row[0])
        else:
            self._write("dtq_tasks", _TASK_UPDATE, (*row, row[0]), row[0])
        if new.status == TaskStatus.PENDING:
            self.made_ready = True
        if old.status != new.status or old.queue != new.queue:
            self.deltas.task_status(old.queue, old.status, -1)
            self.deltas.task_status(new.queue, new.status, 1)
        if (sink := self._store.event_sink) is not None:
            sink(self, old, new)

    def delete_task(self, task: Task) -> None:
        self._remove_task(task, notify=True)

    def prune_task(self, task: Task) -> None:
        self._remove_task(task, notify=False)

    def _remove_task(self, task: Task, *, notify: bool) -> None:
        tid = task.id
        self._write("dtq_tasks", "DELETE FROM dtq_tasks WHERE id = %s", (tid,), tid)
        self._write("dtq_task_events", "DELETE FROM dtq_task_events WHERE task_id = %s", (tid,))
        if task.idempotency_key:
            self._write("dtq_idempotency", "DELETE FROM dtq_idempotency WHERE key = %s",
                        (key(task.idempotency_key),))  # fmt: skip
        self.deltas.task_removed(task)
        if notify and (sink := self._store.event_sink) is not None:
            sink(self, task, None)

    def finished_tasks(
        self,
        status: TaskStatus,
        *,
        after: tuple[int, int] | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int = 500,
    ) -> list[Task]:
        where = ["status = %s", "completed_us IS NOT NULL"]
        params: list[Any] = [str(status)]
        if since is not None:
            where.append("completed_us >= %s")
            params.append(us(since))
        if before is not None:
            where.append("completed_us < %s")
            params.append(us(before))
        if after is not None:
            where.append("(completed_us, seq) > (%s, %s)")
            params.extend(after)
        params.append(limit)
        self.flush()
        self._cur.execute(
            f"SELECT data FROM dtq_tasks WHERE {' AND '.join(where)} "
            "ORDER BY completed_us, seq LIMIT %s",
            params,
        )
        return [decode_task(r[0]) for r in self._cur.fetchall()]

    # -- history ----------------------------------------------------------------------------
    def append_task_event(self, task_id: str, event: TaskEvent) -> None:
        self._write("dtq_task_events", _EVENT_INSERT,
                    (task_id, codec.encode(event)))  # fmt: skip

    # -- schedules --------------------------------------------------------------------------
    def get_schedule(self, name: str) -> Schedule | None:
        row = self._row("dtq_schedules", "name", key(name))
        return None if row is None else codec.decode_schedule(bytes(row[0]))

    def put_schedule(self, schedule: Schedule) -> None:
        self._upsert("dtq_schedules", "name", key(schedule.name), codec.encode(schedule))

    def delete_schedule(self, name: str) -> bool:
        return self._deleted("DELETE FROM dtq_schedules WHERE name = %s", (key(name),))

    def _upsert(self, table: str, col: str, k: Any, data: bytes) -> None:
        self._write(
            table,
            f"INSERT INTO {table} ({col}, data) VALUES (%s, %s) "
            f"ON CONFLICT ({col}) DO UPDATE SET data = EXCLUDED.data",
            (k, data),
            k,
        )

    def count(self, name: str, n: float = 1) -> None:
        self.deltas.add(name, n)

    def count_day(self, t: float, name: str, n: float = 1) -> None:
        self.deltas.day(t, name, n)

    # -- idempotency ------------------------------------------------------------------------
    def get_idempotent(self, key_: str) -> tuple[str, bytes] | None:
        # two servers creating under one key: one inserts, the other then sees it
        row = self._locked_row("dtq_idempotency", "key", key(key_), "dtq-idem:" + key_,
                               "task_id, fingerprint")  # fmt: skip
        return None if row is None else (str(row[0]), bytes(row[1]))

    def put_idempotent(self, key_: str, task_id: str, fingerprint: bytes) -> None:
        self._write(
            "dtq_idempotency",
            "INSERT INTO dtq_idempotency (key, task_id, fingerprint) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET task_id = EXCLUDED.task_id, "
            "fingerprint = EXCLUDED.fingerprint",
            (key(key_), task_id, bytes(fingerprint)),
            key(key_),
        )

    # -- workers ----------------------------------------------------------------------------
    def get_worker(self, worker_id: str) -> Worker | None:
        # a first heartbeat on two servers: one inserts, the other then updates
        row = self._locked_row("dtq_workers", "id", key(worker_id), "dtq-worker:" + worker_id)
        return None if row is None else codec.decode_worker(bytes(row[0]))

    def put_worker(self, old: Worker | None, new: Worker) -> None:
        self._write(
            "dtq_workers",
            "INSERT INTO dtq_workers (id, status, data) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, data = EXCLUDED.data",
            (key(new.worker_id), str(new.status), codec.encode(new)),
            key(new.worker_id),
        )
        self.deltas.worker_changed(old, new)

    # -- accounts ---------------------------------------------------------------------------
    def get_user(self, username: str) -> User | None:
        row = self._row("dtq_users", "username", key(username))
        return None if row is None else _dec_user(bytes(row[0]))

    def put_user(self, user: User) -> None:
        self._upsert("dtq_users", "username", key(user.username), codec.encode(user))

    def delete_user(self, username: str) -> bool:
        return self._deleted("DELETE FROM dtq_users WHERE username = %s", (key(username),))

    def put_api_key(self, api_key: ApiKey) -> None:
        self._upsert("dtq_api_keys", "id", key(api_key.key_id), codec.encode(api_key))

    def delete_api_key(self, key_id: str) -> bool:
        return self._deleted("DELETE FROM dtq_api_keys WHERE id = %s", (key(key_id),))

    def get_setting(self, name: str) -> str | None:
        # the signing secret is made once, by one server
        row = self._locked_row("dtq_settings", "name", key(name), "dtq-setting:" + name, "value")
        return None if row is None else bytes(row[0]).decode()

    def put_setting(self, name: str, value: str) -> None:
        self._write(
            "dtq_settings",
            "INSERT INTO dtq_settings (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (key(name), value.encode()),
            key(name),
        )

    # -- webhooks and deliveries ------------------------------------------------------------
    def put_webhook(self, hook: Any) -> None:
        self._upsert("dtq_webhooks", "id", uuid.UUID(hook.id), codec.encode(hook))

    def delete_webhook(self, webhook_id: str) -> bool:
        return self._deleted("DELETE FROM dtq_webhooks WHERE id = %s", (uuid.UUID(webhook_id),))

    @staticmethod
    def _ref(ref: DeliveryRef) -> tuple[uuid.UUID, int, uuid.UUID]:
        return uuid.UUID(ref.webhook_id), ref.created_us, uuid.UUID(ref.id)

    def get_delivery(self, ref: DeliveryRef) -> Delivery | None:
        row = self._one("SELECT data FROM dtq_deliveries WHERE (webhook_id, created_us, id) = "
                        "(%s, %s, %s) FOR UPDATE", self._ref(ref))  # fmt: skip
        return None if row is None else _dec_delivery(bytes(row[0]))

    def put_delivery(self, old: Delivery | None, new: Delivery) -> None:
        due = None if new.next_attempt_at is None else us(new.next_attempt_at)
        self._write(
            "dtq_deliveries",
            "INSERT INTO dtq_deliveries (webhook_id, created_us, id, status, due_us, data) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (webhook_id, created_us, id) DO UPDATE "
            "SET status = EXCLUDED.status, due_us = EXCLUDED.due_us, data = EXCLUDED.data",
            (*self._ref(new.ref), str(new.status), due, codec.encode(new)),
        )

    def delete_delivery(self, delivery: Delivery) -> None:
        self._write("dtq_deliveries", "DELETE FROM dtq_deliveries WHERE "
                    "(webhook_id, created_us, id) = (%s, %s, %s)", self._ref(delivery.ref))  # fmt: skip

    # -- queue configs ----------------------------------------------------------------------
    def get_queue_config(self, name: str) -> QueueConfig | None:
        row = self._row("dtq_queues", "name", key(name))
        return None if row is None else _dec_queue(bytes(row[0]))

    def put_queue_config(self, config: QueueConfig) -> None:
        self._upsert("dtq_queues", "name", key(config.name), codec.encode(config))

    def delete_queue_config(self, name: str) -> bool:
        return self._deleted("DELETE FROM dtq_queues WHERE name = %s", (key(name),))

    # -- claims (`SharedTxn`) ---------------------------------------------------------------
    def claim_ready(
        self, queues: frozenset[str] | None, names: frozenset[str] | None, limit: int
    ) -> list[Task]:
        self.flush()
        rows = shared_sql.claim_ready(self._cur, self.now, queues, names, limit,
                                      table=TASKS_TABLE, names_bytes=True)  # fmt: skip
        return [decode_task(r) for r in rows]

    def claim_expired(self, limit: int) -> list[Task]:
        self.flush()
        rows = shared_sql.claim_expired(self._cur, self.now, limit, table=TASKS_TABLE)
        return [decode_task(r) for r in rows]

    def take_lead(self, name: str, holder: str, ttl_s: float) -> bool:
        self.flush()
        return shared_sql.take_lead(self._cur, self.now, name, holder, ttl_s)

    def lock_queue(self, queue: str) -> None:
        self.flush()
        shared_sql.lock_queue(self._cur, queue)

    def count_running(self, queue: str, concurrency_key: str | None = None) -> int:
        self.flush()
        return shared_sql.count_running(self._cur, queue, concurrency_key, table=TASKS_TABLE)

    def take_tokens(self, queue: str, rate_per_s: float, wanted: int) -> int:
        self.flush()
        return shared_sql.take_tokens(self._cur, self.now, queue, rate_per_s, wanted)

    def add_hits(self, hits: Sequence[tuple[str, float, int]]) -> list[int]:
        self.flush()
        return shared_sql.add_hits(self._cur, self.now, hits)

    def login_failures(self, username: str) -> LoginFailures | None:
        row = self._locked_row("dtq_login_failures", "username", key(username),
                               "dtq-login:" + username, "failures, last_s, locked_until_s")  # fmt: skip
        return None if row is None else (int(row[0]), float(row[1]), float(row[2]))

    def put_login_failures(self, username: str, record: LoginFailures, forget_at: float) -> None:
        self._write(
            "dtq_login_failures",
            "INSERT INTO dtq_login_failures (username, failures, last_s, locked_until_s, "
            "forget_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (username) DO UPDATE SET "
            "failures = EXCLUDED.failures, last_s = EXCLUDED.last_s, "
            "locked_until_s = EXCLUDED.locked_until_s, forget_at = EXCLUDED.forget_at",
            (key(username), *record, forget_at),
            key(username),
        )

    def clear_login_failures(self, username: str) -> None:
        self._write("dtq_login_failures", "DELETE FROM dtq_login_failures WHERE username = %s",
                    (key(username),), key(username))  # fmt: skip

    def forget_login_failures(self) -> None:
        self._write("dtq_login_failures", "DELETE FROM dtq_login_failures WHERE forget_at <= %s",
                    (self.now,))  # fmt: skip
