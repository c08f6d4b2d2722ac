"""`Worker.serve()` in this trio run against a real server in this process, through a transport
that records what the worker asks of the server (and can fail on purpose)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtq import AsyncClient, LeaseLost, Worker
from dtq.client.transport_push import PushTransport
from dtq.client.worker import load_worker
from dtq.messages import TaskOut, WorkerOut
from dtq.models import AckItem, AckOutcome

from .helpers import SERVE_ADMIN_PASSWORD as ADMIN_PASSWORD

BOUND_S = 10.0


class Recorder:
    """A `WorkerTransport` around the real client: records calls, fails the first acks if told."""

    def __init__(self, inner: AsyncClient, *, failing_acks: int = 0) -> None:
        self.inner = inner
        self.leases: list[int] = []  # max_tasks of each lease request
        self.acks: list[list[str]] = []  # statuses in each ack batch that reached the server
        self.extends = 0
        self.extend_errors: list[Exception] = []
        self.released: list[str] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.failing_acks = failing_acks
        self.extended = trio.Condition()

    async def lease(self, worker_id: str, **kw: Any) -> list[TaskOut]:
        self.leases.append(kw["max_tasks"])
        return await self.inner.lease(worker_id, **kw)

    async def ack(self, acks: Sequence[AckItem]) -> list[AckOutcome]:
        if self.failing_acks:
            self.failing_acks -= 1
            raise httpx.ConnectError("the network is having a bad day")
        self.acks.append([a.status for a in acks])
        return await self.inner.ack(acks)

    async def extend(self, task_id: str, lease_id: str, lease_seconds: float) -> TaskOut:
        try:
            task = await self.inner.extend(task_id, lease_id, lease_seconds)
        except Exception as exc:
            self.extend_errors.append(exc)
            raise
        self.extends += 1
        async with self.extended:
            self.extended.notify_all()
        return task

    async def wait_extends(self, n: int) -> None:
        async with self.extended:
            while self.extends < n:
                await self.extended.wait()

    async def release(self, task_id: str, lease_id: str) -> TaskOut:
        self.released.append(task_id)
        return await self.inner.release(task_id, lease_id)

    async def heartbeat(self, worker_id: str, **fields: Any) -> WorkerOut:
        self.heartbeats.append(fields)
        return await self.inner.heartbeat(worker_id, **fields)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # push mode's `run_push` and `stop_leasing` reach the PushTransport inside
        return getattr(self.inner, name)


@pytest.fixture(params=["http", "tcp", "ws"])
async def admin(server_url: str, request: pytest.FixtureRequest) -> AsyncIterator[AsyncClient]:
    """Every test here runs on each transport: HTTP, and the fast lane over TCP and WebSocket
    (where the worker runs in push mode)."""
    async with AsyncClient(server_url, transport=request.param) as client:
        await client.login("admin", ADMIN_PASSWORD)
        yield client


def recorder(admin: AsyncClient, **kw: Any) -> Recorder:
    client = AsyncClient(admin.url, token=admin.token, transport=admin.transport)
    if admin.transport == "http":
        return Recorder(client, **kw)
    return Recorder(PushTransport(client), **kw)  # type: ignore[arg-type]


def make_worker(**kw: Any) -> Worker:
    options: dict[str, Any] = {"heartbeat_interval_s": 0.2, "poll_wait_s": 1.0, **kw}
    return Worker(worker_id="inproc-w", **options)


async def test_batch_leases_bounded_concurrency_sync_and_async_handlers(
    admin: AsyncClient,
) -> None:
    worker = make_worker(concurrency=3)
    gate = trio.Event()
    three_running = trio.Event()
    running = peak = 0

    @worker.task("Gated")
    async def gated(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        try:
            await gate.wait()
        finally:
            running -= 1
        return {"i": payload["i"]}

    @worker.task()
    def double(payload: dict[str, int]) -> int:  # registered under its function name
        return payload["n"] * 2

    tasks = await admin.submit_many([{"name": "Gated", "payload": {"i": i}} for i in range(5)])
    transport = recorder(admin)
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, transport)
            await three_running.wait()
            assert transport.leases[0] == 3  # one request for as many tasks as it has slots
            running_now = [t async for t in admin.list(status="running")]
            assert len(running_now) == 3  # it holds no more than its concurrency
            gate.set()
            for task in tasks:
                done = await admin.wait(task.id, timeout=BOUND_S)
                assert (done.status, done.result) == ("completed", task.payload)
            doubled = await admin.wait(
                (await admin.submit("double", {"n": 21})).id, timeout=BOUND_S
            )
            assert doubled.result == 42
            stop.set()
    assert peak == 3
    assert all(n <= 3 for n in transport.leases)
    assert sum(len(batch) for batch in transport.acks) == 6
    assert (worker.completed, worker.failed) == (6, 0)
    assert transport.heartbeats[0]["max_capacity"] == 3
    assert transport.heartbeats[-1]["status"] == "inactive"  # the goodbye on the way out
    (listed,) = await admin.workers()
    assert (listed.worker_id, listed.status, listed.tasks_completed) == ("inproc-w", "inactive", 6)


async def test_the_lease_is_extended_while_the_handler_runs(admin: AsyncClient) -> None:
    worker = make_worker(lease_seconds=0.6)  # extended every 0.2 s
    transport = recorder(admin)

    @worker.task("Long")
    async def long(payload: Any) -> str:
        await transport.wait_extends(4)  # well past the first lease's expiry
        return "done"

    task = await admin.submit("Long")
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, transport)
            done = await admin.wait(task.id, timeout=BOUND_S)
            stop.set()
    assert (done.status, done.result, done.attempts) == ("completed", "done", 1)
    assert done.duration is not None and done.duration > 0.6
    assert transport.extend_errors == []


async def test_a_cancelled_task_stops_its_handler_and_its_result_is_dropped(
    admin: AsyncClient,
) -> None:
    worker = make_worker(lease_seconds=0.6)
    transport = recorder(admin)
    started, stopped = trio.Event(), trio.Event()

    @worker.task("Forever")
    async def forever(payload: Any) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    task = await admin.submit("Forever")
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, transport)
            await started.wait()
            await admin.cancel(task.id)
            await stopped.wait()
            stop.set()
    if admin.transport == "http":  # the next extension was refused and the handler cancelled
        assert [type(e) for e in transport.extend_errors] == [LeaseLost]
    else:  # the server's `cancelled` notice stopped it at once, before any extension
        assert transport.extends == 0
        assert transport.extend_errors == []
    assert transport.acks == []  # nothing reported for it
    after = await admin.get(task.id)
    assert (after.status, after.result, after.error) == ("cancelled", None, None)


async def test_stop_drains_then_hands_back_what_is_left(admin: AsyncClient) -> None:
    worker = make_worker(concurrency=2, grace_period_s=0.3)
    transport = recorder(admin)
    both_started = trio.Event()
    finish_quick = trio.Event()
    started = 0

    async def mark_started() -> None:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()

    @worker.task("Quick")
    async def quick(payload: Any) -> str:
        await mark_started()
        await finish_quick.wait()
        return "finished in the grace period"

    @worker.task("Slow")
    async def slow(payload: Any) -> str:
        await mark_started()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    q = await admin.submit("Quick", priority="high")
    s = await admin.submit("Slow", retry_count=0)
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, transport)
            await both_started.wait()
            stop.set()
            finish_quick.set()
    # serve() returned: running work finished or was handed back, results flushed.
    assert (await admin.get(q.id)).result == "finished in the grace period"
    slow_task = await admin.get(s.id)
    assert (slow_task.status, slow_task.lease, slow_task.attempts) == ("pending", None, 0)
    assert transport.released == [s.id]


async def test_failed_acks_are_retried_and_recorded_once(admin: AsyncClient) -> None:
    worker = make_worker()
    transport = recorder(admin, failing_acks=1)

    @worker.task("Work")
    async def work(payload: Any) -> int:
        return 7

    @worker.task("Broken")
    def broken(payload: Any) -> None:
        raise KeyError("missing")

    done_id = (await admin.submit("Work")).id
    broken_id = (await admin.submit("Broken")).id
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, transport)
            done = await admin.wait(done_id, timeout=BOUND_S)
            failed = await admin.wait(broken_id, timeout=BOUND_S)
            stop.set()
    assert (done.status, done.result, done.attempts) == ("completed", 7, 1)
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.type, failed.error.message) == ("KeyError", "'missing'")
    assert failed.error.traceback and "in broken" in failed.error.traceback
    assert transport.failing_acks == 0


async def test_sync_handlers_run_up_to_an_overridden_concurrency(admin: AsyncClient) -> None:
    """`dtq worker --concurrency 3` sets `worker.concurrency` on the module's Worker."""
    worker = make_worker(concurrency=1)
    worker.concurrency = 3
    barrier = threading.Barrier(3, timeout=5)

    @worker.task("Together")
    def together(payload: Any) -> int:
        return barrier.wait()  # only returns once three handlers run at the same time

    tasks = await admin.submit_many([{"name": "Together"}] * 3)
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, recorder(admin))
            done = [await admin.wait(t.id, timeout=BOUND_S) for t in tasks]
            stop.set()
    assert [t.status for t in done] == ["completed"] * 3, [t.error for t in done]
    assert sorted(t.result for t in done) == [0, 1, 2]


