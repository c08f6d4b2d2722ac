"""The README's "Your first finished task", run as written: a worker key from the API, the
example worker (`examples/jobs.py`) started with `dtq worker`, and the API guide's "Create and
Monitor Task" loop then ends with `Status: completed`, not `pending` forever."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from .conftest import BOUND_S, REPO_ROOT, InProcessServer, clean_environ
from .test_guide_examples import CREATE_AND_MONITOR, GET_TOKEN, adapt, needs_curl_and_jq

pytestmark = pytest.mark.e2e

README = REPO_ROOT / "README.md"
WALKTHROUGH = re.compile(
    r"<!-- walkthrough:worker -->\n```bash\n(.*?)```\n<!-- /walkthrough:worker -->", re.S
)


def walkthrough_commands() -> str:
    match = WALKTHROUGH.search(README.read_text())
    assert match, "README.md lost its 'walkthrough:worker' block"
    return match.group(1)


def test_the_walkthrough_starts_the_example_worker() -> None:
    commands = walkthrough_commands()
    assert "dtq worker examples.jobs:worker" in commands
    assert '"role": "worker"' in commands


async def test_readme_worker_walkthrough_reaches_completed(
    server: InProcessServer, tmp_path: Path
) -> None:
    needs_curl_and_jq()
    worker_script = adapt(walkthrough_commands(), server.url, "")
    monitor_script = "set -euo pipefail\n" + adapt(GET_TOKEN + CREATE_AND_MONITOR, server.url, "")
    # The worker runs this checkout's dtq, as `pip install -e .` from the quick start would.
    env = clean_environ({"PYTHONPATH": str(REPO_ROOT)})
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log_file:
        worker = await trio.lowlevel.open_process(
            ["bash", "-c", worker_script], cwd=str(REPO_ROOT), env=env,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the `dtq worker` child goes too
        )  # fmt: skip
    monitor_out, monitor_err = tmp_path / "monitor.out", tmp_path / "monitor.err"
    returncode: int | None = None
    try:
        # Output to files, not pipes: if the bound runs out, what was said so far is kept.
        with open(monitor_out, "wb") as out, open(monitor_err, "wb") as err:
            with trio.move_on_after(BOUND_S * 6):
                monitor = await trio.run_process(
                    ["bash", "-c", monitor_script], cwd=str(tmp_path), env=env,
                    stdout=out, stderr=err, check=False,
                )  # fmt: skip
                returncode = monitor.returncode
    finally:
        with trio.CancelScope(shield=True):
            stop_group(worker.pid)
            await worker.wait()
    output = monitor_out.read_text()
    context = f"{output}\n--- stderr ---\n{monitor_err.read_text()}\n--- worker ---\n"
    context += worker_log.read_text()
    assert returncode is not None, f"the walkthrough took over {BOUND_S * 6} s:\n{context}"
    assert returncode == 0, context
    statuses = re.findall(r"^Status: (\w+)$", output, re.M)
    assert statuses and statuses[-1] == "completed", context


def stop_group(pid: int) -> None:
    """SIGTERM to the walkthrough's process group (bash and its `dtq worker`), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
