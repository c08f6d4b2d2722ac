"""HTTP benchmark of a real `dtq serve` process; load comes from other processes.

    python bench/http_bench.py            # full run (~2 min): 10 s per wrk run
    python bench/http_bench.py --quick    # 3 s per wrk run, fewer samples, 2,000 long polls
    python bench/http_bench.py --profile  # also record py-spy profiles of the server
                                          # (slows the server: figures are then not official)

Rates come from `wrk` (keep-alive, 64 connections, small Lua scripts) when it is installed
(`apt-get install -y wrk`), else from a Python load generator (raw keep-alive sockets in several
processes). Lease wake-up latency and the idle long polls use trio clients on raw sockets.
Prints a table and writes bench/results/http.json (or http-quick.json). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trio
from _common import (
    REPO_DIR,
    RESULTS_DIR,
    SystemCpu,
    contention,
    create_admin_key,
    fmt_rate,
    format_table,
    free_port,
    latency_summary_ms,
    machine_facts,
    proc_cpu_seconds,
    proc_fd_count,
    proc_status,
    verdict,
    wait_for_quiet,
    write_json,
)

HOST = "127.0.0.1"
TASK_BODY: dict[str, Any] = {"name": "bench.task", "payload": {"i": 1, "data": "x" * 32}}

TARGET_CREATE_VS_BARE = 0.90
TARGET_BATCH_TASKS_S = 30_000.0
TARGET_WAKEUP_P99_MS = 2.0
TARGET_LONGPOLL_RSS_MB = 500.0


@dataclass(frozen=True)
class Sizes:
    seconds: float  # per load run
    connections: int
    wakeup_samples: int
    long_polls: int


FULL = Sizes(10.0, 64, 300, 10_000)
QUICK = Sizes(3.0, 64, 100, 2_000)


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise this process's open-file limit as far as allowed; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_hard, new_hard))
            return new_hard
        except (ValueError, OSError):
            continue
    return soft


# -- a minimal HTTP/1.1 client on raw sockets (trio) ---------------------------------------


def http_request(
    method: str, path: str, port: int, key: str | None = None, body: Any = None
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    payload = b""
    if body is not None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    if key:
        head.append(f"X-API-Key: {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class TrioConn:
    """One keep-alive connection; requests are written whole, responses parsed minimally."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int) -> TrioConn:
        return cls(await trio.open_tcp_stream(HOST, port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    async def read_response(self) -> tuple[int, bytes]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    await self._fill()
                size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
                while len(self.buf) < eol + 2 + size + 2:
                    await self._fill()
                body += self.buf[eol + 2 : eol + 2 + size]
                del self.buf[: eol + 2 + size + 2]
                if size == 0:
                    return status, bytes(body)
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            await self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return status, body

    async def call(
        self, method: str, path: str, port: int, key: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        await self.send(http_request(method, path, port, key, body))
        status, raw = await self.read_response()
        return status, json.loads(raw) if raw else None

    async def aclose(self) -> None:
        await self.stream.aclose()


# -- the server under test ---------------------------------------------------------------


class Server:
    def __init__(self, workdir: Path, name: str) -> None:
        self.data_dir = workdir / f"data-{name}"
        self.log_path = workdir / f"server-{name}.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = ""
        self.env = {
            **os.environ,
            "DTQ_ADMIN_PASSWORD": "password",
            "DTQ_RATE_LIMIT_PER_MINUTE": "0",
            "DTQ_RATE_LIMIT_PER_HOUR": "0",
            "DTQ_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def create_key(self) -> str:
        self.key = create_admin_key(f"http://{HOST}:{self.port}")
        return self.key

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtq.cli", "serve", "--host", HOST, "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            cwd=REPO_DIR, preexec_fn=raise_nofile,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    s.sendall(http_request("GET", "/health", self.port))
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        self.create_key()
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self) -> float:
        """SIGTERM, then SIGKILL after 20 s. Returns how long the shutdown took."""
        if self.proc is None:
            return 0.0
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        return time.perf_counter() - t0


@contextlib.contextmanager
def running_server(workdir: Path, name: str) -> Iterator[Server]:
    server = Server(workdir, name)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- load generation: wrk, or a Python fallback ------------------------------------------------

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"non_2xx":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def lua_string(s: str) -> str:
    level = "=" * 3
    assert f"]{level}]" not in s
    return f"[{level}[{s}]{level}]"


def wrk_script(method: str, key: str | None, body: Any) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {lua_string(json.dumps(body))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if key:
        lines.append(f'wrk.headers["X-API-Key"] = {lua_string(key)}')
    return "\n".join(lines) + "\n" + WRK_DONE


def run_wrk(
    url: str, method: str, key: str | None, body: Any, sizes: Sizes, workdir: Path
) -> dict[str, Any]:
    script = workdir / "bench.lua"
    script.write_text(wrk_script(method, key, body))
    secs = max(1, round(sizes.seconds))
    cmd = ["wrk", "-t1", f"-c{sizes.connections}", f"-d{secs}s", "--timeout", "10s",
           "-s", str(script), url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    r = json.loads(line[8:])
    seconds = r["duration_us"] / 1e6
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return {
        "tool": "wrk",
        "requests": r["requests"],
        "seconds": round(seconds, 3),
        "rate": round(r["requests"] / seconds, 1),
        "non_2xx": r["non_2xx"],
        "socket_errors": errors,
        "p50_ms": round(r["p50_us"] / 1000, 3),
        "p99_ms": round(r["p99_us"] / 1000, 3),
        "max_ms": round(r["max_us"] / 1000, 3),
    }


def _py_load_proc(
    port: int, request: bytes, connections: int, seconds: float, out: Any, start_at: float
) -> None:
    """One load process: `connections` keep-alive sockets, one request in flight on each."""

    async def main() -> None:
        done = 0
        bad = 0
        lat: list[float] = []
        deadline = start_at + seconds

        async def one() -> None:
            nonlocal done, bad
            conn = await TrioConn.open(port)
            while time.time() < start_at:
                await trio.sleep(0.001)
            while time.time() < deadline:
                t = time.perf_counter()
                await conn.send(request)
                status, _ = await conn.read_response()
                lat.append(time.perf_counter() - t)
                done += 1
                bad += not 200 <= status < 300
            await conn.aclose()

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one)
        out.put((done, bad, lat[:: max(1, len(lat) // 5000)]))

    trio.run(main)


def run_python_load(
    port: int,
    method: str,
    path: str,
    key: str | None,
    body: Any,
    sizes: Sizes,
    server_cpu: Callable[[], float],
) -> dict[str, Any]:
    procs_n = max(1, min(4, (os.cpu_count() or 2) - 1))
    request = http_request(method, path, port, key, body)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.5
    per = [sizes.connections // procs_n + (i < sizes.connections % procs_n) for i in range(procs_n)]
    procs = [
        ctx.Process(target=_py_load_proc, args=(port, request, n, sizes.seconds, out, start_at))
        for n in per
    ]
    try:
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = server_cpu()
        results = [out.get(timeout=sizes.seconds + 60) for _ in procs]
        window_cpu = server_cpu() - cpu0
        for p in procs:
            p.join(timeout=10)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    done = sum(r[0] for r in results)
    lat = latency_summary_ms([x for r in results for x in r[2]])
    return {
        "tool": f"python ({procs_n} processes)",
        "requests": done,
        "seconds": sizes.seconds,
        "rate": round(done / sizes.seconds, 1),
        "non_2xx": sum(r[1] for r in results),
        "socket_errors": 0,
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "max_ms": lat["max_ms"],
        "window_server_cpu_percent": round(100 * window_cpu / sizes.seconds, 1),
    }


class Profiler:
    """py-spy record of the server during a load run (when --profile)."""

    def __init__(self, enabled: bool, pid: int, seconds: float) -> None:
        self.enabled = enabled and shutil.which("py-spy") is not None
        self.pid = pid
        self.seconds = seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.path: Path | None = None

    def start(self, name: str) -> None:
        if not self.enabled:
            return
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.path = RESULTS_DIR / f"profile-http-{name}.txt"
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(self.pid), "--rate", "250", "--format", "raw",
             "--duration", str(max(1, round(self.seconds))), "--nonblocking",
             "-o", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> str | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
        return str(self.path)


class LoadRunner:
    def __init__(self, server: Server, sizes: Sizes, workdir: Path, profile: bool) -> None:
        self.server = server
        self.sizes = sizes
        self.workdir = workdir
        self.use_wrk = shutil.which("wrk") is not None
        self.profiler = Profiler(profile, server.pid, sizes.seconds)
        self.wait_quiet = 0.0

    def run(self, name: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        srv = self.server
        quiet = wait_for_quiet(self.wait_quiet) if self.wait_quiet > 0 else None
        sys_cpu = SystemCpu()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = srv.cpu_seconds()
        t0 = time.perf_counter()
        self.profiler.start(name)
        if self.use_wrk:
            url = f"http://{HOST}:{srv.port}{path}"
            r = run_wrk(url, method, srv.key, body, self.sizes, self.workdir)
        else:
            r = run_python_load(srv.port, method, path, srv.key, body, self.sizes, srv.cpu_seconds)
        wall = time.perf_counter() - t0
        server_cpu = srv.cpu_seconds() - cpu0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
        # over the measured window when the load generator reports it (wrk: the whole run)
        r["server_cpu_percent"] = r.pop(
            "window_server_cpu_percent", round(100 * server_cpu / wall, 1)
        )
        r["load_generator_cpu_percent"] = round(100 * load_cpu / wall, 1)
        r.update(contention(sys_cpu, server_cpu + load_cpu, wall))
        r["waited_for_quiet"] = quiet
        r["profile"] = self.profiler.stop()
        return r


# -- lease wake-up latency --------------------------------------------------------------------


async def _read_timed(conn: TrioConn, into: dict[str, Any], name: str) -> None:
    into[name] = await conn.read_response()
    into[name + "_t"] = time.perf_counter()


async def wakeup_latency(port: int, key: str, samples: int, warmup: int = 20) -> dict[str, Any]:
    worker = await TrioConn.open(port)
    producer = await TrioConn.open(port)
    lease = http_request(
        "POST", "/api/v1/tasks/lease", port, key,
        {"worker_id": "bench-wakeup", "queues": ["wakeup"], "wait": 30},
    )  # fmt: skip
    create = http_request("POST", "/api/v1/tasks", port, key, {"name": "wake", "queue": "wakeup"})
    wake: list[float] = []
    create_rt: list[float] = []
    for i in range(warmup + samples):
        await worker.send(lease)
        await trio.sleep(0.02)  # the server parks the long poll meanwhile
        got: dict[str, Any] = {}
        t0 = time.perf_counter()
        await producer.send(create)
        async with trio.open_nursery() as nursery:  # both answers, each timed on arrival
            nursery.start_soon(_read_timed, worker, got, "lease")
            nursery.start_soon(_read_timed, producer, got, "create")
        (status, raw), (cstatus, _) = got["lease"], got["create"]
        t1, t2 = got["lease_t"], got["create_t"]
        leased = json.loads(raw)["data"] if status == 200 else []
        if status != 200 or cstatus != 201 or len(leased) != 1:
            raise RuntimeError(
                f"wake-up sample {i}: lease {status} {raw[:300]!r}, create {cstatus}"
            )
        task = leased[0]
        s, _ = await producer.call(
            "POST", f"/api/v1/tasks/{task['id']}/complete", port, key,
            {"lease_id": task["lease"]["id"]},
        )  # fmt: skip
        if s != 200:
            raise RuntimeError(f"complete failed: {s}")
        if i >= warmup:
            wake.append(t1 - t0)
            create_rt.append(t2 - t0)
    await worker.aclose()
    await producer.aclose()
    return {
        **latency_summary_ms(wake),
        "create_round_trip": latency_summary_ms(create_rt),
    }


async def sequential_latency(
    port: int, key: str, method: str, path: str, body: Any, n: int, expect: int
) -> dict[str, float]:
    """n sequential requests on one keep-alive connection (reconnecting if the server closes)."""
    conn = await TrioConn.open(port)
    req = http_request(method, path, port, key, body)
    times = []
    reconnects = 0
    while len(times) < n:
        t = time.perf_counter()
        try:
            await conn.send(req)
            status, raw = await conn.read_response()
        except (ConnectionError, trio.BrokenResourceError):
            reconnects += 1
            if reconnects > 5:
                raise
            await conn.aclose()
            conn = await TrioConn.open(port)
            continue
        times.append(time.perf_counter() - t)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")
    await conn.aclose()
    return {**latency_summary_ms(times), "reconnects": reconnects}


# -- idle long polls: the client process --------------------------------------------------------


async def longpoll_child(port: int, key: str, n: int, wait_s: float) -> dict[str, Any]:
    """Open n long polls; report when all are sent; hold until stdin says stop."""
    req = http_request(
        "POST", "/api/v1/tasks/lease", port, key,
        {"worker_id": "bench-idle", "queues": ["idle"], "wait": wait_s},
    )  # fmt: skip
    early: dict[str, int] = {}  # non-200 answers (a long poll should only end by timing out)
    failed: list[str] = []
    repolls = 0
    opened = 0
    limiter = trio.CapacityLimiter(256)
    all_sent = trio.Event()
    t0 = time.perf_counter()

    async def one(sent: list[int]) -> None:
        nonlocal opened, repolls
        try:
            async with limiter:
                conn = await TrioConn.open(port)
                await conn.send(req)
                opened += 1
        except OSError as exc:
            failed.append(type(exc).__name__)
            return
        finally:
            sent[0] += 1
            if sent[0] == n:
                all_sent.set()
        try:
            while True:
                status, _ = await conn.read_response()
                if status != 200:
                    early[str(status)] = early.get(str(status), 0) + 1
                    break
                # `wait` ran out with nothing leased: poll again, as a worker does
                repolls += 1
                await conn.send(req)
        except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
            failed.append(type(exc).__name__)
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        sent = [0]
        for _ in range(n):
            nursery.start_soon(one, sent)
        with trio.move_on_after(120):
            await all_sent.wait()
        print(f"SENT {opened} {time.perf_counter() - t0:.3f} {len(failed)}", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        with trio.move_on_after(600):
            await stdin.receive_some(16)  # the parent writes a line (or closes) when done
        nursery.cancel_scope.cancel()
    return {"opened": opened, "non_200": early, "failed": len(failed), "repolls": repolls}


def longpoll_child_main(port: int, key: str, n: int, wait_s: float) -> None:
    limit = raise_nofile(n + 1024)
    if limit < n + 64:
        print(f"ERROR open-file limit {limit} is too low for {n} connections", flush=True)
        sys.exit(2)
    result = trio.run(longpoll_child, port, key, n, wait_s)
    print("RESULT " + json.dumps(result), flush=True)


def _readline(stream: IO[str], timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise TimeoutError("no line from the long-poll client")
        return stream.readline()
    finally:
        sel.close()


def wait_parked(server: Server, min_fds: int, timeout: float) -> tuple[float, float]:
    """Until the server holds min_fds descriptors and its CPU calms down (polls parked).

    Returns (seconds until it held them, seconds waited in all)."""
    t0 = time.perf_counter()
    reached: float | None = None
    last = server.cpu_seconds()
    while time.perf_counter() - t0 < timeout:
        time.sleep(0.5)
        now = server.cpu_seconds()
        busy = now - last
        last = now
        if reached is None and proc_fd_count(server.pid) >= min_fds:
            reached = time.perf_counter()
        if reached is not None and (busy < 0.025 or time.perf_counter() - reached > 3):
            break
    end = time.perf_counter()
    return (end if reached is None else reached) - t0, end - t0


def idle_long_polls(server: Server, n: int) -> dict[str, Any]:
    port, key = server.port, server.key
    trio.run(sequential_latency, port, key, "GET", "/health", None, 50, 200)  # warm up
    base_mem = server.memory()
    base_fds = proc_fd_count(server.pid)
    base_health = trio.run(sequential_latency, port, key, "GET", "/health", None, 100, 200)
    base_create = trio.run(
        sequential_latency, port, key, "POST", "/api/v1/tasks", TASK_BODY, 100, 201
    )
    wait_s = 60.0
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--longpoll-child",
         "--port", str(port), "--key", key, "--n", str(n), "--wait", str(wait_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO_DIR,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    started = time.perf_counter()
    try:
        line = _readline(child.stdout, 150)
        if not line.startswith("SENT"):
            raise RuntimeError(
                f"long-poll client: {line!r} {child.stderr.read() if child.stderr else ''}"
            )
        _, opened, connect_s, failed = line.split()
        held_s, settle_s = wait_parked(server, base_fds + int(opened), 90)
        held_s += time.perf_counter() - started - settle_s
        mem = server.memory()
        fds = proc_fd_count(server.pid)
        cpu_idle0 = server.cpu_seconds()
        time.sleep(2.0)
        idle_cpu = 100 * (server.cpu_seconds() - cpu_idle0) / 2.0
        health = trio.run(sequential_latency, port, key, "GET", "/health", None, 100, 200)
        create = trio.run(
            sequential_latency, port, key, "POST", "/api/v1/tasks", TASK_BODY, 100, 201
        )
        after_s = time.perf_counter()
        child.stdin.write("stop\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
        res_line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        client = json.loads(res_line[7:]) if res_line else {"error": err[-2000:]}
        release_s = time.perf_counter() - after_s
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    time.sleep(1.0)
    mem_after = server.memory()
    rss_mb = mem["VmRSS"] / 1024
    return {
        "long_polls": int(opened),
        "connect_failures": int(failed),
        "connect_seconds": float(connect_s),  # client: all requests written
        "all_held_after_seconds": round(held_s, 2),  # server: all sockets open (from client start)
        "settle_seconds": round(settle_s, 2),
        "server_fds": fds,
        "rss_before_mb": round(base_mem["VmRSS"] / 1024, 1),
        "rss_mb": round(rss_mb, 1),
        "rss_anon_mb": round(mem.get("RssAnon", 0) / 1024, 1),
        "per_poll_kib": round((mem["VmRSS"] - base_mem["VmRSS"]) / max(1, int(opened)), 1),
        "rss_after_release_mb": round(mem_after["VmRSS"] / 1024, 1),
        "idle_cpu_percent": round(idle_cpu, 1),
        "health_before": base_health,
        "health_while_parked": health,
        "create_before": base_create,
        "create_while_parked": create,
        "release_seconds": round(release_s, 2),
        "client": client,
    }


# -- driver -------------------------------------------------------------------------------------


def create_task_id(server: Server) -> str:
    async def go() -> str:
        conn = await TrioConn.open(server.port)
        status, data = await conn.call("POST", "/api/v1/tasks", server.port, server.key, TASK_BODY)
        await conn.aclose()
        if status != 201:
            raise RuntimeError(f"create failed: {status} {data}")
        return str(data["data"]["id"])

    return trio.run(go)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, help="per load run (default 10, quick 3)")
    ap.add_argument("--long-polls", type=int, help="idle long polls to hold (default 10,000)")
    ap.add_argument("--profile", action="store_true", help="py-spy the server during load runs")
    ap.add_argument("--python-load", action="store_true", help="use the Python load generator")
    ap.add_argument("--only", default="rwl", help="r = rates, w = wake-up, l = long polls")
    ap.add_argument("--out", help="results file name in bench/results")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=15.0,
        help="before each measurement wait up to this many seconds for other processes to go "
        "quiet (the machine is shared; default 15, 0 = don't wait)",
    )
    ap.add_argument("--longpoll-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--wait", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.longpoll_child:
        longpoll_child_main(args.port, args.key, args.n, args.wait)
        return 0

    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes = Sizes(args.seconds, sizes.connections, sizes.wakeup_samples, sizes.long_polls)
    if args.long_polls:
        sizes = Sizes(sizes.seconds, sizes.connections, sizes.wakeup_samples, args.long_polls)
    workdir = Path(tempfile.mkdtemp(prefix="dtq-http-bench-"))
    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    started = time.perf_counter()
    tool = "wrk" if shutil.which("wrk") and not args.python_load else "python load generator"
    print(f"dtq http bench ({'quick' if args.quick else 'full'}), load: {tool}, {workdir}")

    def add(key: str, label: str, value: str, unit: str, note: str, data: Any) -> None:
        results[key] = data
        rows.append([label, value, unit, note])
        print(f"  {label:<46} {value:>14} {unit:<13} {note}", flush=True)

    try:
        if "r" in args.only or "w" in args.only:
            with running_server(workdir, "main") as server:
                runner = LoadRunner(server, sizes, workdir, args.profile)
                runner.use_wrk = runner.use_wrk and not args.python_load
                runner.wait_quiet = args.wait_quiet
                if "r" in args.only:
                    rate_runs(runner, server, sizes, add)
                if "w" in args.only:
                    if args.wait_quiet > 0:
                        wait_for_quiet(args.wait_quiet)
                    sys_cpu = SystemCpu()
                    t0 = time.perf_counter()
                    c0 = time.process_time() + server.cpu_seconds()
                    r = trio.run(wakeup_latency, server.port, server.key, sizes.wakeup_samples)
                    own = time.process_time() + server.cpu_seconds() - c0
                    r.update(contention(sys_cpu, own, time.perf_counter() - t0))
                    add(
                        "wakeup",
                        f"lease wake-up latency ({r['n']} samples, fsync)",
                        f"{r['p50_ms']} / {r['p99_ms']}",
                        "ms p50 / p99",
                        f"max {r['max_ms']} ms; create round trip p50 "
                        f"{r['create_round_trip']['p50_ms']} ms; others {r['other_cores']} cores",
                        r,
                    )
                results["server_log_bytes"] = server.log_path.stat().st_size
        if "l" in args.only:
            with running_server(workdir, "longpoll") as server:
                if args.wait_quiet > 0:
                    wait_for_quiet(args.wait_quiet)
                r = idle_long_polls(server, sizes.long_polls)
                add(
                    "long_polls",
                    f"{r['long_polls']:,} idle long polls held: server RSS",
                    f"{r['rss_mb']:,.0f}",
                    "MB",
                    f"before {r['rss_before_mb']:,.0f} MB, {r['per_poll_kib']} KiB/poll, "
                    f"all held after {r['all_held_after_seconds']} s, idle cpu {r['idle_cpu_percent']}%",
                    r,
                )
                hp, hb = r["health_while_parked"], r["health_before"]
                add(
                    "long_polls.health",
                    "  GET /health while parked",
                    f"{hp['p50_ms']} / {hp['p99_ms']}",
                    "ms p50 / p99",
                    f"before: {hb['p50_ms']} / {hb['p99_ms']} ms",
                    hp,
                )
                cp, cb = r["create_while_parked"], r["create_before"]
                add(
                    "long_polls.create",
                    "  POST /api/v1/tasks while parked",
                    f"{cp['p50_ms']} / {cp['p99_ms']}",
                    "ms p50 / p99",
                    f"before: {cb['p50_ms']} / {cb['p99_ms']} ms",
                    cp,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total_s = time.perf_counter() - started

    checks = targets(results)
    print()
    print(format_table(["measurement", "value", "unit", "notes"], rows))
    print()
    for c in checks:
        print(f"  [{verdict(c['ok'])}] {c['target']}: measured {c['measured']:,}")
    if args.profile:
        print("\n  (profiled run: py-spy slows the server, rates are not comparable)")
    print(f"\ntotal {total_s:.0f} s")
    data = {
        "bench": "http",
        "quick": args.quick,
        "profiled": args.profile,
        "load_tool": tool,
        "sizes": sizes.__dict__,
        "machine": machine_facts(),
        "total_seconds": round(total_s, 1),
        "results": results,
        "targets": checks,
    }
    name = args.out or ("http-quick.json" if args.quick else "http.json")
    if args.profile and not args.out:
        name = "http-profiled.json"
    print(f"wrote {write_json(name, data)}")
    return 0 if all(math.isfinite(c["measured"]) for c in checks) else 1


def rate_runs(runner: LoadRunner, server: Server, sizes: Sizes, add: Any) -> None:
    warm = dict(sizes.__dict__)
    warm["seconds"] = 2.0
    saved = runner.sizes
    runner.sizes = Sizes(**warm)
    runner.run("warmup", "GET", "/health")
    runner.sizes = saved

    def note(r: dict[str, Any], extra: str = "") -> str:
        errs = (
            ""
            if not (r["non_2xx"] or r["socket_errors"])
            else (f", {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors")
        )
        return (
            f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, server cpu "
            f"{r['server_cpu_percent']}%, load gen cpu {r['load_generator_cpu_percent']}%, "
            f"others {r['other_cores']} cores{errs}{extra}"
        )

    # health and create run twice, interleaved (health, get, create, batch, health, create),
    # so the create/bare ratio compares like with like on a noisy machine.
    h1 = runner.run("health", "GET", "/health")
    task_id = create_task_id(server)
    g = runner.run("get", "GET", f"/api/v1/tasks/{task_id}")
    c1 = runner.run("create", "POST", "/api/v1/tasks", TASK_BODY)
    batch = {"tasks": [{**TASK_BODY, "payload": {"i": i, "data": "x" * 32}} for i in range(100)]}
    b = runner.run("batch", "POST", "/api/v1/tasks/batch", batch)
    h2 = runner.run("health-2", "GET", "/health")
    c2 = runner.run("create-2", "POST", "/api/v1/tasks", TASK_BODY)

    bare = (h1["rate"] + h2["rate"]) / 2
    create = (c1["rate"] + c2["rate"]) / 2
    add(
        "health",
        "GET /health (bare route)",
        fmt_rate(bare),
        "req/s",
        f"runs {h1['rate']:,.0f} / {h2['rate']:,.0f}; " + note(h1),
        {"rate": round(bare, 1), "runs": [h1, h2]},
    )
    add("get_task", "GET /api/v1/tasks/{id}", fmt_rate(g["rate"]), "req/s", note(g), g)
    ratio = round(create / bare, 3)
    add(
        "create",
        "POST /api/v1/tasks (single, fsync)",
        fmt_rate(create),
        "req/s",
        f"{100 * ratio:.0f}% of bare; runs {c1['rate']:,.0f} / {c2['rate']:,.0f}; " + note(c1),
        {"rate": round(create, 1), "vs_bare": ratio, "runs": [c1, c2]},
    )
    b["tasks_per_s"] = round(b["rate"] * 100, 1)
    add(
        "batch",
        "POST /api/v1/tasks/batch (100/request, fsync)",
        fmt_rate(b["tasks_per_s"]),
        "tasks/s",
        note(b, f", {b['rate']:,.0f} req/s"),
        b,
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if "create" in results:
        ratio = results["create"]["vs_bare"]
        out.append(
            {
                "target": "single-task durable create >= 90% of the bare-route rate",
                "measured": ratio,
                "ok": ratio >= TARGET_CREATE_VS_BARE,
            }
        )
    if "batch" in results:
        rate = results["batch"]["tasks_per_s"]
        out.append(
            {
                "target": "batch create >= 30,000 tasks/s",
                "measured": rate,
                "ok": rate >= TARGET_BATCH_TASKS_S,
            }
        )
    if "wakeup" in results:
        p99 = results["wakeup"]["p99_ms"]
        out.append(
            {
                "target": "lease wake-up p99 <= 2 ms",
                "measured": p99,
                "ok": p99 <= TARGET_WAKEUP_P99_MS,
            }
        )
    if "long_polls" in results:
        lp = results["long_polls"]
        out.append(
            {
                "target": f"{lp['long_polls']:,} idle long polls < 500 MB server RSS"
                + ("" if lp["long_polls"] >= 10_000 else " (quick: the target is for 10,000)"),
                "measured": lp["rss_mb"],
                "ok": lp["rss_mb"] < TARGET_LONGPOLL_RSS_MB,
            }
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