async def test_a_hung_sync_handler_does_not_take_a_slot_from_new_work(admin: AsyncClient) -> None:
    """A thread cannot be killed: after its timeout the hung handler is abandoned, and the
    worker's one slot must go to the next task."""
    worker = make_worker(concurrency=1)
    unblock = threading.Event()

    @worker.task("Hang")
    def hang(payload: Any) -> None:
        unblock.wait(BOUND_S)

    @worker.task("Quick")
    def quick(payload: Any) -> str:
        return "ran"

    hung = await admin.submit("Hang", timeout=0.3)
    stop = trio.Event()
    try:
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve, stop, recorder(admin))
                assert (await admin.wait(hung.id, timeout=BOUND_S)).status == "failed"
                task = await admin.submit("Quick", timeout=3)
                done = await admin.wait(task.id, timeout=BOUND_S)
                stop.set()
    finally:
        unblock.set()
    assert (done.status, done.result, done.error) == ("completed", "ran", None)


@pytest.mark.parametrize("server_overrides", [{"max_body_bytes": 100_000}], indirect=True)
async def test_one_refused_ack_does_not_sink_the_whole_batch(admin: AsyncClient) -> None:
    """Results that fit one by one but not together in one request body (413): each is still
    recorded, and the worker does not drop the batch."""
    worker = make_worker(concurrency=3)
    transport = recorder(admin)
    gate = trio.Event()

    @worker.task("Big")
    async def big(payload: Any) -> str:
        await gate.wait()
        return "x" * 60_000  # two of these are more than the server accepts at once

    tasks = await admin.submit_many([{"name": "Big"}] * 3)
    stop = trio.Event()
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve, stop, transport)
            while len([t async for t in admin.list(status="running")]) < 3:
                await trio.sleep(0.01)
            gate.set()
            with trio.move_on_after(5):  # far less than the 60 s lease
                done = [await admin.wait(t.id) for t in tasks]
            stop.set()
    statuses = [(await admin.get(t.id)).status for t in tasks]
    assert statuses == ["completed"] * 3
    assert all(len(t.result) == 60_000 for t in done)


