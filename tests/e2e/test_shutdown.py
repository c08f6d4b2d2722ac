"""Connection life cycle: graceful shutdown of `dtq serve` on SIGTERM, and keep-alive.

The SIGTERM test runs the real command in a child process with an idle keep-alive connection,
a long-poll in flight and an open WebSocket. `graceful_timeout_s` is set far above the bound the test allows, so a
quick exit shows that the idle connection was closed and the long-poll answered at once
(stack-findings trap 1), not that hypercorn waited out its grace period.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from .conftest import (
    BOUND_S,
    InProcessServer,
    bearer,
    login,
    raw_connection,
    raw_websocket,
    running_server,
    spawn_server,
    wait_until_server_has_read,
)

pytestmark = pytest.mark.e2e


async def test_sigterm_answers_long_poll_closes_idle_connection_and_exits_0(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = {"DTQ_GRACEFUL_TIMEOUT_S": "60", "DTQ_KEEP_ALIVE_TIMEOUT_S": "60"}
    async with spawn_server(data_dir, env) as server:
        async with server.client() as client:
            token = await login(client)
            response = await client.post(
                "/api/v1/tasks/batch",
                json={"tasks": [{"name": f"durable-{i}", "payload": {"i": i}} for i in range(5)]},
                headers=bearer(token),
            )
            assert response.status_code == 201, response.text
            created = [t["id"] for t in response.json()["data"]]

        async with (
            raw_connection(server.port) as idle,
            raw_connection(server.port) as poll,
            raw_websocket(server.port, f"/ws/tasks?token={token}") as ws,
        ):
            with trio.fail_after(BOUND_S):
                status, _ = await idle.request("GET", "/health")
                assert status == 200  # now idle, kept alive for up to 60 s
                await poll.send_request(
                    "POST",
                    "/api/v1/tasks/lease",
                    {"worker_id": "w-shutdown", "names": ["never-created"], "wait": 30},
                    bearer(token),
                )
                await wait_until_server_has_read(server.port, poll.local_port)

            start = trio.current_time()
            returncode = await server.terminate(within_s=BOUND_S)
            took = trio.current_time() - start
            assert returncode == 0, server.log_text()
            assert took < BOUND_S

            with trio.fail_after(BOUND_S):
                status, body = await poll.read_response()
                assert status == 200, body
                assert json.loads(body)["data"] == []
                await idle.wait_closed_by_server()
                assert await ws.wait_closed_by_server() == 1001  # going away

        events = server.log_events()
        lines = [line for line in server.log_text().splitlines() if line.strip()]
        assert len(events) == len(lines), "DTQ_LOG_FORMAT=json: every log line is a JSON object"
        names = [e.get("event") for e in events]
        assert names.index("shutting down") < names.index("stopped")
        assert any(
            (e.get("event"), e.get("path"), e.get("status"))
            == ("request", "/api/v1/tasks/lease", 200)
            for e in events
        ), "the long-poll answered during shutdown was not logged"

    async with spawn_server(data_dir) as restarted, restarted.client() as client:
        # The token from before the restart is still good (the JWT secret is in the data dir).
        for i, task_id in enumerate(created):
            response = await client.get(f"/api/v1/tasks/{task_id}", headers=bearer(token))
            assert response.status_code == 200, response.text
            task = response.json()["data"]
            assert (task["name"], task["payload"], task["status"]) == (
                f"durable-{i}",
                {"i": i},
                "pending",
            )
        # ... and dispatched again, in their original order (FIFO within a priority).
        response = await client.post(
            "/api/v1/tasks/lease",
            json={"worker_id": "w-restarted", "max_tasks": 10, "wait": 0},
            headers=bearer(token),
        )
        assert response.status_code == 200, response.text
        assert [t["id"] for t in response.json()["data"]] == created


async def test_keep_alive_one_connection_serves_200_sequential_requests(
    server: InProcessServer,
) -> None:
    async with server.client() as client:
        token = await login(client)
        local_ports = set()
        with trio.fail_after(BOUND_S * 4):
            for i in range(200):
                path = "/health" if i % 2 else "/api/v1/tasks?limit=1"
                response = await client.get(path, headers=bearer(token))
                assert response.status_code == 200, response.text
                stream = response.extensions["network_stream"]
                local_ports.add(stream.get_extra_info("client_addr")[1])
        assert len(local_ports) == 1, f"{len(local_ports)} connections for 200 requests"


async def test_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "data", keep_alive_timeout_s=0.5) as server,
        raw_connection(server.port) as connection,
    ):
        with trio.fail_after(BOUND_S):
            status, _ = await connection.request("GET", "/health")
            assert status == 200
            idle_since = trio.current_time()
            await connection.wait_closed_by_server()
        idle_for = trio.current_time() - idle_since
        # The server's 0.5 s timer starts as it sends the response, a moment before it is read.
        assert idle_for >= 0.25, f"closed after {idle_for:.2f} s: not by the keep-alive timeout"
