"""The dashboard's data with a big store: every API call each /ui page makes, timed against a
real `dtq serve` holding 1,000,000 tasks (target: each page's data in under 300 ms).

    python bench/ui_bench.py              # 1,000,000 tasks (built once, ~1-3 min, then reused)
    python bench/ui_bench.py --quick      # 100,000 tasks, fewer samples
    python bench/ui_bench.py --tasks N --samples 20 [--rebuild-store] [--no-browser]

The store is filled in process (LMDB, `os` durability) with tasks of 20 names in 10 queues and
three priorities; about 5% of them then run (completed), 0.5% fail, so the Failed page and the
status filters have something to find, and 20 workers hold 50 running tasks each. The server
then runs as a user starts it, and each page's calls are made as the page makes them (same
query strings). A page's time is the sum of its calls, p90 over the samples against the target
(an upper bound: some run in parallel in the browser). Prints a table and writes
bench/results/ui.json (ui-quick.json).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from _common import (
    REPO_DIR,
    format_table,
    free_port,
    latency_summary_ms,
    machine_facts,
    verdict,
    write_json,
)

from dtq.models import AckItem, Heartbeat, LeaseRequest, Priority, TaskCreate, TaskErrorIn
from dtq.server import open_queue
from dtq.settings import Durability, Settings

TARGET_PAGE_MS = 300.0
NAMES = [f"job.{i:02d}" for i in range(20)]
QUEUES = [f"q{i}" for i in range(10)]
PRIORITIES = [Priority.HIGH, Priority.MEDIUM, Priority.LOW]
PASSWORD = "password"
WORKERS = 20


def body(i: int) -> TaskCreate:
    return TaskCreate(
        name=NAMES[i % len(NAMES)],
        queue=QUEUES[(i // 7) % len(QUEUES)],
        priority=PRIORITIES[i % 3],
        payload={"i": i, "data": "x" * 32},
        tags=["bench", f"t{i % 5}"],
    )


async def build(path: Path, tasks: int) -> dict[str, Any]:
    settings = Settings(data_dir=str(path), durability=Durability.OS, map_size_bytes=8 << 30)
    async with open_queue(settings) as queue:
        t0 = time.perf_counter()
        made = 0
        while made < tasks:
            n = min(2000, tasks - made)
            await queue.create_many([body(made + k) for k in range(n)])
            made += n
        # Some work done: ~5% completed, ~0.5% failed (no retries left).
        done = tasks // 20
        finished = 0
        while finished < done:
            leased = await queue.lease(LeaseRequest(worker_id="bench-w", max_tasks=100, wait=0))
            if not leased:
                break
            acks = [
                AckItem(id=t.id, lease_id=t.lease.id, status="completed", result={"ok": 1})
                if (finished + k) % 10
                else AckItem(
                    id=t.id,
                    lease_id=t.lease.id,
                    status="failed",
                    retry=False,
                    error=TaskErrorIn(message="upstream 503", type="HTTPError"),
                )
                for k, t in enumerate(leased)
                if t.lease is not None
            ]
            await queue.ack(acks)
            finished += len(acks)
        # Work in progress for the Workers page: 20 workers, 50 running tasks each (leases
        # of a day, so they are still running when the server starts on a reused store).
        running = 0
        for w in range(WORKERS):
            wid = f"bench-worker-{w:02d}"
            await queue.heartbeat(Heartbeat(worker_id=wid, current_load=50, max_capacity=100))
            got = await queue.lease(
                LeaseRequest(worker_id=wid, max_tasks=50, wait=0, lease_seconds=86400)
            )
            running += len(got)
        return {"tasks": tasks, "finished": finished, "running": running,
                "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def fingerprint() -> str:
    """Changes with the storage code, models or `build`: a store built otherwise is built again."""
    digest = hashlib.sha256(inspect.getsource(build).encode())
    for path in sorted((REPO_DIR / "dtq" / "storage").rglob("*.py")):
        digest.update(path.read_bytes())
    digest.update((REPO_DIR / "dtq" / "models.py").read_bytes())
    return digest.hexdigest()[:16]


def ensure_store(path: Path, tasks: int, rebuild: bool) -> dict[str, Any]:
    marker = path / "ui-bench-store.json"
    if not rebuild and marker.exists():
        info: dict[str, Any] = json.loads(marker.read_text())
        if info.get("tasks") == tasks and info.get("fingerprint") == fingerprint():
            return {**info, "reused": True}
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    print(f"  building a {tasks:,}-task store in {path} ...", flush=True)
    info = {**trio.run(build, path, tasks), "fingerprint": fingerprint()}
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
    env.update(DTQ_ADMIN_PASSWORD=PASSWORD, DTQ_RATE_LIMIT_PER_MINUTE="0",
               DTQ_RATE_LIMIT_PER_HOUR="0", DTQ_LOG_FORMAT="json")  # fmt: skip
    log = open(data_dir.parent / "ui-bench-server.log", "wb")  # noqa: SIM115 (kept for the run)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_DIR,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dtq serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # another process starting up: nothing to await
    proc.kill()
    raise SystemExit("dtq serve did not become ready within 300 s")


def pages(http: httpx.Client, tasks: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each page's API calls, as its module makes them."""
    some = http.get("/api/v1/tasks", params={"limit": 1, "status": "failed"}).json()["data"]
    task_id = (
        some[0]["id"]
        if some
        else http.get("/api/v1/tasks", params={"limit": 1}).json()["data"][0]["id"]
    )
    workers = http.get("/api/v1/workers", params={"skip": 0, "limit": 50}).json()["data"]
    high = http.get("/api/v1/tasks", params={"limit": 1, "priority": "high"}).json()
    high_total = high["pagination"]["total"]
    return {
        "overview": [
            ("/analytics/dashboard", {}),
            ("/analytics/trends", {"days": 7}),
            ("/queues", {"limit": 10}),
        ],
        "overview (365 days)": [("/analytics/trends", {"days": 365})],
        "overview: export JSON": [("/analytics/export", {"days": 7, "format": "json"})],
        "tasks": [("/tasks", {"skip": 0, "limit": 50, "sort": "created_at", "order": "desc"})],
        "tasks: status=pending": [("/tasks", {"limit": 50, "status": "pending"})],
        "tasks: status=completed": [("/tasks", {"limit": 50, "status": "completed"})],
        "tasks: priority=high": [("/tasks", {"limit": 50, "priority": "high"})],
        "tasks: priority=high, last page": [
            ("/tasks", {"limit": 50, "priority": "high", "skip": max(0, high_total - 50)})
        ],
        "tasks: pending + high": [
            ("/tasks", {"limit": 50, "status": "pending", "priority": "high"})
        ],
        "tasks: queue=q3": [("/tasks", {"limit": 50, "queue": "q3"})],
        "tasks: name=job.07": [("/tasks", {"limit": 50, "name": "job.07"})],
        "tasks: failed + q3": [("/tasks", {"limit": 50, "status": "failed", "queue": "q3"})],
        "tasks: sort=duration": [("/tasks", {"limit": 50, "sort": "duration", "order": "desc"})],
        "tasks: sort=duration asc": [("/tasks", {"limit": 50, "sort": "duration", "order": "asc"})],
        "tasks: completed by duration": [
            ("/tasks", {"limit": 50, "status": "completed", "sort": "duration", "order": "desc"})
        ],
        "tasks: sort=updated_at": [
            ("/tasks", {"limit": 50, "sort": "updated_at", "order": "desc"})
        ],
        "tasks: last page": [
            ("/tasks", {"skip": max(0, tasks - 50), "limit": 50, "order": "desc"})
        ],
        "tasks: middle page": [("/tasks", {"skip": tasks // 2, "limit": 50, "order": "desc"})],
        "task": [
            (f"/tasks/{task_id}", {}),
            (f"/tasks/{task_id}/events", {"skip": 0, "limit": 50}),
            (f"/tasks/{task_id}/explain", {}),
        ],
        "failed": [("/tasks", {"status": "failed", "limit": 100})],
        "workers": [
            ("/workers", {"skip": 0, "limit": 50}),
            *[("/tasks", running_of(w["worker_id"])) for w in workers],
        ],
        "queues": [("/queues", {"skip": 0, "limit": 50})],
        "schedules": [("/schedules", {"skip": 0, "limit": 50})],
    }


def running_of(worker_id: str) -> dict[str, Any]:
    """The workers page's query for one worker's running tasks."""
    return {"status": "running", "worker_id": worker_id, "limit": 5, "sort": "updated_at",
            "order": "desc"}  # fmt: skip


def measure(http: httpx.Client, calls: list[tuple[str, dict[str, Any]]], samples: int) -> Any:
    per_call: list[list[float]] = [[] for _ in calls]
    totals: list[float] = []
    statuses: set[int] = set()
    for _ in range(samples):
        total = 0.0
        for i, (path, params) in enumerate(calls):
            t = time.perf_counter()
            reply = http.get(f"/api/v1{path}", params=params)
            took = time.perf_counter() - t
            statuses.add(reply.status_code)
            per_call[i].append(took)
            total += took
        totals.append(total)
    return latency_summary_ms(totals), [latency_summary_ms(c) for c in per_call], statuses


# Counts what the page's WebSockets deliver (events inside batches too), without touching the
# dashboard's code: the page's own `WebSocket` is wrapped before any of its modules run.
COUNT_EVENTS_JS = r"""
(() => {
  const Real = window.WebSocket;
  window.__events = 0;
  window.WebSocket = class extends Real {
    constructor(...args) {
      super(...args);
      // The server writes a batch as {"event":"batch","count":N,...}: read N, don't parse.
      this.addEventListener("message", (m) => {
        const batch = /^\{"event":"batch","count":(\d+)/.exec(m.data);
        window.__events += batch ? Number(batch[1]) : 1;
      });
    }
  };
})();
"""
# Frame gaps and long tasks (> 50 ms of main-thread work) while the events pour in.
WATCH_FRAMES_JS = """
(seconds) => new Promise((resolve) => {
  const longTasks = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) longTasks.push(e.duration);
  }).observe({ entryTypes: ["longtask"] });
  const gaps = [];
  const start = performance.now();
  const events0 = window.__events;
  let last = start;
  const frame = (now) => {
    gaps.push(now - last);
    last = now;
    if (now - start < seconds * 1000) requestAnimationFrame(frame);
    else resolve({ gaps, longTasks, events: window.__events - events0,
                   elapsed: (now - start) / 1000 });
  };
  requestAnimationFrame(frame);
})
"""


def produce(url: str, token: str, rate: float, seconds: float, stop: threading.Event) -> dict:
    """Creates tasks in batches of 500 at `rate` tasks/s (one task.created event each)."""
    batch = 500
    sent = 0
    t0 = time.perf_counter()
    bodies = [{"name": "live.load", "queue": "live", "payload": {"i": i}} for i in range(batch)]
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as http:  # fmt: skip
        while not stop.is_set() and time.perf_counter() - t0 < seconds:
            due = t0 + sent / rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)  # pacing the producer: nothing to await
            reply = http.post("/api/v1/tasks/batch", json={"tasks": bodies})
            reply.raise_for_status()
            sent += batch
    elapsed = time.perf_counter() - t0
    return {"created": sent, "seconds": round(elapsed, 2), "rate": round(sent / elapsed, 1)}


def live_load(url: str, token: str, rate: float, seconds: float) -> dict[str, Any] | None:
    """The tasks and overview pages in Chromium while `rate` task events/s arrive."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("  (skipping the browser part: playwright is not installed)")
        return None
    chromium = shutil.which("chromium")
    if chromium is None:
        print("  (skipping the browser part: chromium is not installed)")
        return None
    args = [
        "--no-sandbox",
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            for page_path in ("/ui/tasks", "/ui/"):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.add_init_script(COUNT_EVENTS_JS)
                page.goto(f"{url}/ui/login")
                page.evaluate(
                    "t => sessionStorage.setItem('dtq.session', JSON.stringify("
                    "{token: t, username: 'admin', role: 'admin', expires_at: Date.now() + 3.6e6}))",
                    token,
                )
                page.goto(url + page_path)
                page.wait_for_selector("#live-state:has-text('live')", timeout=30_000)
                stop = threading.Event()
                made: dict[str, Any] = {}
                producer = threading.Thread(
                    target=lambda made=made, stop=stop: made.update(
                        produce(url, token, rate, seconds + 1, stop)
                    )
                )
                producer.start()
                try:
                    seen = page.evaluate(WATCH_FRAMES_JS, seconds)
                finally:
                    stop.set()
                    producer.join(timeout=60)
                gaps = sorted(seen["gaps"])
                out[page_path] = {
                    "producer": made,
                    "events_received": seen["events"],
                    "events_per_s": round(seen["events"] / seen["elapsed"], 1),
                    "frames": len(gaps),
                    "frame_gap_p50_ms": round(gaps[len(gaps) // 2], 1),
                    "frame_gap_p99_ms": round(gaps[int(len(gaps) * 0.99)], 1),
                    "frame_gap_max_ms": round(gaps[-1], 1),
                    "long_tasks": len(seen["longTasks"]),
                    "long_task_max_ms": round(max(seen["longTasks"], default=0), 1),
                }
                context.close()
        finally:
            browser.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--rebuild-store", action="store_true")
    parser.add_argument("--no-browser", action="store_true", help="skip the live-load part")
    parser.add_argument("--event-rate", type=float, default=5000.0, help="task events/s")
    args = parser.parse_args()
    tasks = args.tasks or (100_000 if args.quick else 1_000_000)
    samples = args.samples or (5 if args.quick else 20)
    store = Path(tempfile.gettempdir()) / "dtq-bench" / f"ui-store-{tasks}"
    built = ensure_store(store, tasks, args.rebuild_store)
    work = Path(tempfile.mkdtemp(prefix="dtq-ui-bench-"))
    data = work / "data"
    shutil.copytree(store, data)  # the server writes (users, counters): keep the cache clean
    proc, url, startup_s = start_server(data)
    rows = []
    results: dict[str, Any] = {}
    token = ""
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            login = http.post(
                "/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}
            )
            http.headers["Authorization"] = f"Bearer {login.json()['token']}"
            for page, calls in pages(http, tasks).items():
                measure(http, calls, 1)  # warm: first use of an index, caches
                total, per_call, statuses = measure(http, calls, samples)
                ok = total["p90_ms"] < TARGET_PAGE_MS and statuses <= {200}
                results[page] = {"page": total, "calls": dict(zip([c[0] for c in calls], per_call,
                                                                  strict=True)),
                                 "statuses": sorted(statuses)}  # fmt: skip
                rows.append([page, len(calls), f"{total['p50_ms']:.1f}", f"{total['p90_ms']:.1f}",
                             ",".join(map(str, sorted(statuses))),
                             verdict(ok) if statuses <= {200} else "n/a (endpoint missing)"])  # fmt: skip
            token = http.headers["Authorization"].split()[1]
        if not args.no_browser:
            results["live_load"] = live_load(url, token, args.event_rate, 5 if args.quick else 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{tasks:,} tasks stored ({built.get('finished', 0):,} finished, "
          f"{built.get('running', 0):,} running); "
          f"server ready in {startup_s:.1f} s; {samples} samples per page\n")  # fmt: skip
    print(format_table(["page", "calls", "p50 ms", "p90 ms", "HTTP", f"< {TARGET_PAGE_MS:.0f} ms"],
                       rows))  # fmt: skip
    for page_path, seen in (results.get("live_load") or {}).items():
        print(f"\n{page_path} in Chromium at {seen['producer'].get('rate', 0):,.0f} created/s: "
              f"{seen['events_per_s']:,.0f} events/s received, frame gap p50 "
              f"{seen['frame_gap_p50_ms']} ms, p99 {seen['frame_gap_p99_ms']} ms, max "
              f"{seen['frame_gap_max_ms']} ms, {seen['long_tasks']} long tasks "
              f"(max {seen['long_task_max_ms']} ms)")  # fmt: skip
    path = write_json("ui-quick.json" if args.quick else "ui.json", {
        "machine": machine_facts(), "tasks": tasks, "store": built, "samples": samples,
        "startup_s": round(startup_s, 2), "target_page_ms": TARGET_PAGE_MS, "pages": results,
    })  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
