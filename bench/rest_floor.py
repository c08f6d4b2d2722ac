"""The REST floor: what dtq's request path costs above a bare quart-trio route (issue 10).

    python bench/rest_floor.py [--requests 2000] [--rounds 3]

Three servers, each its own process on 127.0.0.1, one sequential client on a raw socket with
TCP_NODELAY (one `sendall` per request, the response read to its Content-Length):

  bare    a quart-trio app under hypercorn with one JSON route (`GET /health`): the floor
  health  dtq's `GET /health`                           target: p50 <= 1.2x bare
  create  dtq's durable `POST /api/v1/tasks` (fsync)    target: p50 <= bare + one commit

The commit is measured on the same disk (one LMDB put + fsync per transaction, in the bench
process). Rounds alternate between the servers so drift on a shared machine hits all alike.
Prints p50/p99/max side by side and writes bench/results/rest_floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_DIR,
    create_admin_key,
    format_table,
    free_port,
    latency_summary_ms,
    machine_facts,
    write_json,
)

HOST = "127.0.0.1"
CREATE_BODY = json.dumps({"name": "bench.task", "payload": {"i": 1}}).encode()


def bare_app_main(port: int) -> None:
    """The floor: quart-trio + hypercorn (trio worker) with one JSON route, nothing else."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    app = QuartTrio("bare")

    @app.get("/health")
    async def health() -> Any:
        return app.response_class(b'{"status":"healthy"}', content_type="application/json")

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.keep_alive_max_requests = 1 << 30  # as dtq sets it (stack-findings trap 4)
    trio.run(serve, app, config)  # type: ignore[arg-type]


class Proc:
    """A server process on a free port, stopped by its pid."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str]) -> None:
        self.port = port
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO_DIR, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited at start")
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{cmd} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class RawClient:
    """Sequential HTTP/1.1 keep-alive requests on one raw socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            self.buf = head + b"\r\n\r\n" + rest
            self._fill()
            head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest[length:]
        return int(head.split(b" ", 2)[1]), rest[:length]

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def get_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def create_request(key: str) -> bytes:
    return (
        f"POST /api/v1/tasks HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(CREATE_BODY)}\r\n\r\n"
    ).encode() + CREATE_BODY


def timed(port: int, raw: bytes, n: int, want: int) -> list[float]:
    client = RawClient(port)
    try:
        for _ in range(50):  # warm up
            client.request(raw)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, body = client.request(raw)
            samples.append(time.perf_counter() - t0)
            if status != want:
                raise RuntimeError(f"status {status}: {body[:200]!r}")
        return samples
    finally:
        client.close()


def commit_cost_s(n: int = 500) -> float:
    """One LMDB put + fsync'd commit on this disk, median (what "one commit" costs)."""
    import lmdb

    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(tmp, map_size=64 << 20, sync=True)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), b"x" * 200)
            times.append(time.perf_counter() - t0)
        env.close()
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    env = {**os.environ, "DTQ_ADMIN_PASSWORD": "password", "DTQ_RATE_LIMIT_PER_MINUTE": "0",
           "DTQ_RATE_LIMIT_PER_HOUR": "0", "DTQ_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    samples: dict[str, list[float]] = {"bare": [], "health": [], "create": []}
    with tempfile.TemporaryDirectory() as tmp:
        bare_port, dtq_port = free_port(), free_port()
        bare = Proc([sys.executable, __file__, "--bare-server", str(bare_port)], bare_port, env)
        dtq = Proc([sys.executable, "-m", "dtq.cli", "serve", "--host", HOST, "--port",
                    str(dtq_port), "--data-dir", str(Path(tmp) / "data")], dtq_port, env)  # fmt: skip
        try:
            key = create_admin_key(f"http://{HOST}:{dtq_port}")
            for _ in range(args.rounds):
                samples["bare"] += timed(bare_port, get_request("/health"), args.requests, 200)
                samples["health"] += timed(dtq_port, get_request("/health"), args.requests, 200)
                samples["create"] += timed(dtq_port, create_request(key), args.requests, 201)
        finally:
            dtq.stop()
            bare.stop()
    commit_s = commit_cost_s()
    stats = {name: latency_summary_ms(values) for name, values in samples.items()}
    bare_p50 = stats["bare"]["p50_ms"]
    commit_ms = round(commit_s * 1000, 3)
    rows = []
    for name, label in (("bare", "bare quart-trio GET"), ("health", "dtq GET /health"),
                        ("create", "dtq POST /api/v1/tasks (fsync)")):  # fmt: skip
        s = stats[name]
        rows.append((label, s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"],
                     f"{s['p50_ms'] / bare_p50:.2f}x"))  # fmt: skip
    print(format_table(("request", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 vs bare"), rows))
    create_budget = bare_p50 + commit_ms
    health_ok = stats["health"]["p50_ms"] <= 1.2 * bare_p50
    create_ok = stats["create"]["p50_ms"] <= create_budget
    print(f"\none commit (LMDB put + fsync, this disk): {commit_ms} ms p50")
    print(f"health p50 <= 1.2x bare ({1.2 * bare_p50:.3f} ms): {'yes' if health_ok else 'no'}")
    print(f"create p50 <= bare + one commit ({create_budget:.3f} ms): "
          f"{'yes' if create_ok else 'no'}")  # fmt: skip
    path = write_json("rest_floor.json", {"machine": machine_facts(), "requests": args.requests,
                                          "rounds": args.rounds, "latency": stats,
                                          "commit_ms": commit_ms, "health_ok": health_ok,
                                          "create_ok": create_ok})  # fmt: skip
    print(f"written: {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        bare_app_main(int(sys.argv[2]))
    else:
        main()
