"""A throwaway PostgreSQL cluster for the tests that need one (initdb in a temp dir, as an
unprivileged user, on a free port on 127.0.0.1), or `DTQ_TEST_PG_URL`. Skips outside CI when
no PostgreSQL binaries are found; under `CI=true` that is a failure."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from cluster()


def cluster() -> Iterator[str]:
    """The URL of a throwaway cluster's `postgres` database while the generator runs."""
    if url := os.environ.get("DTQ_TEST_PG_URL"):
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are required under CI")
        pytest.skip("no PostgreSQL binaries (initdb) found")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="dtq-pg-"))
    data = root / "data"
    os.chmod(root, 0o777)
    if as_user:
        shutil.chown(root, "postgres")
    port = _free_port()
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "dtq",
                    "--auth=trust", "-E", "UTF8"], **run)  # type: ignore[call-overload]  # fmt: skip
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                    "-l", str(root / "log"), "start"], **run)  # type: ignore[call-overload]  # fmt: skip
    try:
        yield f"postgresql://dtq@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
