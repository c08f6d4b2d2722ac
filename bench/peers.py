"""dtq against beanstalkd on this machine, one harness for all (issue 10's table).

    python bench/peers.py [--tasks 20000] [--samples 500] [--quick] [--only COLUMNS]

Each column is a fresh server on 127.0.0.1 (free ports, temporary data directory) and the
same workload:

  submit    one producer submits `--tasks` no-op tasks one by one (sequential round trips):
            tasks/s. They wait in a paused dtq queue (beanstalkd: in a tube nobody watches).
  drain     2 worker processes, started and connected first, then released at one instant
            (dtq: the queue is resumed; beanstalkd/raw workers: a "go" line on stdin),
            work the tasks off: tasks/s until the last one is done (deleted / completed).
  latency   `--samples` tasks submitted 5 ms apart to 2 idle, waiting workers: submit ->
            handler start, p50 / p99 ms (the submit time travels in the payload).
  cpu       the server process's CPU (/proc/<pid>/stat) per task: submit + drain phases.

Columns (`--only` takes their keys):
  rest       dtq over HTTP: `Client.submit(transport="http")`; raw batch worker (lease 100
             with `wait`, one ack per batch)
  raw        dtq over the fast lane (tcp), no SDK: raw frames; submit sequential; workers
             lease 100 / ack pipelined (drain), push mode with credit (latency)
  sync       dtq fast lane: `Client.submit(transport="tcp")`; `dtq worker`, a plain `def`
  async      the same with an `async def` handler
  bs-fsync   beanstalkd with a binlog, fsync on every write (`-b DIR -f 0`)
  bs-mem     beanstalkd in memory (no `-b`)

Ratios are to beanstalkd-fsync in the same run (rates: x = dtq / peer; latency: x = dtq / peer,
lower is better). A peer that is not installed (`beanstalkd` on PATH; Debian package
`beanstalkd`) is skipped with a line saying so. JSON: bench/results/peers.json
(peers-quick.json with --quick). Every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    format_table,
    free_port,
    latency_summary_ms,
    machine_facts,
    proc_cpu_seconds,
    write_json,
)
from protocol_bench import Server

HOST = "127.0.0.1"
STEP_TIMEOUT_S = 300.0
LATENCY_GAP_S = 0.005
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


# -- beanstalkd ----------------------------------------------------------------------------
# Its protocol is lines of text (doc/protocol.txt of beanstalkd): `put <pri> <delay> <ttr>
# <bytes>\r\n<body>\r\n` -> `INSERTED <id>`, `reserve` -> `RESERVED <id> <bytes>\r\n<body>`,
# `delete <id>` -> `DELETED`; `use`/`watch`/`ignore` pick tubes.


class Beanstalk:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("beanstalkd closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _body(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("beanstalkd closed the connection")
            self.buf += data
        body, self.buf = self.buf[:n], self.buf[n + 2 :]
        return body

    def cmd(self, line: bytes, expect: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        reply = self._line()
        if not reply.startswith(expect):
            raise RuntimeError(f"beanstalkd: {line!r} -> {reply!r}")
        return reply

    def use(self, tube: str) -> None:
        self.cmd(b"use " + tube.encode(), b"USING")

    def watch_only(self, tube: str) -> None:
        self.cmd(b"watch " + tube.encode(), b"WATCHING")
        self.cmd(b"ignore default", b"WATCHING")

    def put(self, body: bytes) -> int:
        self.sock.sendall(b"put 1024 0 60 %d\r\n%s\r\n" % (len(body), body))
        reply = self._line()
        if not reply.startswith(b"INSERTED"):
            raise RuntimeError(f"beanstalkd put -> {reply!r}")
        return int(reply.split()[1])

    def reserve(self, timeout_s: int | None = None) -> tuple[int, bytes] | None:
        if timeout_s is None:
            self.sock.sendall(b"reserve\r\n")
        else:
            self.sock.sendall(b"reserve-with-timeout %d\r\n" % timeout_s)
        reply = self._line()
        if reply.startswith(b"TIMED_OUT"):
            return None
        if not reply.startswith(b"RESERVED"):
            raise RuntimeError(f"beanstalkd reserve -> {reply!r}")
        _, job_id, n = reply.split()
        return int(job_id), self._body(int(n))

    def delete(self, job_id: int) -> None:
        self.cmd(b"delete %d" % job_id, b"DELETED")

    def tube_stat(self, tube: str, key: str) -> int:
        reply = self.cmd(b"stats-tube " + tube.encode(), b"OK")
        text = self._body(int(reply.split()[1])).decode()
        for line in text.splitlines():
            if line.startswith(key + ":"):
                return int(line.split(":", 1)[1])
        raise KeyError(key)

    def close(self) -> None:
        self.sock.close()


# -- dtq fast lane, raw frames (no SDK) ----------------------------------------------------


class RawLane:
    """Length-prefixed MessagePack frames (docs/protocol.md), one request at a time unless
    `send` is used to pipeline."""

    def __init__(self, port: int, api_key: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.next_id = 1
        reply = self.call({"op": "hello", "api_key": api_key, "client": "bench/peers.py"})
        if reply["op"] != "welcome":
            raise RuntimeError(f"hello refused: {reply}")

    def send(self, *messages: dict[str, Any]) -> list[int]:
        ids, out = [], []
        for m in messages:
            m["id"] = self.next_id
            ids.append(self.next_id)
            self.next_id += 1
            payload = _enc.encode(m)
            out.append(len(payload).to_bytes(4, "big") + payload)
        self.sock.sendall(b"".join(out))
        return ids

    def read(self) -> dict[str, Any]:
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    msg: dict[str, Any] = _dec.decode(self.buf[4 : 4 + n])
                    del self.buf[: 4 + n]
                    return msg
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("dtq closed the connection")
            self.buf += data

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        (rid,) = self.send(message)
        while True:
            msg = self.read()
            if msg.get("id") == rid:
                if msg["op"] == "error":
                    raise RuntimeError(f"{message['op']}: {msg}")
                return msg

    def has_data(self) -> bool:
        return bool(self.buf) or bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()


def _acks(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"op": "ack", "body": {"acks": [
        {"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed"} for t in tasks]}}  # fmt: skip


# -- worker processes for beanstalkd, raw fast lane, raw REST ------------------------------


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_main(kind: str, mode: str, port: int, queue: str, api_key: str) -> None:
    """One worker process: prints `ready`, (drain) waits for `go` on stdin, works, prints
    one JSON line with what it did."""
    wid = f"peers-{kind}-{os.getpid()}"
    done, lat = 0, []
    if kind == "bs":
        bs = Beanstalk(port)
        bs.watch_only(queue)
        _emit({"ready": True})
        if mode == "drain":
            sys.stdin.readline()
            while (job := bs.reserve(0)) is not None:
                bs.delete(job[0])
                done += 1
        else:
            while True:
                job_id, body = bs.reserve()
                now = time.time()
                bs.delete(job_id)
                if body == b"stop":
                    break
                lat.append(now - float(body))
        bs.close()
    elif kind == "raw":
        lane = RawLane(port, api_key)
        _emit({"ready": True})
        if mode == "drain":
            sys.stdin.readline()
            lease = {"op": "lease", "body": {"worker_id": wid, "queues": [queue], "max_tasks": 100,
                                             "wait": 0}}  # fmt: skip
            tasks = lane.call(dict(lease))["data"]
            while tasks:  # the ack of this batch and the next lease travel together
                ack_id, lease_id = lane.send(_acks(tasks), dict(lease))
                replies: dict[int, Any] = {}
                while len(replies) < 2:
                    msg = lane.read()
                    replies[msg.get("id", 0)] = msg
                if replies[ack_id]["data"]["failed"]:
                    raise RuntimeError(f"acks refused: {replies[ack_id]}")
                done += len(tasks)
                tasks = replies[lease_id]["data"]
        else:
            lane.call({"op": "credit", "n": 100, "worker_id": wid, "queues": [queue]})
            stop = False
            while not stop:
                msg = lane.read()
                if msg["op"] != "push":
                    continue
                now = time.time()
                for t in msg["tasks"]:
                    if t["name"] == "stop":
                        stop = True
                    else:
                        lat.append(now - t["payload"]["t"])
                lane.send(_acks(msg["tasks"]))
                lane.send({"op": "credit", "n": len(msg["tasks"]), "worker_id": wid,
                           "queues": [queue]})  # fmt: skip
        lane.close()
    else:  # "rest": the raw HTTP batch worker
        import httpx

        http = httpx.Client(base_url=f"http://{HOST}:{port}", headers={"X-API-Key": api_key},
                            timeout=90)  # fmt: skip
        http.get("/health")
        _emit({"ready": True})
        wait = 0 if mode == "drain" else 30
        if mode == "drain":
            sys.stdin.readline()
        stop = False
        while not stop:
            now0 = time.time()
            r = http.post("/api/v1/tasks/lease", json={"worker_id": wid, "queues": [queue],
                                                        "max_tasks": 100, "wait": wait})  # fmt: skip
            r.raise_for_status()
            tasks = r.json()["data"]
            now = time.time()
            if not tasks:
                if mode == "drain":
                    break
                continue
            for t in tasks:
                if t["name"] == "stop":
                    stop = True
                elif mode == "latency":
                    lat.append(now - t["payload"]["t"])
            a = http.post("/api/v1/tasks/ack", json={"acks": [
                {"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed"}
                for t in tasks]})  # fmt: skip
            a.raise_for_status()
            done += len(tasks)
            del now0
        http.close()
    _emit({"done": done, "end": time.time(), "latencies": lat})


class WorkerProcs:
    """Two worker processes of this script (or `dtq worker`), stopped by pid."""

    def __init__(self, cmd: list[str], n: int = 2, env: dict[str, str] | None = None,
                 cwd: Path | None = None, ready_line: bool = True) -> None:  # fmt: skip
        self.procs = [
            subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                text=True,
            )
            for _ in range(n)
        ]
        if ready_line:
            for p in self.procs:
                assert p.stdout is not None
                line = _readline(p, 60)
                if "ready" not in line:
                    raise RuntimeError(f"worker did not start: {line!r}")

    def go(self) -> float:
        t0 = time.time()
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        return t0

    def results(self, timeout_s: float = STEP_TIMEOUT_S) -> list[dict[str, Any]]:
        return [json.loads(_readline(p, timeout_s)) for p in self.procs]

    def stop_with(self, send_stop: Callable[[], None], timeout_s: float = 30) -> None:
        """Latency mode: each worker ends at the first `stop` task it gets; one worker may
        take two, so stops go out until every worker has exited."""
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() > deadline:
                raise TimeoutError("latency workers did not stop")
            send_stop()
            for p in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0.5)

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


def _readline(p: subprocess.Popen[str], timeout_s: float) -> str:
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError("worker process did not answer in time")
    return p.stdout.readline()


def _self_worker(kind: str, mode: str, port: int, queue: str, api_key: str = "") -> list[str]:
    return [sys.executable, __file__, "--worker", kind, "--mode", mode, "--port", str(port),
            "--queue", queue, "--api-key", api_key]  # fmt: skip


# -- the columns ---------------------------------------------------------------------------


class Cpu:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t = proc_cpu_seconds(pid)

    def lap(self) -> float:
        t, self.t = self.t, proc_cpu_seconds(self.pid)
        return self.t - t


def _paced(samples: int, submit: Callable[[float], object]) -> list[float]:
    """`samples` submits 5 ms apart; returns each submit's round trip (s)."""
    round_trips = []
    next_at = time.perf_counter()
    for _ in range(samples):
        t = time.time()
        submit(t)
        round_trips.append(time.time() - t)
        next_at += LATENCY_GAP_S
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    return round_trips


