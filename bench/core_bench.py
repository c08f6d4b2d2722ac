"""In-process benchmark of dtq's core (TaskQueue over LMDB with group commit), no HTTP.

    python bench/core_bench.py            # full run (~3-5 min; builds a 1M-task store once)
    python bench/core_bench.py --quick    # smaller sizes, ~1 min
    python bench/core_bench.py --only a,c # some sections only (a b c d e f)

Prints a table and writes bench/results/core.json (or core-quick.json). See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from _common import (
    REPO_DIR,
    SystemCpu,
    contention,
    fmt_rate,
    format_table,
    latency_summary_ms,
    machine_facts,
    proc_status,
    verdict,
    wait_for_quiet,
    write_json,
)

from dtq import __version__ as dtq_version
from dtq.core.service import TaskQueue
from dtq.models import AckItem, LeaseRequest, TaskCreate
from dtq.server import open_queue
from dtq.settings import Durability, Settings

FSYNC = Durability.FSYNC
OS = Durability.OS
BIG_MAP = 8 << 30  # the 1M-task store is ~1-2 GB; avoid growing the map many times

# Targets (DESIGN/brief), fsync durability, this 2-core machine.
TARGET_SINGLE_64 = 8_000.0  # life cycles/s, 64 concurrent single-task callers
TARGET_BATCH_100 = 30_000.0  # life cycles/s in batches of 100
TARGET_STARTUP_1M_S = 5.0  # open_queue incl. rebuild with 1M tasks stored


@dataclass(frozen=True)
class Sizes:
    seconds: float  # measured window of each throughput run
    warmup: float  # run before the window opens (not counted)
    bulk_tasks: int  # (d)
    lease_ready: int  # (e) ready tasks stored
    lease_samples: int  # (e)
    startup_tasks: int  # (f)
    startup_runs: int  # (f) fresh subprocesses


FULL = Sizes(3.0, 0.5, 10_000, 100_000, 2_000, 1_000_000, 3)
QUICK = Sizes(1.0, 0.25, 10_000, 10_000, 500, 100_000, 2)


def settings_for(path: Path, durability: Durability, map_size: int = 256 << 20) -> Settings:
    return Settings(data_dir=str(path), durability=durability, map_size_bytes=map_size)


def body(i: int = 0) -> TaskCreate:
    return TaskCreate(name="bench.task", payload={"i": i, "data": "x" * 32})


class Window:
    """Counts life cycles inside [open, close] and the writer's work in it."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.count = 0
        self.open = False
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._w0 = (0, 0, 0.0)
        self._sys = SystemCpu()
        self.result: dict[str, Any] = {}

    def _writer(self) -> tuple[int, int, float]:
        s = self.queue.store.stats
        return s.commits, s.ops, s.commit_seconds_total

    def start(self) -> None:
        self.open = True
        self.count = 0
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._w0 = self._writer()
        self._sys = SystemCpu()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        commits, ops, commit_s = (a - b for a, b in zip(self._writer(), self._w0, strict=True))
        self.open = False
        self.result = {
            "lifecycles": self.count,
            "seconds": round(elapsed, 3),
            "rate": round(self.count / elapsed, 1),
            "cpu_percent": round(100 * cpu / elapsed, 1),  # of one core; 200 = both cores
            # CPU per life cycle (both threads): less sensitive to a busy machine than rates
            "cpu_us_per_lifecycle": round(1e6 * cpu / self.count, 1) if self.count else 0,
            "commits": commits,
            "ops": ops,
            "avg_ops_per_commit": round(ops / commits, 1) if commits else 0,
            "commits_per_s": round(commits / elapsed, 1),
            "avg_commit_ms": round(1000 * commit_s / commits, 3) if commits else 0,
            "writer_busy_percent": round(100 * commit_s / elapsed, 1),
            **contention(self._sys, cpu, elapsed),
        }
        return self.result


async def run_window(
    queue: TaskQueue,
    callers: int,
    sizes: Sizes,
    loop: Callable[[int, Window, Callable[[], bool]], Awaitable[None]],
) -> dict[str, Any]:
    """Run `callers` copies of `loop` for warmup + seconds; count inside the window only."""
    window = Window(queue)
    deadline = trio.current_time() + sizes.warmup + sizes.seconds

    def running() -> bool:
        return trio.current_time() < deadline

    async with trio.open_nursery() as nursery:
        for i in range(callers):
            nursery.start_soon(loop, i, window, running)
        await trio.sleep(sizes.warmup)
        window.start()
    return window.stop()  # every caller has finished its last life cycle


