"""`dtq serve --store memory://`: the whole server on the in-memory store, over real HTTP, and
the refusals around it (an unknown scheme: exit 2; the banner says nothing survives)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from dtq.cli import main
from dtq.net.banner import banner_fields
from dtq.server import serve, store_problem
from dtq.settings import Settings

PASSWORD = "memory-store-password"


async def test_create_lease_complete_over_http(tmp_path: Path) -> None:
    settings = Settings(store="memory://", port=0, data_dir=str(tmp_path / "unused"),
                        admin_password=PASSWORD, rate_limit_per_minute=0,
                        rate_limit_per_hour=0)  # fmt: skip
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(serve, settings, shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}/api/v1") as http:
            login = await http.post("/auth/login", json={"username": "admin", "password": PASSWORD})
            assert login.status_code == 200, login.text
            http.headers["Authorization"] = f"Bearer {login.json()['token']}"
            created = await http.post("/tasks", json={"name": "hello", "payload": {"n": 1}})
            assert created.status_code == 201, created.text
            task_id = created.json()["data"]["id"]
            leased = await http.post("/tasks/lease", json={"worker_id": "w1", "wait": 1})
            assert leased.status_code == 200, leased.text
            [task] = leased.json()["data"]
            assert task["id"] == task_id
            done = await http.post(f"/tasks/{task_id}/complete",
                                   json={"lease_id": task["lease"]["id"], "result": {"ok": 1}})  # fmt: skip
            assert done.status_code == 200, done.text
            got = (await http.get(f"/tasks/{task_id}")).json()["data"]
            assert (got["status"], got["result"]) == ("completed", {"ok": 1})
            listed = (await http.get("/tasks", params={"status": "completed"})).json()
            assert [t["id"] for t in listed["data"]] == [task_id]
            board = (await http.get("/analytics/dashboard")).json()["data"]
            assert board["completed_tasks"] == 1
        stop.set()
    assert not (tmp_path / "unused").exists()  # nothing was written to disk


def test_the_banner_says_nothing_survives() -> None:
    fields = banner_fields(Settings(store="memory://"), url="http://127.0.0.1:5000", sign_in="x")
    assert "NOTHING SURVIVES A STOP" in fields["Store"]
    assert "Data dir" not in fields


@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://x", "memory:/", "lmdb"])
def test_an_unknown_store_is_refused(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert store_problem(Settings(store=url)) is not None
    assert main(["serve", "--store", url, "--port", "0"]) == 2
    assert "unknown store" in capsys.readouterr().err


def test_the_banner_names_the_database_without_its_password() -> None:
    url = "postgresql://dtq:s3cret@db.example:5432/dtq"
    fields = banner_fields(Settings(store=url), url="http://127.0.0.1:5000", sign_in="x")
    assert "postgresql://dtq:***@db.example:5432/dtq" in fields["Store"]
    assert "s3cret" not in fields["Store"] and "Data dir" not in fields


def test_known_stores() -> None:
    assert store_problem(Settings(store="")) is None
    assert store_problem(Settings(store="memory://")) is None
    assert store_problem(Settings(store="postgresql://u@h/db")) is None
    assert store_problem(Settings(store="postgres://u@h/db")) is None
