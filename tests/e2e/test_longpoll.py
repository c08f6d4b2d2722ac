"""Long-poll leasing over real sockets: `POST /api/v1/tasks/lease` with `wait`.

The server runs in process, so `trio.testing.wait_all_tasks_blocked()` tells when a lease
request has reached its resting point (parked in the dispatcher) before the test acts.
Durations are bounds ("long before the 10 s wait"), not speed claims.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from .conftest import BOUND_S, InProcessServer, bearer, login, raw_connection, running_server

pytestmark = pytest.mark.e2e


async def lease(
    client: httpx.AsyncClient, token: str, worker_id: str, **body: Any
) -> tuple[list[dict[str, Any]], float]:
    """One lease request; returns the leased tasks and how long the request took."""
    start = trio.current_time()
    response = await client.post(
        "/api/v1/tasks/lease", json={"worker_id": worker_id, **body}, headers=bearer(token)
    )
    took = trio.current_time() - start
    assert response.status_code == 200, response.text
    tasks = response.json()["data"]
    assert isinstance(tasks, list)
    return tasks, took


async def create(client: httpx.AsyncClient, token: str, name: str) -> dict[str, Any]:
    return await create_with(client, token, {"name": name})


async def create_with(client: httpx.AsyncClient, token: str, body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/tasks", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()["data"]
    return task


async def test_waiting_lease_is_answered_when_another_client_creates_a_task(
    server: InProcessServer,
) -> None:
    async with server.client() as worker, server.client() as producer:
        token = await login(producer)
        got: list[tuple[list[dict[str, Any]], float]] = []
        with trio.fail_after(BOUND_S * 3):
            async with trio.open_nursery() as nursery:

                async def wait_for_work() -> None:
                    got.append(await lease(worker, token, "w1", wait=10, lease_seconds=30))

                nursery.start_soon(wait_for_work)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # parked on the server
                assert not got, "the lease returned before any task existed"
                created = await create(producer, token, "wake-up")
        tasks, took = got[0]
        assert [t["id"] for t in tasks] == [created["id"]]
        assert tasks[0]["status"] == "running"
        assert tasks[0]["worker_id"] == "w1"
        assert tasks[0]["lease"]["id"]
        assert took < 5.0, f"a 10 s long-poll took {took:.2f} s to see a new task"


async def test_lease_with_short_wait_returns_empty_list_after_the_wait(
    server: InProcessServer,
) -> None:
    async with server.client() as client:
        token = await login(client)
        with trio.fail_after(BOUND_S):
            tasks, took = await lease(client, token, "w1", wait=0.5)
        assert tasks == []
        assert 0.45 <= took < 5.0, f"wait=0.5 answered after {took:.2f} s"
        with trio.fail_after(BOUND_S):
            tasks, took = await lease(client, token, "w1", wait=0)
        assert tasks == []


async def test_two_waiting_workers_get_one_task_each(server: InProcessServer) -> None:
    clients = [server.client(), server.client(), server.client()]
    async with clients[0] as w1, clients[1] as w2, clients[2] as producer:
        token = await login(producer)
        got: dict[str, list[dict[str, Any]]] = {}
        with trio.fail_after(BOUND_S * 3):
            async with trio.open_nursery() as nursery:

                async def wait_for_work(client: httpx.AsyncClient, worker_id: str) -> None:
                    got[worker_id], _ = await lease(client, token, worker_id, wait=10)

                nursery.start_soon(wait_for_work, w1, "w1")
                nursery.start_soon(wait_for_work, w2, "w2")
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert not got
                response = await producer.post(
                    "/api/v1/tasks/batch",
                    json={"tasks": [{"name": "one"}, {"name": "two"}]},
                    headers=bearer(token),
                )
                assert response.status_code == 201, response.text
                created = {t["id"] for t in response.json()["data"]}
        assert len(got["w1"]) == 1
        assert len(got["w2"]) == 1
        assert {got["w1"][0]["id"], got["w2"][0]["id"]} == created
        assert got["w1"][0]["worker_id"] == "w1"
        assert got["w2"][0]["worker_id"] == "w2"


async def test_waiting_lease_is_answered_with_empty_list_at_shutdown(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data", graceful_timeout_s=30.0) as server:
        async with server.client() as client:
            token = await login(client)
            got: list[tuple[list[dict[str, Any]], float]] = []
            async with trio.open_nursery() as nursery:

                async def wait_for_work() -> None:
                    got.append(await lease(client, token, "w1", wait=30))

                nursery.start_soon(wait_for_work)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert not got
                # graceful_timeout_s=30: a quick stop means the long-poll answered, not that
                # hypercorn gave up on it.
                await server.shut_down(within_s=BOUND_S)
        tasks, took = got[0]
        assert tasks == []
        assert took < 5.0


async def test_long_poll_whose_client_went_away_does_not_swallow_a_task(
    server: InProcessServer,
) -> None:
    async with server.client() as worker, server.client() as producer:
        token = await login(producer)
        async with raw_connection(server.port) as gone:
            await gone.send_request(
                "POST", "/api/v1/tasks/lease", {"worker_id": "gone", "wait": 30}, bearer(token)
            )
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # parked
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the server saw the close

        got: list[tuple[list[dict[str, Any]], float]] = []
        with trio.fail_after(BOUND_S * 3):
            async with trio.open_nursery() as nursery:

                async def wait_for_work() -> None:
                    got.append(await lease(worker, token, "alive", wait=10))

                nursery.start_soon(wait_for_work)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                created = await create(producer, token, "for-the-living")
        tasks, took = got[0]
        assert [t["id"] for t in tasks] == [created["id"]], "the task went to a closed long-poll"
        assert tasks[0]["worker_id"] == "alive"
        assert took < 5.0


async def test_waiting_lease_gets_a_delayed_task_when_it_becomes_due(
    server: InProcessServer,
) -> None:
    async with server.client() as client:
        token = await login(client)
        response = await client.post(
            "/api/v1/tasks", json={"name": "later", "delay": 0.5}, headers=bearer(token)
        )
        assert response.status_code == 201, response.text
        with trio.fail_after(BOUND_S * 3):
            tasks, took = await lease(client, token, "w1", wait=10)
        assert [t["id"] for t in tasks] == [response.json()["data"]["id"]]
        assert took < 5.0


async def test_waiting_lease_gets_a_task_whose_lease_expired(server: InProcessServer) -> None:
    async with server.client() as first, server.client() as second:
        token = await login(first)
        created = await create_with(first, token, {"name": "expiring", "retry_count": 1})
        with trio.fail_after(BOUND_S):
            tasks, _ = await lease(first, token, "w-slow", wait=0, lease_seconds=0.5)
        assert [t["id"] for t in tasks] == [created["id"]]
        with trio.fail_after(BOUND_S * 3):
            tasks, took = await lease(second, token, "w-next", wait=10)
        assert [t["id"] for t in tasks] == [created["id"]]
        assert tasks[0]["worker_id"] == "w-next"
        assert tasks[0]["attempts"] == 2
        assert took < 5.0
