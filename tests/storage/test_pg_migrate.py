"""The versioned schema on a real PostgreSQL: applied once, idempotent, safe when two servers
start together (the advisory lock), and the tables the shared SQL needs are there."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import pytest

if os.environ.get("CI"):
    import psycopg  # under CI a missing driver is a failure, not a skip
else:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from dtq.storage.postgres import migrate as m
from dtq.storage.postgres import shared_sql as sql

from ._pg_cluster import pg_url

__all__ = ["pg_url"]


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    """A fresh database per test."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_migrate_applies_once_and_records_the_version(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        assert m.schema_version(conn) == 0
        assert m.migrate(conn) == [1, 2]
        assert m.migrate(conn) == []
        assert m.schema_version(conn) == 2
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"dtq_tasks", "dtq_settings", "dtq_deliveries", "dtq_leads", "dtq_rate_hits",
            "dtq_login_failures"} <= tables  # fmt: skip


def test_a_database_at_version_1_is_brought_up_to_date(db_url: str) -> None:
    """A database made by the first release gets the later versions, and only those."""
    with psycopg.connect(db_url) as conn:
        conn.execute(m.VERSION_TABLE)
        (version, name, sql) = m.migrations()[0]
        conn.execute(sql + m._extra(version))
        conn.execute("INSERT INTO dtq_schema_version (version, name) VALUES (%s, %s)",
                     (version, name))  # fmt: skip
        conn.commit()
        assert m.migrate(conn) == [2]
        assert m.schema_version(conn) == 2


def test_two_servers_migrating_at_once_apply_it_once(db_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(db_url) as conn:
                results.append(m.migrate(conn))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(results) == [[], [], [], [1, 2]]


def test_a_newer_database_is_refused(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        m.migrate(conn)
        conn.execute("INSERT INTO dtq_schema_version (version, name) VALUES (99, 'future')")
        conn.commit()
        with pytest.raises(RuntimeError, match="version 99"):
            m.migrate(conn)


def test_the_claim_runs_on_the_migrated_tasks_table(db_url: str) -> None:
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        m.migrate(conn)
        tid = uuid.uuid4()
        cur.execute(
            "INSERT INTO dtq_tasks (id, seq, status, queue, name, priority_rank,"
            " created_us, updated_us, ready_at, data)"
            " VALUES (%s, nextval('dtq_task_seq'), 'pending', 'q', 'n', 1, 0, 0, 0, %s)",
            (tid, b"x"),
        )
        now = sql.db_now(cur)
        assert now > 0
        claimed = sql.claim_ready(cur, now, frozenset({"q"}), None, 10, table=m.TASKS_TABLE)
        conn.commit()
    assert len(claimed) == 1
