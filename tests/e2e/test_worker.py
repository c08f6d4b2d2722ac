"""End to end: the real server and real `dtq worker` processes on 127.0.0.1.

Each test uses its own queue on the session's server (or its own server when it restarts it), so
the workers of one test never take another test's tasks. A worker's handlers are in
`procs.WORKER_MODULE`; "block" writes a marker file when it starts, waits for a `go` file, and
writes another marker when it returns, which lets a test act while a task is known to be running.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtq import Client

from .conftest import SharedServer
from .procs import (
    ADMIN_PASSWORD,
    BOUND_S,
    WORKER_TARGET,
    Proc,
    Processes,
    Server,
    clean_env,
    poll_until,
)

pytestmark = pytest.mark.e2e
TRANSPORTS = ("http", "tcp", "ws")
_transport = {"now": "http"}  # the transport of the module's current parameter


@pytest.fixture(scope="module", params=TRANSPORTS)
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedServer]:
    """Every test here runs once per transport (`dtq worker --transport`), each time on a
    server of its own, so the runs cannot take each other's tasks."""
    _transport["now"] = request.param
    base = tmp_path_factory.mktemp(f"worker-server-{request.param}")
    registry = Processes(base / "logs")
    try:
        server = Server(registry, base / "data").start()
        admin_key, worker_key = server.create_keys("admin", "worker")
        yield SharedServer(server, admin_key, worker_key)
    finally:
        registry.kill_all()


def spawn_worker(
    procs: Processes,
    url: str,
    api_key: str,
    worker_dir: Path,
    *,
    queue: str,
    worker_id: str,
    concurrency: int = 2,
    extra_args: tuple[str, ...] = (),
    **env: str,
) -> Proc:
    """`dtq worker tw_handlers:worker ...`, started (it has logged "worker started")."""
    args = ["worker", WORKER_TARGET, "--url", url, "--api-key", api_key, "--queues", queue,
            "--concurrency", str(concurrency), "--worker-id", worker_id, "--log-format", "json",
            "--transport", _transport["now"], *extra_args]  # fmt: skip
    proc = procs.spawn(args, worker_id, env=clean_env(**env), cwd=worker_dir)
    proc.wait_for_event("worker started", worker_id=worker_id)
    return proc


