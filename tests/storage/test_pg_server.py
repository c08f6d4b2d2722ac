"""`dtq serve --store postgresql://...`: the whole server on the PostgreSQL store over real
HTTP; `/ready` reports the database; a write whose connection the database cut is a 503, and
the next one works (the writer connects again), with nothing acknowledged lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from dtq.server import serve
from dtq.settings import Settings

from ._pg_cluster import pg_url

try:
    import psycopg
except ImportError:  # pragma: no cover - under CI a missing driver is a failure
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

__all__ = ["pg_url"]
PASSWORD = "pg-store-password"


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    name = f"dtq_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + "/" + name


def _cut_writers(url: str) -> int:
    """Terminate every other session on the database (the store's writer and readers)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchall()
    return len(rows)


async def test_serve_on_postgres_over_http(db_url: str, tmp_path: Path) -> None:
    settings = Settings(store=db_url, port=0, data_dir=str(tmp_path / "unused"),
                        admin_password=PASSWORD, rate_limit_per_minute=0,
                        rate_limit_per_hour=0, protocol_port=0)  # fmt: skip
    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve, settings, shutdown_trigger=stop.wait))
            base = f"http://{host}:{port}"
            async with httpx.AsyncClient(base_url=f"{base}/api/v1") as http:
                ready = await http.get(f"{base}/ready")
                assert ready.status_code == 200, ready.text
                login = await http.post("/auth/login",
                                        json={"username": "admin", "password": PASSWORD})  # fmt: skip
                assert login.status_code == 200, login.text
                http.headers["Authorization"] = f"Bearer {login.json()['token']}"
                created = await http.post("/tasks", json={"name": "hello", "payload": {"n": 1}})
                assert created.status_code == 201, created.text
                task_id = created.json()["data"]["id"]
                leased = await http.post("/tasks/lease", json={"worker_id": "w1", "wait": 1})
                assert leased.status_code == 200, leased.text
                [task] = leased.json()["data"]
                assert task["id"] == task_id
                done = await http.post(f"/tasks/{task_id}/complete",
                                       json={"lease_id": task["lease"]["id"], "result": {"ok": 1}})  # fmt: skip
                assert done.status_code == 200, done.text

                # the database cuts every connection: the next write fails whole, then works
                assert await trio.to_thread.run_sync(_cut_writers, db_url) >= 1
                statuses = []
                for i in range(5):
                    r = await http.post("/tasks", json={"name": "after", "payload": {"i": i}})
                    statuses.append(r.status_code)
                assert set(statuses) <= {201, 503}, statuses
                assert statuses[-1] == 201, statuses
                acked = statuses.count(201)
                listed = (await http.get("/tasks", params={"name": "after"})).json()
                assert listed["pagination"]["total"] == acked, listed
                got = (await http.get(f"/tasks/{task_id}")).json()["data"]
                assert (got["status"], got["result"]) == ("completed", {"ok": 1})
                board = (await http.get("/analytics/dashboard")).json()["data"]
                assert board["completed_tasks"] == 1
            stop.set()
    assert not (tmp_path / "unused").exists()  # nothing was written to disk


async def test_ready_reports_a_database_that_is_gone(
    db_url: str, pg_url: str, tmp_path: Path
) -> None:
    settings = Settings(store=db_url, port=0, data_dir=str(tmp_path / "unused"),
                        admin_password=PASSWORD, rate_limit_per_minute=0,
                        rate_limit_per_hour=0, protocol_port=0)  # fmt: skip
    stop = trio.Event()
    name = db_url.rsplit("/", 1)[1]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve, settings, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=20) as http:
                assert (await http.get("/ready")).status_code == 200
                login = await http.post("/api/v1/auth/login",
                                        json={"username": "admin", "password": PASSWORD})  # fmt: skip
                token = login.json()["token"]

                def drop() -> None:
                    with psycopg.connect(pg_url, autocommit=True) as conn:
                        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")

                await trio.to_thread.run_sync(drop)
                ready = await http.get("/ready")
                assert ready.status_code == 503, ready.text
                assert "database" in ready.json()["reason"]
                created = await http.post("/api/v1/tasks", json={"name": "x"},
                                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                assert created.status_code == 503, created.text
                assert created.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
            stop.set()
