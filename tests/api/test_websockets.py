"""WebSockets over a real socket with a third-party client (trio-websocket)."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from dtq.server import serve
from dtq.settings import Durability, Settings


@dataclass
class Server:
    host: str
    port: int
    token: str
    http: httpx.AsyncClient
    stop: trio.Event

    def ws(self, path: str) -> str:
        return f"ws://{self.host}:{self.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def create(self, **body: object) -> dict[str, Any]:
        r = await self.http.post("/api/v1/tasks", json={"name": "t", **body}, headers=self.auth)
        assert r.status_code == 201, r.text
        return r.json()["data"]  # type: ignore[no-any-return]


async def _start(tmp_path: Path, nursery: trio.Nursery, **overrides: Any) -> Server:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path / "data"),
        admin_password="password",
        durability=Durability.OS,
        rate_limit_per_minute=0,
        rate_limit_per_hour=0,
        **overrides,
    )
    stop = trio.Event()

    async def run(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        await serve(settings, task_status=task_status, shutdown_trigger=stop.wait)

    host, port = await nursery.start(run)
    http = httpx.AsyncClient(base_url=f"http://{host}:{port}")
    r = await http.post("/api/v1/auth/login", json={"username": "admin", "password": "password"})
    return Server(host, port, r.json()["token"], http, stop)


async def _refused(
    server: Server, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Send a raw WebSocket upgrade and read the HTTP answer (a refusal is a plain response)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {server.host}:{server.port}",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    raw = b""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
                chunk = await stream.receive_some()
                if not chunk:
                    break
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"chunked" in head.lower():  # one chunk holds the small JSON error
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0", 1)[0]
    payload = json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])
    assert payload["status"] == "error"
    return status, payload


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        srv = await _start(tmp_path, nursery, ws_buffer_events=20)
        try:
            yield srv
        finally:
            await srv.http.aclose()
            srv.stop.set()


async def _next_json(ws: Any, timeout: float = 5) -> dict[str, Any]:
    """The next message as sent (a single event, a batch, a lagged notice, metrics)."""
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def _events(ws: Any, n: int, timeout: float = 5) -> list[dict[str, Any]]:
    """The next `n` events, unpacking batches."""
    events: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while len(events) < n:
            msg = json.loads(await ws.get_message())
            events.extend(msg["events"] if msg["event"] == "batch" else [msg])
    return events


async def test_refused_without_credentials_before_upgrade(server: Server) -> None:
    for path in ("/ws/tasks", "/ws/metrics", "/ws/tasks?token=forged"):
        status, body = await _refused(server, path)
        assert status == 401
        assert body["error"]["code"] == "UNAUTHORIZED"


async def test_refused_when_the_role_may_not(server: Server, tmp_path: Path) -> None:
    # A worker key may read tasks but not the analytics behind /ws/metrics.
    r = await server.http.post(
        "/api/v1/api-keys", json={"name": "w", "role": "worker"}, headers=server.auth
    )
    key = r.json()["data"]["key"]
    status, body = await _refused(server, "/ws/metrics", {"X-API-Key": key})
    assert status == 403
    assert body["error"]["code"] == "FORBIDDEN"
    async with open_websocket_url(server.ws("/ws/tasks"), extra_headers=[("X-API-Key", key)]) as ws:
        await server.create()
        event = await _next_json(ws)
        assert event["event"] == "task.created"


@pytest.mark.parametrize("how", ["header", "query", "subprotocol"])
async def test_task_events_with_each_way_of_authenticating(server: Server, how: str) -> None:
    url, headers, subprotocols = server.ws("/ws/tasks"), [], []
    if how == "header":
        headers = [("Authorization", f"Bearer {server.token}")]
    elif how == "query":
        url += f"?token={server.token}"
    else:
        subprotocols = ["bearer", server.token]
    async with open_websocket_url(url, extra_headers=headers, subprotocols=subprotocols) as ws:
        if how == "subprotocol":
            assert ws.subprotocol == "bearer"
        task = await server.create(payload={"n": 1})
        event = await _next_json(ws)
        assert event["event"] == "task.created"
        assert event["task"]["id"] == task["id"]  # type: ignore[index]
        assert event["task"]["payload"] == {"n": 1}  # type: ignore[index]
        assert str(event["timestamp"]).endswith("Z")


async def test_life_cycle_events_in_order(server: Server) -> None:
    async with open_websocket_url(server.ws(f"/ws/tasks?token={server.token}")) as ws:
        task = await server.create()
        r = await server.http.post(
            "/api/v1/tasks/lease", json={"worker_id": "w1", "wait": 0}, headers=server.auth
        )
        lease = r.json()["data"][0]["lease"]["id"]
        await server.http.post(
            f"/api/v1/tasks/{task['id']}/complete", json={"lease_id": lease, "result": 7},
            headers=server.auth,
        )  # fmt: skip
        kinds = [e["event"] for e in await _events(ws, 3)]
        assert kinds == ["task.created", "task.leased", "task.completed"]


async def test_filters(server: Server) -> None:
    url = server.ws(f"/ws/tasks?token={server.token}&queue=emails&status=pending")
    async with open_websocket_url(url) as ws:
        await server.create(queue="other")
        wanted = await server.create(queue="emails")
        event = await _next_json(ws)
        assert event["task"]["id"] == wanted["id"]  # type: ignore[index]
    task = await server.create()
    url = server.ws(f"/ws/tasks?token={server.token}&task_id={task['id']}")
    async with open_websocket_url(url) as ws:
        await server.create()
        r = await server.http.put(
            f"/api/v1/tasks/{task['id']}", json={"status": "cancelled"}, headers=server.auth
        )
        assert r.status_code == 200
        event = await _next_json(ws)
        assert event["event"] == "task.cancelled"
        assert event["task"]["id"] == task["id"]  # type: ignore[index]


async def test_unknown_filter_is_refused(server: Server) -> None:
    status, body = await _refused(server, f"/ws/tasks?token={server.token}&colour=red")
    assert status == 400
    assert body["error"]["details"]["field"] == "colour"


async def test_slow_consumer_gets_lagged_and_does_not_slow_writers(server: Server) -> None:
    """A subscriber that never reads while 600 tasks are created: the creates all succeed,
    and when it reads again it is told how many events it missed."""
    async with open_websocket_url(server.ws(f"/ws/tasks?token={server.token}")) as slow:
        bodies = [{"name": "bulk", "payload": {"pad": "x" * 2000}} for _ in range(100)]
        with trio.fail_after(20):
            for _ in range(6):
                r = await server.http.post(
                    "/api/v1/tasks/batch", json={"tasks": bodies}, headers=server.auth
                )
                assert r.status_code == 201
        seen, lagged = 0, None
        with trio.fail_after(10):
            while lagged is None:
                msg = json.loads(await slow.get_message())
                for event in msg["events"] if msg["event"] == "batch" else [msg]:
                    if event["event"] == "lagged":
                        lagged = event["missed"]
                    else:
                        seen += 1
        assert lagged > 0
        assert seen + lagged <= 600


async def test_metrics_on_connect_and_pushed_early_on_change(server: Server) -> None:
    url = server.ws("/ws/metrics?interval=30")
    async with open_websocket_url(
        url, extra_headers=[("Authorization", f"Bearer {server.token}")]
    ) as ws:
        first = await _next_json(ws)
        assert first["total_tasks"] == 0
        assert set(first) >= {"completed_tasks", "failed_tasks", "pending_tasks",
                              "completion_rate", "average_duration", "workers_active",
                              "workers_total"}  # fmt: skip
        await server.create()
        pushed = await _next_json(ws, timeout=5)  # long before the 30 s interval
        assert pushed["total_tasks"] == 1


async def test_metrics_interval(server: Server) -> None:
    url = server.ws(f"/ws/metrics?interval=0.2&token={server.token}")
    async with open_websocket_url(url) as ws:
        for _ in range(3):
            await _next_json(ws)


async def test_bad_interval_refused(server: Server) -> None:
    status, _ = await _refused(server, f"/ws/metrics?interval=0&token={server.token}")
    assert status == 400


# trio-websocket leaves its socket to the garbage collector when the server closes first.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_clean_close_on_shutdown(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        srv = await _start(tmp_path, nursery)
        code = None
        async with open_websocket_url(srv.ws(f"/ws/tasks?token={srv.token}")) as ws:
            srv.stop.set()
            with trio.fail_after(5):
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as exc:
                    code = exc.reason.code
        await srv.http.aclose()
    assert code == 1001
    del ws
    gc.collect()  # collect that socket here, under this test's warning filter
