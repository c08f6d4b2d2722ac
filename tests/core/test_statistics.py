"""The read-only core API the HTTP layer uses: readiness, worker health, statistics."""

from __future__ import annotations

import trio.testing

from dtq.core.service import TaskQueue
from dtq.models import Heartbeat, TaskCreate

from .conftest import advance, create, lease_one


async def test_ready_problem(q: TaskQueue) -> None:
    assert await q.ready_problem() is None
    q.begin_shutdown()
    assert await q.ready_problem() == "shutting down"


async def test_workers_health(q: TaskQueue, mock_clock: trio.testing.MockClock) -> None:
    await q.heartbeat(Heartbeat(worker_id="w1", current_load=1, max_capacity=4))
    await q.heartbeat(Heartbeat(worker_id="w2", current_load=3, max_capacity=4))
    health = await q.workers_health()
    assert health.active == 2 and health.total_capacity == 8 and health.current_load == 4
    assert health.utilization == 0.5
    assert all(h.healthy for h in health.workers)
    await advance(mock_clock, q, q.settings.worker_timeout_s + 1)
    health = await q.workers_health()
    assert health.active == 0 and health.utilization == 0.0
    assert not any(h.healthy for h in health.workers)
    assert all(h.seconds_since_heartbeat > q.settings.worker_timeout_s for h in health.workers)


async def test_statistics(q: TaskQueue) -> None:
    await create(q, queue="a")
    await create(q, queue="a")
    await q.create(TaskCreate(name="later", queue="b", delay=60))
    await lease_one(q, queues=["a"])
    stats = await q.statistics()
    assert stats.ready_by_queue == {"a": 1}
    assert stats.scheduled == 1
    assert stats.longpolls_waiting == 0
    assert stats.lease_expiries == 0
    assert stats.dashboard.running_tasks == 1 and stats.dashboard.pending_tasks == 2
    run_at = dict(q.pending_run_at())
    assert len(run_at) == 2 and sorted(v is None for v in run_at.values()) == [False, True]
