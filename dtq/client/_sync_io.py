"""The sync flavour's I/O for the generated `_sync.py`: the twin of `_async_io.py`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dtq.client.transport_sync import SyncLane as Lane
from dtq.client.transport_sync import lane_address
from dtq.messages import TaskOut

if TYPE_CHECKING:
    from dtq.client._sync import Client

sleep = time.sleep
Lock = threading.Lock
__all__ = ["Deadline", "Lane", "Lock", "fail_after", "lane_address", "sleep", "wait_ws"]


class Deadline:
    def __init__(self, timeout_s: float | None) -> None:
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def check(self, delay_s: float, message: str) -> None:
        """`TimeoutError(message)` if sleeping `delay_s` more would pass the deadline (a
        blocking call cannot be interrupted, so the time is checked between calls)."""
        if self.at is not None and time.monotonic() + delay_s > self.at:
            raise TimeoutError(message)


@contextmanager
def fail_after(timeout_s: float | None) -> Iterator[Deadline]:
    yield Deadline(timeout_s)


def wait_ws(client: Client, task_id: str) -> TaskOut | None:
    """None: the sync client polls (a blocking WebSocket read could not keep `timeout`)."""
    return None
