"""The Worker's transport in push mode over the fast lane (tcp or ws).

The worker's lease loop still calls `lease(max_tasks=free slots, wait=...)`; here that grants
the server `credit` for the free slots not already covered (tasks pushed and not yet taken, or
credit still outstanding) and returns what the server has pushed, waiting up to `wait` for the
first. The server pushes each task as it becomes ready, with no request per task. Tasks taken
are reported `started` in one message before `lease` returns them, without waiting for the
reply: once a handler may run, a dropped connection (a worker killed mid-task) leaves its lease
to expire, so the run counts as an attempt and a task that kills its workers still exhausts its
retries. Everything else goes through the client, over the lane.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import trio

from dtq.client._async import AsyncClient
from dtq.client.transport import AsyncLane
from dtq.errors import DtqError
from dtq.messages import TaskOut, WorkerOut
from dtq.models import AckItem, AckOutcome


class LaneCall:
    """A fast-lane request that mirrors no REST call (credit, pause, started)."""

    __slots__ = ("fields", "op")

    def __init__(self, op: str, **fields: Any) -> None:
        self.op = op
        self.fields = {k: v for k, v in fields.items() if v is not None}

    def lane_message(self, request_id: int) -> dict[str, Any]:
        return {"op": self.op, "id": request_id, **self.fields}


class PushTransport:
    """`run_push` must run (in the worker's nursery) while it is used: it reads the lane."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._nursery: trio.Nursery | None = None
        self._on_cancelled: Callable[[str], None] = lambda task_id: None
        self._lane: AsyncLane | None = None
        self._generation = 0
        self._buffer: list[TaskOut] = []  # pushed, not yet handed to the worker
        self._outstanding = 0  # credit granted and not yet used by a push
        self._arrived = trio.Event()

    async def _connected(self) -> AsyncLane:
        lane = await self.client.lane()
        if lane is None:
            raise httpx.ConnectError("the fast lane is not available")
        if lane is not self._lane:
            if self._nursery is None:
                raise RuntimeError("PushTransport.run_push is not running")
            self._lane = lane
            lane.on_push = self._pushed
            lane.on_cancelled = self._cancelled
            await self._nursery.start(lane.run_reader)
        await lane.connect()
        if lane.generation != self._generation:
            # A new connection: what the old one pushed was handed back when it dropped.
            self._generation = lane.generation
            self._buffer.clear()
            self._outstanding = 0
        return lane

    async def run_push(
        self,
        on_cancelled: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled: the lane's reader runs here; `on_cancelled(task_id)` hears the
        server's `cancelled` notices."""
        self._on_cancelled = on_cancelled
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _report_started(self, lane: AsyncLane, task_ids: list[str]) -> None:
        if not lane.is_connected() or lane.generation != self._generation:
            return  # pushed on a connection now lost: the server handed them back already
        with contextlib.suppress(httpx.TransportError):  # lost now: handed back, as above
            await lane.send(LaneCall("started", task_ids=task_ids))

    def _pushed(self, tasks: list[TaskOut]) -> None:
        self._buffer.extend(tasks)
        self._outstanding = max(self._outstanding - len(tasks), 0)
        self._arrived.set()

    def _cancelled(self, task_id: str) -> None:
        self._buffer = [t for t in self._buffer if t.id != task_id]
        self._on_cancelled(task_id)

    async def lease(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        max_tasks: int = 1,
        wait: float = 30,
        lease_seconds: float | None = None,
    ) -> list[TaskOut]:
        lane = await self._connected()
        want = max_tasks - len(self._buffer) - self._outstanding
        if want > 0:
            # Counted before the call: the server may push against this credit before its
            # reply arrives, and a push counted first would leave the credit counted as
            # outstanding for ever (no more credit asked, nothing pushed: a stalled worker).
            self._outstanding += want
            try:
                reply = await lane.call(LaneCall(
                    "credit", n=want, worker_id=worker_id, queues=list(queues) if queues else None,
                    names=list(names) if names else None, lease_seconds=lease_seconds))  # type: ignore[arg-type]  # fmt: skip
                self.client._lane_result(_NO_DATA, reply)  # an error frame raises here
            except BaseException:
                self._outstanding = max(self._outstanding - want, 0)  # not granted
                raise
        with trio.move_on_after(wait):
            while not self._buffer:
                self._arrived = trio.Event()
                await self._arrived.wait()
        taken, self._buffer = self._buffer[:max_tasks], self._buffer[max_tasks:]
        if taken:
            await self._report_started(lane, [t.id for t in taken])
        return taken

    async def stop_leasing(self) -> None:
        """Drain: no more pushes; what was pushed and not taken goes back to the queue."""
        if self._lane is None or not self._lane.is_connected():
            return
        try:
            with trio.move_on_after(5):
                await self._lane.call(LaneCall("pause"))  # type: ignore[arg-type]
        except httpx.TransportError:
            return  # the connection is gone: the server handed them back already
        left, self._buffer = self._buffer, []
        self._outstanding = 0
        for task in left:
            if task.lease is not None and isinstance(task.lease.id, str):
                # best effort: its lease expires otherwise
                with trio.move_on_after(5), contextlib.suppress(DtqError, httpx.TransportError):
                    await self.client.release(task.id, task.lease.id)

    async def ack(self, acks: Sequence[AckItem]) -> list[AckOutcome]:
        return await self.client.ack(acks)

    async def extend(self, task_id: str, lease_id: str, lease_seconds: float) -> TaskOut:
        return await self.client.extend(task_id, lease_id, lease_seconds)

    async def release(self, task_id: str, lease_id: str) -> TaskOut:
        return await self.client.release(task_id, lease_id)

    async def heartbeat(self, worker_id: str, **fields: Any) -> WorkerOut:
        return await self.client.heartbeat(worker_id, **fields)

    async def aclose(self) -> None:
        await self.client.aclose()


class _NoData:
    data_type = None


_NO_DATA: Any = _NoData()


async def worker_transport(client: Any) -> Any:
    """Push mode over the fast lane when `client` (an AsyncClient) uses one, else `client`."""
    if not isinstance(client, AsyncClient) or client.transport == "http":
        return client
    if client.transport == "auto":
        try:
            if await client.lane() is None:
                return client  # the server offers no lane: HTTP long polls
        except httpx.TransportError:
            return client
    return PushTransport(client)
