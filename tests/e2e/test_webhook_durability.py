"""A webhook owed before `kill -9` is delivered after the restart (at least once).

`dtq serve` runs as a real process with a webhook whose receiver is down (its port is bound but
not listening, so every attempt is refused and the deliveries stay owed). Tasks are created,
the server is killed with SIGKILL, the receiver comes up, the server restarts on the same data
directory, and every delivery owed for an acknowledged task arrives, signed.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from api.webhook_support import BOUND_S, reserved_port, run_receiver, spawn_server

from dtq.core.webhooks.outbox import verify

pytestmark = pytest.mark.e2e

SECRET = "durable-webhook-secret"
ENV = {
    "DTQ_DURABILITY": "fsync",
    "DTQ_WEBHOOK_BACKOFF_BASE_S": "0.05",
    "DTQ_WEBHOOK_BACKOFF_MAX_S": "0.2",
    "DTQ_WEBHOOK_MAX_ATTEMPTS": "1000",  # never given up while the receiver is down
}


async def _login(client: httpx.AsyncClient) -> dict[str, str]:
    reply = await client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": "password"}
    )
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['token']}"}


async def _deliveries(client: httpx.AsyncClient, hook_id: str, status: str = "") -> list[dict]:
    query = f"?limit=100&status={status}" if status else "?limit=100"
    reply = await client.get(f"/api/v1/webhooks/{hook_id}/deliveries{query}")
    assert reply.status_code == 200, reply.text
    rows: list[dict] = reply.json()["data"]
    return rows


async def test_owed_webhooks_survive_kill_9_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with await reserved_port() as sock:
        await _owed_then_delivered(data_dir, sock)


async def _owed_then_delivered(data_dir: Path, sock: trio.socket.SocketType) -> None:
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    created: set[str] = set()

    async with spawn_server(data_dir, ENV) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=BOUND_S) as client:
            client.headers.update(await _login(client))
            reply = await client.post(
                "/api/v1/webhooks",
                json={"url": url, "events": ["task.created", "task.cancelled"], "secret": SECRET},
            )
            assert reply.status_code == 201, reply.text
            hook_id = reply.json()["data"]["id"]
            batch = await client.post(
                "/api/v1/tasks/batch", json={"tasks": [{"name": f"b{i}"} for i in range(10)]}
            )
            assert batch.status_code == 201, batch.text
            created |= {t["id"] for t in batch.json()["data"]}
            for i in range(5):
                one = await client.post("/api/v1/tasks", json={"name": f"s{i}"})
                assert one.status_code == 201, one.text
                created.add(one.json()["data"]["id"])
            cancelled = one.json()["data"]["id"]
            reply = await client.put(f"/api/v1/tasks/{cancelled}", json={"status": "cancelled"})
            assert reply.status_code == 200, reply.text

            # Owed, and being tried: every attempt so far was refused.
            with trio.fail_after(BOUND_S):
                while True:
                    rows = await _deliveries(client, hook_id)
                    if len(rows) == 16 and all(r["attempts"] >= 1 for r in rows):
                        break
                    await trio.sleep(0.05)  # another process's progress: poll, bounded
            assert {r["status"] for r in rows} == {"pending"}
            assert all(r["last_error"].startswith("ConnectError") for r in rows), rows[0]
            owed = {r["id"]: (r["event"], r["task_id"]) for r in rows}
        server.kill_9()
        with trio.fail_after(BOUND_S):
            await server.process.wait()

    async with (
        run_receiver(sock=sock) as receiver,
        spawn_server(data_dir, ENV) as server,
        httpx.AsyncClient(base_url=server.url, timeout=BOUND_S) as client,
    ):
        await receiver.wait_for(
            lambda seen: {r.headers["x-dtq-delivery"] for r in seen} >= set(owed)
        )
        for request in receiver.requests:
            assert verify(SECRET, request.body, request.headers["x-dtq-signature"])
            body = request.json
            event, task_id = owed[body["delivery_id"]]
            assert (body["event"], body["task"]["id"]) == (event, task_id)
            assert request.headers["x-dtq-event"] == event
        received_tasks = {r.json["task"]["id"] for r in receiver.requests}
        assert received_tasks == created
        client.headers.update(await _login(client))
        with trio.fail_after(BOUND_S):
            while await _deliveries(client, hook_id, "pending"):
                await trio.sleep(0.05)
        rows = await _deliveries(client, hook_id)
        assert len(rows) == 16 and {r["status"] for r in rows} == {"delivered"}
        assert all(r["history"][-1]["status_code"] == 200 for r in rows)
