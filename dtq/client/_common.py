"""What both clients share: the request builders, the retry decision and the error mapping.

A method builds a `_Req` (what to send, whether it is safe to resend, how to read the answer);
`AsyncClient` (`_async.py`) and the generated `Client` (`_sync.py`) only differ in how they
send it. Nothing here does I/O.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from dtq.client.endpoints import Endpoints, never_arrived, server_down
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
from dtq.messages import TaskOut, WorkerOut
from dtq.models import AckItem
from dtq.retry import RetryPolicy
from dtq.wire import ReplyIn

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:5000"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# An idle keep-alive connection is dropped after 2 s, well before the server closes its end
# (DTQ_KEEP_ALIVE_TIMEOUT_S, 5 s by default). With both at 5 s, a request sent on a connection
# just as the server closed it failed with "Server disconnected without sending a response",
# and a POST cannot be sent again safely.
KEEPALIVE_EXPIRY_S = 2.0
LIMITS = httpx.Limits(max_connections=100, keepalive_expiry=KEEPALIVE_EXPIRY_S)
# Resending a request the server refused or never answered: 0.25 s, 0.5 s, 1 s, ... up to 5 s,
# each scaled by a random factor in [0.5, 1.5).
CLIENT_RETRY = RetryPolicy(base_s=0.25, cap_s=5.0, jitter=0.5)

# The one translation from the server's error envelope back to the error tree: keyed by
# (code, details.reason); a reason of None is the class for any other reason of that code.
_ONE_PER_CODE = (
    InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, RateLimited, Unavailable
)  # fmt: skip
ERRORS: dict[tuple[str, str | None], type[DtqError]] = {
    **{(cls.code, None): cls for cls in _ONE_PER_CODE},
    **{(LeaseLost.code, reason): LeaseLost for reason in LeaseLost.reasons},
}


def error_class(code: str, reason: str | None) -> type[DtqError]:
    """The exception class for an error envelope's `code` and `details.reason`."""
    return ERRORS.get((code, reason)) or ERRORS.get((code, None), DtqError)


def api_error(response: httpx.Response) -> DtqError:
    """The server's error envelope as the matching `dtq.errors` exception."""
    try:
        err = response.json()["error"]
        code, message, details = err["code"], err["message"], err.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "INTERNAL_ERROR", response.text[:200] or response.reason_phrase, {}
    reason = details.get("reason")
    cls = error_class(code, reason if isinstance(reason, str) else None)
    if cls is RateLimited:
        retry_after = int(float(response.headers.get("Retry-After", "1")))
        exc: DtqError = RateLimited(message, retry_after_s=retry_after, **details)
    else:
        exc = cls(message, **details)
    exc.http_status = response.status_code  # type: ignore[attr-defined]
    exc.code_from_server = code  # type: ignore[attr-defined]
    return exc


TRANSPORTS = ("auto", "tcp", "ws", "http")


def transport_choice(transport: str | None) -> str:
    """The transport asked for, else DTQ_TRANSPORT, else "auto"; anything else is a ValueError."""
    chosen = (transport or os.environ.get("DTQ_TRANSPORT") or "auto").strip().lower()
    if chosen not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {chosen!r}")
    return chosen


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
    op: str | None = None  # its fast-lane message (dtq.wire), when it has one
    task_id: str | None = None  # the path's task id, for the fast lane

    def lane_message(self, request_id: int) -> dict[str, Any]:
        """This request as a fast-lane message: the same body, the path's task id."""
        message: dict[str, Any] = {"op": self.op, "id": request_id}
        if self.task_id is not None:
            message["task_id"] = self.task_id
        if self.json is not None and self.op not in _NO_BODY_OPS:
            message["body"] = self.json
        return message


_NO_BODY_OPS = frozenset({"get", "cancel"})


