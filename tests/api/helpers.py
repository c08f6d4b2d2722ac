"""What the API tests share: a small client over Quart's test client, and envelope checks.

Everything here looks at the API as a user of the guide would: status codes, headers and the
JSON envelope; nothing reaches into the core.
"""

from __future__ import annotations

import contextlib
import json as _json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio
from quart.typing import TestClientProtocol
from werkzeug.datastructures import Headers

# The in-process `serve()` of `server_url` (conftest.py), for the client SDK and worker tests.
SERVE_ADMIN_PASSWORD = "password-for-the-tests"
SERVE_START_S = 20.0  # upper bound for the server to come up on a busy 2-core machine
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ERROR_CODES = {
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "RATE_LIMITED",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
}
_NO_JSON = object()


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes

    @property
    def json(self) -> Any:
        return _json.loads(self.body)

    @property
    def data(self) -> Any:
        """`data` of a success envelope (checked)."""
        return success_body(self)["data"]

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:300]!r}>"


class Client:
    """Quart's test client with default headers; every call returns a `Reply`."""

    def __init__(self, raw: TestClientProtocol, headers: Mapping[str, str] | None = None) -> None:
        self.raw = raw
        self.headers = dict(headers or {})

    def with_headers(self, headers: Mapping[str, str]) -> Client:
        return Client(self.raw, {**self.headers, **headers})

    def bearer(self, token: str) -> Client:
        return self.with_headers({"Authorization": f"Bearer {token}"})

    def api_key(self, key: str) -> Client:
        return self.with_headers({"X-API-Key": key})

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = _NO_JSON,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        content_length: bool = True,
        content_type: str | None = "application/json",
    ) -> Reply:
        """One request. The response body is read while the app writes it: Quart's `open()`
        reads it only after the app is done, and a response streamed in more chunks than its
        channel holds (10) would deadlock. A body goes with `content_type` unless `headers`
        names one; `content_type=None` sends none."""
        sent = Headers({**self.headers, **(headers or {})})
        if json is not _NO_JSON:
            body = _json.dumps(json).encode()
        if body is not None and content_type is not None:
            sent.setdefault("Content-Type", content_type)
            if content_length:
                sent["Content-Length"] = str(len(body))
        chunks: list[bytes] = []
        async with self.raw.request(path, method=method, headers=sent) as conn:
            if body:
                await conn.send(body)
            await conn.send_complete()
            with contextlib.suppress(trio.EndOfChannel, trio.ClosedResourceError):
                while True:
                    chunks.append(await conn.receive())
        status = getattr(conn, "status_code", None)
        assert status is not None, "the app sent no response"
        return Reply(status, getattr(conn, "headers", Headers()), b"".join(chunks))

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = _NO_JSON, **kw: Any) -> Reply:
        return await self.request("POST", path, json=json, **kw)

    async def put(self, path: str, json: Any = _NO_JSON, **kw: Any) -> Reply:
        return await self.request("PUT", path, json=json, **kw)

    async def patch(self, path: str, json: Any = _NO_JSON, **kw: Any) -> Reply:
        return await self.request("PATCH", path, json=json, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)


def success_body(reply: Reply, status: int | None = None) -> dict[str, Any]:
    """The guide's success envelope: status "success", data, timestamp (ISO 8601 UTC, Z)."""
    if status is not None:
        assert reply.status == status, reply
    else:
        assert 200 <= reply.status < 300, reply
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    body = reply.json
    assert body["status"] == "success", body
    assert "data" in body, body
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    return body


def ok(reply: Reply, status: int = 200) -> Any:
    """`data` of a success reply with exactly `status`."""
    return success_body(reply, status)["data"]


def error_of(
    reply: Reply,
    status: int,
    code: str,
    *,
    field: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The guide's error envelope with `status` and `code`; `field`/`reason` when given."""
    assert reply.status == status, reply
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    body = reply.json
    assert set(body) == {"status", "error", "timestamp"}, body
    assert body["status"] == "error"
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    error = body["error"]
    assert error["code"] == code, error
    assert error["code"] in ERROR_CODES
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["details"], dict), error
    if field is not None:
        assert error["details"].get("field") == field, error
    if reason is not None:
        assert error["details"].get("reason") == reason, error
    return error


async def create_task(client: Client, name: str = "job", **fields: Any) -> dict[str, Any]:
    task: dict[str, Any] = ok(await client.post("/api/v1/tasks", {"name": name, **fields}), 201)
    return task


async def lease(client: Client, worker_id: str = "worker-1", **fields: Any) -> list[dict[str, Any]]:
    body = {"worker_id": worker_id, "wait": 0, **fields}
    tasks: list[dict[str, Any]] = ok(await client.post("/api/v1/tasks/lease", body))
    return tasks


async def lease_one(client: Client, worker_id: str = "worker-1", **fields: Any) -> dict[str, Any]:
    tasks = await lease(client, worker_id, **fields)
    assert len(tasks) == 1, tasks
    return tasks[0]


async def get_task(client: Client, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = ok(await client.get(f"/api/v1/tasks/{task_id}"))
    return task


def as_others_see(task: dict[str, Any]) -> dict[str, Any]:
    """A task from the lease response as every other view shows it: without the lease id."""
    if task.get("lease") is None:
        return task
    lease = {k: v for k, v in task["lease"].items() if k != "id"}
    return {**task, "lease": lease}
