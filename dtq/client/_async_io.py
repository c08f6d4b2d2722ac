"""The async flavour's I/O for `_async.py`: sleeping, timeouts, the WebSocket wait.

`tools/unasync.py` turns `_async_io` into `_sync_io` (its sync twin, also hand-written) when it
generates `_sync.py`, so the two modules offer the same names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec

from dtq.client._common import FINAL_STATUSES
from dtq.client.transport import AsyncLane as Lane
from dtq.client.transport import lane_address
from dtq.messages import TaskOut

if TYPE_CHECKING:
    from dtq.client._async import AsyncClient

sleep = anyio.sleep
Lock = anyio.Lock
__all__ = ["Deadline", "Lane", "Lock", "fail_after", "lane_address", "sleep", "wait_ws"]


class Deadline:
    def check(self, delay_s: float, message: str) -> None:
        """Nothing to do: the cancel scope of `fail_after` raises at the deadline itself."""


@contextmanager
def fail_after(timeout_s: float | None) -> Iterator[Deadline]:
    """`TimeoutError` once `timeout_s` seconds have passed inside the block (None: never)."""
    with anyio.fail_after(timeout_s):
        yield Deadline()


async def wait_ws(client: AsyncClient, task_id: str) -> TaskOut | None:
    """The task once final, from its events on `/ws/tasks`; None if the WebSocket cannot be
    used (the caller polls instead)."""
    from httpx_ws import HTTPXWSException, WebSocketDisconnect, aconnect_ws

    try:
        connect: Any = aconnect_ws(
            f"/ws/tasks?task_id={task_id}",
            client._http,
            headers=client._auth_headers(),
            keepalive_ping_interval_seconds=None,
            max_message_size_bytes=16 << 20,
        )
        async with connect as ws:
            # Subscribed first, then read: a change in between is not missed.
            task = await client.get(task_id)
            while task.status not in FINAL_STATUSES:
                message = msgspec.json.decode(await ws.receive_text())
                events = message.get("events", [message])
                for event in events:
                    if "task" in event and event["task"]["id"] == task.id:
                        task = msgspec.convert(event["task"], TaskOut)
                    elif event.get("event") == "lagged":
                        task = await client.get(task_id)
            return task
    except (HTTPXWSException, WebSocketDisconnect, httpx.HTTPError, OSError):
        return None
