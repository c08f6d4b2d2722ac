"""Real processes for the worker and command-line tests: `dtq serve`, `dtq worker`, `dtq ...`.

Every process is started as `sys.executable -m dtq.cli ...` on 127.0.0.1 with a port chosen at
run time, writes its output to a log file the test can read, and is registered with a
`Processes` that kills whatever is still alive when the test (or fixture) ends.
Every wait is bounded; polling another process's state always has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

ADMIN_PASSWORD = "password-for-the-tests"
START_S = 20.0  # upper bound for a process to come up on a busy 2-core machine
BOUND_S = 20.0  # upper bound for anything another process should do "soon"
CLI_TIMEOUT_S = 30.0
T = TypeVar("T")

# The handlers that `dtq worker` runs in these tests. Configured from the environment so one
# module serves every scenario (lease length, grace period).
WORKER_MODULE = '''
"""Handlers for the worker tests (written to a temporary directory by the tests)."""

import os
import time

from dtq import Worker

worker = Worker(
    # `dtq worker --concurrency N` raises it; it must then run N handlers at once.
    concurrency=1,
    lease_seconds=float(os.environ.get("TW_LEASE_S", "2")),
    grace_period_s=float(os.environ.get("TW_GRACE_S", "1.5")),
    heartbeat_interval_s=float(os.environ.get("TW_HEARTBEAT_S", "0.5")),
    poll_wait_s=float(os.environ.get("TW_POLL_WAIT_S", "5")),
)


def _wait_for(path, limit_s):
    deadline = time.monotonic() + limit_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


@worker.task("add")
def add(payload):
    return {"sum": payload["a"] + payload["b"], "pid": os.getpid()}


@worker.task("boom")
def boom(payload):
    raise ValueError(payload.get("message", "boom"))


@worker.task("bad result")
def bad_result(payload):
    return object()


@worker.task("block")
def block(payload):
    """Says it started (a marker file), waits for the `go` file, says it finished."""
    marker = os.path.join(payload["dir"], f"started-{payload['tag']}-{os.getpid()}")
    with open(marker, "w"):
        pass
    _wait_for(payload["go"], payload.get("limit_s", 50))
    with open(marker.replace("started-", "finished-"), "w"):
        pass
    return {"pid": os.getpid(), "tag": payload["tag"]}


@worker.task("concurrent")
def concurrent(payload):
    """Counts the handlers running at the same time (one marker file each)."""
    me = os.path.join(payload["dir"], f"running-{payload['i']}")
    with open(me, "w"):
        pass
    try:
        seen = len(os.listdir(payload["dir"]))
        time.sleep(payload.get("hold_s", 0.3))  # simulated work
        seen = max(seen, len(os.listdir(payload["dir"])))
    finally:
        os.remove(me)
    return {"seen": seen}
'''
WORKER_TARGET = "tw_handlers:worker"


def write_worker_module(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tw_handlers.py").write_text(WORKER_MODULE)
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any DTQ_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTQ_")}
    # The fast lane is off unless a test asks for it: servers of parallel runs would all
    # want the default port 5001.
    env["DTQ_PROTOCOL_PORT"] = "0"
    env.update(extra)
    return env


def server_env(**extra: str) -> dict[str, str]:
    return clean_env(
        DTQ_PROTOCOL_PORT=str(free_port()),  # the fast lane, on a port of its own
        DTQ_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DTQ_RATE_LIMIT_PER_MINUTE="0",
        DTQ_RATE_LIMIT_PER_HOUR="0",
        DTQ_DURABILITY="os",  # survives kill -9, which is all these tests do to it
        DTQ_RETRY_BACKOFF_BASE_S="0.1",  # retried tasks come back quickly
        DTQ_LOG_FORMAT="json",
        **extra,
    )


def poll_until(check: Callable[[], T], what: str, timeout_s: float = BOUND_S) -> T:
    """`check()` until it returns something truthy; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what} (last: {value!r})"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
        value = check()
    return value


@dataclass
class Proc:
    """A process started by a test, its output in `log_path`."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines (structlog)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def wait_for_event(self, event: str, timeout_s: float = BOUND_S, **match: object) -> dict:
        def found() -> dict | None:
            self.check_alive()
            for e in self.events():
                if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                    return e
            return None

        return poll_until(found, f"{self.name} to log {event!r} {match or ''}", timeout_s)

    def check_alive(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            raise AssertionError(f"{self.name} exited with {rc}:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=BOUND_S)

    def wait(self, timeout_s: float = BOUND_S) -> int:
        return self.popen.wait(timeout=timeout_s)


@dataclass
class Processes:
    """Starts processes and kills every one that is still running in `kill_all`."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        args: Sequence[str],
        name: str,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "dtq.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env if env is not None else clean_env(),
                cwd=cwd,
            )
        proc = Proc(popen, log_path, name)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a stuck kernel, not us
                proc.popen.wait(timeout=BOUND_S)


@dataclass
class Server:
    """`dtq serve` on 127.0.0.1:`port` with data in `data_dir`."""

    procs: Processes
    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=server_env)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = self.procs.spawn(
            [*args, "--data-dir", str(self.data_dir)], f"server-{self.port}", env=self.env
        )
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout_s: float = START_S) -> None:
        assert self.proc is not None
        proc = self.proc

        def healthy() -> bool:
            proc.check_alive()
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll_until(healthy, f"the server on port {self.port} to answer /health", timeout_s)

    def create_keys(self, *roles: str) -> list[str]:
        """An API key per role, made by the admin over the API (`dtq keys create` has its own
        test; a process per key is slow on a busy machine)."""
        with httpx.Client(base_url=self.url, timeout=BOUND_S) as http:
            login = {"username": "admin", "password": ADMIN_PASSWORD}
            reply = http.post("/api/v1/auth/login", json=login)
            assert reply.status_code == 200, reply.text
            auth = {"Authorization": f"Bearer {reply.json()['token']}"}
            keys = []
            for role in roles:
                body = {"name": f"tests-{role}", "role": role}
                reply = http.post("/api/v1/api-keys", json=body, headers=auth)
                assert reply.status_code == 201, reply.text
                keys.append(str(reply.json()["data"]["key"]))
        return keys


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`dtq ARGS` to completion (bounded), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "dtq.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
    )
