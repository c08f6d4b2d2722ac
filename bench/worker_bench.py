"""End-to-end worker benchmark: real `dtq serve` (fsync), real `dtq worker` processes, HTTP only.

    python bench/worker_bench.py [--tasks 20000] [--workers 2] [--runs 3]

Figures (the same three a peer such as Celery, RQ or beanstalkd can be measured with: replace
the `Dtq` driver's five methods):
  drain     N no-op tasks pre-enqueued (all due at the same instant), drained by 2 worker
            processes: tasks/s from the moment they are due to the last completion.
  submit    one-by-one submits from one client (sequential round trips), tasks/s.
  latency   500 tasks submitted 5 ms apart to idle workers: submit -> handler start, p50/95/99.
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
    async def noop(payload):  # async: measures the queue, not a thread pool
        return None

    @worker.task("stamp")
    async def stamp(payload):  # async: no thread hop between lease and start
        return {"started": time.time()}
    """
)


class Dtq:
    """The system under test, behind five calls."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DTQ_ADMIN_PASSWORD": "password",
            "DTQ_RATE_LIMIT_PER_MINUTE": "0",
            "DTQ_RATE_LIMIT_PER_HOUR": "0",
            "DTQ_LOG_LEVEL": "warning",
            "DTQ_URL": self.url,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        (workdir / "bench_worker.py").write_text(WORKER_MODULE)

    def start_server(self) -> None:
        data = str(self.workdir / "data")
        self._spawn([sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1",
                     "--port", str(self.port), "--data-dir", data, "--log-format", "json"])  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.env["DTQ_API_KEY"] = create_admin_key(self.url)
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def start_workers(self, n: int) -> None:
        for i in range(n):
            self._spawn([sys.executable, "-m", "dtq.cli", "worker", "bench_worker:worker",
                         "--worker-id", f"bench-{i}", "--log-format", "json"], cwd=self.workdir)  # fmt: skip
        self.wait_until(lambda c: c.dashboard()["workers_active"] >= n, 30)

    def client(self) -> Any:
        from dtq import Client

        return Client(self.url, api_key=self.env["DTQ_API_KEY"])

    def wait_until(self, done: Any, timeout_s: float, every_s: float = 0.02) -> float:
        deadline = time.monotonic() + timeout_s
        with self.client() as c:
            while time.monotonic() < deadline:
                if done(c):
                    return time.time()
                time.sleep(every_s)
        raise TimeoutError("benchmark step did not finish in time")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _spawn(self, cmd: list[str], cwd: Path | None = None) -> None:
        self.procs.append(subprocess.Popen(cmd, env=self.env, cwd=cwd,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip


def drain(tasks: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        sut = Dtq(Path(tmp))
        try:
            sut.start_server()
            sut.start_workers(workers)
            due = time.time() + 3.0  # every task becomes due at this instant
            from datetime import UTC, datetime

            run_at = datetime.fromtimestamp(due, UTC).isoformat()
            with sut.client() as c:
                for i in range(0, tasks, 1000):
                    c.submit_many([{"name": "noop", "run_at": run_at}] * min(1000, tasks - i))
            if time.time() > due:
                raise RuntimeError("enqueueing took longer than the head start; raise it")
            finished = sut.wait_until(lambda c: c.dashboard()["completed_tasks"] >= tasks, 300)
            return tasks / (finished - due)
        finally:
            sut.stop()


def submit_and_latency(seconds: float, samples: int) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        sut = Dtq(Path(tmp))
        try:
            sut.start_server()
            with sut.client() as c:
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    c.submit("unhandled", queue="submit-only")
                    n += 1
                submit_rate = n / (time.perf_counter() - t0)
            sut.start_workers(2)
            sent: dict[str, float] = {}
            with sut.client() as c:
                for _ in range(samples):
                    t = time.time()
                    sent[c.submit("stamp").id] = t
                    time.sleep(0.005)
            sut.wait_until(lambda c: c.dashboard()["completed_tasks"] >= samples, 60)
            with sut.client() as c:
                lat = [t.result["started"] - sent[t.id] for t in c.list(status="completed")
                       if t.id in sent]  # fmt: skip
            return submit_rate, latency_summary_ms(lat)
        finally:
            sut.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    drains = sorted(drain(args.tasks, args.workers) for _ in range(args.runs))
    submit_rate, latency = submit_and_latency(5.0, args.samples)
    median = drains[len(drains) // 2]
    rows = [
        (
            "drain (tasks/s, median)",
            f"{median:,.0f}",
            "≥ 10,000",
            "yes" if median >= 10_000 else "no",
        ),
        ("drain runs", ", ".join(f"{d:,.0f}" for d in drains), "", ""),
        ("one-by-one submit (tasks/s)", f"{submit_rate:,.0f}", "", ""),
        ("latency p50 (ms)", latency["p50_ms"], "", ""),
        ("latency p90 (ms)", latency["p90_ms"], "", ""),
        ("latency p99 (ms)", latency["p99_ms"], "≤ 3", "yes" if latency["p99_ms"] <= 3 else "no"),
    ]
    print(format_table(("figure", "value", "target", "met"), rows))
    write_json("worker", {"machine": machine_facts(), "drain_runs": drains, "drain_median": median,
                          "submit_one_by_one": submit_rate, "latency": latency,
                          "tasks": args.tasks, "workers": args.workers})  # fmt: skip


if __name__ == "__main__":
    main()
