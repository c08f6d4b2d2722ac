"""What a user sees when `dtq serve` starts or cannot, and `dtq healthcheck`, as real processes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import (
    BOUND_S,
    REPO_ROOT,
    START_S,
    clean_environ,
    free_port,
    running_server,
    spawn_server,
)

pytestmark = pytest.mark.e2e


async def dtq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m dtq.cli ARGS` with this worktree's code, bounded; any exit code."""
    with trio.fail_after(START_S):
        return await trio.run_process(
            [sys.executable, "-m", "dtq.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_environ(env or {}),
            cwd=str(REPO_ROOT),
        )


async def test_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await dtq(
            "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "d")
        )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"dtq: port {port} on 127.0.0.1 is already in use; choose another with --port or DTQ_PORT"
    ]
    assert result.stdout == b""
    assert not (tmp_path / "d").exists()  # refused before the store was created


async def test_generated_password_is_in_a_0600_file_not_in_the_json_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # An empty DTQ_ADMIN_PASSWORD counts as unset: the first start generates one.
    async with spawn_server(data, env={"DTQ_ADMIN_PASSWORD": ""}) as server:
        password_file = data / "admin-password.txt"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        async with server.client() as client:
            response = await client.post(
                "/api/v1/auth/login", json={"username": "admin", "password": password}
            )
            assert response.status_code == 200, response.text
        log = server.log_text()
        assert password not in log
        events = {event["event"]: event for event in server.log_events()}
        assert events["admin_password_generated"]["password_file"] == str(password_file)
        started = events["server_started"]
        assert started["url"].startswith(server.url)
        assert started["docs"] == f"{server.url}/docs (Swagger UI), {server.url}/redoc (ReDoc)"
        assert started["store"].startswith("lmdb, durability fsync")
        assert started["data_dir"] == str(data.resolve())
        assert str(password_file) in started["sign_in"]
        await server.terminate()


async def test_banner_on_a_terminal_shows_the_password_once(tmp_path: Path) -> None:
    port = free_port()
    primary, secondary = os.openpty()  # stderr a terminal, as when a person runs `dtq serve`
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "dtq.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(tmp_path / "data")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
            env=clean_environ({}), cwd=str(REPO_ROOT),
        )  # fmt: skip
    finally:
        os.close(secondary)
    text = ""
    try:
        stream = trio.lowlevel.FdStream(primary)
        with trio.fail_after(START_S):
            while "Sign in" not in text or not text.endswith("\n"):
                chunk = await stream.receive_some(65536)
                assert chunk, f"dtq serve closed its terminal; it wrote:\n{text}"
                text += chunk.decode(errors="replace")
    finally:
        process.kill()
        with trio.fail_after(BOUND_S):
            await process.wait()
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert f"http://127.0.0.1:{port}/docs" in lines["Docs"]
    assert f"http://127.0.0.1:{port}/redoc" in lines["Docs"]
    assert "lmdb, durability fsync" in lines["Store"]
    assert str((tmp_path / "data").resolve()) in lines["Data"]
    password = lines["Sign"].split("admin / ", 1)[1].split()[0]
    assert text.count(password) == 1
    assert not (tmp_path / "data" / "admin-password.txt").exists()


async def test_healthcheck_against_a_live_server_and_none(tmp_path: Path) -> None:
    async with spawn_server(tmp_path / "data") as server:
        # The port from the environment, as in the Docker image.
        up = await dtq("healthcheck", env={"DTQ_PORT": str(server.port)})
        assert up.returncode == 0, up.stderr
        # A server bound to all interfaces is checked on the loopback address.
        up = await dtq("healthcheck", "--host", "0.0.0.0", "--port", str(server.port))
        assert up.returncode == 0, up.stderr
        await server.terminate()
    down = await dtq("healthcheck", "--port", str(server.port), "--timeout", "2")
    assert down.returncode == 1
    assert down.stderr.decode().startswith(f"dtq healthcheck: {server.url}/health: ")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the certificate")
async def test_healthcheck_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    with trio.fail_after(START_S):
        await trio.run_process(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=dtq.example.com", "-keyout", str(key), "-out", str(cert)],
            capture_stdout=True, capture_stderr=True,
        )  # fmt: skip
    async with running_server(tmp_path / "data", certfile=str(cert), keyfile=str(key)) as server:
        env = {"DTQ_PORT": str(server.port), "DTQ_CERTFILE": str(cert)}
        up = await dtq("healthcheck", env=env)
        assert up.returncode == 0, up.stderr
        # Plain http to a TLS port is not healthy.
        plain = await dtq("healthcheck", "--port", str(server.port), "--timeout", "2")
        assert plain.returncode == 1
        with pytest.raises(httpx.HTTPError):  # and it really is TLS
            async with httpx.AsyncClient(timeout=2) as client:
                await client.get(f"http://127.0.0.1:{server.port}/health")
