"""The SQL behind `SharedTxn` on PostgreSQL: claims, the lead, shared rate-limit counters.

Each function takes a psycopg cursor inside the commit batch's transaction (the op's
savepoint) and runs one statement; the PostgreSQL `StoreTxn` delegates its `claim_ready`,
`claim_expired`, `take_lead` and `add_hits` here, and reads `now` from the database once per
batch (`db_now`; the store's writer reads it with the batch's first statement).

What the task statements expect of the tasks table (the store's schema may
name its table differently: pass `table=`): the row's `data` is the encoded Task, and the
columns the claim filters and orders by are kept beside it:

    id uuid primary key, status text, queue text, name text, priority_rank smallint,
    ready_at double precision (ready_at, else created_at), seq bigint,
    run_at double precision null, lease_expires_at double precision null,
    concurrency_key text null (for `count_running` per key), data bytea

with the partial indexes `CLAIM_INDEXES` so a claim reads only the rows it returns.
`LEADS_TABLE` and `HITS_TABLE` are this module's own (`SCHEMA`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

READY_ORDER = "priority_rank, ready_at, seq"

SCHEMA = """
CREATE TABLE IF NOT EXISTS dtq_leads (
    name text PRIMARY KEY,
    holder text NOT NULL,
    until double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS dtq_rate_hits (
    key text PRIMARY KEY,
    total bigint NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS dtq_rate_hits_expiry ON dtq_rate_hits (expires_at);
CREATE TABLE IF NOT EXISTS dtq_queue_buckets (
    queue text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated double precision NOT NULL
);
"""

CLAIM_INDEXES = """
CREATE INDEX IF NOT EXISTS {table}_ready ON {table} ({order}) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS {table}_leases ON {table} (lease_expires_at) WHERE status = 'running';
"""


def db_now(cur: Any) -> float:
    """The transaction's time by the database's clock (`now()` is fixed per transaction), so
    every server judges due tasks and expired leases alike."""
    cur.execute("SELECT extract(epoch FROM now())::double precision")
    return float(cur.fetchone()[0])


def claim_ready(
    cur: Any,
    now: float,
    queues: frozenset[str] | None,
    names: frozenset[str] | None,
    limit: int,
    *,
    table: str = "tasks",
    names_bytes: bool = False,
) -> list[bytes]:
    """The `data` of up to `limit` due pending rows, in dispatch order, locked until the
    transaction ends; rows other transactions hold are skipped, never waited for.
    `names_bytes`: the table keeps names as bytea (their UTF-8), as the store's does."""
    where = ["status = 'pending'", "(run_at IS NULL OR run_at <= %(now)s)"]
    params: dict[str, Any] = {"now": now, "limit": limit}
    if queues is not None:
        where.append("queue = ANY(%(queues)s)")
        params["queues"] = sorted(queues)
    if names is not None:
        if names_bytes:
            where.append("name = ANY(%(names)s::bytea[])")
            params["names"] = sorted(n.encode() for n in names)
        else:
            where.append("name = ANY(%(names)s)")
            params["names"] = sorted(names)
    cur.execute(
        f"SELECT data FROM {table} WHERE {' AND '.join(where)} "
        f"ORDER BY {READY_ORDER} LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
        params,
    )
    return [bytes(row[0]) for row in cur.fetchall()]


def claim_expired(cur: Any, now: float, limit: int, *, table: str = "tasks") -> list[bytes]:
    """The `data` of up to `limit` running rows whose lease ran out by `now`, soonest first."""
    cur.execute(
        f"SELECT data FROM {table} WHERE status = 'running' AND lease_expires_at <= %s "
        "ORDER BY lease_expires_at, seq LIMIT %s FOR UPDATE SKIP LOCKED",
        (now, limit),
    )
    return [bytes(row[0]) for row in cur.fetchall()]


def take_lead(cur: Any, now: float, name: str, holder: str, ttl_s: float) -> bool:
    """One statement: take a free or lapsed lead, or renew our own; True if we hold it."""
    cur.execute(
        "INSERT INTO dtq_leads AS l (name, holder, until) VALUES (%s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until "
        "WHERE l.until <= %s OR l.holder = EXCLUDED.holder RETURNING holder",
        (name, holder, now + ttl_s, now),
    )
    row = cur.fetchone()
    return row is not None and row[0] == holder


def lock_queue(cur: Any, queue: str) -> None:
    """Claims on one limited queue, one transaction at a time across servers (released at
    commit or rollback)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("dtq-queue:" + queue,))


def count_running(
    cur: Any, queue: str, concurrency_key: str | None = None, *, table: str = "tasks"
) -> int:
    """Running tasks of a queue (and key): the partial index on running rows serves it."""
    if concurrency_key is None:
        cur.execute(f"SELECT count(*) FROM {table} WHERE status = 'running' AND queue = %s",
                    (queue,))  # fmt: skip
    else:
        cur.execute(
            f"SELECT count(*) FROM {table} WHERE status = 'running' AND queue = %s "
            "AND concurrency_key = %s",
            (queue, concurrency_key),
        )
    return int(cur.fetchone()[0])


def take_tokens(cur: Any, now: float, queue: str, rate_per_s: float, wanted: int) -> int:
    """The queue's token bucket in one row, refilled to `now`; under `lock_queue`."""
    capacity = max(rate_per_s, 1.0)
    cur.execute("SELECT tokens, updated FROM dtq_queue_buckets WHERE queue = %s FOR UPDATE",
                (queue,))  # fmt: skip
    row = cur.fetchone()
    tokens, updated = (capacity, now) if row is None else (float(row[0]), float(row[1]))
    tokens = min(capacity, tokens + max(now - updated, 0.0) * rate_per_s)
    taken = min(wanted, int(tokens))
    cur.execute(
        "INSERT INTO dtq_queue_buckets (queue, tokens, updated) VALUES (%s, %s, %s) "
        "ON CONFLICT (queue) DO UPDATE SET tokens = EXCLUDED.tokens, updated = EXCLUDED.updated",
        (queue, tokens - taken, now),
    )
    return taken


def add_hits(cur: Any, now: float, hits: Sequence[tuple[str, float, int]]) -> list[int]:
    """Add each (key, expires_at, n) and return the totals in order; lapsed counters go.
    Rows are upserted in key order, so two servers flushing at once never deadlock."""
    if not hits:
        return []
    cur.execute("DELETE FROM dtq_rate_hits WHERE expires_at <= %s", (now,))
    ordered = sorted(hits)
    cur.execute(
        "INSERT INTO dtq_rate_hits AS h (key, total, expires_at) "
        "SELECT k, n, e FROM unnest(%s::text[], %s::bigint[], %s::float8[]) AS u(k, n, e) "
        "ORDER BY k "
        "ON CONFLICT (key) DO UPDATE SET total = h.total + EXCLUDED.total "
        "RETURNING key, total",
        ([k for k, _, _ in ordered], [n for _, _, n in ordered], [e for _, e, _ in ordered]),
    )
    totals = {key: int(total) for key, total in cur.fetchall()}
    return [totals[key] for key, _, _ in hits]
