"""The versioned schema: the SQL files in `migrations/` (NNNN_name.sql) applied in order, each
in its own transaction, under a session advisory lock so servers starting together never race.
`dtq_schema_version` records what is applied; a database newer than this code is refused."""

from __future__ import annotations

from importlib import resources
from typing import Any

from dtq.storage.postgres import shared_sql

TASKS_TABLE = "dtq_tasks"
# any fixed 64-bit number works; it only has to be the same on every server
LOCK_ID = 0x647471_0001

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS dtq_schema_version (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, oldest first."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def _extra(version: int) -> str:
    # the shared SQL's own tables ride along with version 1, so one schema holds everything
    return shared_sql.SCHEMA if version == 1 else ""


def migrate(conn: Any) -> list[int]:
    """Apply what is missing on this psycopg connection (autocommit off); return the versions
    applied now. Raises RuntimeError when the database has a version this code doesn't know."""
    shipped = migrations()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        conn.commit()
        try:
            cur.execute(VERSION_TABLE)
            cur.execute("SELECT coalesce(max(version), 0) FROM dtq_schema_version")
            current = int(cur.fetchone()[0])
            conn.commit()
            newest = shipped[-1][0] if shipped else 0
            if current > newest:
                raise RuntimeError(
                    f"the database schema is version {current}, this dtq knows up to {newest}: "
                    "upgrade dtq"
                )
            applied = []
            for version, name, sql in shipped:
                if version <= current:
                    continue
                cur.execute(sql + _extra(version))
                cur.execute(
                    "INSERT INTO dtq_schema_version (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                conn.commit()
                applied.append(version)
            return applied
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
            conn.commit()


def schema_version(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('dtq_schema_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT coalesce(max(version), 0) FROM dtq_schema_version")
        return int(cur.fetchone()[0])