def durable_floor_ms(n: int = 300) -> dict[str, float]:
    """What one durable write costs on this disk right now, in the bench process: an LMDB
    put + fsync'd commit (dtq's storage: data pages, fdatasync, meta page, fdatasync) and an
    append + fdatasync to one file (a binlog such as beanstalkd's)."""
    from rest_floor import commit_cost_s

    with tempfile.TemporaryFile() as fh:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fh.write(b"x" * 100)
            fh.flush()
            os.fdatasync(fh.fileno())
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"lmdb_commit_p50_ms": round(commit_cost_s(n) * 1000, 3),
            "append_fdatasync_p50_ms": round(times[len(times) // 2] * 1000, 3)}  # fmt: skip


def run_beanstalkd(fsync: bool, tasks: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = ["beanstalkd", "-l", HOST, "-p", str(port)]
        if fsync:
            cmd += ["-b", tmp, "-f", "0"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers: WorkerProcs | None = None
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("beanstalkd did not start") from None
                    time.sleep(0.02)
            cpu = Cpu(server.pid)
            bs = Beanstalk(port)
            bs.use("drain")
            t0 = time.perf_counter()
            for _ in range(tasks):
                bs.put(b"noop")
            submit_s = time.perf_counter() - t0
            submit_cpu = cpu.lap()
            workers = WorkerProcs(_self_worker("bs", "drain", port, "drain"))
            cpu.lap()
            t_go = workers.go()
            res = workers.results()
            drain_cpu = cpu.lap()
            workers.stop()
            if sum(r["done"] for r in res) != tasks:
                raise RuntimeError(f"beanstalkd drained {[r['done'] for r in res]} of {tasks}")
            drain_s = max(r["end"] for r in res) - t_go
            workers = WorkerProcs(_self_worker("bs", "latency", port, "stamp"))
            bs.use("stamp")
            deadline = time.monotonic() + 30
            while bs.tube_stat("stamp", "current-waiting") < 2:  # both are in `reserve`
                if time.monotonic() > deadline:
                    raise RuntimeError("beanstalkd workers did not reserve")
                time.sleep(0.01)
            rt = _paced(samples, lambda t: bs.put(repr(t).encode()))
            workers.stop_with(lambda: bs.put(b"stop") and None)
            lat = [x for r in workers.results(10) for x in r["latencies"]]
            bs.close()
            return _figures(tasks, submit_s, drain_s, submit_cpu, drain_cpu, lat, rt)
        finally:
            if workers is not None:
                workers.stop()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


DTQ_WORKER_MODULE = textwrap.dedent(
    """
    import os, time
    from dtq import Worker

    worker = Worker(concurrency=100, heartbeat_interval_s=5, poll_wait_s=20)

    if os.environ["BENCH_HANDLER"] == "sync":
        @worker.task("noop")
        def noop(payload):
            return None

        @worker.task("stamp")
        def stamp(payload):
            return {"lat": time.time() - payload["t"]}
    else:
        @worker.task("noop")
        async def noop(payload):
            return None

        @worker.task("stamp")
        async def stamp(payload):
            return {"lat": time.time() - payload["t"]}
    """
)


def run_dtq(column: str, tasks: int, samples: int) -> dict[str, Any]:
    from dtq import Client

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        url, key, pid = server.url, server.api_key, server.proc.pid
        workers: WorkerProcs | None = None
        try:
            admin = Client(url, api_key=key, transport="http")
            admin.update_queue("drain", paused=True)  # (pause 404s for an unnamed queue)
            cpu = Cpu(pid)
            if column == "raw":
                lane = RawLane(server.protocol_port, key)
                sub = {"op": "submit", "body": {"name": "noop", "queue": "drain"}}
                t0 = time.perf_counter()
                for _ in range(tasks):
                    lane.call(dict(sub))
                submit_s = time.perf_counter() - t0
            else:
                transport = "http" if column == "rest" else "tcp"
                with Client(url, api_key=key, transport=transport) as c:
                    c.submit("unhandled", queue="warmup")  # connected (and discovered)
                    cpu.lap()
                    t0 = time.perf_counter()
                    for _ in range(tasks):
                        c.submit("noop", queue="drain")
                    submit_s = time.perf_counter() - t0
            submit_cpu = cpu.lap()
            before = admin.dashboard()["completed_tasks"]

            def completed_since(n: int) -> float:
                """When the n-th task completed. The polls are themselves requests to the
                server being measured: every 50 ms until 95 % are done, then every 2 ms."""

                def done(fraction: float) -> Callable[[], bool]:
                    return lambda: admin.dashboard()["completed_tasks"] >= before + (
                        n - before) * fraction  # fmt: skip

                _until(done(0.95), poll_s=0.05)
                return _until(done(1.0), poll_s=0.002)

            if column in ("rest", "raw"):
                port = server.port if column == "rest" else server.protocol_port
                workers = WorkerProcs(_self_worker(column, "drain", port, "drain", key))
                admin.resume_queue("drain")
                cpu.lap()
                t_go = workers.go()
                res = workers.results()
                drain_cpu = cpu.lap()
                if sum(r["done"] for r in res) != tasks:
                    raise RuntimeError(f"drained {[r['done'] for r in res]} of {tasks}")
                drain_s = max(r["end"] for r in res) - t_go
                workers.stop()
                workers = WorkerProcs(_self_worker(column, "latency", port, "stamp", key))
                time.sleep(0.5)  # both are parked in their long poll / have granted credit
                with Client(url, api_key=key, transport="tcp" if column == "raw" else "http") as c:
                    c.submit("unhandled", queue="warmup")
                    rt = _paced(
                        samples, lambda t: c.submit("stamp", queue="stamp", payload={"t": t})
                    )
                    workers.stop_with(lambda: c.submit("stop", queue="stamp") and None)
                lat = [x for r in workers.results(10) for x in r["latencies"]]
            else:
                workdir = Path(tmp)
                (workdir / "peers_worker.py").write_text(DTQ_WORKER_MODULE)
                env = {**os.environ, "DTQ_URL": url, "DTQ_API_KEY": key, "DTQ_TRANSPORT": "tcp",
                       "DTQ_LOG_LEVEL": "warning", "BENCH_HANDLER": column}  # fmt: skip
                cmd = [sys.executable, "-m", "dtq.cli", "worker", "peers_worker:worker",
                       "--log-format", "json"]  # fmt: skip
                workers = WorkerProcs(cmd, env=env, cwd=workdir, ready_line=False)
                _until(lambda: admin.dashboard()["workers_active"] >= 2)
                time.sleep(0.5)  # both have granted credit
                cpu.lap()
                t_go = time.time()
                admin.resume_queue("drain")
                drain_s = completed_since(before + tasks) - t_go
                drain_cpu = cpu.lap()
                with Client(url, api_key=key, transport="tcp") as c:
                    sent: list[str] = []
                    rt = _paced(samples, lambda t: sent.append(
                        c.submit("stamp", queue="stamp", payload={"t": t}).id))  # fmt: skip
                    _until(lambda: c.get(sent[-1]).status == "completed")
                    _until(lambda: all(c.get(i).status == "completed" for i in sent[-10:]))
                    lat = [t.result["lat"] for t in admin.list(status="completed", queue="stamp")]
            admin.close()
            return _figures(tasks, submit_s, drain_s, submit_cpu, drain_cpu, lat, rt)
        finally:
            if workers is not None:
                workers.stop()
            server.stop()


def _until(
    done: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S, poll_s: float = 0.01
) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return time.time()
        time.sleep(poll_s)
    raise TimeoutError("benchmark step did not finish in time")


def _figures(tasks: int, submit_s: float, drain_s: float, submit_cpu: float, drain_cpu: float,
             lat: list[float], rt: list[float]) -> dict[str, Any]:  # fmt: skip
    return {
        "tasks": tasks,
        "submit_per_s": tasks / submit_s,
        "drain_per_s": tasks / drain_s,
        "latency": latency_summary_ms(lat),
        # the same paced submits' own round trips: the part of `latency` before the reply
        "paced_submit_round_trip": latency_summary_ms(rt),
        "server_cpu_us_per_task": {
            "submit": submit_cpu / tasks * 1e6,
            "drain": drain_cpu / tasks * 1e6,
        },
    }


COLUMNS: dict[str, str] = {
    "rest": "dtq REST, raw batch worker",
    "raw": "dtq fast lane, raw protocol loop",
    "sync": "dtq fast lane, `dtq worker` def",
    "async": "dtq fast lane, `dtq worker` async def",
    "bs-fsync": "beanstalkd, fsync",
    "bs-mem": "beanstalkd, memory",
}


def _ratio(x: float, base: float | None) -> str:
    return f" ({x / base:.2f}x)" if base else ""


def print_table(results: dict[str, dict[str, Any]]) -> None:
    base = results.get("bs-fsync")
    keys = list(results)
    rows: list[list[str]] = []

    def row(label: str, cell: Callable[[dict[str, Any], dict[str, Any] | None], str]) -> None:
        rows.append([label, *(cell(results[k], base if k != "bs-fsync" else None) for k in keys)])

    row("one-by-one submit, tasks/s",
        lambda r, b: f"{r['submit_per_s']:,.0f}" + _ratio(r["submit_per_s"], b and b["submit_per_s"]))  # fmt: skip
    row("drain (2 workers), tasks/s",
        lambda r, b: f"{r['drain_per_s']:,.0f}" + _ratio(r["drain_per_s"], b and b["drain_per_s"]))  # fmt: skip
    row("submit -> start p50 / p99, ms",
        lambda r, b: f"{r['latency']['p50_ms']:.2f} / {r['latency']['p99_ms']:.2f}"
        + (f" ({r['latency']['p50_ms'] / b['latency']['p50_ms']:.1f}x / "
           f"{r['latency']['p99_ms'] / b['latency']['p99_ms']:.1f}x)" if b else ""))  # fmt: skip
    row("  of which submit round trip, ms",
        lambda r, b: f"{r['paced_submit_round_trip']['p50_ms']:.2f} / "
        f"{r['paced_submit_round_trip']['p99_ms']:.2f}")  # fmt: skip
    row("durable write floor (LMDB / fdatasync)",
        lambda r, b: f"{r['floor']['lmdb_commit_p50_ms']:.2f} / "
        f"{r['floor']['append_fdatasync_p50_ms']:.2f} ms")  # fmt: skip
    row(
        "server CPU/task submit+drain, us",
        lambda r, b: "{:.0f} + {:.0f}".format(*r["server_cpu_us_per_task"].values()),
    )
    print(format_table(["", *(COLUMNS[k] for k in keys)], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 100 samples")
    parser.add_argument("--only", default=",".join(COLUMNS), help="columns: " + ",".join(COLUMNS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.mode, args.port, args.queue, args.api_key)
        return
    if args.quick:
        args.tasks, args.samples = 2_000, 100
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in COLUMNS]
    if unknown:
        parser.error(f"unknown columns {unknown}; choose from {list(COLUMNS)}")
    has_beanstalkd = shutil.which("beanstalkd") is not None
    if not has_beanstalkd and any(c.startswith("bs-") for c in wanted):
        print("beanstalkd: not installed (apt-get install beanstalkd): its columns are skipped")
        wanted = [c for c in wanted if not c.startswith("bs-")]
    results: dict[str, dict[str, Any]] = {}
    # beanstalkd-fsync first: it is what the others are compared with.
    for column in sorted(wanted, key=lambda c: (c != "bs-fsync", list(COLUMNS).index(c))):
        t0 = time.perf_counter()
        floor = durable_floor_ms()  # the disk is shared: its state now, beside this column
        if column.startswith("bs-"):
            results[column] = run_beanstalkd(column == "bs-fsync", args.tasks, args.samples)
        else:
            results[column] = run_dtq(column, args.tasks, args.samples)
        r = results[column]
        r["floor"] = floor
        print(f"{COLUMNS[column]}: submit {r['submit_per_s']:,.0f}/s, drain "
              f"{r['drain_per_s']:,.0f}/s, latency p50 {r['latency']['p50_ms']} / p99 "
              f"{r['latency']['p99_ms']} ms ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    ordered = {k: results[k] for k in COLUMNS if k in results}
    print()
    print_table(ordered)
    print("targets (issue 10, fast lane): Client.submit >= 1.0x beanstalkd-fsync; p50 <= 1 ms, "
          "p99 <= 2 ms; drain with def >= 3x beanstalkd-fsync, with async def >= 1.0x "
          "beanstalkd in memory")  # fmt: skip
    path = write_json("peers-quick.json" if args.quick else "peers.json",
                      {"machine": machine_facts(), "tasks": args.tasks,
                       "samples": args.samples, "columns": COLUMNS, "results": ordered})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
