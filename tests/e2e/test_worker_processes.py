"""`dtq worker --processes N`: real worker processes under one supervisor, on a real server.

The supervisor and its children write JSON log lines to the same log file; the supervisor's
"worker process started" lines name each child's slot and pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtq import Client

from .conftest import SharedServer
from .procs import BOUND_S, WORKER_TARGET, Proc, Processes, clean_env, poll_until

pytestmark = pytest.mark.e2e


def started_children(sup: Proc) -> dict[int, list[int]]:
    """Slot -> the pids started in it, in order."""
    out: dict[int, list[int]] = {}
    for e in sup.events():
        if e.get("event") == "worker process started":
            out.setdefault(int(e["slot"]), []).append(int(e["pid"]))  # type: ignore[arg-type]
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def supervisor(
    procs: Processes, shared_server: SharedServer, worker_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Proc, str]]:
    queue = f"procs-{request.node.name}"[:60]
    sup = procs.spawn(
        ["worker", WORKER_TARGET, "--processes", "2", "--url", shared_server.url,
         "--api-key", shared_server.worker_key, "--queues", queue, "--worker-id", "sup",
         "--concurrency", "2", "--log-format", "json"],
        "supervisor", env=clean_env(), cwd=worker_dir,
    )  # fmt: skip
    try:
        sup.wait_for_event("worker started", worker_id="sup-0")
        sup.wait_for_event("worker started", worker_id="sup-1")
        yield sup, queue
    finally:
        for pids in started_children(sup).values():  # nothing outlives the test
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_child_killed_is_restarted_and_tasks_still_complete(
    supervisor: tuple[Proc, str], shared_server: SharedServer
) -> None:
    sup, queue = supervisor
    (first,) = started_children(sup)[0]
    os.kill(first, signal.SIGKILL)
    sup.wait_for_event("worker process died; restarting", slot=0, pid=first)
    restarted = poll_until(lambda: started_children(sup)[0][1:], "slot 0 to be restarted")
    assert restarted[0] != first
    sup.check_alive()
    with Client(shared_server.url, api_key=shared_server.admin_key) as client:
        tasks = [client.submit("add", {"a": i, "b": 1}, queue=queue) for i in range(10)]
        done = [client.wait(t.id, timeout=BOUND_S) for t in tasks]
    assert [t.status for t in done] == ["completed"] * 10
    assert [t.result["sum"] for t in done] == [i + 1 for i in range(10)]  # type: ignore[index]
    children = {pid for pids in started_children(sup).values() for pid in pids}
    assert {t.result["pid"] for t in done} <= children - {first}  # type: ignore[index]


def test_sigterm_drains_every_child_and_exits_cleanly(supervisor: tuple[Proc, str]) -> None:
    sup, _ = supervisor
    children = [pids[-1] for pids in started_children(sup).values()]
    assert len(children) == 2
    sup.signal(signal.SIGTERM)
    assert sup.wait(BOUND_S) == 0
    stopped = [e for e in sup.events() if e.get("event") == "worker process stopped"]
    assert sorted((e["slot"], e["exit_code"]) for e in stopped) == [(0, 0), (1, 0)]
    assert [e for e in sup.events() if e.get("event") == "worker stopped"]  # children drained
    assert not any(alive(pid) for pid in children)
