"""`dtq db migrate` on a real PostgreSQL, and `dtq backup` refusing a PostgreSQL store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

if os.environ.get("CI"):
    import psycopg  # under CI a missing driver is a failure, not a skip
else:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

from dtq.cli.main import main

from ._pg_cluster import pg_url

__all__ = ["pg_url"]


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_db_migrate_applies_then_reports_up_to_date(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "migrate", "--store", db_url]) == 0
    assert "applied schema version(s) 1, 2; now at 2" in capsys.readouterr().out
    assert main(["db", "migrate", "--store", db_url]) == 0
    assert "up to date (version 2)" in capsys.readouterr().out


def test_db_migrate_without_a_postgres_url_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DTQ_STORE", raising=False)
    assert main(["db", "migrate"]) == 2
    assert "--store postgresql://" in capsys.readouterr().err


def test_backup_of_a_postgres_store_says_pg_dump(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["backup", str(tmp_path) + "/out", "--store", "postgresql://x@127.0.0.1/db"])
    assert code == 2
    assert "pg_dump" in capsys.readouterr().err
