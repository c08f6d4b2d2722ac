"""The SDK over each transport against a real server in this process: every client method
the fast lane carries gives the same return types and the same exceptions as over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from dtq import AsyncClient, Client, Forbidden, InvalidRequest, LeaseLost, NotFound
from dtq.client.transport_push import PushTransport
from dtq.messages import TaskOut, WorkerOut
from dtq.models import AckItem

from .helpers import SERVE_ADMIN_PASSWORD as ADMIN_PASSWORD

TRANSPORTS = ("http", "tcp", "ws")


@pytest.fixture
async def keys(server_url: str) -> AsyncIterator[dict[str, str]]:
    async with AsyncClient(server_url, transport="http") as admin:
        await admin.login("admin", ADMIN_PASSWORD)
        worker = (await admin.create_api_key("t-worker", "worker"))["key"]
        operator = (await admin.create_api_key("t-operator", "operator"))["key"]
        yield {"worker": worker, "operator": operator}


async def _every_operation(url: str, keys: dict[str, str], transport: str) -> dict[str, Any]:
    q = f"q-{transport}"
    async with (
        AsyncClient(url, api_key=keys["operator"], transport=transport) as op,
        AsyncClient(url, api_key=keys["worker"], transport=transport) as w,
    ):
        task = await op.submit("t", {"a": 1}, queue=q, priority="high", tags=["x"],
                               idempotency_key=f"k-{transport}", retry_count=1)  # fmt: skip
        again = await op.submit("t", {"a": 1}, queue=q, priority="high", tags=["x"],
                                idempotency_key=f"k-{transport}", retry_count=1)  # fmt: skip
        many = await op.submit_many([{"name": "t", "queue": q, "payload": {"i": i}}
                                     for i in range(4)])  # fmt: skip
        got = await op.get(task.id)
        leased = await w.lease("w-" + transport, queues=[q], max_tasks=5, wait=1)
        by_id = {t.id: t for t in leased}
        first, second, third, fourth, fifth = (by_id[t.id] for t in [task, *many])
        assert all(isinstance(t.lease.id, str) for t in leased if t.lease)  # type: ignore[union-attr]
        extended = await w.extend(first.id, first.lease.id, 30)  # type: ignore[union-attr]
        completed = await w.complete(first.id, first.lease.id, {"r": 1})  # type: ignore[union-attr]
        failed = await w.fail(second.id, second.lease.id, "bad", retry=False)  # type: ignore[union-attr]
        released = await w.release(third.id, third.lease.id)  # type: ignore[union-attr]
        acked = await w.ack([AckItem(id=fourth.id, lease_id=fourth.lease.id, status="completed"),  # type: ignore[union-attr]
                             AckItem(id=first.id, lease_id="stale", status="completed")])  # fmt: skip
        beat = await w.heartbeat("w-" + transport, max_capacity=3)
        cancelled = await op.cancel(fifth.id)
        errors: list[type[Exception]] = []
        for call in (
            lambda: op.get(str(uuid.uuid4())),
            lambda: op.get("not-a-uuid"),
            lambda: op.submit(""),
            lambda: w.complete(first.id, first.lease.id),  # type: ignore[union-attr]
            lambda: w.cancel(task.id),
        ):
            try:
                await call()
            except Exception as exc:  # the class is what is compared
                errors.append(type(exc))
        return {
            "types": [type(x).__name__ for x in (task, got, extended, beat)],
            "replay": again.id == task.id,
            "many": [type(t) for t in many],
            "statuses": [completed.status, failed.status, released.status, cancelled.status],
            "acks": [(a.ok, a.status) for a in acked],
            "errors": errors,
            "lane": None if op._lane is None else str(op._lane.address).split(":")[0],
        }


async def test_every_client_method_behaves_the_same_on_every_transport(
    server_url: str, keys: dict[str, str]
) -> None:
    results = {t: await _every_operation(server_url, keys, t) for t in TRANSPORTS}
    http = results["http"]
    assert http["types"] == ["TaskOut", "TaskOut", "TaskOut", "WorkerOut"]
    assert http["statuses"] == ["completed", "failed", "pending", "cancelled"]
    assert http["errors"] == [NotFound, InvalidRequest, InvalidRequest, LeaseLost, Forbidden]
    for transport in ("tcp", "ws"):
        lane = results[transport]
        assert lane["lane"] == transport  # the call really went over the fast lane
        assert {k: v for k, v in lane.items() if k != "lane"} == {
            k: v for k, v in http.items() if k != "lane"
        }, transport
    assert TaskOut and WorkerOut


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_the_sync_client_over_the_fast_lane(
    server_url: str, keys: dict[str, str], transport: str
) -> None:
    def run() -> tuple[str, str, type[Exception] | None]:
        with Client(server_url, api_key=keys["operator"], transport=transport) as c:
            task = c.submit("sync", {"n": 1}, queue="sync-" + transport)
            got = c.get(task.id)
            assert c._lane is not None
            try:
                c.get(str(uuid.uuid4()))
                error = None
            except NotFound as exc:
                error = type(exc)
            return task.status, ("same" if got.id == task.id else ""), error

    assert await trio.to_thread.run_sync(run) == ("pending", "same", NotFound)


async def test_auto_uses_the_fast_lane_when_offered(server_url: str, keys: dict[str, str]) -> None:
    async with AsyncClient(server_url, api_key=keys["operator"]) as c:
        assert c.transport == "auto"
        await c.submit("auto")
        assert c._lane is not None and c._lane.address.kind == "tcp"


@pytest.mark.parametrize("server_overrides", [{"protocol_port": 0}], indirect=True)
async def test_auto_falls_back_to_http_when_the_lane_is_off(
    server_url: str, keys: dict[str, str]
) -> None:
    async with AsyncClient(server_url, api_key=keys["operator"]) as c:
        task = await c.submit("auto-off")
        assert (await c.get(task.id)).id == task.id
        assert c._lane is None
    async with AsyncClient(server_url, api_key=keys["operator"], transport="tcp") as c:
        with pytest.raises(Exception, match="no fast lane"):
            await c.submit("explicit")


def test_unknown_transports_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="transport must be one of"):
        Client("http://127.0.0.1:1", transport="carrier-pigeon")
    monkeypatch.setenv("DTQ_TRANSPORT", "ws")
    assert Client("http://127.0.0.1:1").transport == "ws"


async def test_a_taken_task_is_reported_started_so_a_dropped_connection_keeps_it(
    server_url: str, keys: dict[str, str]
) -> None:
    """Push mode reports taken tasks `started` before `lease` hands them to the worker: a
    connection dropped the moment after (a worker killed as its handler begins) hands back
    only what was pushed and never taken; the taken task stays leased to the worker running
    it, so its lease expires and the run counts as an attempt."""
    q = "q-started"
    async with (
        AsyncClient(server_url, api_key=keys["operator"], transport="http") as op,
        AsyncClient(server_url, api_key=keys["worker"], transport="tcp") as w,
        trio.open_nursery() as nursery,
    ):
        push = PushTransport(w)
        await nursery.start(push.run_push, lambda task_id: None)
        first = await op.submit("t", queue=q)
        second = await op.submit("t", queue=q)
        with trio.fail_after(10):
            assert await push.lease("w-started", queues=[q], max_tasks=2, wait=0) == []
            while len(push._buffer) < 2:  # both pushed against the credit
                push._arrived = trio.Event()
                await push._arrived.wait()
            taken = await push.lease("w-started", queues=[q], max_tasks=1, wait=5)
            assert [t.id for t in taken] == [first.id]
            lane = await w.lane()
            assert lane is not None
            await lane.aclose()
            while (await op.get(second.id)).status != "pending":
                await trio.sleep(0.01)  # the server hands it back once it sees the close
        assert (await op.get(first.id)).status == "running"
        nursery.cancel_scope.cancel()


async def test_frames_larger_than_the_socket_takes_at_once_arrive_whole(
    server_url: str, keys: dict[str, str]
) -> None:
    """Under trio the lane writes its socket directly and falls back to the stream for what
    the kernel does not take at once; frames sent meanwhile by other tasks must wait their
    turn, never land inside the large one."""
    big = {"blob": "x" * 9_000_000}  # more than loopback's socket buffers take at once
    async with AsyncClient(server_url, api_key=keys["operator"], transport="tcp") as c:
        small = await c.submit("small", queue="q-big")
        got: dict[str, Any] = {}

        async def big_submit() -> None:
            got["big"] = await c.submit("big", queue="q-big", payload=big)

        async def small_gets() -> None:
            lane = await c.lane()
            assert lane is not None
            while not lane._send_lock.locked():  # the big frame's rest is being sent
                await trio.sleep(0)
            got["gets"] = [(await c.get(small.id)).id for _ in range(20)]

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(big_submit)
                nursery.start_soon(small_gets)
            assert (await c.get(got["big"].id)).payload == big
        assert got["gets"] == [small.id] * 20
        lane = await c.lane()
        assert lane is not None and lane.generation == 1  # one connection all along