# -- (a)/(b) single-task life cycles --------------------------------------------------------


async def single_lifecycles(path: Path, durability: Durability, callers: int, sizes: Sizes) -> Any:
    async with open_queue(settings_for(path, durability)) as queue:

        async def loop(i: int, window: Window, running: Callable[[], bool]) -> None:
            req = LeaseRequest(worker_id=f"w{i}", wait=0)
            create = body(i)
            while running():
                await queue.create(create)
                for task in await queue.lease(req):
                    assert task.lease is not None
                    await queue.complete(task.id, task.lease.id, {"ok": True})
                    if window.open:
                        window.count += 1

        return await run_window(queue, callers, sizes, loop)


# -- (c) batched life cycles ----------------------------------------------------------------


async def batch_lifecycles(
    path: Path, durability: Durability, callers: int, sizes: Sizes, batch: int = 100
) -> Any:
    async with open_queue(settings_for(path, durability)) as queue:

        async def loop(i: int, window: Window, running: Callable[[], bool]) -> None:
            bodies = [body(k) for k in range(batch)]
            req = LeaseRequest(worker_id=f"w{i}", max_tasks=batch, wait=0)
            while running():
                await queue.create_many(bodies)
                tasks = await queue.lease(req)
                acks = [
                    AckItem(id=t.id, lease_id=t.lease.id, status="completed", result={"ok": 1})
                    for t in tasks
                    if t.lease is not None
                ]
                if not acks:
                    continue
                outcomes = await queue.ack(acks)
                if window.open:
                    window.count += sum(1 for o in outcomes if o.ok)

        return await run_window(queue, callers, sizes, loop)


# -- (d) bulk create ------------------------------------------------------------------------


async def bulk_create_many(path: Path, durability: Durability, total: int, batch: int) -> Any:
    async with open_queue(settings_for(path, durability)) as queue:
        bodies = [body(k) for k in range(batch)]
        t0 = time.perf_counter()
        made = 0
        while made < total:
            rows = await queue.create_many(bodies[: min(batch, total - made)])
            made += len(rows)
        elapsed = time.perf_counter() - t0
        return {
            "tasks": made,
            "seconds": round(elapsed, 3),
            "rate": round(made / elapsed, 1),
            "commits": queue.store.stats.commits,
        }


async def bulk_create_concurrent(
    path: Path, durability: Durability, total: int, callers: int
) -> Any:
    async with open_queue(settings_for(path, durability)) as queue:
        left = total
        t0 = time.perf_counter()

        async def loop(i: int) -> None:
            nonlocal left
            create = body(i)
            while left > 0:
                left -= 1
                await queue.create(create)

        async with trio.open_nursery() as nursery:
            for i in range(callers):
                nursery.start_soon(loop, i)
        elapsed = time.perf_counter() - t0
        stats = queue.store.stats
        return {
            "tasks": total,
            "seconds": round(elapsed, 3),
            "rate": round(total / elapsed, 1),
            "commits": stats.commits,
            "avg_ops_per_commit": round(stats.ops / stats.commits, 1) if stats.commits else 0,
        }


# -- (e) lease latency with many ready tasks --------------------------------------------------


async def fill(queue: TaskQueue, total: int, batch: int = 1000, producers: int = 2) -> None:
    bodies = [body(k) for k in range(batch)]
    left = total

    async def producer() -> None:
        nonlocal left
        while left > 0:
            n = min(batch, left)
            left -= n
            await queue.create_many(bodies[:n])

    async with trio.open_nursery() as nursery:
        for _ in range(producers):
            nursery.start_soon(producer)


