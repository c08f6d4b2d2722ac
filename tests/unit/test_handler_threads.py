"""`HandlerThreads`: the worker's fixed pool of threads for sync handlers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from dtq.client._threadpool import HandlerThreads


async def test_results_and_exceptions_come_back() -> None:
    pool = HandlerThreads(2)
    try:
        assert await pool.run(lambda x: x * 2, 21) == 42
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda x: 1 / x, 0)
    finally:
        pool.close()


async def test_many_calls_never_use_more_threads_than_its_size() -> None:
    pool = HandlerThreads(3)
    lock = threading.Lock()
    now = peak = 0
    names: set[str] = set()
    release = threading.Event()

    def handler(i: int) -> int:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
            names.add(threading.current_thread().name)
        release.wait(5)
        with lock:
            now -= 1
        return i

    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await pool.run(handler, i))

    try:
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    finally:
        pool.close()
    assert sorted(results) == list(range(30))
    assert peak <= 3 and len(names) <= 3
    assert pool.statistics()["started"] <= 3


async def test_an_abandoned_call_is_replaced_and_its_thread_ends() -> None:
    pool = HandlerThreads(1)
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    unblock = threading.Event()
    finished = threading.Event()

    def stuck(_: Any) -> None:
        trio.from_thread.run_sync(started.set, trio_token=token)
        unblock.wait(10)
        finished.set()

    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_once_started() -> None:
                    await started.wait()
                    scope.cancel()  # as a task timeout or a lost lease does

                nursery.start_soon(cancel_once_started)
                await pool.run(stuck, None)
        assert scope.cancelled_caught and not finished.is_set()
        # The one-thread pool still runs new work while the abandoned handler is stuck.
        assert await pool.run(lambda x: x + 1, 1) == 2
        assert pool.statistics()["abandoned_running"] == 1
        unblock.set()
        await trio.to_thread.run_sync(finished.wait, 5)
        assert await pool.run(lambda x: x, "still works") == "still works"
    finally:
        unblock.set()
        pool.close()


async def test_a_call_cancelled_while_queued_never_runs() -> None:
    pool = HandlerThreads(1)
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    unblock = threading.Event()
    ran: list[str] = []

    def first(_: Any) -> str:
        trio.from_thread.run_sync(started.set, trio_token=token)
        unblock.wait(10)
        ran.append("first")
        return "first"

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, first, None)
            await started.wait()
            with trio.CancelScope() as scope:
                scope.cancel()
                await pool.run(ran.append, "second")  # queued behind `first`, then cancelled
            unblock.set()
        assert await pool.run(lambda x: x, 3) == 3
        assert ran == ["first"]
    finally:
        unblock.set()
        pool.close()


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HandlerThreads(0)
