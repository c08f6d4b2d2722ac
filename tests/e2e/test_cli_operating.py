"""`dtq tasks events|retry|purge`, `dtq schedules ...` and `dtq webhooks ...` against a real
server, with the SDK methods behind them (`task_events`, `retry_task(s)`, `purge_tasks`, the
schedule and webhook calls)."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dtq import Client, NotFound

from . import procs as worker_procs
from .conftest import SharedServer
from .procs import run_cli, server_env

pytestmark = pytest.mark.e2e


def remote(shared: SharedServer) -> list[str]:
    return ["--url", shared.url, "--api-key", shared.admin_key]


def cli_json(shared: SharedServer, *args: str) -> Any:
    done = run_cli(*args, "--json", *remote(shared))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def failed_tasks(client: Client, queue: str, n: int) -> list[str]:
    ids = [client.submit("job", {}, queue=queue).id for _ in range(n)]
    for task in client.lease("cli-ops", queues=[queue], max_tasks=n, wait=0):
        assert task.lease is not None and task.lease.id
        client.fail(task.id, task.lease.id, "boom", retry=False)
    return ids


def test_events_retry_and_purge(shared_server: SharedServer) -> None:
    queue = f"ops-{uuid.uuid4().hex[:8]}"
    with Client(shared_server.url, api_key=shared_server.admin_key) as client:
        first, *rest = failed_tasks(client, queue, 4)
        events = cli_json(shared_server, "tasks", "events", first)
        assert [e["event"] for e in events] == ["created", "leased", "failed"]
        assert client.task_events(first) == events
        again = cli_json(shared_server, "tasks", "retry", first)
        assert again["status"] == "pending" and again["attempts"] == 1
        got = cli_json(shared_server, "tasks", "retry", "--status", "failed", "--queue", queue,
                       "--limit", "2")  # fmt: skip
        assert got == {"matched": 2, "affected": 2}
        purged = cli_json(shared_server, "tasks", "purge", "--status", "failed", "--queue", queue)
        assert purged == {"matched": 1, "affected": 1}
        statuses = sorted(client.get(i).status for i in [first, *rest[:2]])
        assert statuses == ["pending"] * 3
        with pytest.raises(NotFound):
            client.get(rest[2])
        assert client.retry_tasks("failed", queue=queue) == {"matched": 0, "affected": 0}
        assert client.purge_tasks("cancelled", queue=queue) == {"matched": 0, "affected": 0}
        # one task id, or --status: a usage error for neither
        done = run_cli("tasks", "retry", *remote(shared_server))
        assert done.returncode != 0 and "--status" in done.stderr


def test_schedules_commands(shared_server: SharedServer) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    task = json.dumps({"name": "Sync", "queue": name})
    made = cli_json(shared_server, "schedules", "create", name, "*/5 * * * *", "--task", task,
                    "--timezone", "Europe/Riga")  # fmt: skip
    assert made["timezone"] == "Europe/Riga" and made["next_run_at"]
    assert name in [s["name"] for s in cli_json(shared_server, "schedules", "list")]
    paused = cli_json(shared_server, "schedules", "pause", name)
    assert paused["paused"] and paused["next_run_at"] is None
    fired = cli_json(shared_server, "schedules", "trigger", name)
    assert fired["name"] == "Sync" and fired["queue"] == name
    with Client(shared_server.url, api_key=shared_server.admin_key) as client:
        assert client.get_schedule(name)["last_task_id"] == fired["id"]
        assert client.update_schedule(name, paused=False)["next_run_at"]
        assert client.trigger_schedule(name)["task"]["queue"] == name
        client.delete_schedule(name)
        with pytest.raises(NotFound):
            client.get_schedule(name)
        other = client.create_schedule(f"{name}-b", "0 * * * *", {"name": "x"}, paused=True)
        assert other["paused"] and client.list_schedules()
        client.delete_schedule(f"{name}-b")
    done = run_cli("schedules", "create", f"{name}-c", "* * *", "--task", task,
                   *remote(shared_server))  # fmt: skip
    assert done.returncode != 0 and "cron" in done.stderr


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:  # the http.server hook for POST
        self.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhooks_commands(procs: worker_procs.Processes, tmp_path: Path) -> None:
    server = worker_procs.Server(
        procs, tmp_path / "data", env=server_env(DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS="true")
    ).start()
    (key,) = server.create_keys("admin")
    shared = SharedServer(server, key, key)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        made = cli_json(shared, "webhooks", "create", url, "--event", "task.created",
                        "--description", "from the CLI")  # fmt: skip
        assert made["url"] == url and made["events"] == ["task.created"]
        assert len(made["secret"]) >= 16
        assert [h["id"] for h in cli_json(shared, "webhooks", "list")] == [made["id"]]
        assert cli_json(shared, "webhooks", "get", made["id"])["description"] == "from the CLI"
        with Client(server.url, api_key=key) as client:
            task = client.submit("job", queue="hooked")
        deadline = time.monotonic() + 20
        while not (done := cli_json(shared, "webhooks", "deliveries", made["id"], "--status",
                                    "delivered")):  # fmt: skip
            assert time.monotonic() < deadline, "the delivery never landed"
            time.sleep(0.05)
        assert [(d["event"], d["task_id"]) for d in done] == [("task.created", task.id)]
        assert json.loads(_Receiver.received[-1])["task"]["id"] == task.id
        table = run_cli("webhooks", "list", *remote(shared))
        assert table.returncode == 0 and url in table.stdout
        gone = run_cli("webhooks", "delete", made["id"], *remote(shared))
        assert gone.returncode == 0 and made["id"] in gone.stdout
        assert cli_json(shared, "webhooks", "list") == []
        missing = run_cli("webhooks", "get", made["id"], *remote(shared))
        assert missing.returncode != 0 and "not found" in missing.stderr.lower()
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_task_events_pages(shared_server: SharedServer) -> None:
    queue = f"ops-{uuid.uuid4().hex[:8]}"
    with Client(shared_server.url, api_key=shared_server.admin_key) as client:
        (task_id,) = failed_tasks(client, queue, 1)
    page = cli_json(shared_server, "tasks", "events", task_id, "--skip", "1", "--limit", "1")
    assert [e["event"] for e in page] == ["leased"]
