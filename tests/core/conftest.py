"""Fixtures and helpers for the core tests.

Time: the writer commits in a worker thread, and `autojump_clock` jumps to the next deadline
whenever every trio task is blocked, which includes "waiting for a commit". A long-poll would
then time out while a create is being committed. So time-based tests use pytest-trio's manual
`mock_clock` and move it explicitly with `advance()`, which then lets the reaper, the writer and
any woken long-polls finish before returning (`settle()`). Wall time is anchored at `WALL0`, an
exact float, so deadlines round-trip between wall and trio time without rounding.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir

from dtq.clock import TrioClock
from dtq.core.service import TaskQueue
from dtq.models import LeaseRequest, ListTasksQuery, Task, TaskCreate, TaskStatus
from dtq.server import open_queue
from dtq.settings import Durability, Settings

WALL0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z, exactly representable

# Hypothesis caches (even with database=None) next to these tests, not in the repository root.
set_hypothesis_home_dir(Path(__file__).with_name(".hypothesis"))
# In CI the property tests replay the same examples every run (a landing must not hinge on
# luck); on a developer's machine they explore new ones.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


async def settle(q: TaskQueue, rounds: int = 3) -> None:
    """Let every runnable task run and every queued write commit, a few causal steps deep.

    `wait_all_tasks_blocked` also returns while the writer's thread is committing, so each
    round ends with a no-op write: it is committed after everything queued before it.
    """
    for _ in range(rounds):
        await trio.testing.wait_all_tasks_blocked()
        await q.store.write(lambda tx: None)
    await trio.testing.wait_all_tasks_blocked()


async def advance(clock: trio.testing.MockClock, q: TaskQueue, seconds: float) -> None:
    await settle(q)
    clock.jump(seconds)
    await settle(q)


def make_settings(path: Path, **kw: Any) -> Settings:
    kw.setdefault("durability", Durability.OS)
    return Settings(data_dir=str(path), **kw)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def q(settings: Settings, mock_clock: trio.testing.MockClock) -> AsyncIterator[TaskQueue]:
    async with open_queue(settings, clock=TrioClock(WALL0)) as queue:
        yield queue


async def create(q: TaskQueue, name: str = "job", **kw: Any) -> Task:
    task, created = await q.create(TaskCreate(name=name, **kw))
    assert created
    return task


async def lease(q: TaskQueue, worker_id: str = "w1", **kw: Any) -> list[Task]:
    kw.setdefault("wait", 0)
    return await q.lease(LeaseRequest(worker_id=worker_id, **kw))


async def lease_one(q: TaskQueue, worker_id: str = "w1", **kw: Any) -> Task:
    tasks = await lease(q, worker_id, **kw)
    assert len(tasks) == 1, tasks
    return tasks[0]


async def all_tasks(q: TaskQueue) -> list[Task]:
    tasks, total = await q.list_tasks(ListTasksQuery(limit=100_000, order="asc"))
    assert total == len(tasks)
    return tasks


async def recount(q: TaskQueue) -> dict[TaskStatus, int]:
    counts = dict.fromkeys(TaskStatus, 0)
    for task in await all_tasks(q):
        counts[task.status] += 1
    return counts
