"""The worker's lease loop asks a busy worker's free slots in batches (a quarter of its
concurrency, or whatever is free 2 ms after the first slot freed), and asks at once when
nothing runs. Driven through a fake transport on trio's mock clock, so time is exact."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import trio
import trio.testing

from dtq.client.worker import REFILL_WAIT_S, Worker
from dtq.messages import LeaseOut, TaskOut
from dtq.models import AckItem, AckOutcome


def _task() -> TaskOut:
    tid = str(uuid.uuid4())
    return TaskOut(
        id=tid, name="job", description=None, status="running", priority="medium",
        queue="default", payload=None, result=None, error=None, retry_count=0, attempts=1,
        timeout=3600.0, worker_id="w", tags=[], idempotency_key=None, run_at=None,
        created_at=None, updated_at=None, started_at=None, completed_at=None, duration=None,
        lease=LeaseOut(id=f"lease-{tid}", worker_id="w", expires_at=None),
    )  # fmt: skip


class FakeTransport:
    """Hands out tasks on request; records when each lease asked, and for how many."""

    def __init__(self, tasks: int) -> None:
        self.todo = [_task() for _ in range(tasks)]
        self.asks: list[tuple[float, int]] = []  # (trio time, max_tasks)
        self.acked: list[str] = []

    async def lease(
        self, worker_id: str, *, max_tasks: int, wait: float, **kw: Any
    ) -> list[TaskOut]:
        self.asks.append((trio.current_time(), max_tasks))
        if not self.todo:
            await trio.sleep(wait)
            return []
        taken, self.todo = self.todo[:max_tasks], self.todo[max_tasks:]
        return taken

    async def ack(self, acks: Sequence[AckItem]) -> list[AckOutcome]:
        self.acked += [a.id for a in acks]
        return [AckOutcome(id=a.id, ok=True) for a in acks]

    async def heartbeat(self, worker_id: str, **fields: Any) -> Any:
        return None  # the worker does not look at it

    async def extend(self, task_id: str, lease_id: str, lease_seconds: float) -> TaskOut:
        raise AssertionError("not extended in these tests")

    async def release(self, task_id: str, lease_id: str) -> TaskOut:
        raise AssertionError("nothing is handed back in these tests")

    async def aclose(self) -> None:
        pass


async def test_a_busy_worker_asks_for_a_batch_and_an_idle_one_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = Worker(concurrency=8, poll_wait_s=60, heartbeat_interval_s=3600)
    gates: list[trio.Event] = []

    @worker.task("job")
    async def job(payload: Any) -> None:
        gate = trio.Event()
        gates.append(gate)
        await gate.wait()

    transport = FakeTransport(tasks=20)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve, stop, transport)
        await trio.testing.wait_all_tasks_blocked()
        assert [n for _, n in transport.asks] == [8]  # nothing ran: all slots at once

        gates[0].set()  # one slot frees: below a quarter (2), so the loop waits for more
        freed_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert len(transport.asks) == 1  # not yet
        await trio.sleep(REFILL_WAIT_S * 2)  # (the mock clock jumps)
        when, asked = transport.asks[-1]
        assert asked == 1 and when - freed_at >= REFILL_WAIT_S  # no batch came: 2 ms later

        gates[1].set()
        gates[2].set()  # two at once: a batch, asked for without waiting
        freed_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        when, asked = transport.asks[-1]
        assert asked == 2 and when == freed_at

        with trio.fail_after(60):  # (mock time: a bound, not a wait)
            while len(transport.acked) < 20:  # every task runs and is reported once
                for gate in gates:
                    gate.set()
                await trio.sleep(0.01)
        stop.set()
    assert sorted(transport.acked) == sorted({*transport.acked})