def wire_error(err: Any) -> DtqError:
    """A fast-lane `error` frame as the same exception REST's error envelope becomes."""
    reason = err.details.get("reason")
    cls = error_class(err.code, reason if isinstance(reason, str) else None)
    if cls is RateLimited:
        exc: DtqError = RateLimited(err.message, retry_after_s=err.retry_after_s or 1,
                                    **err.details)  # fmt: skip
    else:
        exc = cls(err.message, **err.details)
        if isinstance(exc, Unavailable) and err.retry_after_s:
            exc.retry_after_s = err.retry_after_s
    exc.http_status = err.status  # type: ignore[attr-defined]
    exc.code_from_server = err.code  # type: ignore[attr-defined]
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
        concurrency_key: str | None = None,
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
                "concurrency_key": concurrency_key,
            }
        )

    def _req_login(self, username: str, password: str) -> _Req[dict[str, Any]]:
        body = {"username": username, "password": password}
        return _Req("POST", "/api/v1/auth/login", body, data_type=dict[str, Any])

    def _req_submit(self, body: dict[str, Any]) -> _Req[TaskOut]:
        # With an idempotency key a resend cannot create a second task.
        return _Req("POST", "/api/v1/tasks", body, None, "idempotency_key" in body, TaskOut,
                    op="submit")  # fmt: skip

    def _req_submit_many(self, bodies: list[dict[str, Any]]) -> _Req[list[TaskOut]]:
        safe = all("idempotency_key" in b for b in bodies)
        return _Req("POST", "/api/v1/tasks/batch", {"tasks": bodies}, None, safe, list[TaskOut],
                    op="submit_many")  # fmt: skip

    def _req_get(self, task_id: str) -> _Req[TaskOut]:
        return _Req("GET", f"/api/v1/tasks/{task_id}", retry_on_disconnect=True, data_type=TaskOut,
                    op="get", task_id=task_id)  # fmt: skip

    def _req_list(self, params: dict[str, Any]) -> _Req[list[TaskOut]]:
        return _Req("GET", "/api/v1/tasks", None, _clean(params), True, list[TaskOut])

    def _req_cancel(self, task_id: str) -> _Req[TaskOut]:
        return _Req("PUT", f"/api/v1/tasks/{task_id}", {"status": "cancelled"}, None, True, TaskOut,
                    op="cancel", task_id=task_id)  # fmt: skip

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
        return _Req("POST", "/api/v1/tasks/lease", body, None, False, list[TaskOut], op="lease")

    def _req_ack(self, acks: Sequence[AckItem]) -> _Req[dict[str, Any]]:
        body = {"acks": list(acks)}  # msgspec encodes the structs directly
        # A resent ack is safe: a result is recorded at most once (the lease fences it).
        return _Req("POST", "/api/v1/tasks/ack", body, None, True, dict[str, Any], op="ack")

    def _req_task_action(self, task_id: str, action: str, body: dict[str, Any]) -> _Req[TaskOut]:
        return _Req("POST", f"/api/v1/tasks/{task_id}/{action}", _clean(body), None, True, TaskOut,
                    op=action, task_id=task_id)  # fmt: skip

    def _req_heartbeat(self, worker_id: str, **fields: Any) -> _Req[WorkerOut]:
        body = _clean({"worker_id": worker_id, **fields})
        return _Req("POST", "/api/v1/workers/heartbeat", body, None, True, WorkerOut,
                    op="heartbeat")  # fmt: skip

    def _req_workers(self, params: dict[str, Any]) -> _Req[list[WorkerOut]]:
        return _Req("GET", "/api/v1/workers", None, _clean(params), True, list[WorkerOut])

    def _req_analytics(self, what: str, params: dict[str, Any]) -> _Req[dict[str, Any]]:
        return _Req("GET", f"/api/v1/analytics/{what}", None, _clean(params), True, dict[str, Any])

    # -- queues ----------------------------------------------------------------------------
    def _req_queues(self, skip: int, limit: int) -> _Req[list[dict[str, Any]]]:
        params = {"skip": skip, "limit": limit}
        return _Req("GET", "/api/v1/queues", None, params, True, list[dict[str, Any]])

    def _req_queue(self, name: str) -> _Req[dict[str, Any]]:
        return _Req("GET", f"/api/v1/queues/{name}", None, None, True, dict[str, Any])

    def _req_update_queue(self, name: str, body: dict[str, Any]) -> _Req[dict[str, Any]]:
        # Not `_clean`ed: a None is sent as null, which removes that limit.
        return _Req("PUT", f"/api/v1/queues/{name}", body, None, True, dict[str, Any])

    def _req_queue_action(self, name: str, action: str) -> _Req[dict[str, Any]]:
        # pause/resume are safe to resend; a resent purge removes only what is pending then
        return _Req("POST", f"/api/v1/queues/{name}/{action}", None, None, True, dict[str, Any])

    def _req_explain(self, task_id: str) -> _Req[dict[str, Any]]:
        path = f"/api/v1/tasks/{task_id}/explain"
        return _Req("GET", path, None, None, True, dict[str, Any])

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

    # -- history, redrive and schedules ----------------------------------------------------
    def _req_task_events(
        self, task_id: str, skip: int = 0, limit: int | None = None
    ) -> _Req[list[dict[str, Any]]]:
        path = f"/api/v1/tasks/{task_id}/events"
        params = _clean({"skip": skip or None, "limit": limit})
        return _Req("GET", path, None, params or None, True, list[dict[str, Any]])

    def _req_retry_task(self, task_id: str) -> _Req[TaskOut]:
        # Not resent: after a lost answer the task is pending and a second try is a 409.
        return _Req("POST", f"/api/v1/tasks/{task_id}/retry", None, None, False, TaskOut)

    def _req_bulk(self, action: str, body: dict[str, Any]) -> _Req[dict[str, Any]]:
        body = _clean({k: _when(v) for k, v in body.items()})
        # A purge resent matches nothing more; a resent retry could redrive tasks twice.
        safe = action == "purge"
        return _Req("POST", f"/api/v1/tasks/{action}", body, None, safe, dict[str, Any])

    def _req_schedules(self, params: dict[str, Any]) -> _Req[list[dict[str, Any]]]:
        return _Req("GET", "/api/v1/schedules", None, _clean(params), True, list[dict[str, Any]])

    def _req_schedule(
        self, method: str, name: str, body: dict[str, Any] | None = None, action: str = ""
    ) -> _Req[Any]:
        path = f"/api/v1/schedules/{name}" + (f"/{action}" if action else "")
        safe = method in ("GET", "PUT", "DELETE")
        data_type = None if method == "DELETE" else dict[str, Any]
        return _Req(method, path, body, None, safe, data_type)

    def _req_create_schedule(self, body: dict[str, Any]) -> _Req[dict[str, Any]]:
        # Resending is safe: a second create of the same name is a 409, never a second one.
        return _Req("POST", "/api/v1/schedules", _clean(body), None, False, dict[str, Any])

    # -- webhooks (admin, operator) ---------------------------------------------------------
    def _req_create_webhook(self, body: dict[str, Any]) -> _Req[dict[str, Any]]:
        # Never resent: a second POST would register a second webhook.
        return _Req("POST", "/api/v1/webhooks", _clean(body), None, False, dict[str, Any])

    def _req_webhooks(self) -> _Req[list[dict[str, Any]]]:
        return _Req("GET", "/api/v1/webhooks", None, None, True, list[dict[str, Any]])

    def _req_webhook(self, method: str, webhook_id: str) -> _Req[Any]:
        data_type = None if method == "DELETE" else dict[str, Any]
        return _Req(method, f"/api/v1/webhooks/{webhook_id}", None, None, True, data_type)

    def _req_webhook_deliveries(
        self, webhook_id: str, status: str | None, skip: int, limit: int
    ) -> _Req[list[dict[str, Any]]]:
        params = _clean({"status": status, "skip": skip or None, "limit": limit})
        path = f"/api/v1/webhooks/{webhook_id}/deliveries"
        return _Req("GET", path, None, params, True, list[dict[str, Any]])


