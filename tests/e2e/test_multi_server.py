"""Several servers, one queue: two real `serve()` on 127.0.0.1 sharing one store, real
clients and workers with both URLs, one server stopped dead mid-drain.

The store is a shared memory store (`MemoryStore(shared=True)`, one handle per server: what
two servers on one database look like from core down), so these run everywhere in seconds.
They cover everything above the store: claims and fencing through the port, cross-server
wake-ups, event relay, shared accounts, the client's failover.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from dtq import AsyncClient, Worker
from dtq.server import serve
from dtq.settings import Settings
from dtq.storage.memory import MemoryStore

from .conftest import ADMIN_PASSWORD, BOUND_S, HTTP_TIMEOUT, START_S, bearer, e2e_settings, login


class Server:
    def __init__(self, url: str, scope: trio.CancelScope, stop: trio.Event) -> None:
        self.url = url
        self.scope = scope  # cancelled: the server dies (no graceful shutdown)
        self.stop = stop

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=HTTP_TIMEOUT)


@asynccontextmanager
async def two_servers(tmp_path: Path, **overrides: Any) -> AsyncIterator[list[Server]]:
    first = MemoryStore(shared=True)
    stores = [first, first.connect_another()]
    servers: list[Server] = []
    async with trio.open_nursery() as nursery:
        for i, store in enumerate(stores):
            settings: Settings = e2e_settings(tmp_path / f"s{i}", store="memory://", **overrides)
            stop = trio.Event()
            scope = trio.CancelScope()

            async def run(
                task_status: trio.TaskStatus[tuple[str, int]],
                settings: Settings = settings,
                store: MemoryStore = store,
                stop: trio.Event = stop,
                scope: trio.CancelScope = scope,
            ) -> None:
                with scope:
                    await serve(settings, task_status=task_status, shutdown_trigger=stop.wait,
                                store=store)  # fmt: skip

            with trio.fail_after(START_S):
                host, port = await nursery.start(run)
            servers.append(Server(f"http://{host}:{port}", scope, stop))
        try:
            yield servers
        finally:
            for server in servers:
                server.stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + BOUND_S * 2


async def worker_key(server: Server) -> str:
    async with server.client() as c:
        token = await login(c)
        reply = await c.post("/api/v1/api-keys", json={"name": "w", "role": "worker"},
                             headers=bearer(token))  # fmt: skip
        assert reply.status_code == 201, reply.text
        return str(reply.json()["data"]["key"])


async def test_a_token_and_a_key_from_one_server_work_on_the_other(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b):
        key = await worker_key(a)
        async with a.client() as ca, b.client() as cb:
            token = await login(ca, ADMIN_PASSWORD)
            assert (await cb.get("/api/v1/tasks", headers=bearer(token))).status_code == 200
            assert (await cb.get("/api/v1/tasks", headers={"X-API-Key": key})).status_code == 200
            assert (await cb.get("/ready")).status_code == 200


async def test_failed_logins_count_across_servers(tmp_path: Path) -> None:
    """The login throttle's records are the store's: nine wrong passwords spread over two
    servers are nine, the tenth (at either) locks the account at both, and while it is locked
    even the right password is refused, before it is checked."""
    async with two_servers(tmp_path) as (a, b), a.client() as ca, b.client() as cb:
        for i in range(10):
            wrong = await (ca, cb)[i % 2].post(
                "/api/v1/auth/login", json={"username": "admin", "password": f"guess-{i}"}
            )
            assert wrong.status_code == 401, wrong.text
        for c in (ca, cb):
            locked = await c.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert locked.status_code == 429, locked.text
            assert locked.json()["error"]["details"]["reason"] == "login_throttled"
            assert int(locked.headers["Retry-After"]) >= 1


async def test_long_poll_on_a_wakes_for_a_create_on_b_and_fencing_holds_across(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path, shared_poll_s=30.0) as (a, b):  # the signal, not the poll
        key = {"X-API-Key": await worker_key(a)}
        async with a.client() as ca, b.client() as cb:
            got: list[Any] = []

            async def poll() -> None:
                reply = await ca.post("/api/v1/tasks/lease", headers=key,
                                      json={"worker_id": "w", "wait": 20})  # fmt: skip
                got.extend(reply.json()["data"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.testing.wait_all_tasks_blocked()
                with trio.fail_after(BOUND_S):
                    made = await cb.post("/api/v1/tasks", headers=key, json={"name": "job"})
                    assert made.status_code == 201
            task = got[0]
            assert task["id"] == made.json()["data"]["id"]
            path = f"/api/v1/tasks/{task['id']}/complete"
            stale = await cb.post(path, headers=key, json={"lease_id": "0" * 32})
            assert stale.status_code == 409
            done = await cb.post(path, headers=key, json={"lease_id": task["lease"]["id"],
                                                          "result": {"ok": 1}})  # fmt: skip
            assert done.status_code == 200, done.text  # leased on A, completed through B
            again = await ca.post(path, headers=key, json={"lease_id": task["lease"]["id"]})
            assert again.status_code == 409
            assert (await ca.get(f"/api/v1/tasks/{task['id']}", headers=key)).json()["data"][
                "result"
            ] == {"ok": 1}


async def _drain(
    tmp_path: Path, tasks: int, kill_a_after: int | None
) -> tuple[Counter[int], dict[str, Any]]:
    seen: Counter[int] = Counter()
    async with two_servers(tmp_path, lease_default_s=3.0) as (a, b):
        key = await worker_key(a)
        workers = []
        for urls in ([a.url, b.url], [b.url, a.url]):
            w = Worker(urls, api_key=key, concurrency=100, lease_seconds=3.0,
                       poll_wait_s=2.0, heartbeat_interval_s=1.0)  # fmt: skip

            @w.task("job")
            async def job(payload: dict[str, int]) -> int:
                seen[payload["i"]] += 1
                return payload["i"]

            workers.append(w)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for w in workers:
                await nursery.start(w.serve, stop)
            async with b.client() as cb:
                token = await login(cb)
            async with AsyncClient([b.url, a.url], token=token) as producer:
                for start in range(0, tasks, 500):
                    chunk = [{"name": "job", "payload": {"i": i}}
                             for i in range(start, min(start + 500, tasks))]  # fmt: skip
                    made = await producer.submit_many(chunk)
                    assert len(made) == len(chunk)  # acknowledged: must all be there at the end
                    if kill_a_after is not None and start + 500 >= kill_a_after:
                        a.scope.cancel()  # server A dies mid-drain, with leases out
                        kill_a_after = None
                with trio.fail_after(120):
                    while True:
                        board = await producer.dashboard()
                        if board["completed_tasks"] == tasks:
                            break
                        await trio.sleep(0.2)
            stop.set()
    return seen, board


async def test_ten_thousand_tasks_through_two_servers_complete_once_each(tmp_path: Path) -> None:
    seen, board = await _drain(tmp_path, 10_000, kill_a_after=None)
    assert sorted(seen) == list(range(10_000))  # none lost
    assert set(seen.values()) == {1}  # none run twice (no lease ran out)
    assert board["total_tasks"] == 10_000 and board["pending_tasks"] == 0


async def test_a_server_dying_mid_drain_loses_nothing(tmp_path: Path) -> None:
    seen, board = await _drain(tmp_path, 3_000, kill_a_after=1_000)
    assert sorted(seen) == list(range(3_000))  # every acknowledged task ran, through B
    assert board["total_tasks"] == 3_000 and board["completed_tasks"] == 3_000
    # at least once: a task whose result was lost with A ran again after its lease ran out
    assert all(n >= 1 for n in seen.values())
