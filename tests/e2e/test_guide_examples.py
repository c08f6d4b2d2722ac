"""The API guide's examples (docs/api-guide.md), run as written against a real server.

The curl/jq commands run in bash, the Python example in a fresh interpreter with `requests`.
The snippets below are copied verbatim from the guide; the only changes made before running
them are the guide's placeholders: `http://localhost:5000` becomes the test server's address,
`<token>` becomes `$TOKEN` (set by the guide's own "Get bearer token" command), the example
task id becomes a real task's id, and the Python example's `TOKEN = "your-bearer-token"` gets
a real token. When the guide is found next to the repository (as in CI), the test first checks
that every snippet still appears in it verbatim, so the copies cannot drift from the guide.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import BOUND_S, REPO_ROOT, InProcessServer, bearer, login

pytestmark = pytest.mark.e2e

EXAMPLE_TASK_ID = "123e4567-e89b-12d3-a456-426614174000"


def guide_path() -> Path | None:
    candidates = [
        os.environ.get("DTQ_API_GUIDE"),
        str(REPO_ROOT / "docs" / "api-guide.md"),  # the project's copy of the guide
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


# --- the guide's shell snippets, verbatim, in the order the script runs them -------------------

GET_TOKEN = """\
# Get bearer token
TOKEN=$(curl -X POST http://localhost:5000/api/v1/auth/login \\
  -H "Content-Type: application/json" \\
  -d '{"username":"admin","password":"password"}' | jq -r '.token')

# Use token in requests
curl http://localhost:5000/api/v1/tasks \\
  -H "Authorization: Bearer $TOKEN"
"""

HEALTH = "curl http://localhost:5000/health\n"
READY = "curl http://localhost:5000/ready\n"
INFO = "curl http://localhost:5000/info\n"

LIST_TASKS = """\
curl -X GET http://localhost:5000/api/v1/tasks \\
  -H "Authorization: Bearer <token>" \\
  -H "Content-Type: application/json"
"""

CREATE_TASK = """\
curl -X POST http://localhost:5000/api/v1/tasks \\
  -H "Authorization: Bearer <token>" \\
  -H "Content-Type: application/json" \\
  -d '{
    "name": "Process Data",
    "description": "Process CSV file",
    "priority": "high",
    "payload": {
      "file_path": "/data/input.csv"
    }
  }'
"""

GET_TASK = """\
curl http://localhost:5000/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000 \\
  -H "Authorization: Bearer <token>"
"""

CREATE_AND_MONITOR = """\
# Create task
TASK=$(curl -X POST http://localhost:5000/api/v1/tasks \\
  -H "Authorization: Bearer <token>" \\
  -H "Content-Type: application/json" \\
  -d '{
    "name": "Data Processing",
    "priority": "high"
  }' | jq -r '.data.id')

echo "Created task: $TASK"

# Poll task status
while true; do
  STATUS=$(curl http://localhost:5000/api/v1/tasks/$TASK \\
    -H "Authorization: Bearer <token>" | jq -r '.data.status')

  echo "Status: $STATUS"

  if [ "$STATUS" = "completed" ] || [ "$STATUS" = "failed" ]; then
    break
  fi

  sleep 2
done
"""

EXPORT = """\
# Export to JSON
curl http://localhost:5000/api/v1/analytics/export \\
  -H "Authorization: Bearer <token>" \\
  -H "Accept: application/json" \\
  -o analytics-export.json

# Export to CSV
curl http://localhost:5000/api/v1/analytics/export \\
  -H "Authorization: Bearer <token>" \\
  -H "Accept: text/csv" \\
  -o analytics-export.csv
"""

PAGINATION = """\
curl "http://localhost:5000/api/v1/tasks?skip=0&limit=10" \\
  -H "Authorization: Bearer <token>"
"""

HEARTBEAT = """\
curl -X POST http://localhost:5000/api/v1/workers/heartbeat \\
  -H "Authorization: Bearer <token>" \\
  -H "Content-Type: application/json" \\
  -d '{
    "worker_id": "worker-001",
    "status": "active",
    "current_load": 5,
    "max_capacity": 10
  }'
"""

LIST_WORKERS = """\
curl http://localhost:5000/api/v1/workers \\
  -H "Authorization: Bearer <token>"
"""

GET_WORKER = """\
curl http://localhost:5000/api/v1/workers/worker-001 \\
  -H "Authorization: Bearer <token>"
"""

WORKERS_STATUS = """\
curl http://localhost:5000/workers/status \\
  -H "Authorization: Bearer <token>"
"""

DASHBOARD = """\
curl http://localhost:5000/api/v1/analytics/dashboard \\
  -H "Authorization: Bearer <token>"
"""

TRENDS = """\
curl http://localhost:5000/api/v1/analytics/trends \\
  -H "Authorization: Bearer <token>"
"""

UPDATE_CANCEL = """\
curl -X PUT http://localhost:5000/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000 \\
  -H "Authorization: Bearer <token>" \\
  -H "Content-Type: application/json" \\
  -d '{
    "status": "cancelled"
  }'
