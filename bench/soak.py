"""A bounded soak: a real `dtq serve`, one producer at a steady rate, 2 worker processes.

    python bench/soak.py [--duration 300] [--rate 200] [--sample-every 30] [--workers 2]

The server runs on 127.0.0.1 (a free port, a temporary data directory, durability fsync). The
producer (this process) submits one task per request at `--rate` tasks/s, paced on a fixed
schedule with up to 64 requests in flight, each task carrying its submit time. Each worker is a
separate process running the raw worker protocol over HTTP: a long-poll lease of up to 100
tasks, then one batch ack; once the ack is answered (the completion is durable) it reports
submit -> complete for each task. Every `--sample-every` seconds a row is taken: tasks
submitted and completed in the window, the completion rate, the server's RSS (`VmRSS` from
/proc/<pid>/status), p50/p99 submit -> complete of the tasks completed in the window, errors
(failed submits, failed lease/ack requests, refused acks), and the CPU other processes took.
At the end the table is printed and JSON written to bench/results/ (unless `--no-json`).

Every process started here (the key-creating CLI, the server, the workers) is stopped by its pid
when the soak ends, also on Ctrl-C or an error. What the figures mean: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_DIR,
    SystemCpu,
    create_admin_key,
    format_table,
    free_port,
    latency_summary_ms,
    machine_facts,
    proc_cpu_seconds,
    proc_status,
    wait_for_quiet,
    write_json,
)

QUEUE = "soak"
IN_FLIGHT = 64  # producer requests at once: enough to hold the rate through an fsync stall
STOP_GRACE_S = 15.0
START_TIMEOUT_S = 30.0
DRAIN_S = 15.0  # after the producer stops, how long the workers get to finish what is queued


# --- the worker process ----------------------------------------------------------------------


def worker_main(url: str, api_key: str, worker_id: str) -> None:
    """Lease, ack, report: one JSON line per ack batch on stdout, until SIGTERM."""
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, in order
    lease_body = {"worker_id": worker_id, "queues": [QUEUE], "max_tasks": 100, "wait": 2}
    with httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as client:
        while not stopping:
            errors = 0
            lat: list[float] = []
            try:
                reply = client.post("/api/v1/tasks/lease", json=lease_body)
                if reply.status_code != 200:
                    errors += 1
                    tasks: list[dict[str, Any]] = []
                else:
                    tasks = reply.json()["data"]
                if tasks:
                    acks = [{"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed"}
                            for t in tasks]  # fmt: skip
                    reply = client.post("/api/v1/tasks/ack", json={"acks": acks})
                    done = time.time()
                    if reply.status_code != 200:
                        errors += 1
                    else:
                        submitted = {t["id"]: t["payload"]["t"] for t in tasks}
                        for outcome in reply.json()["data"]["results"]:
                            if outcome["ok"]:
                                lat.append(done - submitted[outcome["id"]])
                            else:
                                errors += 1
            except httpx.HTTPError:
                errors += 1
                time.sleep(0.2)  # the server is unreachable: do not spin; retried next loop
            if lat or errors:
                print(json.dumps({"lat": lat, "errors": errors}), flush=True)


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Processes:
    """Every child process, stopped by pid (SIGTERM, then SIGKILL), newest first."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
        # A session of its own: a terminal's Ctrl-C reaches only this script, which then stops
        # the children itself, workers before the server.
        proc = subprocess.Popen(args, env=env, cwd=REPO_DIR, start_new_session=True, **kw)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Tally:
    """What the worker reader threads and the producer report, taken per window."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    lat: list[float] = field(default_factory=list)
    done: int = 0
    submitted: int = 0
    errors: int = 0

    def take(self) -> tuple[list[float], int, int, int]:
        with self.lock:
            out = (self.lat, self.done, self.submitted, self.errors)
            self.lat, self.done, self.submitted, self.errors = [], 0, 0, 0
        return out


def read_reports(stream: IO[bytes], tally: Tally) -> None:
    for line in stream:
        report = json.loads(line)
        with tally.lock:
            tally.lat.extend(report["lat"])
            tally.done += len(report["lat"])
            tally.errors += report["errors"]


# --- the soak ----------------------------------------------------------------------------------


@dataclass
class Row:
    t_s: float
    submitted: int
    done: int
    done_total: int
    rate: float
    rss_mib: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float  # cores
    others: float  # cores used by processes not started here

    def cells(self) -> tuple[str, ...]:
        return (f"{self.t_s:.0f}", f"{self.submitted:,}", f"{self.done:,}", f"{self.done_total:,}",
                f"{self.rate:,.0f}", f"{self.rss_mib:.1f}", f"{self.p50_ms:.1f}",
                f"{self.p99_ms:.1f}", str(self.errors), f"{self.server_cpu * 100:.0f} %",
                f"{self.others:.2f}")  # fmt: skip


HEADERS = ("t (s)", "submitted", "done", "done total", "done/s", "RSS MiB", "p50 ms", "p99 ms",
           "errors", "server CPU", "others")  # fmt: skip


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path, procs: Processes) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
        self.env.update({"DTQ_ADMIN_PASSWORD": secrets.token_urlsafe(16),
                         "DTQ_RATE_LIMIT_PER_MINUTE": "0", "DTQ_RATE_LIMIT_PER_HOUR": "0",
                         "DTQ_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.api_key = ""
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.tally = Tally()
        self.rows: list[Row] = []
        self.all_lat: list[float] = []
        self.interrupted = False

    def start(self) -> None:
        data = str(self.workdir / "data")
        with open(self.log_path, "wb") as log:
            self.server = self.procs.spawn(
                [sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1", "--port",
                 str(self.port), "--data-dir", data, "--log-format", "json"],
                self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_healthy()
        self.api_key = create_admin_key(self.url, self.env["DTQ_ADMIN_PASSWORD"])
        for i in range(self.args.workers):
            worker = self.procs.spawn(
                [sys.executable, str(Path(__file__).resolve()), "--worker", self.url,
                 f"soak-{i}"], {**self.env, "SOAK_API_KEY": self.api_key},
                stdout=subprocess.PIPE,
            )  # fmt: skip
            assert worker.stdout is not None
            threading.Thread(target=read_reports, args=(worker.stdout, self.tally),
                             daemon=True).start()  # fmt: skip
            self.workers.append(worker)

    def _wait_healthy(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.server.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)  # another process is starting up: nothing to wait on
        raise RuntimeError(f"dtq serve did not start:\n{self.log_path.read_text()[-3000:]}")

    async def run(self) -> None:
        import trio

        async with httpx.AsyncClient(base_url=self.url, headers={"X-API-Key": self.api_key},
                                     timeout=30) as client, trio.open_nursery() as nursery:  # fmt: skip
            limiter = trio.CapacityLimiter(IN_FLIGHT)
            started = trio.current_time()
            stop_at = started + self.args.duration
            self._begin_sampling()
            nursery.start_soon(self._sample_forever)
            nursery.start_soon(self._stop_on_signal, nursery.cancel_scope)
            interval = 1.0 / self.args.rate
            next_at = started
            # Open loop on a fixed schedule; if the server falls behind, the 64 in flight run out
            # and the submitted column shows the rate it kept. Load stops at `duration` sharp.
            while next_at < stop_at and trio.current_time() < stop_at:
                await trio.sleep_until(next_at)
                await limiter.acquire_on_behalf_of(next_at)
                nursery.start_soon(self._submit, client, limiter, next_at)
                next_at += interval
            with trio.move_on_after(DRAIN_S):  # let the workers finish what is queued
                while self.backlog() > 0:
                    await trio.sleep(0.1)  # the workers are other processes: poll the tally
            nursery.cancel_scope.cancel()
        if not self.interrupted:
            self._sample(time.monotonic() - self._t0)

    async def _stop_on_signal(self, scope: Any) -> None:
        """Ctrl-C or SIGTERM ends the load at once; the caller then stops the processes."""
        import trio

        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.interrupted = True
                scope.cancel()
                return

    def backlog(self) -> int:
        submitted = sum(r.submitted for r in self.rows) + self.tally.submitted
        done = sum(r.done for r in self.rows) + self.tally.done
        return submitted - done

    async def _submit(self, client: httpx.AsyncClient, limiter: Any, token: float) -> None:
        ok = False
        try:
            body = {"name": "soak", "queue": QUEUE, "payload": {"t": time.time()}}
            reply = await client.post("/api/v1/tasks", json=body)
            ok = reply.status_code == 201
        except httpx.HTTPError:
            pass
        finally:
            limiter.release_on_behalf_of(token)
            with self.tally.lock:
                self.tally.submitted += 1 if ok else 0
                self.tally.errors += 0 if ok else 1

    def _begin_sampling(self) -> None:
        self._t0 = self._last = time.monotonic()
        self._cpu = SystemCpu()
        self._own_cpu = self._own_cpu_seconds()
        self._server_cpu = proc_cpu_seconds(self._server_pid())

    async def _sample_forever(self) -> None:
        import trio

        while True:
            await trio.sleep(self.args.sample_every)
            self._sample(time.monotonic() - self._t0)

    def _server_pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def _own_cpu_seconds(self) -> float:
        pids = [self._server_pid(), *(w.pid for w in self.workers)]
        return proc_cpu_seconds() + sum(proc_cpu_seconds(p) for p in pids)

    def _sample(self, t_s: float) -> None:
        now = time.monotonic()
        wall = max(now - self._last, 1e-9)
        lat, done, submitted, errors = self.tally.take()
        self.all_lat.extend(lat)
        summary = latency_summary_ms(lat)
        own = self._own_cpu_seconds()
        server_cpu = proc_cpu_seconds(self._server_pid())
        busy = self._cpu.busy_cores()
        others = max(0.0, busy - (own - self._own_cpu) / wall)
        total = sum(r.done for r in self.rows) + done
        rss_kib = proc_status(self._server_pid())["VmRSS"]
        self.rows.append(Row(t_s, submitted, done, total, done / wall, rss_kib / 1024,
                             summary["p50_ms"], summary["p99_ms"], errors,
                             (server_cpu - self._server_cpu) / wall, others))  # fmt: skip
        print(format_table(HEADERS, [self.rows[-1].cells()]).splitlines()[-1], flush=True)
        self._last, self._own_cpu, self._server_cpu, self._cpu = now, own, server_cpu, SystemCpu()


def report(soak: Soak, args: argparse.Namespace) -> dict[str, Any]:
    rows = soak.rows
    overall = latency_summary_ms(soak.all_lat)
    rss = [r.rss_mib for r in rows]
    return {
        "machine": machine_facts(),
        "settings": dict(
            duration_s=args.duration,
            rate=args.rate,
            workers=args.workers,
            sample_every_s=args.sample_every,
            durability="fsync",
            in_flight=IN_FLIGHT,
        ),
        "rows": [r.__dict__ for r in rows],
        "submitted": sum(r.submitted for r in rows),
        "done": sum(r.done for r in rows),
        "errors": sum(r.errors for r in rows),
        "latency": overall,
        "rss_mib": {"first": rss[0], "last": rss[-1], "max": max(rss)} if rss else {},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=200.0, help="tasks submitted per second")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds per row")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=15.0,
        help="wait up to this long for other processes to go quiet (0: don't)",
    )
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    parser.add_argument("--worker", nargs=2, metavar=("URL", "WORKER_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker[0], os.environ["SOAK_API_KEY"], args.worker[1])
        return 0
    if args.duration <= 0 or args.rate <= 0 or args.sample_every <= 0 or args.workers < 1:
        parser.error("--duration, --rate, --sample-every and --workers must be positive")

    import trio

    # Before and after the trio run (which has its own handler), SIGINT and SIGTERM raise
    # KeyboardInterrupt, so the `finally` below stops the children. SIGINT is set explicitly:
    # a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else {}
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="dtq-soak-") as tmp:
        try:
            soak = Soak(args, Path(tmp), procs)
            soak.start()
            print(f"soak: {args.rate:g} tasks/s for {args.duration:g} s, {args.workers} workers, "
                  f"server pid {soak._server_pid()} on {soak.url}", flush=True)  # fmt: skip
            print(format_table(HEADERS, []), flush=True)
            trio.run(soak.run)
        except KeyboardInterrupt:
            print("soak: interrupted, stopping", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    print()
    print(format_table(HEADERS, [r.cells() for r in soak.rows]))
    if soak.interrupted or not soak.rows:
        print("soak: interrupted, nothing written", file=sys.stderr)
        return 130
    result = {**report(soak, args), "quiet_before": quiet}
    lat = result["latency"]
    print(f"\nsubmitted {result['submitted']:,}, done {result['done']:,}, errors "
          f"{result['errors']}; submit -> complete p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
          f"max {lat['max_ms']} ms; server RSS {result['rss_mib']}")  # fmt: skip
    if not args.no_json:
        name = "soak.json" if args.duration == 300 else f"soak-{args.duration:g}s.json"
        print(f"wrote {write_json(name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
