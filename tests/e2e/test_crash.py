"""`kill -9` under load: every acknowledged write survives, and so do leases.

Producers create tasks (single and batch) as fast as they can and record an id only once its
201 has arrived. After a few hundred acknowledgements the server is killed with SIGKILL while
requests are in flight, restarted on the same data directory, and every acknowledged task must
be there. DESIGN.md: both durability modes survive a process crash.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import BOUND_S, bearer, login, spawn_server

pytestmark = pytest.mark.e2e

PRODUCERS = 6
ACKED_BEFORE_KILL = 300
BATCH_SIZE = 10


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_acknowledged_tasks_and_leases_survive_kill_9(
    tmp_path: Path, durability: str
) -> None:
    data_dir = tmp_path / "data"
    env = {"DTQ_DURABILITY": durability, "DTQ_RATE_LIMIT_PER_MINUTE": "0",
           "DTQ_RATE_LIMIT_PER_HOUR": "0"}  # fmt: skip
    acked: list[str] = []
    enough = trio.Event()

    async with spawn_server(data_dir, env) as server:
        async with server.client() as setup:
            token = await login(setup)
            headers = bearer(token)
            response = await setup.post(
                "/api/v1/tasks",
                json={"name": "crash-lease", "retry_count": 3},
                headers=headers,
            )
            assert response.status_code == 201, response.text
            lease_task_id = response.json()["data"]["id"]

        async def produce(n: int) -> None:
            async with server.client() as client:
                for i in range(10_000):
                    if i % 4 == 3:
                        path = "/api/v1/tasks/batch"
                        body: Any = {
                            "tasks": [{"name": f"p{n}-{i}-{j}"} for j in range(BATCH_SIZE)]
                        }
                    else:
                        path, body = "/api/v1/tasks", {"name": f"p{n}-{i}"}
                    try:
                        response = await client.post(path, json=body, headers=headers)
                    except httpx.TransportError:
                        return  # the server is gone: stop producing
                    assert response.status_code == 201, response.text
                    data = response.json()["data"]
                    ids = [t["id"] for t in data] if isinstance(data, list) else [data["id"]]
                    acked.extend(ids)  # only now: the 201 has fully arrived
                    if len(acked) >= ACKED_BEFORE_KILL:
                        enough.set()

        with trio.fail_after(BOUND_S * 6):
            async with trio.open_nursery() as nursery:
                for n in range(PRODUCERS):
                    nursery.start_soon(produce, n)
                await enough.wait()
                # Lease a task just before the crash (the producers are still running), so the
                # lease is live when the process dies.
                async with server.client() as worker:
                    response = await worker.post(
                        "/api/v1/tasks/lease",
                        json={"worker_id": "w-crash", "names": ["crash-lease"], "wait": 0,
                              "lease_seconds": 2},
                        headers=headers,
                    )  # fmt: skip
                assert response.status_code == 200, response.text
                [leased] = response.json()["data"]
                assert leased["id"] == lease_task_id
                old_lease_id = leased["lease"]["id"]
                returncode = await server.kill_9()
        assert returncode == -9
        acked_count = len(acked)
        assert acked_count >= ACKED_BEFORE_KILL
        assert len(set(acked)) == acked_count

    restarted_at = time.time()  # before the restart: its lease grace starts later than this
    async with spawn_server(data_dir, env) as restarted, restarted.client() as client:
        # The JWT secret is kept in the data directory: a token from before the crash still works.
        missing: list[tuple[str, int]] = []

        async def check(ids: list[str]) -> None:
            async with restarted.client() as checker:
                for task_id in ids:
                    r = await checker.get(f"/api/v1/tasks/{task_id}", headers=headers)
                    if r.status_code != 200:
                        missing.append((task_id, r.status_code))

        with trio.fail_after(BOUND_S * 4):
            async with trio.open_nursery() as nursery:
                for k in range(4):
                    nursery.start_soon(check, acked[k::4])
        assert not missing, (
            f"{len(missing)} of {acked_count} acknowledged tasks lost: {missing[:5]}"
        )

        dashboard = (await client.get("/api/v1/analytics/dashboard", headers=headers)).json()
        assert dashboard["data"]["total_tasks"] >= acked_count + 1  # + the leased one

        await check_lease_survived(
            client, headers, lease_task_id, old_lease_id, leased, restarted_at
        )

        # The ready index survived with the tasks: every acknowledged task is dispatched again.
        dispatched: list[str] = []
        with trio.fail_after(BOUND_S * 4):
            for _ in range(acked_count // 100 + 20):
                response = await client.post(
                    "/api/v1/tasks/lease",
                    json={"worker_id": "w-drain", "max_tasks": 100, "wait": 0},
                    headers=headers,
                )
                assert response.status_code == 200, response.text
                batch = [t["id"] for t in response.json()["data"]]
                if not batch:
                    break
                dispatched += batch
        assert len(dispatched) == len(set(dispatched)), "a task was leased twice"
        never = set(acked) - set(dispatched)
        assert not never, f"{len(never)} acknowledged tasks are stored but never dispatched"


async def check_lease_survived(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    task_id: str,
    old_lease_id: str,
    leased: dict[str, Any],
    restarted_at: float,
) -> None:
    """The lease granted before the crash is in force again for its own length from the
    restart (a worker that kept running could still report), then the task is leasable again
    without having used a retry, and the old lease is fenced off."""
    lease_s = 2.0
    expires_at = datetime.fromisoformat(leased["lease"]["expires_at"].replace("Z", "+00:00"))
    task = (await client.get(f"/api/v1/tasks/{task_id}", headers=headers)).json()["data"]
    if task["status"] == "running":
        assert "id" not in task["lease"]  # the lease id is shown to its holder only
        renewed = datetime.fromisoformat(task["lease"]["expires_at"].replace("Z", "+00:00"))
        assert renewed.timestamp() >= restarted_at + lease_s - 0.05
        assert renewed >= expires_at

    with trio.fail_after(BOUND_S * 2):
        response = await client.post(
            "/api/v1/tasks/lease",
            json={"worker_id": "w-after", "names": ["crash-lease"], "wait": 10,
                  "lease_seconds": 30},
            headers=headers,
        )  # fmt: skip
    assert response.status_code == 200, response.text
    tasks = response.json()["data"]
    assert [t["id"] for t in tasks] == [task_id], "the crashed lease never expired"
    again = tasks[0]
    assert time.time() >= restarted_at + lease_s - 0.05, "re-leased before the grace ran out"
    assert again["lease"]["id"] != old_lease_id
    assert again["worker_id"] == "w-after"
    assert again["attempts"] == 2 and again["deliveries"] == 2
    assert again["error"]["type"] == "lease_expired"

    stale = await client.post(
        f"/api/v1/tasks/{task_id}/complete", json={"lease_id": old_lease_id}, headers=headers
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["error"]["code"] == "CONFLICT"
    done = await client.post(
        f"/api/v1/tasks/{task_id}/complete",
        json={"lease_id": again["lease"]["id"], "result": {"ok": True}},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    assert done.json()["data"]["status"] == "completed"