def _when(value: Any) -> Any:
    """A datetime filter as the API takes it (RFC 3339); anything else as given."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


class _Base(_Requests):
    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout_s: float = 75.0,
        max_retries: int = 3,
        transport: str | None = None,
    ) -> None:
        # One URL, or several servers sharing one store ("http://a:5000,http://b:5000", or a
        # list): the client moves to the next when one is down (`endpoints`).
        self.endpoints = Endpoints(url or os.environ.get("DTQ_URL") or DEFAULT_URL)
        self.url = self.endpoints.current
        self.api_key = api_key or os.environ.get("DTQ_API_KEY")
        self.token = token or os.environ.get("DTQ_TOKEN")
        self.timeout_s = timeout_s  # > the longest long poll (60 s)
        self.max_retries = max_retries
        # "auto" (the fast lane when the server offers it, else HTTP), "tcp", "ws" or "http"
        self.transport = transport_choice(transport)

    @staticmethod
    def _body(req: _Req[Any]) -> bytes | None:
        # msgspec, not httpx's stdlib json: a 500-result ack batch encodes ~10x faster.
        return None if req.json is None else msgspec.json.encode(req.json)

    def _headers(self, req: _Req[Any]) -> dict[str, str]:
        # `content=` (unlike httpx's `json=`) sets no Content-Type: every body says it is JSON.
        body_type = {} if req.json is None else {"Content-Type": "application/json"}
        return {**self._auth_headers(), **body_type, **req.headers}

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

    @staticmethod
    def _lane_result(req: _Req[T], reply: Any) -> T:
        """A fast-lane reply as `_result` reads a REST response: the same data, the same
        exceptions."""
        if not isinstance(reply, ReplyIn):
            raise wire_error(reply)
        if req.data_type is None:
            return None  # type: ignore[return-value]
        decoded: T = msgspec.msgpack.decode(reply.data, type=req.data_type)
        return decoded

    def _backoff_s(self, attempt: int, exc: Exception) -> float | None:
        """Seconds to wait before resend number `attempt + 1`, or None to give up and raise."""
        if attempt >= self.max_retries:
            return None
        if isinstance(exc, RateLimited):
            return float(exc.retry_after_s)
        return CLIENT_RETRY.delay_s(attempt + 1, random.random())

    def _hello(self) -> dict[str, Any]:
        return {"api_key": self.api_key} if self.api_key else {"token": self.token}

    def _resend_delay_s(
        self, req: _Req[Any], exc: Exception, attempt: int, sent_to: str
    ) -> float | None:
        """After `exc` from server `sent_to`: seconds to wait before sending `req` again
        (`self.url` may now name another server), or None to raise.

        With several servers, one that is down is left at once for the next, and the first
        round over the others goes without waiting; a request that never reached a server
        (connection refused) may go to another whatever it is."""
        others = len(self.endpoints) - 1
        moved = others > 0 and server_down(exc)
        if moved:  # later requests go elsewhere too, even if this one is not resent
            self.url = self.endpoints.failed(sent_to)
        if not (self._retryable(req, exc) or (others and never_arrived(exc))):
            return None
        if moved:
            if attempt < others:
                return 0.0  # the first round over the other servers: at once
            attempt -= others
        return self._backoff_s(attempt, exc)

    def _retryable(self, req: _Req[Any], exc: Exception) -> bool:
        if isinstance(exc, RateLimited | Unavailable):
            return True  # the server refused before doing anything
        return isinstance(exc, httpx.TransportError) and req.retry_on_disconnect
