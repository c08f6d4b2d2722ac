"""Day one with the command line: log in, get a key, use it; no data directory needed.

Every command runs as its own process (`python -m dtq.cli`), from an empty folder, with HOME and
XDG_CONFIG_HOME in a temporary directory and the password on standard input, as a user or a
script would run it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dtq import Client, Forbidden

from .conftest import SharedServer
from .procs import ADMIN_PASSWORD, BOUND_S, CLI_TIMEOUT_S, clean_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@dataclass
class User:
    """A person at a shell: their own HOME, config directory and current folder."""

    home: Path
    cwd: Path
    xdg: bool = True

    def env(self, **extra: str) -> dict[str, str]:
        env = clean_env(HOME=str(self.home), PYTHONPATH=str(REPO), **extra)
        env.pop("XDG_CONFIG_HOME", None)
        if self.xdg:
            env["XDG_CONFIG_HOME"] = str(self.home / "cfg")
        return env

    @property
    def login_file(self) -> Path:
        base = self.home / "cfg" if self.xdg else self.home / ".config"
        return base / "dtq" / "login.json"

    def run(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dtq.cli", *args],
            input=stdin, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
            env=self.env(**env), cwd=self.cwd,
        )  # fmt: skip


@pytest.fixture
def user(tmp_path: Path) -> User:
    (tmp_path / "home").mkdir()
    (tmp_path / "empty").mkdir()
    return User(tmp_path / "home", tmp_path / "empty")


def test_login_then_a_key_from_an_empty_folder(shared_server: SharedServer, user: User) -> None:
    url = shared_server.url
    done = user.run("login", "--url", url, "--username", "admin", stdin=ADMIN_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert f"Logged in to {url} as admin (admin)" in done.stdout
    assert stat.S_IMODE(user.login_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(user.login_file.parent.stat().st_mode) == 0o700
    assert ADMIN_PASSWORD not in user.login_file.read_text()

    # No --url, no --data-dir: the saved login says where and who.
    done = user.run("keys", "create", "--role", "worker", "--name", "day-one", "--json")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert (made["role"], made["name"]) == ("worker", "day-one")
    assert list(user.cwd.iterdir()) == []  # no ./dtq-data, nothing at all

    with Client(url, api_key=made["key"]) as worker:
        task = worker.submit("Day One", {"n": 1}, queue="cli-login")
        with pytest.raises(Forbidden) as refused:
            worker.cancel(task.id)
    assert "(roles that do: admin, operator)" in str(refused.value)

    done = user.run("keys", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert {"key_id": made["key_id"], "name": "day-one", "role": "worker",
            "created_by": "admin"} in json.loads(done.stdout)  # fmt: skip

    # On a terminal, the key comes with how to use it.
    out = on_a_terminal(user, "keys", "create", "--role", "viewer", "--name", "shown")
    assert "export DTQ_API_KEY=dtq_" in out and f"export DTQ_URL={url}" in out
    assert "X-API-Key: dtq_" in out

    done = user.run("tasks", "list", "--queue", "cli-login", "--json")
    assert done.returncode == 0, done.stderr
    assert [t["id"] for t in json.loads(done.stdout)] == [task.id]

    done = user.run("logout")
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"Logged out of {url} (the saved token is deleted).",
    )
    assert not user.login_file.exists()
    done = user.run("keys", "list")
    assert done.returncode == 1
    assert "no server to talk to: run `dtq login --url URL`" in done.stderr
    assert list(user.cwd.iterdir()) == []


def test_login_without_xdg_uses_dot_config_and_a_bad_password_saves_nothing(
    shared_server: SharedServer, tmp_path: Path
) -> None:
    (tmp_path / "home").mkdir()
    user = User(tmp_path / "home", tmp_path, xdg=False)
    done = user.run("login", "--url", shared_server.url, stdin="wrong-password\n")
    assert done.returncode == 1
    assert done.stderr.strip() == "dtq: error: Invalid username or password"
    assert not user.login_file.exists()

    done = user.run("login", stdin=ADMIN_PASSWORD + "\n", DTQ_URL=shared_server.url)
    assert done.returncode == 0, done.stderr
    assert user.login_file == tmp_path / "home" / ".config" / "dtq" / "login.json"
    assert stat.S_IMODE(user.login_file.stat().st_mode) == 0o600

    done = user.run("users", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert {"username": "admin", "role": "admin"} in json.loads(done.stdout)


def test_a_data_dir_that_is_not_there_is_refused(user: User) -> None:
    for args in (
        ("keys", "create", "--role", "worker", "--data-dir", "./nothing"),
        ("keys", "list", "--data-dir", "./nothing"),
        ("users", "set-password", "admin", "--data-dir", "./nothing", "--password", "x" * 12),
    ):
        done = user.run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("dtq: error: --data-dir: no dtq data in './nothing'"), args
        assert list(user.cwd.iterdir()) == [], args  # nothing created

    done = user.run("keys", "create")  # no silent default role
    assert done.returncode == 2
    assert "the following arguments are required: --role" in done.stderr


def test_set_password_through_the_api_and_on_the_data_directory(
    shared_server: SharedServer, user: User
) -> None:
    url = shared_server.url
    key = ["--url", url, "--api-key", shared_server.admin_key]
    done = user.run(
        "users", "create", "pw-user", "--role", "viewer", *key, stdin="first-password\n"
    )
    assert done.returncode == 0, done.stderr

    done = user.run("users", "set-password", "pw-user", *key, stdin="second-password\n")
    assert (done.returncode, done.stdout.strip()) == (0, "password of pw-user changed"), done.stderr
    assert can_log_in(url, "pw-user", "second-password")
    assert not can_log_in(url, "pw-user", "first-password")

    # Offline, beside the running server: LMDB serialises the two writers.
    data = str(shared_server.server.data_dir)
    done = user.run(
        "users", "set-password", "pw-user", "--data-dir", data, stdin="third-password\n"
    )
    assert done.returncode == 0, done.stderr
    assert can_log_in(url, "pw-user", "third-password")  # the server sees it at once

    done = user.run("users", "set-password", "nobody", *key, stdin="third-password\n")
    assert done.returncode == 1
    assert done.stderr.strip() == "dtq: error: user 'nobody' not found"


def test_a_failed_task_on_a_terminal(shared_server: SharedServer, user: User) -> None:
    with httpx.Client(base_url=shared_server.url, timeout=BOUND_S) as http:
        auth = {"X-API-Key": shared_server.admin_key}
        made = http.post("/api/v1/tasks", json={"name": "Shown", "queue": "cli-tty"}, headers=auth)
        assert made.status_code == 201, made.text
        lease = {"worker_id": "tty-w", "queues": ["cli-tty"], "wait": 5}
        (task,) = http.post("/api/v1/tasks/lease", json=lease, headers=auth).json()["data"]
        trace = 'Traceback (most recent call last):\n  File "jobs.py", line 3\nKeyError: "x"\n'
        error = {"message": "missing x", "type": "KeyError", "traceback": trace}
        failed = http.post(f"/api/v1/tasks/{task['id']}/fail", headers=auth,
                           json={"lease_id": task["lease"]["id"], "error": error, "retry": False})  # fmt: skip
        assert failed.status_code == 200, failed.text

    out = on_a_terminal(user, "tasks", "get", task["id"], "--url", shared_server.url,
                        "--api-key", shared_server.admin_key)  # fmt: skip
    lines = out.splitlines()
    assert lines[0].split() == ["id", task["id"]]
    assert ["status", "failed"] in [line.split() for line in lines]
    assert ["error", "KeyError:", "missing", "x"] in [line.split() for line in lines]
    assert lines[-4:] == ["traceback:", "  Traceback (most recent call last):",
                          '    File "jobs.py", line 3', '  KeyError: "x"']  # fmt: skip


def can_log_in(url: str, username: str, password: str) -> bool:
    body = {"username": username, "password": password}
    return httpx.post(f"{url}/api/v1/auth/login", json=body, timeout=BOUND_S).status_code == 200


def on_a_terminal(user: User, *args: str) -> str:
    """`dtq ARGS` with its standard output on a pseudo-terminal; what it printed there."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dtq.cli", *args], stdin=subprocess.DEVNULL, stdout=follower,
            stderr=subprocess.PIPE, env=user.env(COLUMNS="200"), cwd=user.cwd,
        )  # fmt: skip
        os.close(follower)
        follower = -1
        chunks = []
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        rc = proc.wait(timeout=BOUND_S)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert rc == 0, err
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
