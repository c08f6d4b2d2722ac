"""The fast lane against REST: real `dtq serve` (fsync), real `dtq worker` processes.

    python bench/protocol_bench.py [--seconds 5] [--samples 500] [--tasks 20000]

Figures, each over the fast lane (tcp) and over HTTP:
  submit    one-by-one `Client.submit` from one sequential producer, tasks/s.
  latency   `--samples` tasks submitted 5 ms apart to 2 idle workers (push mode over tcp):
            submit -> handler start, p50/p99 ms (the handler returns `time.time()` at start).
  drain     `--tasks` no-op tasks pre-enqueued, drained by 2 `dtq worker` processes (async
            handler), tasks/s from the moment they are due to the last completion.

`run_dtq_fastlane(url, api_key, ...)` runs the same against a server already running (for
bench/peers.py) and returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    create_admin_key,
    format_table,
    free_port,
    latency_summary_ms,
    machine_facts,
    write_json,
)

WORKER_MODULE = textwrap.dedent(
    """
    import os, time
    from dtq import Worker

    worker = Worker(concurrency=int(os.environ.get("BENCH_CONCURRENCY", "100")),
                    heartbeat_interval_s=5, poll_wait_s=20)

    @worker.task("noop")
    async def noop(payload):
        return None

    @worker.task("stamp")
    async def stamp(payload):
        return {"started": time.time()}
    """
)


def submit_rate(url: str, api_key: str, transport: str, seconds: float) -> float:
    """One sequential producer, `Client.submit` one by one."""
    from dtq import Client

    with Client(url, api_key=api_key, transport=transport) as c:
        c.submit("unhandled", queue="bench-submit")  # connects (and discovers) first
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            c.submit("unhandled", queue="bench-submit")
            n += 1
        return n / (time.perf_counter() - t0)


class Workers:
    """`dtq worker` processes for the bench module, stopped with SIGTERM."""

    def __init__(self, url: str, api_key: str, transport: str, n: int, workdir: Path) -> None:
        (workdir / "bench_fastlane_worker.py").write_text(WORKER_MODULE)
        env = {**os.environ, "DTQ_URL": url, "DTQ_API_KEY": api_key, "DTQ_TRANSPORT": transport,
               "DTQ_LOG_LEVEL": "warning"}  # fmt: skip
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dtq.cli",
                    "worker",
                    "bench_fastlane_worker:worker",
                    "--worker-id",
                    f"bench-{transport}-{i}",
                    "--log-format",
                    "json",
                ],
                env=env,
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(n)
        ]
        self.url, self.api_key, self.n = url, api_key, n

    def wait_active(self) -> None:
        _wait(self.url, self.api_key, lambda c: c.dashboard()["workers_active"] >= self.n, 30)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait(url: str, api_key: str, done: Any, timeout_s: float) -> float:
    from dtq import Client

    deadline = time.monotonic() + timeout_s
    with Client(url, api_key=api_key, transport="http") as c:
        while time.monotonic() < deadline:
            if done(c):
                return time.time()
            time.sleep(0.02)
    raise TimeoutError("benchmark step did not finish in time")


def latency(url: str, api_key: str, transport: str, samples: int, workdir: Path) -> dict[str, Any]:
    from dtq import Client

    workers = Workers(url, api_key, transport, 2, workdir)
    try:
        workers.wait_active()
        time.sleep(0.5)  # both workers are parked (long poll or credit granted)
        sent: dict[str, float] = {}
        queue = f"stamp-{transport}-{time.time_ns()}"
        with Client(url, api_key=api_key, transport=transport) as c:
            c.get(c.submit("unhandled", queue="bench-warmup").id)  # connected
            for _ in range(samples):
                t = time.time()
                sent[c.submit("stamp", queue=queue).id] = t
                time.sleep(0.005)
        _wait(url, api_key, lambda c: all(c.get(tid).status == "completed" for tid in
                                          list(sent)[-5:]), 60)  # fmt: skip
        with Client(url, api_key=api_key, transport="http") as c:
            lat = [t.result["started"] - sent[t.id] for t in c.list(status="completed", queue=queue)
                   if t.id in sent]  # fmt: skip
        return latency_summary_ms(lat)
    finally:
        workers.stop()


def drain(url: str, api_key: str, transport: str, tasks: int, workdir: Path) -> float:
    from dtq import Client

    queue = "default"
    workers = Workers(url, api_key, transport, 2, workdir)
    try:
        workers.wait_active()
        with Client(url, api_key=api_key, transport="http") as c:
            before = c.dashboard()["completed_tasks"]
            due = time.time() + 3.0
            run_at = datetime.fromtimestamp(due, UTC).isoformat()
            for i in range(0, tasks, 1000):
                c.submit_many([{"name": "noop", "run_at": run_at, "queue": queue}]
                              * min(1000, tasks - i))  # fmt: skip
        if time.time() > due:
            raise RuntimeError("enqueueing took longer than the head start")
        finished = _wait(url, api_key,
                         lambda c: c.dashboard()["completed_tasks"] >= before + tasks, 300)  # fmt: skip
        return tasks / (finished - due)
    finally:
        workers.stop()


def run_dtq_fastlane(
    url: str,
    api_key: str,
    *,
    transport: str = "tcp",
    seconds: float = 5.0,
    samples: int = 500,
    tasks: int = 20_000,
) -> dict[str, Any]:
    """The three figures against the server at `url` (its key must submit and work tasks):
    {"submit_per_s", "latency": {"p50_ms", "p90_ms", "p99_ms", ...}, "drain_per_s"}."""
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "transport": transport,
            "submit_per_s": submit_rate(url, api_key, transport, seconds),
            "latency": latency(url, api_key, transport, samples, Path(tmp)),
            "drain_per_s": drain(url, api_key, transport, tasks, Path(tmp)) if tasks else None,
        }


class Server:
    """`dtq serve` with fsync durability, the fast lane on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.protocol_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DTQ_ADMIN_PASSWORD": "password", "DTQ_RATE_LIMIT_PER_MINUTE": "0",
               "DTQ_RATE_LIMIT_PER_HOUR": "0", "DTQ_LOG_LEVEL": "warning",
               "DTQ_PROTOCOL_PORT": str(self.protocol_port)}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1", "--port",
             str(self.port), "--data-dir", str(workdir / "data"), "--log-format", "json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.api_key = create_admin_key(self.url)
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--transports", default="tcp,http")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for transport in args.transports.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp))
            try:
                results[transport] = run_dtq_fastlane(
                    server.url, server.api_key, transport=transport, seconds=args.seconds,
                    samples=args.samples, tasks=args.tasks,
                )  # fmt: skip
            finally:
                server.stop()
    rows = []
    for transport, r in results.items():
        lat = r["latency"]
        drain_rate = f"{r['drain_per_s']:,.0f}" if r["drain_per_s"] else "-"
        rows.append((transport, f"{r['submit_per_s']:,.0f}", lat["p50_ms"], lat["p99_ms"],
                     drain_rate))  # fmt: skip
    print(format_table(("transport", "submit/s (one by one)", "latency p50 ms", "p99 ms",
                        "drain/s"), rows))  # fmt: skip
    print("targets (issue 10): submit >= beanstalkd-fsync (~2,600/s), p50 <= 1 ms, p99 <= 2 ms")
    write_json("protocol", {"machine": machine_facts(), "results": results})


if __name__ == "__main__":
    main()
