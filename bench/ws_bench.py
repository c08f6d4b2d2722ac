"""Lease/complete throughput with 0 and with 100 /ws/tasks subscribers (one never reading).

    python bench/ws_bench.py [--tasks 20000] [--subscribers 100]

Starts a real `dtq serve` (fsync) on 127.0.0.1, pre-enqueues tasks with batch creates, then two
worker loops drain them with batch lease (100) + batch ack; the figure is tasks/s drained.
Subscribers run in a separate process so they don't share the driver's CPU time slice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, proc_cpu_seconds

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def start_server(data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DTQ_ADMIN_PASSWORD": "password",
        "DTQ_RATE_LIMIT_PER_MINUTE": "0",
        "DTQ_RATE_LIMIT_PER_HOUR": "0",
        "DTQ_WS_BUFFER_EVENTS": "1000",
        "DTQ_LOG_LEVEL": "warning",
    }
    cmd = [sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", data_dir, "--log-format", "json"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


SUBSCRIBER_SCRIPT = """
import sys, trio
from trio_websocket import open_websocket_url
url, n = sys.argv[1], int(sys.argv[2])
async def reader(ws):
    while True:
        await ws.get_message()
async def main():
    async with trio.open_nursery() as nursery:
        for i in range(n):
            ws = await nursery.start(_open, url)
            if i > 0:  # subscriber 0 never reads
                nursery.start_soon(reader, ws)
        print("ready", flush=True)
        await trio.sleep(3600)
async def _open(url, task_status):
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        await trio.sleep_forever()
trio.run(main)
"""


async def drain(base: str, token: str, tasks: int) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        body = {"tasks": [{"name": "noop"} for _ in range(500)]}
        for _ in range(tasks // 500):
            r = await http.post("/api/v1/tasks/batch", json=body)
            assert r.status_code == 201, r.text
        done = 0
        started = time.perf_counter()

        async def worker(worker_id: str) -> None:
            nonlocal done
            while done < tasks:
                r = await http.post("/api/v1/tasks/lease",
                                    json={"worker_id": worker_id, "max_tasks": 100, "wait": 0})  # fmt: skip
                leased = r.json()["data"]
                if not leased:
                    return
                acks = [{"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed"}
                        for t in leased]  # fmt: skip
                r = await http.post("/api/v1/tasks/ack", json={"acks": acks})
                assert r.status_code == 200, r.text
                done += len(leased)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(worker, f"bench-{i}")
        return done / (time.perf_counter() - started)


def run(tasks: int, subscribers: int) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_server(data_dir, port)
        sub = None
        try:
            base = f"http://127.0.0.1:{port}"
            token = httpx.post(f"{base}/api/v1/auth/login",
                               json={"username": "admin", "password": "password"}).json()["token"]  # fmt: skip
            if subscribers:
                url = f"ws://127.0.0.1:{port}/ws/tasks?token={token}"
                # Niced: on this 2-core machine the 99 readers would otherwise take CPU from the
                # drain's own client, which is not what is being measured (the server's cost).
                sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER_SCRIPT, url,
                                        str(subscribers)], stdout=subprocess.PIPE,
                                       preexec_fn=lambda: os.nice(19))  # fmt: skip
                assert sub.stdout is not None
                assert sub.stdout.readline().strip() == b"ready"
            cpu_before = proc_cpu_seconds(server.pid)
            rate = trio.run(drain, base, token, tasks)
            cpu_per_task_us = (proc_cpu_seconds(server.pid) - cpu_before) / tasks * 1e6
            print(f"  {subscribers:3d} subscribers: {rate:8.0f} tasks/s, "
                  f"server cpu {cpu_per_task_us:.0f} us/task")  # fmt: skip
            return rate
        finally:
            if sub is not None:
                sub.kill()
                sub.wait()
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {"tasks": args.tasks, "subscribers": args.subscribers}
    for label, subs in (("no_subscribers", 0), ("with_subscribers", args.subscribers)):
        rates = sorted(run(args.tasks, subs) for _ in range(args.runs))
        results[label] = {"runs": rates, "median_tasks_per_s": rates[len(rates) // 2]}
        print(f"{label:18} median {rates[len(rates) // 2]:9.0f} tasks/s   runs {rates}")
    base = results["no_subscribers"]["median_tasks_per_s"]
    drop = 1 - results["with_subscribers"]["median_tasks_per_s"] / base
    results["drop"] = drop
    print(f"throughput drop with {args.subscribers} subscribers: {drop:.1%} (target < 10%)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ws.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
