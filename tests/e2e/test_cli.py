"""The `dtq` command line against the session's real server (and a real worker on queue "cli").

Commands whose process matters (exit codes, a worker at the other end, a hot backup, the entry
point itself) run as `python -m dtq.cli ...`; the rest call `dtq.cli.main(argv)` in this process,
which is the same code minus the interpreter start-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from dtq import AsyncClient, Client, NotFound, Unauthorized
from dtq.cli import build_parser, main
from dtq.server import serve
from dtq.settings import Durability, Settings

from .conftest import SharedServer
from .procs import (
    BOUND_S,
    START_S,
    WORKER_TARGET,
    Proc,
    Processes,
    clean_env,
    free_port,
    poll_until,
    run_cli,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cli_worker(
    shared_server: SharedServer, worker_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    procs = Processes(tmp_path_factory.mktemp("cli-worker"))
    try:
        args = ["worker", WORKER_TARGET, "--url", shared_server.url, "--api-key",
                shared_server.worker_key, "--queues", "cli", "--concurrency", "3",
                "--worker-id", "cli-w1", "--log-format", "json"]  # fmt: skip
        proc = procs.spawn(args, "cli-w1", cwd=worker_dir)
        proc.wait_for_event("worker started")
        yield proc
    finally:
        procs.kill_all()


@pytest.fixture(autouse=True)
def no_saved_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process commands never see the login of whoever runs the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def client(shared_server: SharedServer) -> Iterator[Client]:
    with Client(shared_server.url, api_key=shared_server.admin_key) as c:
        yield c


class InProcessCli:
    """`dtq ARGS` through `dtq.cli.main`, with the remote flags filled in."""

    def __init__(self, server: SharedServer, capsys: pytest.CaptureFixture[str]) -> None:
        self.server = server
        self.capsys = capsys

    def __call__(self, *args: str, remote: bool = True) -> tuple[int, str, str]:
        argv = list(args)
        if remote:
            argv += ["--url", self.server.url, "--api-key", self.server.admin_key]
        self.capsys.readouterr()
        rc = main(argv)
        out, err = self.capsys.readouterr()
        return rc, out, err

    def json(self, *args: str, **kw: Any) -> Any:
        rc, out, err = self(*args, "--json", **kw)
        assert rc == 0, err
        return json.loads(out)


@pytest.fixture
def dtq(shared_server: SharedServer, capsys: pytest.CaptureFixture[str]) -> InProcessCli:
    return InProcessCli(shared_server, capsys)


def remote(shared: SharedServer) -> list[str]:
    return ["--url", shared.url, "--api-key", shared.admin_key]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dtq: error: "), err
    return lines[0]


# --- help -----------------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


COMMANDS = sorted(_commands(build_parser()))


def test_the_commands_the_issue_asks_for_exist() -> None:
    wanted = {("serve",), ("worker",), ("submit",), ("tasks", "list"), ("tasks", "get"),
              ("tasks", "cancel"), ("tasks", "delete"), ("workers", "list"), ("keys", "create"),
              ("keys", "list"), ("keys", "revoke"), ("users", "create"), ("users", "list"),
              ("backup",), ("openapi",)}  # fmt: skip
    assert wanted <= set(COMMANDS)


def test_dtq_help_exits_0() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: dtq")
    for command in ("serve", "worker", "submit", "tasks", "workers", "keys", "backup"):
        assert command in done.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dtq {' '.join(command)}")


def _parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*prefix, name))


def test_every_flag_has_help_text() -> None:
    missing = [
        (" ".join(command), action.dest)
        for command, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tasks", "list", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "print at most N tasks (default: 50)" in out
    assert "--queue QUEUE only tasks of this queue" in out
    assert "(default: None)" not in out


# --- submit, tasks, workers -------------------------------------------------------------------------


def test_submit_and_wait_with_a_running_worker(
    shared_server: SharedServer, cli_worker: Proc
) -> None:
    done = run_cli("submit", "add", "--payload", '{"a": 2, "b": 40}', "--queue", "cli",
                   "--priority", "high", "--wait", "--wait-timeout", str(BOUND_S), "--json",
                   *remote(shared_server))  # fmt: skip
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert (task["status"], task["result"]["sum"], task["priority"]) == ("completed", 42, "high")
    assert task["worker_id"] == "cli-w1"

    # Credentials and URL from the environment; a failed task is exit code 2.
    env = clean_env(DTQ_URL=shared_server.url, DTQ_API_KEY=shared_server.admin_key)
    done = run_cli("submit", "boom", "--payload", '{"message": "bad input"}', "--queue", "cli",
                   "--wait", "--wait-timeout", str(BOUND_S), "--json", env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    task = json.loads(done.stdout)
    assert task["status"] == "failed"
    assert task["error"]["message"] == "bad input"


def test_submit_without_wait_and_with_a_timeout(dtq: InProcessCli, client: Client) -> None:
    task = dtq.json("submit", "Nobody Runs This", "--queue", "cli-idle", "--retry-count", "2",
                    "--delay", "3600", "--idempotency-key", "cli-once")  # fmt: skip
    assert (task["status"], task["queue"], task["retry_count"]) == ("pending", "cli-idle", 2)
    assert task["run_at"] is not None
    assert dtq.json("submit", "Nobody Runs This", "--queue", "cli-idle", "--retry-count", "2",
                    "--delay", "3600", "--idempotency-key", "cli-once")["id"] == task["id"]  # fmt: skip

    rc, _, err = dtq("submit", "Nobody Runs This", "--queue", "cli-idle", "--wait",
                       "--wait-timeout", "0.2")  # fmt: skip
    assert rc == 1
    assert "still pending" in one_line_error(err)
    # --timeout was the wait: it still is, with a warning that it is now --wait-timeout.
    rc, _, err = dtq("submit", "Nobody Runs This", "--queue", "cli-idle", "--wait",
                       "--timeout", "0.2")  # fmt: skip
    assert rc == 1
    warning, error = err.strip().splitlines()
    assert "--wait-timeout" in warning and "still pending" in error

    # --task-timeout is the task's own timeout.
    timed = dtq.json("submit", "Nobody Runs This", "--queue", "cli-idle", "--task-timeout", "12")
    assert timed["timeout"] == 12
    for made in client.list(queue="cli-idle", name="Nobody Runs This"):
        client.delete(made.id)


def test_tasks_list_get_cancel_delete(dtq: InProcessCli, client: Client) -> None:
    ids = [client.submit("Listed", {"i": i}, queue="cli-idle", priority="low").id for i in range(3)]

    listed = dtq.json("tasks", "list", "--status", "pending", "--priority", "low",
                      "--limit", "1000")  # fmt: skip
    assert set(ids) <= {t["id"] for t in listed}
    assert all(t["status"] == "pending" and t["priority"] == "low" for t in listed)
    assert len(dtq.json("tasks", "list", "--limit", "2")) == 2
    asc = dtq.json("tasks", "list", "--sort", "created_at", "--order", "asc", "--limit", "1000")
    assert [t["created_at"] for t in asc] == sorted(t["created_at"] for t in asc)

    task = dtq.json("tasks", "get", ids[0])
    assert (task["id"], task["payload"], task["status"]) == (ids[0], {"i": 0}, "pending")
    assert dtq.json("tasks", "cancel", ids[1])["status"] == "cancelled"
    assert client.get(ids[1]).status == "cancelled"

    rc, out, err = dtq("tasks", "delete", ids[2])
    assert (rc, out.strip()) == (0, f"deleted {ids[2]}")
    rc, out, err = dtq("tasks", "get", ids[2])
    assert rc == 1 and out == ""
    assert f"task {ids[2]} not found" in one_line_error(err)
    client.delete(ids[0])
    client.delete(ids[1])


def test_tasks_list_by_queue_and_name_with_skip(dtq: InProcessCli, client: Client) -> None:
    made = [client.submit(name, queue=queue).id
            for name, queue in [("Sort", "cli-filter-a"), ("Sort", "cli-filter-b"),
                                ("Mail", "cli-filter-b"), ("Sort", "cli-filter-b")]]  # fmt: skip
    in_b = dtq.json("tasks", "list", "--queue", "cli-filter-b", "--order", "asc")
    assert [t["id"] for t in in_b] == made[1:]
    sorts = dtq.json("tasks", "list", "--queue", "cli-filter-b", "--name", "Sort", "--order", "asc")
    assert [t["id"] for t in sorts] == [made[1], made[3]]
    page = dtq.json("tasks", "list", "--queue", "cli-filter-b", "--order", "asc", "--skip", "1",
                    "--limit", "1")  # fmt: skip
    assert [t["id"] for t in page] == [made[2]]
    rc, _, err = dtq("tasks", "list", "--limit", "0")
    assert rc == 2 and one_line_error(err) == "dtq: error: --limit: must be at least 1"
    for task_id in made:
        client.delete(task_id)


def test_workers_list(dtq: InProcessCli, cli_worker: Proc) -> None:
    def listed() -> Any:
        return [w for w in dtq.json("workers", "list", "--status", "active")
                if w["worker_id"] == "cli-w1"]  # fmt: skip

    (worker,) = poll_until(listed, "cli-w1 in `dtq workers list`")
    assert (worker["status"], worker["max_capacity"], worker["queues"]) == ("active", 3, ["cli"])


def test_a_terminal_gets_a_table(
    dtq: InProcessCli, cli_worker: Proc, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = client.submit("Tabled", queue="cli-idle")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    rc, out, _ = dtq("tasks", "list", "--limit", "1")
    assert rc == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "PRIORITY", "QUEUE", "ATTEMPTS", "CREATED_AT"]
    assert row.split()[:3] == [task.id, "Tabled", "pending"]
    rc, out, _ = dtq("workers", "list", "--status", "active")
    assert rc == 0
    assert out.splitlines()[0].split()[:2] == ["WORKER_ID", "STATUS"]
    assert any(line.startswith("cli-w1 ") for line in out.splitlines())
    client.delete(task.id)


# --- errors ---------------------------------------------------------------------------------------


def test_an_unreachable_server_is_a_one_line_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_cli("submit", "Process Data", "--url", url, "--api-key", "dtq_x")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "cannot reach the server" in one_line_error(done.stderr)


def test_errors_are_one_line_with_a_non_zero_exit(
    dtq: InProcessCli, shared_server: SharedServer
) -> None:
    unknown = "7a1f0a8e-0000-4000-8000-000000000000"
    for args, expected in [
        (("tasks", "get", unknown), f"task {unknown} not found"),
        (("tasks", "cancel", unknown), "not found"),
        (("tasks", "delete", unknown), "not found"),
        (("tasks", "get", "not-a-uuid"), "Invalid task ID"),
        (("submit", "x", "--queue", "no spaces allowed"), "queue"),
    ]:
        rc, out, err = dtq(*args)
        assert rc == 1, (args, out, err)
        assert expected in one_line_error(err), (args, err)

    # A bad flag value: one line naming the flag, exit code 2 (a usage error, as argparse's).
    rc, out, err = dtq("submit", "x", "--payload", "{not json")
    assert rc == 2, err
    assert one_line_error(err).startswith("dtq: error: --payload: invalid JSON: Expecting")

    rc, out, err = dtq("tasks", "list", "--url", shared_server.url, "--api-key", "dtq_wrong",
                       remote=False)  # fmt: skip
    assert rc == 1
    one_line_error(err)

    with pytest.raises(SystemExit) as exited:  # argparse: usage error, exit 2
        main(["tasks", "frobnicate"])
    assert exited.value.code == 2


def test_worker_start_up_errors_are_one_line(shared_server: SharedServer, worker_dir: Path) -> None:
    done = run_cli("worker", "tw_not_there:worker", "--url", shared_server.url)
    assert done.returncode == 1, done.stderr
    assert "No module named 'tw_not_there'" in one_line_error(done.stderr)

    # The server refuses the worker's credentials: it stops, with one line saying why.
    done = subprocess.run(
        [sys.executable, "-m", "dtq.cli", "worker", WORKER_TARGET, "--url", shared_server.url,
         "--api-key", "dtq_wrong", "--log-format", "json"],
        capture_output=True, text=True, timeout=BOUND_S, cwd=worker_dir, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "dtq: error: Invalid API key"


def test_bulk_submit_from_a_file(dtq: InProcessCli, client: Client, tmp_path: Path) -> None:
    bodies = [{"name": "Bulk", "payload": {"i": i}, "queue": "cli-bulk", "priority": "low",
               "tags": ["bulk"]} for i in range(600)]  # fmt: skip
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(b) for b in bodies) + "\n\n")
    rc, _, err = dtq("submit", "--file", str(path))
    assert (rc, err.strip()) == (0, "submitted 600 tasks")  # in two batches
    assert client.dashboard()["total_tasks"] >= 600

    for content, expected in [
        ('{"name": "ok"}\n[1, 2]\n', "line 2: expected a JSON object with a name"),
        ('{"payload": {}}\n', "line 1: expected a JSON object with a name"),
        ('{"name": "x", "colour": "red"}\n', "line 1: unknown field(s): colour"),
        ("{not json\n", "line 1: invalid JSON: Expecting property name"),
    ]:
        path.write_text(content)
        rc, _, err = dtq("submit", "--file", str(path))
        assert rc == 1
        assert expected in one_line_error(err)


# --- openapi, keys, users, backup -----------------------------------------------------------------


def test_openapi_prints_valid_json(dtq: InProcessCli) -> None:
    rc, out, err = dtq("openapi", remote=False)
    assert rc == 0, err
    document = json.loads(out)
    assert document["openapi"].startswith("3.")
    for path in ("/api/v1/tasks", "/api/v1/tasks/lease", "/api/v1/tasks/ack",
                 "/api/v1/workers/heartbeat"):  # fmt: skip
        assert path in document["paths"]


def test_keys_and_users_while_the_server_runs(
    dtq: InProcessCli, shared_server: SharedServer
) -> None:
    data = ["--data-dir", str(shared_server.server.data_dir)]
    created = dtq.json("keys", "create", "--role", "viewer", "--name", "cli-viewer", *data,
                       remote=False)  # fmt: skip
    assert created["role"] == "viewer" and created["key"]
    with Client(shared_server.url, api_key=created["key"]) as viewer:
        assert viewer.dashboard()["total_tasks"] >= 0  # the running server knows the new key

    keys = dtq.json("keys", "list", *data, remote=False)
    assert {"key_id": created["key_id"], "name": "cli-viewer", "role": "viewer",
            "created_by": "cli"} in keys  # fmt: skip
    assert all("key" not in k for k in keys)  # never shown again
    rc, out, err = dtq("keys", "revoke", created["key_id"], *data, remote=False)
    assert (rc, out.strip()) == (0, f"revoked {created['key_id']}"), err
    with (
        Client(shared_server.url, api_key=created["key"]) as viewer,
        pytest.raises(Unauthorized),
    ):
        viewer.get("7a1f0a8e-0000-4000-8000-000000000000")

    rc, _, err = dtq("users", "create", "cli-operator", "--role", "operator", "--password",
                       "a-long-password", *data, remote=False)  # fmt: skip
    assert rc == 0, err
    users = dtq.json("users", "list", *data, remote=False)
    assert {"username": "cli-operator", "role": "operator"} in users
    with Client(shared_server.url) as operator:
        assert operator.login("cli-operator", "a-long-password")
        assert operator.dashboard()["total_tasks"] >= 0


async def test_backup_while_the_server_runs(shared_server: SharedServer, tmp_path: Path) -> None:
    """`dtq backup` copies the running server's data; a new server (here `serve()` in this
    process) opens the copy and has the same tasks."""
    async with AsyncClient(shared_server.url, api_key=shared_server.admin_key) as client:
        tasks = [await client.submit("Backed Up", {"i": i}, queue="cli-backup") for i in range(5)]
        await client.cancel(tasks[0].id)
        dest = tmp_path / "backup"

        data_dir = str(shared_server.server.data_dir)
        done = await trio.to_thread.run_sync(run_cli, "backup", str(dest), "--data-dir", data_dir)
        assert done.returncode == 0, done.stderr
        assert f"written to {dest}" in done.stdout
        after = await client.submit("After The Backup", queue="cli-backup")  # it carried on

    settings = Settings(host="127.0.0.1", port=0, data_dir=str(dest), durability=Durability.OS,
                        rate_limit_per_minute=0, rate_limit_per_hour=0)  # fmt: skip
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_S):
            host, port = await nursery.start(partial(serve, settings, shutdown_trigger=stop.wait))
        try:
            url = f"http://{host}:{port}"
            async with AsyncClient(url, api_key=shared_server.admin_key) as restored:
                for task in tasks:
                    got = await restored.get(task.id)
                    assert (got.name, got.payload) == ("Backed Up", task.payload)
                assert (await restored.get(tasks[0].id)).status == "cancelled"
                assert (await restored.get(tasks[1].id)).status == "pending"
                with pytest.raises(NotFound):
                    await restored.get(after.id)
        finally:
            stop.set()

    again = await trio.to_thread.run_sync(run_cli, "backup", str(dest), "--data-dir", data_dir)
    assert again.returncode == 1
    one_line_error(again.stderr)


def test_queues_commands_and_tasks_explain(dtq: InProcessCli, client: Client) -> None:
    task = client.submit("Queued", queue="cli-queues")
    listed = dtq.json("queues", "list")
    assert "cli-queues" in {q["name"] for q in listed}
    assert dtq.json("queues", "get", "cli-queues")["pending"] >= 1
    assert dtq.json("queues", "pause", "cli-queues")["paused"] is True
    explained = dtq.json("tasks", "explain", task.id)
    assert "queue_paused" in {r["code"] for r in explained["reasons"]}
    assert dtq.json("queues", "resume", "cli-queues")["paused"] is False
    info = dtq.json("queues", "set", "cli-queues", "--concurrency-limit", "2", "--rate-limit", "5")
    assert (info["concurrency_limit"], info["rate_limit_per_second"]) == (2, 5.0)
    info = dtq.json("queues", "set", "cli-queues", "--concurrency-limit", "none")
    assert (info["concurrency_limit"], info["rate_limit_per_second"]) == (None, 5.0)
    with pytest.raises(SystemExit) as exited:  # argparse refuses it before any request
        dtq("queues", "set", "cli-queues", "--concurrency-limit", "0")
    assert exited.value.code == 2
    assert dtq.json("queues", "purge", "cli-queues") == {"queue": "cli-queues", "purged": 1}
    rc, _, err = dtq("queues", "get", "no-such-queue")
    assert rc == 1 and "not found" in one_line_error(err)
