"""Database commands for a shared store: `dtq db migrate --store postgresql://...`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dtq.cli.common import UsageError, add_parser

PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return url.startswith(PG_SCHEMES)


def cmd_migrate(args: argparse.Namespace) -> int:
    url = args.store or os.environ.get("DTQ_STORE", "")
    if not is_postgres(url):
        raise UsageError("--store", "dtq db migrate needs --store postgresql://... (or DTQ_STORE)")
    import psycopg

    from dtq.storage.postgres.migrate import migrate, schema_version

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            applied = migrate(conn)
            version = schema_version(conn)
    except psycopg.Error as exc:
        print(f"dtq: error: cannot migrate the database: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return 1
    if applied:
        print(f"applied schema version(s) {', '.join(map(str, applied))}; now at {version}")
    else:
        print(f"schema is up to date (version {version})")
    return 0


def register(sub: Any) -> None:
    p = add_parser(sub, "db", "database commands for a PostgreSQL store")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    m = add_parser(dbsub, "migrate", "apply the versioned schema (safe to run on every server)")
    m.add_argument("--store", help="postgresql://user:pass@host:5432/db (else DTQ_STORE)")
    m.set_defaults(func=cmd_migrate)
