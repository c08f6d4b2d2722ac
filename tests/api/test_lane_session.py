"""One fast-lane session driven message by message (no socket), where the order of what it
reads is the whole point: a `started` followed at once by the end of the stream."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from dtq.core.auth import Role
from dtq.net.protocol.hub import Hub
from dtq.net.protocol.session import Session
from dtq.net.routing import Services
from dtq.wire import encoder

STARTED = "0190a0b0-0000-7000-8000-000000000001"
UNSTARTED = "0190a0b0-0000-7000-8000-000000000002"


async def test_a_started_right_before_the_end_of_stream_keeps_its_task(
    services: Services, keys: dict[Role, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request checks the caller's credentials again, which on a networked store waits
    for a read; the end of the stream behind it cancels requests still under way. `started`
    must count anyway: the worker has begun those tasks, so handing them back would run them
    again without counting the attempt."""
    released: list[str] = []

    async def release(task_id: str, lease_id: str, caller: Any) -> None:
        released.append(task_id)

    authenticate = services.accounts.authenticate
    checks = 0

    async def slow_authenticate(api_key: str | None, bearer: str | None) -> Any:
        nonlocal checks
        checks += 1
        principal = await authenticate(api_key, bearer)
        if checks > 1:  # hello's passes; each request's check then waits on its store read
            await trio.sleep_forever()  # (PostgreSQL: a round trip, here one never answered)
        return principal

    monkeypatch.setattr(services.queue, "release", release)
    monkeypatch.setattr(services.accounts, "authenticate", slow_authenticate)
    session = Session(services, Hub(), "test-peer", 1 << 20)
    session.pushed = {STARTED: "lease-a", UNSTARTED: "lease-b"}
    frames = [
        encoder.encode({"op": "hello", "id": 1, "api_key": keys[Role.WORKER]}),
        encoder.encode({"op": "started", "id": 2, "task_ids": [STARTED]}),
    ]
    written: list[Any] = []

    async def receive() -> bytes | None:
        return frames.pop(0) if frames else None  # then the end of the stream

    async def write(batch: list[bytes]) -> None:
        written.extend(batch)

    with trio.fail_after(5):
        await session.run(receive, write)
    assert released == [UNSTARTED]
    assert len(written) == 1  # the welcome; the reply to `started` was cut off by the end
