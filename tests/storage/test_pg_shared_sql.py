"""The shared store's SQL on a real PostgreSQL: two connections claiming at once never get one
row twice, claims come in dispatch order, one holder per lead, rate counters add up."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

if os.environ.get("CI"):
    import psycopg  # under CI a missing driver is a failure, not a skip
else:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from dtq.storage.postgres import shared_sql as sql

from ._pg_cluster import pg_url

__all__ = ["pg_url"]

TABLE = """
CREATE TABLE {t} (
    id uuid PRIMARY KEY, status text NOT NULL, queue text NOT NULL, name text NOT NULL,
    priority_rank smallint NOT NULL, ready_at double precision NOT NULL, seq bigint NOT NULL,
    run_at double precision, lease_expires_at double precision, data bytea NOT NULL
)
"""


def _table(url: str, rows: list[tuple[str, str, int, int, float | None]]) -> str:
    """A fresh tasks table holding (queue, name, rank, seq, run_at) pending rows."""
    name = f"tasks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(TABLE.format(t=name))
        cur.execute(sql.CLAIM_INDEXES.format(table=name, order=sql.READY_ORDER))
        cur.execute(sql.SCHEMA)
        for queue, task_name, rank, seq, run_at in rows:
            cur.execute(
                f"INSERT INTO {name} VALUES (%s, 'pending', %s, %s, %s, 1.0, %s, %s, NULL, %s)",
                (uuid.uuid4(), queue, task_name, rank, seq, run_at, str(seq).encode()),
            )
    return name


def test_two_servers_claiming_at_once_never_share_a_row(pg_url: str) -> None:
    table = _table(pg_url, [("default", "job", 1, i, None) for i in range(2000)])
    claimed: list[list[int]] = [[], []]

    def server(n: int) -> None:
        with psycopg.connect(pg_url) as conn:
            while True:
                with conn.transaction(), conn.cursor() as cur:
                    now = sql.db_now(cur)
                    rows = sql.claim_ready(cur, now, None, None, 25, table=table)
                    if not rows:
                        return
                    seqs = [int(r) for r in rows]
                    cur.execute(f"UPDATE {table} SET status = 'running' WHERE seq = ANY(%s)",
                                (seqs,))  # fmt: skip
                claimed[n].extend(seqs)

    threads = [threading.Thread(target=server, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == list(range(2000))
    assert claimed[0] and claimed[1]  # both got work: skipped, not blocked


def test_claims_come_in_dispatch_order_and_filtered(pg_url: str) -> None:
    table = _table(
        pg_url,
        [
            ("q1", "a", 2, 1, None),
            ("q1", "a", 0, 2, None),
            ("q2", "b", 1, 3, None),
            ("q1", "a", 1, 4, None),
            ("q1", "a", 0, 5, 4.0e9),
        ],
    )  # fmt: skip  (5: scheduled later)
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        now = sql.db_now(cur)
        assert [int(r) for r in sql.claim_ready(cur, now, None, None, 10, table=table)] == [
            2,
            3,
            4,
            1,
        ]
        conn.rollback()
        got = sql.claim_ready(cur, now, frozenset({"q1"}), frozenset({"a"}), 2, table=table)
        assert [int(r) for r in got] == [2, 4]


def test_claim_expired_takes_only_lapsed_leases(pg_url: str) -> None:
    table = _table(pg_url, [("default", "job", 1, i, None) for i in range(3)])
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        now = sql.db_now(cur)
        cur.execute(
            f"UPDATE {table} SET status = 'running', lease_expires_at = %s - seq + 1", (now,)
        )  # fmt: skip  (seq 0: not yet, 1: now, 2: a second ago)
        assert [int(r) for r in sql.claim_expired(cur, now, 10, table=table)] == [2, 1]


def test_one_holder_per_lead_and_takeover_after_it_lapses(pg_url: str) -> None:
    _table(pg_url, [])
    lead = f"lead-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.cursor() as cur:
        assert sql.take_lead(cur, 100.0, lead, "a", 10.0)
        assert not sql.take_lead(cur, 105.0, lead, "b", 10.0)
        assert sql.take_lead(cur, 105.0, lead, "a", 10.0)  # renewed till 115
        assert not sql.take_lead(cur, 114.0, lead, "b", 10.0)
        assert sql.take_lead(cur, 115.5, lead, "b", 10.0)  # a lapsed: b takes over
        assert not sql.take_lead(cur, 116.0, lead, "a", 10.0)


def test_rate_counters_add_up_across_connections(pg_url: str) -> None:
    _table(pg_url, [])
    key = f"m:1:{uuid.uuid4().hex[:6]}"
    with (
        psycopg.connect(pg_url, autocommit=True) as c1,
        psycopg.connect(pg_url, autocommit=True) as c2,
    ):
        assert sql.add_hits(c1.cursor(), 10.0, [(key, 60.0, 3), ("other" + key, 60.0, 1)]) == [3, 1]
        assert sql.add_hits(c2.cursor(), 11.0, [(key, 60.0, 4)]) == [7]
        assert sql.add_hits(c1.cursor(), 12.0, [(key, 60.0, 0)]) == [7]  # a read-back
        assert sql.add_hits(c2.cursor(), 61.0, [(key, 120.0, 1)]) == [1]  # window lapsed


def test_queue_lock_serializes_claims_and_the_bucket_is_shared(pg_url: str) -> None:
    table = _table(pg_url, [("capped", "job", 1, i, None) for i in range(4)])
    queue = f"q-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_url) as c1, psycopg.connect(pg_url) as c2:
        cur1, cur2 = c1.cursor(), c2.cursor()
        sql.lock_queue(cur1, queue)
        cur2.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            sql.lock_queue(cur2, queue)  # the other server waits for the first commit
        c2.rollback()
        assert sql.count_running(cur1, "capped", table=table) == 0
        assert sql.take_tokens(cur1, 100.0, queue, 2.0, 5) == 2  # a full bucket: 2
        c1.commit()
        sql.lock_queue(cur2, queue)  # free once the first committed
        assert sql.take_tokens(cur2, 100.2, queue, 2.0, 5) == 0  # 0.4 refilled: none yet
        assert sql.take_tokens(cur2, 100.6, queue, 2.0, 5) == 1
        c2.commit()