class Blocker:
    """Payloads for the "block" handler, and what the test sees of it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def payload(self, tag: str, **extra: Any) -> dict[str, Any]:
        return {"dir": str(self.dir), "tag": tag, "go": str(self.dir / f"go-{tag}"), **extra}

    def started_by(self, tag: str) -> list[int]:
        """Pids of the workers whose handler started the task tagged `tag`."""
        return [int(p.name.rsplit("-", 1)[1]) for p in self.dir.glob(f"started-{tag}-*")]

    def wait_started(self, tag: str, pid: int) -> None:
        poll_until(lambda: pid in self.started_by(tag), f"worker {pid} to start {tag!r}")

    def wait_finished(self, tag: str, pid: int) -> None:
        marker = self.dir / f"finished-{tag}-{pid}"
        poll_until(marker.exists, f"worker {pid} to finish {tag!r}")

    def go(self, tag: str) -> None:
        (self.dir / f"go-{tag}").touch()


@pytest.fixture
def client(shared_server: SharedServer) -> Iterator[Client]:
    with Client(shared_server.url, api_key=shared_server.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def basic_worker(
    shared_server: SharedServer, worker_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """One worker (concurrency 2) on the queue "basic" for the simple scenarios."""
    procs = Processes(tmp_path_factory.mktemp("basic-worker"))
    try:
        yield spawn_worker(procs, shared_server.url, shared_server.worker_key, worker_dir,
                           queue="basic", worker_id="basic-w1", concurrency=2)  # fmt: skip
    finally:
        procs.kill_all()


def test_heartbeat_registers_the_worker_as_active(basic_worker: Proc, client: Client) -> None:
    def registered() -> Any:
        return [w for w in client.workers("active") if w.worker_id == "basic-w1"]

    (worker,) = poll_until(registered, "basic-w1 to be listed as active")
    assert worker.status == "active"
    assert worker.max_capacity == 2
    assert worker.queues == ["basic"]
    assert worker.hostname


def test_tasks_run_and_their_results_are_stored(basic_worker: Proc, client: Client) -> None:
    tasks = [client.submit("add", {"a": i, "b": 10}, queue="basic") for i in range(5)]
    for i, submitted in enumerate(tasks):
        task = client.wait(submitted.id, timeout=BOUND_S)
        assert task.status == "completed", task
        assert task.result == {"sum": i + 10, "pid": basic_worker.pid}
        assert task.worker_id == "basic-w1"
        assert task.attempts == 1
        assert task.lease is None
        assert task.error is None
        assert task.started_at and task.completed_at and task.duration is not None


def test_a_handler_that_raises_fails_the_attempt_and_is_retried(
    basic_worker: Proc, client: Client
) -> None:
    once = client.submit("boom", {"message": "no such file: data.csv"}, queue="basic")
    twice = client.submit("boom", {"message": "try again"}, queue="basic", retry_count=1)

    task = client.wait(once.id, timeout=BOUND_S)
    assert task.status == "failed"
    assert task.attempts == 1
    assert task.error is not None
    assert (task.error.type, task.error.message) == ("ValueError", "no such file: data.csv")
    assert task.error.traceback and 'raise ValueError(payload.get("message"' in task.error.traceback
    assert "dtq/client/worker.py" not in task.error.traceback  # only the user's frames

    task = client.wait(twice.id, timeout=BOUND_S)
    assert task.status == "failed"
    assert task.attempts == 2  # retry_count=1: the first failure was retried once
    assert task.error is not None and task.error.type == "ValueError"


def test_a_worker_leaves_tasks_it_has_no_handler_for_pending(
    basic_worker: Proc, client: Client
) -> None:
    unknown = client.submit("Resize Image", {"w": 10}, queue="basic")
    bad = client.submit("bad result", queue="basic")  # submitted after it, on the same queue

    task = client.wait(bad.id, timeout=BOUND_S)
    assert task.status == "failed"
    assert task.error is not None and task.error.type == "TypeError"
    # The worker leased past it: "Resize Image" was never handed to a worker that cannot run it.
    left = client.get(unknown.id)
    assert (left.status, left.attempts, left.worker_id) == ("pending", 0, None)
    client.delete(unknown.id)


def test_any_name_leases_everything_and_unknown_names_fail_clearly(
    shared_server: SharedServer, worker_dir: Path, client: Client, tmp_path: Path
) -> None:
    procs = Processes(tmp_path / "procs")
    try:
        spawn_worker(procs, shared_server.url, shared_server.worker_key, worker_dir,
                     queue="any-name", worker_id="any-w1", extra_args=("--any-name",))  # fmt: skip
        unknown = client.submit("Resize Image", {"w": 10}, queue="any-name")
        task = client.wait(unknown.id, timeout=BOUND_S)
    finally:
        procs.kill_all()
    assert task.status == "failed"
    assert task.error is not None
    assert task.error.type == "UnknownTask"
    assert "'Resize Image'" in task.error.message and "any-w1" in task.error.message


def test_a_handler_past_the_task_timeout_is_reported_as_timed_out(
    basic_worker: Proc, client: Client, tmp_path: Path
) -> None:
    blocker = Blocker(tmp_path / "blocker")
    submitted = client.submit("block", blocker.payload("hangs"), queue="basic", timeout=1)
    try:
        task = client.wait(submitted.id, timeout=BOUND_S)
    finally:
        blocker.go("hangs")  # let the abandoned handler thread end
    assert task.status == "failed"
    assert task.error is not None
    # Whichever notices first: the worker (its handler ran past `timeout`) or the server (the
    # lease cannot be extended past the attempt's timeout, so it expires then).
    assert task.error.type in {"TimeoutError", "timeout"}, task.error
    assert "timeout of 1 s" in task.error.message


def test_concurrency_limit_is_respected(basic_worker: Proc, client: Client, tmp_path: Path) -> None:
    """`--concurrency 2` on a module whose Worker says 1: two handlers at once, never three."""
    markers = tmp_path / "running"
    markers.mkdir()
    payload = {"dir": str(markers), "hold_s": 0.3}
    tasks = client.submit_many(
        [{"name": "concurrent", "payload": {**payload, "i": i}, "queue": "basic"} for i in range(6)]
    )
    held = 0  # most tasks the server saw the worker hold at once

    def all_done() -> bool:
        nonlocal held
        running = list(client.list(status="running", worker_id="basic-w1"))
        held = max(held, len(running))
        return all(client.get(t.id).status == "completed" for t in tasks)

    poll_until(all_done, "the concurrent tasks to complete")
    seen = [client.get(t.id).result["seen"] for t in tasks]
    assert max(seen) <= 2, seen  # handlers running at once, as the handlers saw it
    assert max(seen) == 2, seen  # and it did run two at a time
    # The server's view also counts tasks whose handler has finished and whose result is in the
    # next ack batch (a slot frees when the handler returns): at most one batch of 2 on top.
    assert held <= 2 + 2, held


def test_kill_9_mid_task_the_task_runs_again_after_the_lease_expires(
    shared_server: SharedServer, worker_dir: Path, procs: Processes, client: Client, tmp_path: Path
) -> None:
    url, key = shared_server.url, shared_server.worker_key
    blocker = Blocker(tmp_path / "blocker")
    first = spawn_worker(procs, url, key, worker_dir, queue="kill9", worker_id="kill9-a",
                         TW_LEASE_S="2")  # fmt: skip
    submitted = client.submit("block", blocker.payload("t"), queue="kill9", retry_count=1)
    blocker.wait_started("t", first.pid)
    assert client.get(submitted.id).worker_id == "kill9-a"

    first.kill()  # SIGKILL: no release, no result; only the lease's expiry gives it back
    blocker.go("t")
    second = spawn_worker(procs, url, key, worker_dir, queue="kill9", worker_id="kill9-b")

    task = client.wait(submitted.id, timeout=BOUND_S)
    assert task.status == "completed", task
    assert task.worker_id == "kill9-b"
    assert task.result == {"pid": second.pid, "tag": "t"}
    assert task.attempts == 2  # the expired lease counted as the first attempt
    assert sorted(blocker.started_by("t")) == sorted([first.pid, second.pid])


def test_sigterm_drains_finishes_what_it_can_and_hands_back_the_rest(
    shared_server: SharedServer, worker_dir: Path, procs: Processes, client: Client, tmp_path: Path
) -> None:
    url, key = shared_server.url, shared_server.worker_key
    blocker = Blocker(tmp_path / "blocker")
    worker = spawn_worker(procs, url, key, worker_dir, queue="drain", worker_id="drain-a",
                          concurrency=2, TW_GRACE_S="1.5")  # fmt: skip
    short = client.submit("block", blocker.payload("short"), queue="drain")
    long = client.submit("block", blocker.payload("long"), queue="drain")
    blocker.wait_started("short", worker.pid)
    blocker.wait_started("long", worker.pid)

    worker.signal(signal.SIGTERM)
    worker.wait_for_event("draining")
    blocker.go("short")  # finishes within the grace period; "long" does not
    assert worker.wait(timeout_s=BOUND_S) == 0, worker.log()[-3000:]

    task = client.get(short.id)
    assert task.status == "completed", task
    assert task.result == {"pid": worker.pid, "tag": "short"}
    task = client.get(long.id)
    assert task.status == "pending", task  # handed back at once, not left to its lease
    assert task.lease is None
    assert [e["task_id"] for e in worker.events() if e.get("event") == "handed back"] == [long.id]
    workers = {w.worker_id: w for w in client.workers()}
    assert workers["drain-a"].status == "inactive"  # said goodbye

    blocker.go("long")
    other = spawn_worker(procs, url, key, worker_dir, queue="drain", worker_id="drain-b")
    task = client.wait(long.id, timeout=BOUND_S)
    assert task.status == "completed", task
    assert task.result == {"pid": other.pid, "tag": "long"}


def test_server_restart_under_a_running_worker(
    procs: Processes, worker_dir: Path, tmp_path: Path
) -> None:
    server = Server(procs, tmp_path / "data").start()
    with Client(server.url) as client:
        # A bearer token this time (`dtq worker --token`): the JWT secret is kept in the data
        # directory, so the token stays valid across the restart.
        token = client.login("admin", ADMIN_PASSWORD)
        blocker = Blocker(tmp_path / "blocker")
        # A lease long enough to outlive the outage: the result the worker holds is still wanted.
        args = ["worker", WORKER_TARGET, "--url", server.url, "--token", token,
                "--worker-id", "restart-w", "--log-format", "json"]  # fmt: skip
        worker = procs.spawn(args, "restart-w", env=clean_env(TW_LEASE_S="30"), cwd=worker_dir)
        worker.wait_for_event("worker started")

        before = client.submit("add", {"a": 1, "b": 1})
        assert client.wait(before.id, timeout=BOUND_S).status == "completed"
        held = client.submit("block", blocker.payload("held"))
        blocker.wait_started("held", worker.pid)

        assert server.proc is not None
        server.proc.kill()  # kill -9
        blocker.go("held")
        blocker.wait_finished("held", worker.pid)  # the result is computed while it is down
        server.start()  # same port, same data directory

        task = client.wait(held.id, timeout=BOUND_S)
        assert task.status == "completed", task
        assert task.result == {"pid": worker.pid, "tag": "held"}
        assert task.attempts == 1  # delivered once, not re-run
        after = client.submit("add", {"a": 2, "b": 3})
        task = client.wait(after.id, timeout=BOUND_S)
        assert task.status == "completed", task
        assert task.result == {"sum": 5, "pid": worker.pid}
        assert blocker.started_by("held") == [worker.pid]
    worker.check_alive()


def test_a_cancelled_running_task_is_not_completed(
    shared_server: SharedServer, worker_dir: Path, procs: Processes, client: Client, tmp_path: Path
) -> None:
    url, key = shared_server.url, shared_server.worker_key
    blocker = Blocker(tmp_path / "blocker")
    worker = spawn_worker(procs, url, key, worker_dir, queue="cancel", worker_id="cancel-w",
                          TW_LEASE_S="1.5")  # fmt: skip
    submitted = client.submit("block", blocker.payload("c"), queue="cancel")
    blocker.wait_started("c", worker.pid)

    assert client.cancel(submitted.id).status == "cancelled"
    # Over HTTP the next lease extension is refused (409); over the fast lane the server's
    # `cancelled` notice comes at once. Either way the worker drops the task's outcome.
    worker.wait_for_event("result dropped: lease lost or task cancelled", task_id=submitted.id)
    assert shared_server.server.proc is not None
    if _transport["now"] == "http":
        extends = [
            e["status"]
            for e in shared_server.server.proc.events()
            if e.get("event") == "request"
            and e.get("path") == f"/api/v1/tasks/{submitted.id}/extend"
        ]
        assert extends and extends[-1] == 409, extends
    blocker.go("c")  # the handler returns now; nobody reports it

    # The worker carries on with other work, and the cancelled task stays as it was.
    after = client.submit("add", {"a": 4, "b": 4}, queue="cancel")
    assert client.wait(after.id, timeout=BOUND_S).status == "completed"
    task = client.get(submitted.id)
    assert task.status == "cancelled"
    assert task.result is None
    assert task.error is None
