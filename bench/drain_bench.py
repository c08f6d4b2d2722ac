"""Batched drain: how fast `lease(max_tasks=100)` + `ack(100)` empties a filled queue, in process
(TaskQueue over LMDB with group commit, no HTTP). Run it against two builds to see what a change
to the write path costs, e.g. the history events (one per lease, one per ack):

    PYTHONPATH=/path/to/build python bench/drain_bench.py [--tasks 20000] [--rounds 3]

Filling is not timed. Prints tasks/s and CPU µs per task (this process, all threads) for 1 and
4 draining callers, fsync and os durability, best of `--rounds`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import dtq
from dtq.models import AckItem, LeaseRequest, TaskCreate
from dtq.server import open_queue
from dtq.settings import Durability, Settings

BATCH = 100


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drain_once(path: Path, durability: Durability, tasks: int, callers: int) -> Any:
    settings = Settings(data_dir=str(path), durability=durability, map_size_bytes=1 << 30)
    async with open_queue(settings) as queue:
        bodies = [TaskCreate(name="bench.task", payload={"i": i, "data": "x" * 32})
                  for i in range(1000)]  # fmt: skip
        for _ in range(tasks // 1000):
            await queue.create_many(bodies)
        done = 0

        async def drain(i: int) -> None:
            nonlocal done
            req = LeaseRequest(worker_id=f"w{i}", max_tasks=BATCH, wait=0)
            while True:
                leased = await queue.lease(req)
                if not leased:
                    return
                acks = [AckItem(id=t.id, lease_id=t.lease.id, status="completed", result=1)
                        for t in leased if t.lease is not None]  # fmt: skip
                outcomes = await queue.ack(acks)  # (not `done += ...await...`: a lost update)
                done += sum(1 for o in outcomes if o.ok)

        cpu, started = _cpu_s(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(callers):
                nursery.start_soon(drain, i)
        wall, cpu_used = time.perf_counter() - started, _cpu_s() - cpu
    return {"tasks": done, "rate": round(done / wall), "cpu_us_per_task": round(
        cpu_used / done * 1e6, 1)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"dtq {dtq.__file__}")
    results: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="dtq-drain-bench-"))
    try:
        for durability in (Durability.FSYNC, Durability.OS):
            for callers in (1, 4):
                runs = []
                for r in range(args.rounds):
                    path = scratch / f"{durability.value}-{callers}-{r}"
                    runs.append(trio.run(drain_once, path, durability, args.tasks, callers))
                    shutil.rmtree(path, ignore_errors=True)
                best = max(runs, key=lambda x: x["rate"])
                key = f"{durability.value}.c{callers}"
                results[key] = {"best": best, "rates": [x["rate"] for x in runs]}
                print(f"  drain, {durability.value}, {callers} caller(s): {best['rate']:,} "
                      f"tasks/s, {best['cpu_us_per_task']} us cpu/task (runs "
                      f"{[x['rate'] for x in runs]})", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
