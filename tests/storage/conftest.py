"""The backends the contract suite runs against, one `store` fixture for all of them.

A backend is a way to make a `Store` and, when it is durable, to make another one over the same
state (a restart). Adding one (e.g. `postgres`) is one entry in `BACKENDS`; no test changes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from dtq.models import Priority, Task, TaskStatus
from dtq.storage.base import Store
from dtq.storage.lmdb.store import LmdbStore
from dtq.storage.memory import MemoryStore
from tests.storage._pg_cluster import cluster

NOW = 1_750_000_000.0


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]  # a store over this backend's state (a second call: a restart)
    durable: bool


def _lmdb(tmp_path: Path) -> Backend:
    path = str(tmp_path / "lmdb")
    return Backend("lmdb", lambda: LmdbStore(path, fsync=True, map_size_bytes=8 << 20), True)


def _memory(tmp_path: Path) -> Backend:
    return Backend("memory", MemoryStore, False)


def _postgres(tmp_path: Path) -> Backend:
    raise AssertionError("made by the backend fixture, with a cluster")  # pragma: no cover


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "lmdb": _lmdb,
    "memory": _memory,
    "postgres": _postgres,
}


@pytest.fixture(scope="session")
def pg_cluster_url() -> Iterator[str]:
    """One throwaway cluster for the session's contract tests (skips without PostgreSQL
    binaries, fails under CI=true); each test gets a database of its own in it."""
    yield from cluster()


def _fresh_database(cluster_url: str) -> str:
    import psycopg

    name = f"dtq_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(cluster_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgres":
        try:
            from dtq.storage.postgres.store import PostgresStore
        except ImportError as exc:  # psycopg missing: a skip here, a failure under CI
            if os.environ.get("CI"):
                raise
            pytest.skip(f"the PostgreSQL driver is not installed ({exc})")

        url = _fresh_database(request.getfixturevalue("pg_cluster_url"))
        return Backend("postgres", lambda: PostgresStore(url), True)
    return BACKENDS[request.param](tmp_path)


@asynccontextmanager
async def running(store: Store) -> AsyncIterator[Store]:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            try:
                yield store
            finally:
                await store.aclose()
    finally:
        store.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with running(backend.make()) as s:
        yield s


def make_task(
    *,
    seq: int,
    name: str = "t",
    queue: str = "default",
    status: TaskStatus = TaskStatus.PENDING,
    priority: Priority = Priority.MEDIUM,
    created_at: float = NOW,
    updated_at: float | None = None,
    worker_id: str | None = None,
    duration: float | None = None,
    idempotency_key: str | None = None,
    run_at: float | None = None,
) -> Task:
    return Task(
        id=str(uuid.uuid4()),
        name=name,
        description=None,
        priority=priority,
        status=status,
        queue=queue,
        payload={"n": seq},
        retry_count=0,
        timeout=60.0,
        created_at=created_at,
        updated_at=created_at if updated_at is None else updated_at,
        seq=seq,
        worker_id=worker_id,
        duration=duration,
        idempotency_key=idempotency_key,
        run_at=run_at,
    )
