"""Lease rate with queue limits on vs off (issue 12: limits on >= 90 % of the rate without).

Core level (the service over a real store, no HTTP): N tasks with 50 concurrency keys are
created, then W workers lease batches and ack them until the queue is empty. "on" configures
the queue with a concurrency limit, a per-key limit and a rate limit that are all checked on
every lease but set high enough not to bind, so the figure is the cost of the checks; "binding"
adds a run where the per-key limit does bind (for information: it is slower by design).

    python bench/limits_bench.py [--tasks 20000] [--workers 8] [--batch 10] [--store lmdb|memory]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import trio

from dtq.models import AckItem, LeaseRequest, QueueUpdate, TaskCreate
from dtq.server import open_queue
from dtq.settings import Durability, Settings

Q = "bench"
KEYS = 50


async def one_run(args: argparse.Namespace, limits: QueueUpdate | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        kw: dict[str, Any] = {"data_dir": tmp, "durability": Durability.OS}
        if args.store == "memory":
            kw["store"] = "memory://"
        async with open_queue(Settings(**kw)) as tq:
            if limits is not None:
                await tq.queues.update(Q, limits)
            bodies = [TaskCreate(name="job", queue=Q, concurrency_key=f"k{i % KEYS}")
                      for i in range(args.tasks)]  # fmt: skip
            for i in range(0, len(bodies), 1000):
                await tq.create_many(bodies[i : i + 1000])
            leased = 0
            peak = 0

            async def worker(n: int) -> None:
                nonlocal leased, peak
                req = LeaseRequest(worker_id=f"w{n}", queues=[Q], max_tasks=args.batch, wait=0)
                idle = 0
                while leased < args.tasks and idle < 1000:
                    got = await tq.lease(req)
                    if not got:
                        idle += 1
                        await trio.sleep(0.001)
                        continue
                    idle = 0
                    leased += len(got)
                    peak = max(peak, tq.dispatcher.limits.running[Q])
                    acks = [AckItem(id=t.id, lease_id=t.lease.id, status="completed")  # type: ignore[union-attr]
                            for t in got]  # fmt: skip
                    await tq.ack(acks)

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for n in range(args.workers):
                    nursery.start_soon(worker, n)
            elapsed = time.perf_counter() - started
    return {"leased": leased, "seconds": round(elapsed, 3),
            "leases_per_s": round(leased / elapsed), "peak_running": peak}  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    unbinding = QueueUpdate(concurrency_limit=100_000, concurrency_limit_per_key=100_000,
                            rate_limit_per_second=1_000_000.0)  # fmt: skip
    binding = QueueUpdate(concurrency_limit_per_key=1)
    results: dict[str, Any] = {"tasks": args.tasks, "workers": args.workers,
                               "batch": args.batch, "store": args.store}  # fmt: skip
    off, on = [], []
    for _ in range(args.repeat):  # interleaved: the machine's noise hits both alike
        off.append(await one_run(args, None))
        on.append(await one_run(args, unbinding))
    best_off = max(r["leases_per_s"] for r in off)
    best_on = max(r["leases_per_s"] for r in on)
    results["off"] = off
    results["on_not_binding"] = on
    results["on_vs_off"] = round(best_on / best_off, 3)
    results["target"] = ">= 0.9"
    results["binding_per_key_1"] = await one_run(args, binding)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--store", choices=["lmdb", "memory"], default="lmdb")
    trio.run(main, p.parse_args())