async def lease_latency(path: Path, durability: Durability, ready: int, samples: int) -> Any:
    async with open_queue(settings_for(path, durability, 1 << 30)) as queue:
        t0 = time.perf_counter()
        await fill(queue, ready)
        fill_s = time.perf_counter() - t0
        stored = queue.dispatcher.ready_count()
        req = LeaseRequest(worker_id="lat", wait=0)
        times: list[float] = []
        for _ in range(samples):
            t = time.perf_counter()
            got = await queue.lease(req)
            times.append(time.perf_counter() - t)
            assert len(got) == 1
        # The in-memory part alone (what the dispatcher costs, no commit). The taken tasks
        # are simply dropped from memory: nothing else runs on this store afterwards.
        take: list[float] = []
        for _ in range(samples):
            t = time.perf_counter()
            queue.dispatcher.take(None, None, 1)
            take.append(time.perf_counter() - t)
        return {
            "ready_tasks": stored,
            "fill_seconds": round(fill_s, 2),
            "fill_rate": round(ready / fill_s, 1),
            **latency_summary_ms(times),
            "dispatcher_take_p50_us": round(sorted(take)[len(take) // 2] * 1e6, 2),
        }


# -- (f) start-up and memory with a big store -------------------------------------------------


def store_fingerprint() -> str:
    """Changes when the storage layout or models change, so a stale cached store is rebuilt."""
    h = hashlib.sha256(dtq_version.encode())
    for rel in ("dtq/storage/lmdb/store.py", "dtq/storage/lmdb/txn.py",
                "dtq/storage/lmdb/layouts.py", "dtq/storage/keys.py", "dtq/models.py"):  # fmt: skip
        p = REPO_DIR / rel
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def default_store_dir(tasks: int) -> Path:
    return Path(tempfile.gettempdir()) / "dtq-bench" / f"store-{tasks}"


async def build_store(path: Path, tasks: int) -> dict[str, Any]:
    async with open_queue(settings_for(path, OS, BIG_MAP)) as queue:
        t0 = time.perf_counter()
        await fill(queue, tasks, batch=2000, producers=2)
        elapsed = time.perf_counter() - t0
    return {"tasks": tasks, "seconds": round(elapsed, 1), "rate": round(tasks / elapsed, 1)}


def ensure_store(path: Path, tasks: int, force: bool) -> dict[str, Any]:
    marker = path / "bench-store.json"
    want = {"tasks": tasks, "fingerprint": store_fingerprint()}
    if not force and marker.exists():
        try:
            have = json.loads(marker.read_text())
        except ValueError:
            have = {}
        if all(have.get(k) == v for k, v in want.items()):
            return {**have, "reused": True}
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    print(f"  building a {tasks:,}-task store in {path} (os durability, once) ...", flush=True)
    built = trio.run(build_store, path, tasks)
    size = sum(f.stat().st_size for f in path.iterdir())
    info = {**want, **built, "bytes": size}
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


async def _startup_child(path: Path, gc_off: bool) -> dict[str, Any]:
    # Time TaskQueue.rebuild on its own too: wrap it (in this throwaway process only).
    timing: dict[str, float] = {}
    original = TaskQueue.rebuild

    def timed_rebuild(self: TaskQueue) -> int:
        t = time.perf_counter()
        try:
            return original(self)
        finally:
            timing["rebuild_s"] = time.perf_counter() - t

    TaskQueue.rebuild = timed_rebuild  # type: ignore[method-assign]
    if gc_off:  # experiment: how much of the start-up is the cyclic GC scanning new objects
        gc.disable()
    before = proc_status()
    t0 = time.perf_counter()
    async with open_queue(settings_for(path, FSYNC, BIG_MAP)) as queue:
        opened = time.perf_counter() - t0
        after = proc_status()
        return {
            "open_seconds": round(opened, 3),
            "rebuild_seconds": round(timing.get("rebuild_s", float("nan")), 3),
            "gc_disabled": gc_off,
            "ready_tasks": queue.dispatcher.ready_count(),
            "rss_before_kib": before["VmRSS"],
            "rss_kib": after["VmRSS"],
            "rss_anon_kib": after.get("RssAnon", 0),
            "rss_file_kib": after.get("RssFile", 0),
            "hwm_kib": after.get("VmHWM", 0),
        }


def startup_child_main(path: str, gc_off: bool) -> None:
    result = trio.run(_startup_child, Path(path), gc_off)
    print("RESULT " + json.dumps(result), flush=True)


def measure_startup(path: Path, runs: int) -> dict[str, Any]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--startup-child", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        wall = time.perf_counter() - t0
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"start-up child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        samples.append({**json.loads(line[7:]), "process_wall_seconds": round(wall, 3)})
    samples.sort(key=lambda s: s["open_seconds"])
    median = samples[len(samples) // 2]
    return {"median": median, "runs": samples}


# -- driver ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, sizes: Sizes, tmp: Path) -> None:
        self.sizes = sizes
        self.tmp = tmp
        self.results: dict[str, Any] = {}
        self.rows: list[list[Any]] = []
        self.quiet: dict[str, dict[str, float]] = {}
        self._n = 0

    def fresh_dir(self) -> Path:
        self._n += 1
        path = self.tmp / f"run{self._n}"
        path.mkdir()
        return path

    def measure(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) (a trio.run or a subprocess driver) and note the machine's contention."""
        sys_cpu = SystemCpu()
        cpu0 = time.process_time()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = fn(*args)
        wall = time.perf_counter() - t0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = time.process_time() - cpu0 + kids.ru_utime + kids.ru_stime
        own -= kids0.ru_utime + kids0.ru_stime
        if isinstance(r, dict) and "other_cores" not in r:
            r.update(contention(sys_cpu, own, wall))
        return r

    def add(self, key: str, label: str, value: str, unit: str, note: str, data: Any) -> None:
        self.results[key] = data
        others = data.get("other_cores", "-") if isinstance(data, dict) else "-"
        self.rows.append([label, value, unit, others, note])
        print(f"  {label:<52} {value:>12} {unit:<14} {others:>5}  {note}", flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # each run starts from an empty store
        self.tmp.mkdir(parents=True, exist_ok=True)

    def single(self, durability: Durability, section: str) -> None:
        for callers in (1, 8, 64):
            r = self.measure(
                trio.run, single_lifecycles, self.fresh_dir(), durability, callers, self.sizes
            )
            note = (
                f"{r['avg_ops_per_commit']} ops/commit, {r['commits_per_s']:,.0f} commits/s, "
                f"{r['avg_commit_ms']} ms/commit, cpu {r['cpu_percent']}%, "
                f"{r['cpu_us_per_lifecycle']} us cpu/cycle"
            )
            self.add(
                f"{section}.{durability.value}.c{callers}",
                f"({section}) life cycles, {durability.value}, {callers} callers",
                fmt_rate(r["rate"]),
                "cycles/s",
                note,
                r,
            )

    def batched(self) -> None:
        for durability in (FSYNC, OS):
            for callers in (1, 4):
                r = self.measure(
                    trio.run, batch_lifecycles, self.fresh_dir(), durability, callers, self.sizes
                )
                note = (
                    f"{r['commits_per_s']:,.0f} commits/s, {r['avg_commit_ms']} ms/commit, "
                    f"cpu {r['cpu_percent']}%, {r['cpu_us_per_lifecycle']} us cpu/cycle"
                )
                self.add(
                    f"c.{durability.value}.c{callers}",
                    f"(c) batches of 100, {durability.value}, {callers} caller(s)",
                    fmt_rate(r["rate"]),
                    "cycles/s",
                    note,
                    r,
                )

    def bulk(self) -> None:
        n = self.sizes.bulk_tasks
        for durability in (FSYNC, OS):
            r = self.measure(trio.run, bulk_create_many, self.fresh_dir(), durability, n, 1000)
            self.add(
                f"d.{durability.value}.create_many_1000",
                f"(d) {n:,} creates, create_many x1000, {durability.value}",
                fmt_rate(r["rate"]),
                "tasks/s",
                f"{r['seconds']} s",
                r,
            )
            r = self.measure(trio.run, bulk_create_concurrent, self.fresh_dir(), durability, n, 64)
            self.add(
                f"d.{durability.value}.single_c64",
                f"(d) {n:,} creates, 64 concurrent single, {durability.value}",
                fmt_rate(r["rate"]),
                "tasks/s",
                f"{r['seconds']} s, {r['avg_ops_per_commit']} ops/commit",
                r,
            )

    def lease(self) -> None:
        s = self.sizes
        r = self.measure(
            trio.run, lease_latency, self.fresh_dir(), FSYNC, s.lease_ready, s.lease_samples
        )
        label = f"(e) lease(wait=0) latency, {r['ready_tasks']:,} ready, fsync"
        self.add(
            "e.fsync",
            label,
            f"{r['p50_ms']} / {r['p99_ms']}",
            "ms p50 / p99",
            f"max {r['max_ms']} ms; dispatcher.take {r['dispatcher_take_p50_us']} us",
            r,
        )

    def startup(self, store_dir: Path | None, rebuild: bool) -> None:
        n = self.sizes.startup_tasks
        path = store_dir or default_store_dir(n)
        store = ensure_store(path, n, rebuild)
        how = "reused" if store["reused"] else f"built in {store['seconds']} s"
        print(f"  store: {n:,} tasks, {store['bytes'] / 1e6:,.0f} MB, {how}", flush=True)
        r = self.measure(measure_startup, path, self.sizes.startup_runs)
        r["store"] = store
        m = {**r["median"], "other_cores": r.get("other_cores", "-")}
        self.add(
            "f.startup",
            f"(f) start-up, open_queue incl. rebuild, {n:,} tasks",
            f"{m['open_seconds']}",
            "s (median)",
            f"runs {[x['open_seconds'] for x in r['runs']]}; process {m['process_wall_seconds']} s",
            r,
        )
        self.add(
            "f.rss",
            f"(f) resident memory after start-up, {n:,} tasks",
            f"{m['rss_kib'] / 1024:,.0f}",
            "MiB RSS",
            f"anon {m['rss_anon_kib'] / 1024:,.0f} MiB, file {m['rss_file_kib'] / 1024:,.0f} MiB, "
            f"peak {m['hwm_kib'] / 1024:,.0f} MiB, before open {m['rss_before_kib'] / 1024:,.0f}",
            m,
        )


def targets(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    out = []
    single = results.get("a.fsync.c64")
    if single:
        out.append(
            {
                "target": "life cycles/s, fsync, 64 concurrent single-task callers >= 8,000",
                "measured": single["rate"],
                "ok": single["rate"] >= TARGET_SINGLE_64,
            }
        )
    batch = [results[k] for k in ("c.fsync.c1", "c.fsync.c4") if k in results]
    if batch:
        best = max(b["rate"] for b in batch)
        out.append(
            {
                "target": "life cycles/s, fsync, batches of 100 >= 30,000 (best of 1/4 callers)",
                "measured": best,
                "ok": best >= TARGET_BATCH_100,
            }
        )
    start = results.get("f.startup")
    if start:
        secs = start["median"]["open_seconds"]
        full = sizes.startup_tasks >= 1_000_000
        out.append(
            {
                "target": f"start-up with {sizes.startup_tasks:,} tasks < 5 s"
                + ("" if full else " (quick: target is for 1,000,000)"),
                "measured": secs,
                "ok": secs < TARGET_STARTUP_1M_S,
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (~1 min)")
    ap.add_argument("--only", default="abcdef", help="sections to run, e.g. 'a,c,f' (default all)")
    ap.add_argument("--seconds", type=float, help="measured window per throughput run")
    ap.add_argument("--store-dir", type=Path, help="where the big start-up store lives (reused)")
    ap.add_argument("--rebuild-store", action="store_true", help="rebuild the start-up store")
    ap.add_argument("--tmp", type=Path, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--out", help="results file name in bench/results (default core.json)")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        help="before each section wait up to this many seconds for other processes to go "
        "quiet (the machine is shared; default 20, 0 = don't wait)",
    )
    ap.add_argument("--startup-child", help=argparse.SUPPRESS)
    ap.add_argument("--startup-gc-off", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.startup_child:
        startup_child_main(args.startup_child, args.startup_gc_off)
        return 0

    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes = dataclasses.replace(sizes, seconds=args.seconds)
    only = set(args.only.replace(",", ""))
    scratch = Path(tempfile.mkdtemp(prefix="dtq-core-bench-", dir=args.tmp))
    bench = Bench(sizes, scratch)
    started = time.perf_counter()
    print(f"dtq core bench ({'quick' if args.quick else 'full'}), scratch {scratch}", flush=True)
    try:
        sections: list[tuple[str, Callable[[], None]]] = [
            ("a", lambda: bench.single(FSYNC, "a")),
            ("b", lambda: bench.single(OS, "b")),
            ("c", bench.batched),
            ("d", bench.bulk),
            ("e", bench.lease),
            ("f", lambda: bench.startup(args.store_dir, args.rebuild_store)),
        ]
        for name, run in sections:
            if name not in only:
                continue
            if args.wait_quiet > 0:
                quiet = wait_for_quiet(args.wait_quiet)
                bench.quiet[name] = quiet
                if quiet["busy_cores"] >= 0.3:
                    print(f"  (machine busy: {quiet['busy_cores']} cores in use by others)")
            run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total_s = time.perf_counter() - started

    checks = targets(bench.results, sizes)
    print()
    print(format_table(["measurement", "value", "unit", "others", "notes"], bench.rows))
    print("  (others: cores busy with other processes on the machine during that run)")
    print()
    for c in checks:
        print(f"  [{verdict(c['ok'])}] {c['target']}: measured {c['measured']:,}")
    print(f"\ntotal {total_s:.0f} s")
    data = {
        "bench": "core",
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
        "machine": machine_facts(),
        "total_seconds": round(total_s, 1),
        "results": bench.results,
        "wait_for_quiet": bench.quiet,
        "targets": checks,
    }
    path = write_json(args.out or ("core-quick.json" if args.quick else "core.json"), data)
    print(f"wrote {path}")
    return 0 if all(math.isfinite(c["measured"]) for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
