"""Every request the clients send with a body says it is JSON (the server requires the header),
and both flavours send the same requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from dtq.client import CLIENT_RETRY, AsyncClient, Client
from dtq.models import AckItem

TASK_ID = "0190a0b0-0000-7000-8000-000000000001"
TASK = {
    "id": TASK_ID, "name": "n", "description": None, "status": "completed", "priority": "medium",
    "queue": "default", "payload": None, "result": None, "error": None, "retry_count": 0,
    "attempts": 1, "timeout": 3600.0, "worker_id": None, "lease": None, "tags": [],
    "idempotency_key": None, "run_at": None, "created_at": None, "updated_at": None,
    "started_at": None, "completed_at": None, "duration": None,
}  # fmt: skip
WORKER = {
    "worker_id": "w", "status": "active", "current_load": 0, "max_capacity": 1,
    "last_heartbeat": None, "registered_at": None, "hostname": None, "queues": [],
    "tasks_completed": 0, "tasks_failed": 0,
}  # fmt: skip

CALLS: list[tuple[str, Callable[[Any], Any]]] = [
    ("login", lambda c: c.login("admin", "pw")),
    ("submit", lambda c: c.submit("n", {"a": 1}, priority="high")),
    ("submit_many", lambda c: c.submit_many([{"name": "n"}, {"name": "m"}])),
    ("get", lambda c: c.get(TASK_ID)),
    ("cancel", lambda c: c.cancel(TASK_ID)),
    ("delete", lambda c: c.delete(TASK_ID)),
    ("lease", lambda c: c.lease("w", max_tasks=2, wait=0)),
    ("ack", lambda c: c.ack([AckItem(id=TASK_ID, lease_id="l", status="completed")])),
    ("complete", lambda c: c.complete(TASK_ID, "l", {"ok": True})),
    ("fail", lambda c: c.fail(TASK_ID, "l", {"message": "m", "type": "E"})),
    ("extend", lambda c: c.extend(TASK_ID, "l", 30)),
    ("release", lambda c: c.release(TASK_ID, "l")),
    ("heartbeat", lambda c: c.heartbeat("w", current_load=0)),
    ("workers", lambda c: c.workers()),
    ("dashboard", lambda c: c.dashboard()),
    ("api_keys", lambda c: c.api_keys()),
    ("create_api_key", lambda c: c.create_api_key("k", "worker", rate_limit_per_minute=None)),
    ("revoke_api_key", lambda c: c.revoke_api_key("key-1")),
    ("users", lambda c: c.users()),
    ("create_user", lambda c: c.create_user("u", "password1", "viewer")),
    ("set_password", lambda c: c.set_password("u", "password2")),
]


def respond(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == "/api/v1/auth/login":
        return httpx.Response(200, json={"token": "t", "data": {"token": "t"}})
    if request.method == "DELETE":
        return httpx.Response(204)
    if path == "/api/v1/tasks/ack":
        return httpx.Response(200, json={"data": {"results": [{"id": TASK_ID, "ok": True}]}})
    if path in ("/api/v1/tasks/batch", "/api/v1/tasks/lease"):
        return httpx.Response(200, json={"data": [TASK]})
    if path.startswith("/api/v1/workers"):
        return httpx.Response(200, json={"data": WORKER if request.method == "POST" else []})
    if path.startswith("/api/v1/analytics"):
        return httpx.Response(200, json={"data": {}})
    if path in ("/api/v1/api-keys", "/api/v1/users") and request.method == "GET":
        return httpx.Response(200, json={"data": []})
    if path.startswith(("/api/v1/api-keys", "/api/v1/users")):
        return httpx.Response(200, json={"data": {}})
    return httpx.Response(200, json={"data": TASK})


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = msgspec.json.decode(request.content) if request.content else None
        self.requests.append(
            (request.method, request.url.path, request.headers.get("content-type"), body)
        )
        return respond(request)


async def test_every_body_is_sent_as_json_by_both_clients() -> None:
    seen = {}
    for flavour in ("async", "sync"):
        recorder = Recorder()
        transport = httpx.MockTransport(recorder)
        if flavour == "async":
            client: Any = AsyncClient("http://dtq.invalid", api_key="k")
            await client._http.aclose()
            client._http = httpx.AsyncClient(base_url=client.url, transport=transport)
            for _, call in CALLS:
                await call(client)
            await client.aclose()
        else:
            client = Client("http://dtq.invalid", api_key="k")
            client.close()
            client._http = httpx.Client(base_url=client.url, transport=transport)
            for _, call in CALLS:
                call(client)
            client.close()
        for method, path, content_type, body in recorder.requests:
            if body is not None:
                assert content_type == "application/json", (method, path)
        assert sum(body is not None for *_, body in recorder.requests) == 14
        seen[flavour] = recorder.requests
    assert seen["sync"] == seen["async"]


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10])
def test_the_client_backoff_is_the_shared_policy(attempt: int) -> None:
    client = Client("http://dtq.invalid")
    try:
        delay = client._backoff_s(attempt, httpx.ConnectError("refused"))
    finally:
        client.close()
    if attempt >= client.max_retries:
        assert delay is None
        return
    assert delay is not None
    low = CLIENT_RETRY.delay_s(attempt + 1, 0.0)
    high = CLIENT_RETRY.delay_s(attempt + 1, 0.999999)
    assert low <= delay <= high
    assert (low, high) == pytest.approx((0.125 * 2**attempt, 0.375 * 2**attempt), rel=1e-4)
