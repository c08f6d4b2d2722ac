"""`AsyncClient`: the dtq HTTP API for trio or asyncio.

The one hand-written client: `tools/unasync.py` generates the synchronous `Client` in `_sync.py`
from this file. What the two flavours share without I/O is in `_common.py`; what genuinely
differs (sleeping, timeouts, the WebSocket wait) is in `_async_io.py` / `_sync_io.py`.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import httpx
import msgspec

from dtq.client import _async_io as _io
from dtq.client._common import FINAL_STATUSES, LIMITS, _Base, _Req
from dtq.errors import RateLimited, Unavailable
from dtq.messages import TaskOut, WorkerOut
from dtq.models import AckItem, AckOutcome

T = TypeVar("T")


class AsyncClient(_Base):
    """`async with AsyncClient() as c: task = await c.submit("Process Data", {...})`."""

    def __init__(self, url: str | Sequence[str] | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=LIMITS)
        self._lane: _io.Lane | None = None  # the fast lane, once a call opened it
        self._lane_off = self.transport == "http"  # auto found no lane: HTTP from now on
        self._lane_lock = _io.Lock()  # concurrent first calls open one lane, not one each

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._lane is not None:
            await self._lane.aclose()
        await self._http.aclose()

    async def lane(self) -> _io.Lane | None:
        """The fast-lane connection (opened on first use), or None when calls go over HTTP:
        `transport="http"`, or "auto" and the server offers no lane or it is unreachable."""
        if self._lane is None and not self._lane_off:
            async with self._lane_lock:
                if self._lane is None and not self._lane_off:
                    self._lane = await self._open_lane()
        return self._lane

    async def _open_lane(self) -> _io.Lane | None:
        port = None
        if self.transport != "ws":
            try:
                health = (await self._http.get("/health")).json()
                port = health.get("protocol_port") if isinstance(health, dict) else None
            except (httpx.HTTPError, ValueError):
                if self.transport != "auto":
                    raise
        address = _io.lane_address(self.url, "ws" if self.transport == "ws" else "tcp", port)
        if address is None:
            if self.transport == "tcp":
                raise httpx.ConnectError(f"the server at {self.url} has no fast lane")
            self._lane_off = True
            return None
        lane = _io.Lane(address, self._hello(), self.timeout_s)
        try:
            await lane.connect()
        except httpx.TransportError:
            if self.transport != "auto":
                raise
            self._lane_off = True  # unreachable (a firewall, a proxy): HTTP it is
            return None
        return lane

    async def _send(self, req: _Req[T]) -> T:
        attempt = 0
        while True:
            sent_to = self.url
            try:
                if req.op is not None and not self._lane_off:
                    lane = await self.lane()
                    if lane is not None:
                        return self._lane_result(req, await lane.call(req))
                response = await self._http.request(
                    req.method, req.path, content=self._body(req), params=req.params,
                    headers=self._headers(req),
                )  # fmt: skip
                return self._result(req, response)
            except (httpx.TransportError, RateLimited, Unavailable) as exc:
                delay = self._resend_delay_s(req, exc, attempt, sent_to)
                if delay is None:
                    raise
                attempt += 1
                if self.url != sent_to:  # another server (endpoints.py): its own lane
                    self._http.base_url = httpx.URL(self.url)
                    await self._drop_lane()
                await _io.sleep(delay)

    async def _drop_lane(self) -> None:
        """Forget the lane (it was to a server we left); the next call finds the new one's."""
        lane, self._lane = self._lane, None
        self._lane_off = self.transport == "http"
        if lane is not None:
            with contextlib.suppress(Exception):
                await lane.aclose()

    async def login(self, username: str, password: str) -> str:
        return str((await self.sign_in(username, password))["token"])

    async def sign_in(self, username: str, password: str) -> dict[str, Any]:
        """Log in and use the token from now on; returns `token`, `expires_in` (s), `role`."""
        data = await self._send(self._req_login(username, password))
        self.token = str(data["token"])
        if self._lane is not None:  # it said hello with the old credentials
            await self._lane.aclose()
            self._lane = None
        return data

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

        The async client listens on `/ws/tasks` for the task's events; both poll when there
        is no WebSocket.
        """
        with _io.fail_after(timeout) as deadline:
            task = await _io.wait_ws(self, task_id)
            if task is not None:
                return task
            delay = 0.02
            while True:
                task = await self.get(task_id)
                if task.status in FINAL_STATUSES:
                    return task
                deadline.check(delay, f"task {task_id} is still {task.status} after {timeout} s")
                await _io.sleep(delay)
                delay = min(delay * 1.5, 1.0)

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

    # -- queues (reads: any role but worker; changes: admin or operator) -------------------
    async def list_queues(self, skip: int = 0, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """One page of queues (name order) with their figures and limits."""
        return await self._send(self._req_queues(skip, limit))

    async def get_queue(self, name: str) -> dict[str, Any]:
        return await self._send(self._req_queue(name))

    async def update_queue(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set `paused`, `concurrency_limit`, `concurrency_limit_per_key` or
        `rate_limit_per_second`; a field given as None removes that limit."""
        return await self._send(self._req_update_queue(name, fields))

    async def pause_queue(self, name: str) -> dict[str, Any]:
        return await self._send(self._req_queue_action(name, "pause"))

    async def resume_queue(self, name: str) -> dict[str, Any]:
        return await self._send(self._req_queue_action(name, "resume"))

    async def purge_queue(self, name: str) -> int:
        """Delete the queue's pending tasks; returns how many."""
        data = await self._send(self._req_queue_action(name, "purge"))
        return int(data["purged"])

    async def explain_task(self, task_id: str) -> dict[str, Any]:
        """Why a task is (not) running: `{status, runnable, reasons: [{code, message, ...}]}`."""
        return await self._send(self._req_explain(task_id))

    # -- history, redrive and schedules (operators) -----------------------------------------
    async def task_events(
        self, task_id: str, *, skip: int = 0, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Everything that happened to a task, oldest first: one page (`limit` up to 1000,
        the server's default) after the first `skip`."""
        return await self._send(self._req_task_events(task_id, skip, limit))

    async def retry_task(self, task_id: str) -> TaskOut:
        """Send a failed or cancelled task back to pending (409 for any other state)."""
        return await self._send(self._req_retry_task(task_id))

    async def retry_tasks(self, status: str = "failed", **filters: Any) -> dict[str, Any]:
        """Redrive every task that matches: `queue`, `name`, `tag`, `finished_after`,
        `finished_before` (datetimes or RFC 3339 text), `limit`. Returns matched, affected."""
        return await self._send(self._req_bulk("retry", {"status": status, **filters}))

    async def purge_tasks(self, status: str, **filters: Any) -> dict[str, Any]:
        """Delete every finished task that matches (filters as for `retry_tasks`)."""
        return await self._send(self._req_bulk("purge", {"status": status, **filters}))

    async def create_schedule(
        self, name: str, cron: str, task: dict[str, Any], **options: Any
    ) -> dict[str, Any]:
        """`options`: timezone (IANA, default UTC), paused, catch_up ("none" or "one")."""
        body = {"name": name, "cron": cron, "task": task, **options}
        return await self._send(self._req_create_schedule(body))

    async def list_schedules(
        self, skip: int = 0, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        return await self._send(self._req_schedules({"skip": skip, "limit": limit}))

    async def get_schedule(self, name: str) -> dict[str, Any]:
        return await self._send(self._req_schedule("GET", name))

    async def update_schedule(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change any of cron, timezone, task, paused, catch_up."""
        return await self._send(self._req_schedule("PUT", name, changes))

    async def delete_schedule(self, name: str) -> None:
        await self._send(self._req_schedule("DELETE", name))

    async def trigger_schedule(self, name: str) -> dict[str, Any]:
        """Run its task now; returns {schedule, task}."""
        return await self._send(self._req_schedule("POST", name, None, "trigger"))

    # -- webhooks (admin, operator) ---------------------------------------------------------
    async def create_webhook(
        self,
        url: str,
        events: Sequence[str] = ("*",),
        *,
        secret: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Register `url` for `events` (event kinds, or "*" for all). The answer holds the
        signing `secret` (generated when not given): it is shown only here."""
        body = {"url": url, "events": list(events), "secret": secret, "description": description}
        return await self._send(self._req_create_webhook(body))

    async def list_webhooks(self) -> builtins.list[dict[str, Any]]:
        return await self._send(self._req_webhooks())

    async def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        return await self._send(self._req_webhook("GET", webhook_id))

    async def delete_webhook(self, webhook_id: str) -> None:
        """No delivery is sent for it any more; its delivery history goes."""
        await self._send(self._req_webhook("DELETE", webhook_id))

    async def webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, skip: int = 0, limit: int = 50
    ) -> builtins.list[dict[str, Any]]:
        """Newest first, each with its attempts; `status`: pending, delivered or failed."""
        return await self._send(self._req_webhook_deliveries(webhook_id, status, skip, limit))
