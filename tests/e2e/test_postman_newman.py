"""The committed Postman collection, run top to bottom by newman against a live `dtq serve`.

Needs newman (`npm install -g newman`) or npx (then `npx --yes newman@6`, fetched once). Skipped
without them, except under CI=true, where a missing newman is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import trio

from .conftest import REPO_ROOT, spawn_server

pytestmark = pytest.mark.e2e

NEWMAN_S = 120.0  # the run itself takes seconds; npx may first fetch newman


def newman_command() -> list[str] | None:
    if newman := shutil.which("newman"):
        return [newman]
    if npx := shutil.which("npx"):
        return [npx, "--yes", "newman@6"]
    return None


@pytest.mark.timeout(NEWMAN_S + 60)
async def test_collection_runs_with_every_assertion_passing(tmp_path: Path) -> None:
    command = newman_command()
    if command is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but neither newman nor npx is installed")
        pytest.skip("newman (or npx) is not installed")
    report_path = tmp_path / "newman.json"
    async with spawn_server(tmp_path / "data") as server:
        with trio.fail_after(NEWMAN_S):
            result = await trio.run_process(
                [
                    *command, "run", str(REPO_ROOT / "postman-collection.json"),
                    "--env-var", f"base_url={server.url}/api/v1",
                    "--env-var", f"server_url={server.url}",
                    "--reporters", "cli,json", "--reporter-json-export", str(report_path),
                    "--timeout-request", "30000", "--color", "off",
                ],
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, output
    run = json.loads(report_path.read_text())["run"]
    assert run["failures"] == [], output
    stats = run["stats"]
    assert stats["requests"]["failed"] == 0
    assert stats["assertions"]["failed"] == 0
    # One status test per request at least, so a run that asserted nothing cannot pass.
    assert stats["assertions"]["total"] > stats["requests"]["total"] > 30
