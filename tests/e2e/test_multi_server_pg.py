"""Several `dtq serve` processes on one real PostgreSQL, two `dtq worker` processes split
across them (`--url A,B` and `--url B,A`), `kill -9` of a server mid-drain.

Needs the PostgreSQL store (`dtq serve --store postgresql://...`) and a PostgreSQL cluster
(`tests/storage/_pg_cluster.py`: a throwaway one, or `DTQ_TEST_PG_URL`). The same scenarios
above the store run everywhere in `test_multi_server.py` (a shared memory store).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from storage._pg_cluster import pg_url  # tests/ is on sys.path (rootdir conftest layout)

from dtq.server import store_problem
from dtq.settings import Settings

from .procs import (
    WORKER_TARGET,
    Proc,
    Processes,
    Server,
    clean_env,
    poll_until,
    server_env,
    write_worker_module,
)

__all__ = ["pg_url"]

if store_problem(Settings(store="postgresql://u@127.0.0.1:1/db")) is not None:
    pytest.skip("this build has no PostgreSQL store yet", allow_module_level=True)
psycopg = pytest.importorskip("psycopg")

DRAIN_S = 300.0


@pytest.fixture
def database(pg_url: str) -> Iterator[str]:
    """A fresh database per test on the shared cluster."""
    name = f"dtq_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path / "logs")
    try:
        yield p
    finally:
        p.kill_all()


def _servers(procs: Processes, tmp_path: Path, database: str, n: int = 2) -> list[Server]:
    # an env each: server_env picks each server's own free fast-lane port
    return [Server(procs, tmp_path / f"s{i}",
                   env=server_env(DTQ_STORE=database, DTQ_LEASE_DEFAULT_S="5")).start()
            for i in range(n)]  # fmt: skip


def _workers(procs: Processes, tmp_path: Path, servers: list[Server], key: str) -> list[Proc]:
    worker_dir = write_worker_module(tmp_path / "worker")
    urls = [s.url for s in servers]
    out = []
    for i, order in enumerate((urls, urls[::-1])):
        args = ["worker", WORKER_TARGET, "--url", ",".join(order), "--api-key", key,
                "--concurrency", "16", "--worker-id", f"pg-w{i}", "--log-format", "json"]  # fmt: skip
        # this checkout's dtq too, not whichever one is installed
        path = os.pathsep.join((str(worker_dir), str(Path(__file__).resolve().parents[2])))
        env = clean_env(PYTHONPATH=path, TW_LEASE_S="5", TW_POLL_WAIT_S="2")
        proc = procs.spawn(args, f"pg-w{i}", env=env, cwd=worker_dir)
        proc.wait_for_event("worker started")
        out.append(proc)
    return out


def _dashboard(servers: list[Server], key: str) -> dict[str, Any]:
    for server in servers:
        try:
            reply = httpx.get(f"{server.url}/api/v1/analytics/dashboard",
                              headers={"X-API-Key": key}, timeout=5)  # fmt: skip
        except httpx.TransportError:
            continue
        if reply.status_code == 200:
            return dict(reply.json()["data"])
    return {}


def _submit(servers: list[Server], key: str, total: int, on_chunk: Any = None) -> list[str]:
    ids: list[str] = []
    for start in range(0, total, 500):
        body = {"tasks": [{"name": "add", "payload": {"a": i, "b": 1}}
                          for i in range(start, min(start + 500, total))]}  # fmt: skip
        for server in servers[(start // 500) % len(servers) :] + servers:  # alternate; skip dead
            try:
                reply = httpx.post(f"{server.url}/api/v1/tasks/batch", json=body,
                                   headers={"X-API-Key": key}, timeout=30)  # fmt: skip
            except httpx.TransportError:
                continue
            if reply.status_code == 201:
                ids += [t["id"] for t in reply.json()["data"]]  # acknowledged: must survive
                break
        else:
            raise AssertionError("no server took the batch")
        if on_chunk is not None:
            on_chunk(len(ids))
    return ids


def test_two_servers_two_workers_ten_thousand_tasks_each_completed_once(
    procs: Processes, tmp_path: Path, database: str
) -> None:
    servers = _servers(procs, tmp_path, database)
    key, operator = servers[0].create_keys("worker", "operator")
    _workers(procs, tmp_path, servers, key)
    ids = _submit(servers, operator, 10_000)
    assert len(set(ids)) == 10_000
    poll_until(lambda: _dashboard(servers, operator).get("completed_tasks") == 10_000,
               "10,000 tasks completed", DRAIN_S)  # fmt: skip
    board = _dashboard(servers, operator)
    assert board["total_tasks"] == 10_000 and board["pending_tasks"] == 0
    assert board["running_tasks"] == 0 and board["failed_tasks"] == 0
    # exactly once: no task was leased twice (no lease ran out, nothing was re-run)
    with httpx.Client(base_url=servers[1].url, headers={"X-API-Key": operator}) as http:
        skip, deliveries = 0, []
        while True:
            page = http.get("/api/v1/tasks", params={"skip": skip, "limit": 100}).json()["data"]
            deliveries += [t.get("deliveries", 1) for t in page]
            if len(page) < 100:
                break
            skip += 100
    assert len(deliveries) == 10_000 and set(deliveries) == {1}


def test_kill_9_of_a_server_mid_drain_loses_nothing(
    procs: Processes, tmp_path: Path, database: str
) -> None:
    servers = _servers(procs, tmp_path, database)
    key, operator = servers[0].create_keys("worker", "operator")
    _workers(procs, tmp_path, servers, key)
    killed = False

    def maybe_kill(submitted: int) -> None:
        nonlocal killed
        if not killed and submitted >= 1_500:
            poll_until(lambda: _dashboard(servers, operator).get("completed_tasks", 0) >= 200,
                       "the drain to be under way")  # fmt: skip
            assert servers[0].proc is not None
            servers[0].proc.kill()  # SIGKILL: leases it granted are held by running workers
            killed = True

    ids = _submit(servers, operator, 4_000, maybe_kill)
    assert killed and len(set(ids)) == 4_000
    alive = servers[1:]
    poll_until(lambda: _dashboard(alive, operator).get("completed_tasks") == 4_000,
               "every acknowledged task completed through the surviving server", DRAIN_S)  # fmt: skip
    board = _dashboard(alive, operator)
    assert board["total_tasks"] == 4_000 and board["failed_tasks"] == 0
    assert board["pending_tasks"] == 0 and board["running_tasks"] == 0
