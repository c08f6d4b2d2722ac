"""Child process for test_crash.py (not a test module).

    python crash_child.py DATA_DIR create|complete DURABILITY

Opens the queue and writes from many concurrent trio tasks as fast as it can, printing one line
per acknowledged write right after the call returns ("created <id>" / "completed <id>"). The
parent SIGKILLs it mid-stream and checks that everything acknowledged survived.
"""

from __future__ import annotations

import sys

import trio

from dtq.core.service import TaskQueue
from dtq.models import LeaseRequest, TaskCreate
from dtq.server import open_queue
from dtq.settings import Durability, Settings

CREATORS = 20
COMPLETERS = 10


async def creator(q: TaskQueue, n: int) -> None:
    i = 0
    while True:
        task, _ = await q.create(TaskCreate(name="crash", payload={"creator": n, "i": i}))
        print(f"created {task.id}", flush=True)
        i += 1


async def completer(q: TaskQueue, n: int) -> None:
    while True:
        tasks = await q.lease(LeaseRequest(worker_id=f"crash-{n}", max_tasks=5, wait=1))
        for task in tasks:
            assert task.lease is not None
            await q.complete(task.id, task.lease.id, {"ok": task.id})
            print(f"completed {task.id}", flush=True)


async def main(data_dir: str, mode: str, durability: str) -> None:
    settings = Settings(data_dir=data_dir, durability=Durability(durability))
    async with open_queue(settings) as q, trio.open_nursery() as nursery:
        for n in range(CREATORS):
            nursery.start_soon(creator, q, n)
        if mode == "complete":
            for n in range(COMPLETERS):
                nursery.start_soon(completer, q, n)
        print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
