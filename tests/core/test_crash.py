"""Crash safety: an acknowledged write survives `kill -9` of the server process.

A child process (crash_child.py) writes from many concurrent tasks and prints each id as soon
as the write is acknowledged; the parent SIGKILLs it mid-stream, reopens the data directory and
checks every acknowledged write is there, the counters match, and the queue still works.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import dtq
from dtq.models import ListTasksQuery, TaskCreate, TaskStatus
from dtq.server import open_queue

from .conftest import all_tasks, lease_one, make_settings, recount

CHILD = Path(__file__).with_name("crash_child.py")
REPO = Path(dtq.__file__).resolve().parent.parent
ACKS = 300


async def run_and_kill(
    data_dir: Path, mode: str, durability: str, want: str
) -> dict[str, set[str]]:
    """Run the child until it acknowledged ACKS writes of kind `want`, then SIGKILL it."""
    seen: dict[str, set[str]] = {"created": set(), "completed": set()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(data_dir.parent / f"child-{mode}.stderr", "wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD), str(data_dir), mode, durability],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            assert proc.stdout is not None
            buffer = b""
            with trio.fail_after(40):
                while len(seen[want]) < ACKS:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        stderr.flush()
                        err = (data_dir.parent / f"child-{mode}.stderr").read_text()
                        pytest.fail(f"child exited early ({proc.returncode}): {err}")
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        kind, _, task_id = line.decode().partition(" ")
                        if kind in seen:
                            seen[kind].add(task_id)
            os.kill(proc.pid, signal.SIGKILL)
            with trio.fail_after(10):
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(10):
                    await proc.wait()
    return seen


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_acknowledged_creates_survive_kill(tmp_path: Path, durability: str) -> None:
    data_dir = tmp_path / "data"
    seen = await run_and_kill(data_dir, "create", durability, "created")
    with trio.fail_after(30):
        async with open_queue(make_settings(data_dir)) as q:
            stored = {t.id: t for t in await all_tasks(q)}
            missing = seen["created"] - set(stored)
            assert not missing, f"{len(missing)} acknowledged tasks lost"
            assert all(t.status == TaskStatus.PENDING for t in stored.values())
            counts = await recount(q)
            d = await q.dashboard()
            assert d.total_tasks == len(stored) == counts[TaskStatus.PENDING] == d.pending_tasks
            # rebuilt: every stored task is ready, in creation order
            assert q.dispatcher.ready_count() == len(stored)
            first = min(stored.values(), key=lambda t: t.seq)
            leased = await lease_one(q)
            assert leased.id == first.id
            assert leased.lease is not None
            await q.complete(leased.id, leased.lease.id, "after crash")
            fresh, _ = await q.create(TaskCreate(name="fresh"))
            assert fresh.seq > max(t.seq for t in stored.values())


async def test_acknowledged_completions_survive_kill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    seen = await run_and_kill(data_dir, "complete", "fsync", "completed")
    with trio.fail_after(30):
        async with open_queue(make_settings(data_dir)) as q:
            stored = {t.id: t for t in await all_tasks(q)}
            assert seen["created"] <= set(stored)
            for task_id in seen["completed"]:
                task = stored[task_id]
                assert task.status == TaskStatus.COMPLETED, task
                assert task.result == {"ok": task_id}
            counts = await recount(q)
            d = await q.dashboard()
            assert d.total_tasks == len(stored)
            assert d.completed_tasks == counts[TaskStatus.COMPLETED] >= len(seen["completed"])
            assert d.running_tasks == counts[TaskStatus.RUNNING]
            assert d.pending_tasks == counts[TaskStatus.PENDING]
            _, total = await q.list_tasks(ListTasksQuery(status=TaskStatus.COMPLETED))
            assert total == counts[TaskStatus.COMPLETED]
            # tasks leased at the moment of the kill keep their leases; pending ones are ready
            assert q.dispatcher.ready_count() == counts[TaskStatus.PENDING]
            if counts[TaskStatus.PENDING]:
                await lease_one(q)
