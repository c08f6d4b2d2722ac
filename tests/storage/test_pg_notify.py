"""Cross-server wake-ups on a real PostgreSQL: LISTEN under trio, one NOTIFY per commit batch,
relayed events, reconnection. Skips when PostgreSQL or psycopg is missing (never under CI)."""

from __future__ import annotations

import os

import pytest
import trio

from dtq.models import Priority, Task, TaskStatus
from dtq.storage.base import ChangeSignal

if os.environ.get("CI"):
    import psycopg  # under CI a missing driver is a failure, not a skip
else:
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
from dtq.storage.postgres.notify import (
    Listener,
    Publisher,
    decode_events,
    encode_events,
    notify_enabled,
    notify_ready,
)

from ._pg_cluster import pg_url


def _task(i: int, payload: object = None) -> Task:
    return Task(
        id=f"00000000-0000-7000-8000-{i:012d}", name="job", status=TaskStatus.PENDING,
        priority=Priority.MEDIUM, queue="default", seq=i, created_at=1.0, updated_at=1.0,
        payload=payload, description=None, retry_count=0, timeout=60.0,
    )  # fmt: skip


__all__ = ["pg_url"]  # the fixture


def test_notify_mode_setting() -> None:
    assert notify_enabled(None) and notify_enabled("on")
    assert not notify_enabled("off") and not notify_enabled("0") and not notify_enabled("False")


def test_events_are_split_into_payloads_under_the_limit() -> None:
    events = [("task.created", _task(i)) for i in range(200)]
    events.append(("task.created", _task(999, payload="x" * 10_000)))
    payloads, too_big = encode_events("srv", events)
    assert too_big == 1
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    got = [e for p in payloads for e in decode_events(p)[1]]
    assert [t.id for _, t in got] == [t.id for _, t in events[:200]]


async def test_one_notify_per_commit_batch_wakes_a_listener(pg_url: str) -> None:
    signal = ChangeSignal()
    listener = Listener(pg_url, signal)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert signal.fired == 1  # on connect: anything missed before, look
        woken = trio.Event()
        signal.subscribe(woken.set)

        def commit_batch() -> None:
            with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
                for _ in range(50):  # fifty ops that made tasks ready, one transaction
                    notify_ready(cur)

        await trio.to_thread.run_sync(commit_batch)
        with trio.fail_after(5):
            await woken.wait()
        await trio.sleep(0.2)  # a second notification would have arrived by now
        assert listener.received == 1 and signal.fired == 2

        def rolled_back() -> None:
            with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
                notify_ready(cur)
                conn.rollback()

        await trio.to_thread.run_sync(rolled_back)
        await trio.sleep(0.2)
        assert listener.received == 1  # nothing for a batch that did not commit
        nursery.cancel_scope.cancel()


async def test_relayed_events_reach_the_other_servers_listener(pg_url: str) -> None:
    signal = ChangeSignal()
    got: list[tuple[str, str]] = []
    arrived = trio.Event()

    def on_events(origin: str, events: object) -> None:
        got.extend((origin, t.id) for _, t in events)  # type: ignore[attr-defined]
        if len(got) >= 300:
            arrived.set()

    signal.subscribe_events(on_events)
    publisher = Publisher(pg_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(Listener(pg_url, signal).run)
        await nursery.start(publisher.run)
        publisher.publish("server-b", [("task.created", _task(i)) for i in range(300)])
        with trio.fail_after(5):
            await arrived.wait()
        assert got == [("server-b", _task(i).id) for i in range(300)]
        assert publisher.dropped == 0
        nursery.cancel_scope.cancel()


async def test_the_listener_reconnects_and_fires_after_its_connection_is_killed(
    pg_url: str,
) -> None:
    signal = ChangeSignal()
    listener = Listener(pg_url, signal)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)

        def kill_listeners() -> None:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )

        await trio.to_thread.run_sync(kill_listeners)
        with trio.fail_after(10):
            while listener.reconnects < 1:
                await trio.sleep(0.05)
        assert signal.fired >= 2
        woken = trio.Event()
        signal.subscribe(woken.set)

        def one() -> None:
            with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
                notify_ready(cur)

        await trio.to_thread.run_sync(one)
        with trio.fail_after(5):
            await woken.wait()
        nursery.cancel_scope.cancel()
