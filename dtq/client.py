"""Python client for the dtq HTTP API: `Client` (sync) and `AsyncClient` (trio or asyncio).

Both share one request layer: a method builds a `_Req` (what to send, whether it is safe to
retry, how to read the answer) and each client only differs in how it sends it.
"""

from __future__ import annotations

import builtins
import os
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import anyio
import httpx
import msgspec

from dtq.errors import (
    Conflict,
    DtqError,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from dtq.models import AckItem, AckOutcome
from dtq.schemas import TaskOut, WorkerOut

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:5000"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
ERRORS_BY_CODE: dict[str, type[DtqError]] = {
    "INVALID_REQUEST": InvalidRequest,
    "UNAUTHORIZED": Unauthorized,
    "FORBIDDEN": Forbidden,
    "NOT_FOUND": NotFound,
    "CONFLICT": Conflict,
    "RATE_LIMITED": RateLimited,
    "SERVICE_UNAVAILABLE": Unavailable,
}


class _Envelope(msgspec.Struct, Generic[T]):
    data: T
    pagination: dict[str, int] | None = None


@dataclass
class _Req(Generic[T]):
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    retry_on_disconnect: bool = False  # safe to resend after a connection error
    data_type: Any = Any
    raw: bool = False  # return the body as text, not the envelope's data
    headers: dict[str, str] = field(default_factory=dict)


class _WebSocketTrouble(Exception):
    """The WebSocket could not be used; callers fall back to polling."""


def api_error(response: httpx.Response) -> DtqError:
    """The server's error envelope as the matching `dtq.errors` exception."""
    try:
        err = response.json()["error"]
        code, message, details = err["code"], err["message"], err.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "INTERNAL_ERROR", response.text[:200] or response.reason_phrase, {}
    cls = ERRORS_BY_CODE.get(code, DtqError)
    if cls is Conflict and details.get("field") == "lease_id":
        cls = LeaseLost
    if cls is RateLimited:
        retry_after = int(float(response.headers.get("Retry-After", "1")))
        exc: DtqError = RateLimited(message, retry_after_s=retry_after, **details)
    else:
        exc = cls(message, **details)
    exc.http_status = response.status_code  # type: ignore[attr-defined]
    exc.code_from_server = code  # type: ignore[attr-defined]
    return exc


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Requests:
    """Builders shared by both clients: one per API operation."""

    def _submit(
        self,
        name: str,
        payload: Any = None,
        *,
        description: str | None = None,
        priority: str | None = None,
        queue: str | None = None,
        run_at: datetime | str | None = None,
        delay: float | None = None,
        retry_count: int | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        if isinstance(run_at, datetime):
            run_at = run_at.isoformat()
        return _clean(
            {
                "name": name,
                "payload": payload,
                "description": description,
                "priority": priority,
                "queue": queue,
                "run_at": run_at,
                "delay": delay,
                "retry_count": retry_count,
                "timeout": timeout,
                "idempotency_key": idempotency_key,
                "tags": list(tags) if tags is not None else None,
            }
        )

    def _req_submit(self, body: dict[str, Any]) -> _Req[TaskOut]:
        # With an idempotency key a resend cannot create a second task.
        return _Req("POST", "/api/v1/tasks", body, None, "idempotency_key" in body, TaskOut)

    def _req_submit_many(self, bodies: list[dict[str, Any]]) -> _Req[list[TaskOut]]:
        safe = all("idempotency_key" in b for b in bodies)
        return _Req("POST", "/api/v1/tasks/batch", {"tasks": bodies}, None, safe, list[TaskOut])

    def _req_get(self, task_id: str) -> _Req[TaskOut]:
        return _Req("GET", f"/api/v1/tasks/{task_id}", retry_on_disconnect=True, data_type=TaskOut)

    def _req_list(self, params: dict[str, Any]) -> _Req[list[TaskOut]]:
        return _Req("GET", "/api/v1/tasks", None, _clean(params), True, list[TaskOut])

    def _req_cancel(self, task_id: str) -> _Req[TaskOut]:
        return _Req("PUT", f"/api/v1/tasks/{task_id}", {"status": "cancelled"}, None, True, TaskOut)

    def _req_delete(self, task_id: str) -> _Req[None]:
        return _Req("DELETE", f"/api/v1/tasks/{task_id}", retry_on_disconnect=True, data_type=None)

    def _req_lease(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        max_tasks: int = 1,
        wait: float = 30,
        lease_seconds: float | None = None,
    ) -> _Req[list[TaskOut]]:
        body = _clean(
            {
                "worker_id": worker_id,
                "queues": list(queues) if queues else None,
                "names": list(names) if names else None,
                "max_tasks": max_tasks,
                "wait": wait,
                "lease_seconds": lease_seconds,
            }
        )
        return _Req("POST", "/api/v1/tasks/lease", body, None, False, list[TaskOut])

    def _req_ack(self, acks: Sequence[AckItem]) -> _Req[dict[str, Any]]:
        body = {"acks": list(acks)}  # msgspec encodes the structs directly
        # A resent ack is safe: a result is recorded at most once (the lease fences it).
        return _Req("POST", "/api/v1/tasks/ack", body, None, True, dict[str, Any])

    def _req_task_action(self, task_id: str, action: str, body: dict[str, Any]) -> _Req[TaskOut]:
        return _Req("POST", f"/api/v1/tasks/{task_id}/{action}", _clean(body), None, True, TaskOut)

    def _req_heartbeat(self, worker_id: str, **fields: Any) -> _Req[WorkerOut]:
        body = _clean({"worker_id": worker_id, **fields})
        return _Req("POST", "/api/v1/workers/heartbeat", body, None, True, WorkerOut)

    def _req_workers(self, params: dict[str, Any]) -> _Req[list[WorkerOut]]:
        return _Req("GET", "/api/v1/workers", None, _clean(params), True, list[WorkerOut])

    def _req_analytics(self, what: str, params: dict[str, Any]) -> _Req[dict[str, Any]]:
        return _Req("GET", f"/api/v1/analytics/{what}", None, _clean(params), True, dict[str, Any])

    # -- users and API keys (admin) --------------------------------------------------------
    def _req_api_keys(self) -> _Req[list[dict[str, Any]]]:
        return _Req("GET", "/api/v1/api-keys", None, None, True, list[dict[str, Any]])

    def _req_create_api_key(self, body: dict[str, Any]) -> _Req[dict[str, Any]]:
        # Not resent: a second try after a lost answer would make a second key.
        return _Req("POST", "/api/v1/api-keys", _clean(body), None, False, dict[str, Any])

    def _req_revoke_api_key(self, key_id: str) -> _Req[None]:
        return _Req("DELETE", f"/api/v1/api-keys/{key_id}", None, None, True, None)

    def _req_users(self) -> _Req[list[dict[str, Any]]]:
        return _Req("GET", "/api/v1/users", None, None, True, list[dict[str, Any]])

    def _req_create_user(self, body: dict[str, Any]) -> _Req[dict[str, Any]]:
        return _Req("POST", "/api/v1/users", body, None, False, dict[str, Any])

    def _req_set_password(self, username: str, password: str) -> _Req[dict[str, Any]]:
        body = {"password": password}
        return _Req("PATCH", f"/api/v1/users/{username}", body, None, True, dict[str, Any])

    def _req_export(self, fmt: str, days: int) -> _Req[Any]:
        accept = "text/csv" if fmt == "csv" else "application/json"
        return _Req(
            "GET", "/api/v1/analytics/export", None, {"days": days}, True, dict[str, Any],
            raw=fmt == "csv", headers={"Accept": accept},
        )  # fmt: skip


class _Base(_Requests):
    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout_s: float = 75.0,
        max_retries: int = 3,
    ) -> None:
        self.url = (url or os.environ.get("DTQ_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("DTQ_API_KEY")
        self.token = token or os.environ.get("DTQ_TOKEN")
        self.timeout_s = timeout_s  # > the longest long poll (60 s)
        self.max_retries = max_retries

    @staticmethod
    def _body(req: _Req[Any]) -> bytes | None:
        # msgspec, not httpx's stdlib json: a 500-result ack batch encodes ~10x faster.
        return None if req.json is None else msgspec.json.encode(req.json)

    @staticmethod
    def _content_type(req: _Req[Any]) -> dict[str, str]:
        return {} if req.json is None else {"Content-Type": "application/json"}

    def _auth_headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-API-Key": self.api_key}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    @staticmethod
    def _result(req: _Req[T], response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise api_error(response)
        if req.raw:
            return response.text  # type: ignore[return-value]
        if response.status_code == 204 or req.data_type is None:
            return None  # type: ignore[return-value]
        envelope_type: Any = _Envelope[req.data_type]  # type: ignore[name-defined]
        return msgspec.json.decode(response.content, type=envelope_type).data

    def _backoff_s(self, attempt: int, exc: Exception) -> float | None:
        """Seconds to wait before another try, or None to give up and raise."""
        if attempt >= self.max_retries:
            return None
        if isinstance(exc, RateLimited):
            return float(exc.retry_after_s)
        return min(0.25 * 2**attempt, 5.0) * (0.5 + random.random())  # jittered backoff

    def _retryable(self, req: _Req[Any], exc: Exception) -> bool:
        if isinstance(exc, RateLimited | Unavailable):
            return True  # the server refused before doing anything
        return isinstance(exc, httpx.TransportError) and req.retry_on_disconnect


class AsyncClient(_Base):
    """`async with AsyncClient() as c: task = await c.submit("Process Data", {...})`."""

    def __init__(self, url: str | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, limits=httpx.Limits(max_connections=100)
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: _Req[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    req.method, req.path, content=self._body(req), params=req.params,
                    headers={**self._auth_headers(), **self._content_type(req), **req.headers},
                )  # fmt: skip
                return self._result(req, response)
            except (httpx.TransportError, RateLimited, Unavailable) as exc:
                delay = self._backoff_s(attempt, exc) if self._retryable(req, exc) else None
                if delay is None:
                    raise
                attempt += 1
                await anyio.sleep(delay)

    async def login(self, username: str, password: str) -> str:
        req: _Req[dict[str, Any]] = _Req(
            "POST", "/api/v1/auth/login", {"username": username, "password": password},
            data_type=dict[str, Any],
        )  # fmt: skip
        self.token = str((await self._send(req))["token"])
        return self.token

    async def submit(self, name: str, payload: Any = None, **options: Any) -> TaskOut:
        return await self._send(self._req_submit(self._submit(name, payload, **options)))

    async def submit_many(self, tasks: Sequence[dict[str, Any]]) -> builtins.list[TaskOut]:
        bodies = [self._submit(**t) for t in tasks]
        return await self._send(self._req_submit_many(bodies))

    async def get(self, task_id: str) -> TaskOut:
        return await self._send(self._req_get(task_id))

    async def list(
        self, *, page_size: int = 100, skip: int = 0, **filters: Any
    ) -> AsyncIterator[TaskOut]:
        """Every matching task after the first `skip`, fetching page after page (`status`,
        `priority`, `worker_id`, `sort`, `order` as in the guide; `queue`, `name`)."""
        while True:
            page = await self._send(self._req_list({**filters, "skip": skip, "limit": page_size}))
            for task in page:
                yield task
            if len(page) < page_size:
                return
            skip += page_size

    async def cancel(self, task_id: str) -> TaskOut:
        return await self._send(self._req_cancel(task_id))

    async def delete(self, task_id: str) -> None:
        await self._send(self._req_delete(task_id))

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskOut:
        """Until the task is completed, failed or cancelled; `TimeoutError` after `timeout` s.

        Listens on `/ws/tasks` for the task's events; polls if the WebSocket is unavailable.
        """
        with anyio.fail_after(timeout):
            try:
                return await self._wait_ws(task_id)
            except (httpx.HTTPError, OSError, _WebSocketTrouble):
                pass
            delay = 0.02
            while True:
                task = await self.get(task_id)
                if task.status in FINAL_STATUSES:
                    return task
                await anyio.sleep(delay)
                delay = min(delay * 1.5, 1.0)

    async def _wait_ws(self, task_id: str) -> TaskOut:
        from httpx_ws import HTTPXWSException, WebSocketDisconnect, aconnect_ws

        try:
            connect: Any = aconnect_ws(
                f"/ws/tasks?task_id={task_id}",
                self._http,
                headers=self._auth_headers(),
                keepalive_ping_interval_seconds=None,
                max_message_size_bytes=16 << 20,
            )
            async with connect as ws:
                # Subscribed first, then read: a change in between is not missed.
                task = await self.get(task_id)
                while task.status not in FINAL_STATUSES:
                    message = msgspec.json.decode(await ws.receive_text())
                    events = message.get("events", [message])
                    for event in events:
                        if "task" in event and event["task"]["id"] == task.id:
                            task = msgspec.convert(event["task"], TaskOut)
                        elif event.get("event") == "lagged":
                            task = await self.get(task_id)
                return task
        except (HTTPXWSException, WebSocketDisconnect) as exc:
            raise _WebSocketTrouble(str(exc)) from exc

    async def dashboard(self) -> dict[str, Any]:
        return await self._send(self._req_analytics("dashboard", {}))

    async def trends(self, days: int = 7, metric: str | None = None) -> dict[str, Any]:
        return await self._send(self._req_analytics("trends", {"days": days, "metric": metric}))

    async def export(self, format: str = "json", days: int = 30) -> Any:
        return await self._send(self._req_export(format, days))

    async def workers(self, status: str | None = None) -> builtins.list[WorkerOut]:
        return await self._send(self._req_workers({"status": status, "limit": 100}))

    async def api_keys(self) -> builtins.list[dict[str, Any]]:
        return await self._send(self._req_api_keys())

    async def create_api_key(self, name: str, role: str, **limits: int | None) -> dict[str, Any]:
        """`data` of the reply: the key itself is in `["key"]`, shown only this once."""
        return await self._send(self._req_create_api_key({"name": name, "role": role, **limits}))

    async def revoke_api_key(self, key_id: str) -> None:
        await self._send(self._req_revoke_api_key(key_id))

    async def users(self) -> builtins.list[dict[str, Any]]:
        return await self._send(self._req_users())

    async def create_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        body = {"username": username, "password": password, "role": role}
        return await self._send(self._req_create_user(body))

    async def set_password(self, username: str, password: str) -> dict[str, Any]:
        return await self._send(self._req_set_password(username, password))

    # -- worker transport ---------------------------------------------------------------
    async def lease(self, worker_id: str, **kw: Any) -> builtins.list[TaskOut]:
        return await self._send(self._req_lease(worker_id, **kw))

    async def ack(self, acks: Sequence[AckItem]) -> builtins.list[AckOutcome]:
        data = await self._send(self._req_ack(acks))
        return msgspec.convert(data["results"], builtins.list[AckOutcome])

    async def complete(self, task_id: str, lease_id: str, result: Any = None) -> TaskOut:
        body = {"lease_id": lease_id, "result": result}
        return await self._send(self._req_task_action(task_id, "complete", body))

    async def fail(
        self, task_id: str, lease_id: str, error: Any, retry: bool | None = None
    ) -> TaskOut:
        body = {"lease_id": lease_id, "error": error, "retry": retry}
        return await self._send(self._req_task_action(task_id, "fail", body))

    async def extend(self, task_id: str, lease_id: str, lease_seconds: float) -> TaskOut:
        body = {"lease_id": lease_id, "lease_seconds": lease_seconds}
        return await self._send(self._req_task_action(task_id, "extend", body))

    async def release(self, task_id: str, lease_id: str) -> TaskOut:
        return await self._send(self._req_task_action(task_id, "release", {"lease_id": lease_id}))

    async def heartbeat(self, worker_id: str, **fields: Any) -> WorkerOut:
        return await self._send(self._req_heartbeat(worker_id, **fields))


class Client(_Base):
    """The synchronous client: `Client().submit("Process Data", {"file_path": "..."})`."""

    def __init__(self, url: str | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: _Req[T]) -> T:
        import time

        attempt = 0
        while True:
            try:
                response = self._http.request(
                    req.method, req.path, content=self._body(req), params=req.params,
                    headers={**self._auth_headers(), **self._content_type(req), **req.headers},
                )  # fmt: skip
                return self._result(req, response)
            except (httpx.TransportError, RateLimited, Unavailable) as exc:
                delay = self._backoff_s(attempt, exc) if self._retryable(req, exc) else None
                if delay is None:
                    raise
                attempt += 1
                time.sleep(delay)

    def login(self, username: str, password: str) -> str:
        return str(self.sign_in(username, password)["token"])

    def sign_in(self, username: str, password: str) -> dict[str, Any]:
        """Log in and use the token from now on; returns `token`, `expires_in` (s), `role`."""
        req: _Req[dict[str, Any]] = _Req(
            "POST", "/api/v1/auth/login", {"username": username, "password": password},
            data_type=dict[str, Any],
        )  # fmt: skip
        data = self._send(req)
        self.token = str(data["token"])
        return data

    def submit(self, name: str, payload: Any = None, **options: Any) -> TaskOut:
        return self._send(self._req_submit(self._submit(name, payload, **options)))

    def submit_many(self, tasks: Sequence[dict[str, Any]]) -> builtins.list[TaskOut]:
        return self._send(self._req_submit_many([self._submit(**t) for t in tasks]))

    def get(self, task_id: str) -> TaskOut:
        return self._send(self._req_get(task_id))

    def list(self, *, page_size: int = 100, skip: int = 0, **filters: Any) -> Iterator[TaskOut]:
        while True:
            page = self._send(self._req_list({**filters, "skip": skip, "limit": page_size}))
            yield from page
            if len(page) < page_size:
                return
            skip += page_size

    def cancel(self, task_id: str) -> TaskOut:
        return self._send(self._req_cancel(task_id))

    def delete(self, task_id: str) -> None:
        self._send(self._req_delete(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskOut:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            task = self.get(task_id)
            if task.status in FINAL_STATUSES:
                return task
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"task {task_id} is still {task.status} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def dashboard(self) -> dict[str, Any]:
        return self._send(self._req_analytics("dashboard", {}))

    def trends(self, days: int = 7, metric: str | None = None) -> dict[str, Any]:
        return self._send(self._req_analytics("trends", {"days": days, "metric": metric}))

    def export(self, format: str = "json", days: int = 30) -> Any:
        return self._send(self._req_export(format, days))

    def workers(self, status: str | None = None) -> builtins.list[WorkerOut]:
        return self._send(self._req_workers({"status": status, "limit": 100}))

    def api_keys(self) -> builtins.list[dict[str, Any]]:
        return self._send(self._req_api_keys())

    def create_api_key(self, name: str, role: str, **limits: int | None) -> dict[str, Any]:
        """`data` of the reply: the key itself is in `["key"]`, shown only this once."""
        return self._send(self._req_create_api_key({"name": name, "role": role, **limits}))

    def revoke_api_key(self, key_id: str) -> None:
        self._send(self._req_revoke_api_key(key_id))

    def users(self) -> builtins.list[dict[str, Any]]:
        return self._send(self._req_users())

    def create_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        body = {"username": username, "password": password, "role": role}
        return self._send(self._req_create_user(body))

    def set_password(self, username: str, password: str) -> dict[str, Any]:
        return self._send(self._req_set_password(username, password))