"""

DELETE = """\
curl -X DELETE http://localhost:5000/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000 \\
  -H "Authorization: Bearer <token>"
"""

SCRIPT_STEPS = [
    ("token", GET_TOKEN),
    ("health", HEALTH),
    ("ready", READY),
    ("info", INFO),
    ("list", LIST_TASKS),
    ("create", CREATE_TASK),
    ("get", GET_TASK),
    ("monitor", CREATE_AND_MONITOR),
    ("export", EXPORT),
    ("pagination", PAGINATION),
    ("heartbeat", HEARTBEAT),
    ("workers", LIST_WORKERS),
    ("worker", GET_WORKER),
    ("workers_status", WORKERS_STATUS),
    ("dashboard", DASHBOARD),
    ("trends", TRENDS),
    ("cancel", UPDATE_CANCEL),
    ("delete", DELETE),
]

PYTHON_EXAMPLE = """\
import requests

BASE_URL = "http://localhost:5000/api/v1"
TOKEN = "your-bearer-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

# Get tasks
response = requests.get(f"{BASE_URL}/tasks", headers=HEADERS)
tasks = response.json()["data"]

# Create task
payload = {
    "name": "New Task",
    "priority": "high"
}
response = requests.post(f"{BASE_URL}/tasks", json=payload, headers=HEADERS)
task = response.json()["data"]
"""


def adapt(snippet: str, base_url: str, task_id: str) -> str:
    return (
        snippet.replace("http://localhost:5000", base_url)
        .replace("<token>", "$TOKEN")
        .replace(EXAMPLE_TASK_ID, task_id)
    )


def build_script(base_url: str, task_id: str) -> str:
    """The steps, each after a `### name` marker line, stopping at the first failing command."""
    parts = ["set -euo pipefail"]
    for name, snippet in SCRIPT_STEPS:
        parts.append(f'echo; echo "### {name}"')
        parts.append(adapt(snippet, base_url, task_id))
    parts.append('echo; echo "### end"')
    return "\n".join(parts) + "\n"


def split_sections(output: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    name = None
    for line in output.splitlines():
        if line.startswith("### "):
            name = line[4:]
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return {k: v.strip() for k, v in sections.items()}


def needs_curl_and_jq() -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the guide's shell examples need {', '.join(missing)}, not installed")


def test_snippets_are_verbatim_from_the_guide() -> None:
    path = guide_path()
    if path is None:
        pytest.skip("docs/api-guide.md not found (set DTQ_API_GUIDE)")
    guide = path.read_text()
    for name, snippet in [*SCRIPT_STEPS, ("python", PYTHON_EXAMPLE)]:
        assert snippet in guide, f"the {name!r} snippet is no longer in {path} as written"


async def complete_when_created(
    lines: trio.MemoryReceiveChannel[str], client: httpx.AsyncClient, token: str
) -> tuple[str, list[str]]:
    """Act as the worker for the monitor loop: once the script says "Created task: ID", lease
    that task through the worker protocol and complete it. Returns the id and the lines seen."""
    seen: list[str] = []
    async for line in lines:
        seen.append(line)
        match = re.fullmatch(r"Created task: (\S+)", line)
        if match:
            task_id = match.group(1)
            response = await client.post(
                "/api/v1/tasks/lease",
                json={"worker_id": "guide-worker", "names": ["Data Processing"], "wait": 10},
                headers=bearer(token),
            )
            assert response.status_code == 200, response.text
            [task] = response.json()["data"]
            assert task["id"] == task_id
            response = await client.post(
                f"/api/v1/tasks/{task_id}/complete",
                json={"lease_id": task["lease"]["id"], "result": {"rows": 42}},
                headers=bearer(token),
            )
            assert response.status_code == 200, response.text
            return task_id, seen
    raise AssertionError(f"the script never printed 'Created task: ...': {seen}")


async def test_guide_shell_examples_as_written(server: InProcessServer, tmp_path: Path) -> None:
    needs_curl_and_jq()
    workdir = tmp_path / "shell"
    workdir.mkdir()
    async with server.client() as client:
        token = await login(client)
        response = await client.post(
            "/api/v1/tasks", json={"name": "Guide example target"}, headers=bearer(token)
        )
        assert response.status_code == 201, response.text
        target_id = response.json()["data"]["id"]

        script = build_script(server.url, target_id)
        (workdir / "guide-examples.sh").write_text(script)  # for a human reading a failure
        stderr_path = workdir / "stderr.txt"
        output_lines: list[str] = []
        with open(stderr_path, "wb") as stderr, trio.fail_after(BOUND_S * 4):
            process = await trio.lowlevel.open_process(
                ["bash", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=str(workdir),
            )
            try:
                assert process.stdout is not None
                send_lines, receive_lines = trio.open_memory_channel[str](1000)
                async with trio.open_nursery() as nursery:

                    async def read_output() -> None:
                        assert process.stdout is not None
                        buffer = b""
                        async with send_lines:
                            async for chunk in process.stdout:
                                buffer += chunk
                                *complete, buffer = buffer.split(b"\n")
                                for raw in complete:
                                    output_lines.append(raw.decode())
                                    await send_lines.send(raw.decode())
                            if buffer:
                                output_lines.append(buffer.decode())

                    nursery.start_soon(read_output)
                    monitored_id, _ = await complete_when_created(receive_lines, client, token)
                    async with receive_lines:
                        async for _ in receive_lines:
                            pass  # drain
                returncode = await process.wait()
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
        output = "\n".join(output_lines)
        assert returncode == 0, f"{output}\n--- stderr ---\n{stderr_path.read_text()}"

        sections = split_sections(output)
        check_sections(sections, target_id, monitored_id)
        check_exports(workdir)

        # The DELETE answered 204 with no body; the task is gone.
        response = await client.get(f"/api/v1/tasks/{target_id}", headers=bearer(token))
        assert response.status_code == 404, response.text


def check_sections(sections: dict[str, str], target_id: str, monitored_id: str) -> None:
    def body(name: str) -> Any:
        return json.loads(sections[name])

    tasks = body("token")
    assert tasks["status"] == "success"
    assert target_id in {t["id"] for t in tasks["data"]}

    assert body("health")["status"] == "healthy"
    assert body("ready")["status"] == "ready"
    info = body("info")
    assert info["name"] == "Distributed Task Queue System"
    assert info["version"] == "1.0.0"

    assert body("list")["status"] == "success"

    created = body("create")["data"]
    assert (created["name"], created["description"], created["priority"], created["status"]) == (
        "Process Data",
        "Process CSV file",
        "high",
        "pending",
    )
    assert created["payload"] == {"file_path": "/data/input.csv"}

    assert body("get")["data"]["id"] == target_id

    monitor = sections["monitor"].splitlines()
    assert monitor[0] == f"Created task: {monitored_id}"
    statuses = [line.removeprefix("Status: ") for line in monitor[1:]]
    assert statuses[-1] == "completed", monitor
    assert set(statuses[:-1]) <= {"pending", "running"}, monitor
    assert sections["export"] == ""  # -o: the bodies went to files

    page = body("pagination")
    assert len(page["data"]) <= 10
    assert page["pagination"]["skip"] == 0
    assert page["pagination"]["limit"] == 10
    assert page["pagination"]["total"] >= 3
    assert page["pagination"]["pages"] == -(-page["pagination"]["total"] // 10)

    worker = body("heartbeat")["data"]
    assert (worker["worker_id"], worker["status"], worker["current_load"]) == (
        "worker-001",
        "active",
        5,
    )
    assert "worker-001" in {w["worker_id"] for w in body("workers")["data"]}
    assert body("worker")["data"]["max_capacity"] == 10
    assert body("workers_status")["data"]["workers_active"] >= 1

    dashboard = body("dashboard")
    assert dashboard["total_tasks"] >= 3  # at the top level, as in the guide's example
    assert dashboard["completed_tasks"] >= 1
    assert dashboard["workers_active"] >= 1

    assert len(body("trends")["data"]["series"]) == 7  # default: 7 days

    cancelled = body("cancel")["data"]
    assert (cancelled["id"], cancelled["status"]) == (target_id, "cancelled")
    assert sections["delete"] == ""
    assert "end" in sections


def check_exports(workdir: Path) -> None:
    today = datetime.now(UTC).date().isoformat()

    exported = json.loads((workdir / "analytics-export.json").read_text())
    assert exported["status"] == "success"
    assert exported["data"]["dashboard"]["total_tasks"] >= 3
    json_today = [row for row in exported["data"]["daily"] if row["date"] == today]

    csv_lines = (workdir / "analytics-export.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert header[:4] == ["date", "created", "completed", "failed"]
    rows = [dict(zip(header, line.split(","), strict=True)) for line in csv_lines[1:]]
    assert len(rows) == len(exported["data"]["daily"])
    csv_today = [row for row in rows if row["date"] == today]
    # Right at midnight UTC "today" may have moved on between the export and this check.
    if json_today and csv_today:
        assert json_today[0]["created"] >= 3
        assert int(csv_today[0]["created"]) == json_today[0]["created"]
        assert int(csv_today[0]["completed"]) >= 1


async def test_guide_python_example_as_written(server: InProcessServer) -> None:
    async with server.client() as client:
        token = await login(client)
    code = PYTHON_EXAMPLE.replace("http://localhost:5000", server.url).replace(
        'TOKEN = "your-bearer-token"', f'TOKEN = "{token}"'
    )
    code += "\nimport json\nprint(json.dumps({'tasks': tasks, 'task': task}))\n"
    with trio.fail_after(BOUND_S * 4):
        result = await trio.run_process(
            [sys.executable, "-c", code], capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    out = json.loads(result.stdout)
    assert out["tasks"] == []
    task = out["task"]
    assert (task["name"], task["priority"], task["status"]) == ("New Task", "high", "pending")
    async with server.client() as client:
        response = await client.get(f"/api/v1/tasks/{task['id']}", headers=bearer(token))
        assert response.status_code == 200