def test_worker_arguments_and_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Worker(concurrency=0)
    a, b = Worker(), Worker()
    assert a.worker_id != b.worker_id  # host-pid-random
    assert f"-{os.getpid()}-" in a.worker_id
    (tmp_path / "tw_loadme.py").write_text(
        "from dtq import Worker\nworker = Worker(concurrency=5)\nnot_a_worker = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert load_worker("tw_loadme:worker").concurrency == 5
    with pytest.raises(ValueError, match=r"not a dtq\.Worker"):
        load_worker("tw_loadme:not_a_worker")
    with pytest.raises(ValueError, match="MODULE:ATTR"):
        load_worker("tw_loadme")
    with pytest.raises(ValueError, match=r"cannot load tw_loadme:missing: .* no attribute"):
        load_worker("tw_loadme:missing")
    with pytest.raises(ValueError, match="No module named 'tw_not_there'"):
        load_worker("tw_not_there:worker")
    monkeypatch.delitem(sys.modules, "tw_loadme")


def test_a_worker_leases_only_the_names_it_handles_unless_told_otherwise() -> None:
    worker = Worker()
    with pytest.raises(ValueError, match="no handlers"):
        worker.lease_names()

    @worker.task("Process Data")
    def process(payload: dict[str, Any]) -> None: ...

    @worker.task()
    def cleanup(payload: dict[str, Any]) -> None: ...

    assert worker.lease_names() == ["Process Data", "cleanup"]
    assert Worker(any_name=True).lease_names() is None
