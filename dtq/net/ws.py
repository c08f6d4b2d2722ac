"""WebSockets: /ws/tasks (task and worker events) and /ws/metrics (the dashboard, live).

Messages are JSON: one event `{"event": "task.completed", "task": {...}, "timestamp": ...}`, or,
when several are waiting, `{"event": "batch", "count": n, "events": [<event>, ...]}`; a
`{"event": "lagged", "missed": n}` notice when a slow reader lost events; `{"event": "ping"}`
on idle connections.

Credentials: `Authorization: Bearer`, `X-API-Key`, or for browsers (which cannot set headers)
`?token=`, `?api_key=` or the subprotocols `["bearer", "<token>"]`; exactly one of them (more
is 401, as for HTTP). Refused before the upgrade with 401/403 in the guide's error format.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import trio
from quart import websocket

from dtq.core.auth import Permission, Principal, bearer_of, single_credential
from dtq.errors import DtqError, InvalidRequest, Unauthorized
from dtq.net.envelope import decode_query, encode, error_body, now_iso
from dtq.net.events import Event, EventBus
from dtq.net.routing import Services, respond

CLOSE_GOING_AWAY = 1001
_MAX_BATCH = 500  # events per WebSocket message when a subscriber has a backlog
_IDLE = b""  # sentinel: nothing happened within the idle-ping interval


def _credentials() -> tuple[str | None, str | None, str | None]:
    """(api key, bearer token, chosen subprotocol). As for HTTP, exactly one credential may be
    sent, wherever it is (header, query or subprotocol); more than one is 401, even if valid."""
    headers, args = websocket.headers, websocket.args
    api_keys = [*headers.getlist("X-API-Key"), *args.getlist("api_key")]
    bearers = [bearer_of(a) for a in headers.getlist("Authorization")]
    subprotocol = None
    protocols = [p.strip() for p in websocket.requested_subprotocols]
    for i, protocol in enumerate(protocols):
        if protocol != "bearer":
            continue
        if i + 1 >= len(protocols):
            raise Unauthorized(
                "The 'bearer' subprotocol must be followed by the token",
                reason="malformed_subprotocol",
            )
        bearers.append(protocols[i + 1])
        subprotocol = "bearer"
    bearers.extend(args.getlist("token"))
    api_key, bearer = single_credential(api_keys, bearers)
    return api_key, bearer, subprotocol


async def _authorize(svc: Services, permission: Permission) -> tuple[Principal, str | None]:
    api_key, bearer, subprotocol = _credentials()
    principal = await svc.accounts.authenticate(api_key, bearer)
    if principal is None:
        raise Unauthorized("Authentication required", reason="missing_credentials")
    principal.require(permission)
    return principal, subprotocol


class TaskFilter(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task_id: str | None = None
    status: str | None = None
    queue: str | None = None
    name: str | None = None
    token: str | None = None
    api_key: str | None = None
    events: str | None = None  # comma-separated kinds, e.g. "task.completed,task.failed"


class MetricsQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: float = 1.0
    token: str | None = None
    api_key: str | None = None


def _query(model: Any) -> Any:
    return decode_query(websocket.args, model)


def register_websockets(app: Any, svc: Services, bus: EventBus) -> None:
    @app.websocket("/ws/tasks")
    async def ws_tasks() -> Any:
        try:
            _, subprotocol = await _authorize(svc, Permission.TASKS_READ)
            f: TaskFilter = _query(TaskFilter)
        except DtqError as exc:
            return respond(error_body(exc), exc.status)
        kinds = frozenset(k.strip() for k in f.events.split(",")) if f.events else None

        def accept(e: Event) -> bool:
            return (
                (f.task_id is None or e.subject_id == f.task_id)
                and (f.status is None or e.status == f.status)
                and (f.queue is None or e.queue == f.queue)
                and (f.name is None or e.name == f.name)
                and (kinds is None or e.kind in kinds)
            )

        with bus.subscribe(accept) as sub:
            await websocket.accept(subprotocol=subprotocol)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain_incoming, nursery.cancel_scope)
                idle_ping_s = svc.settings.ws_idle_ping_s or math.inf
                min_gap_s = svc.settings.ws_min_send_interval_s
                last_sent = -math.inf
                while True:
                    # At most one message per `min_gap_s` per socket: under load events pile up
                    # into fewer, larger messages (a send costs far more than its bytes); when
                    # quiet, the first event still goes out at once.
                    pause = last_sent + min_gap_s - trio.current_time()
                    if pause > 0:
                        await trio.sleep(pause)
                    message: str | bytes | None = _IDLE
                    with trio.move_on_after(idle_ping_s):
                        message = await sub.next_message(_MAX_BATCH)
                    if message is _IDLE:  # keep-alive for proxies that drop quiet connections
                        await websocket.send(
                            encode({"event": "ping", "timestamp": now_iso()}).decode()
                        )
                        continue
                    if message is None:  # server shutting down
                        await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
                        break
                    await websocket.send(message)
                    last_sent = trio.current_time()
                nursery.cancel_scope.cancel()
        return None

    @app.websocket("/ws/metrics")
    async def ws_metrics() -> Any:
        try:
            _, subprotocol = await _authorize(svc, Permission.ANALYTICS_READ)
            q: MetricsQuery = _query(MetricsQuery)
            if not (0.1 <= q.interval <= 3600) or math.isnan(q.interval):
                raise InvalidRequest("interval must be between 0.1 and 3600 seconds",
                                     field="interval")  # fmt: skip
        except DtqError as exc:
            return respond(error_body(exc), exc.status)
        with bus.subscribe():  # counted as a subscriber, so events are published
            await websocket.accept(subprotocol=subprotocol)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain_incoming, nursery.cancel_scope)
                while not bus.closed:
                    d = await svc.queue.dashboard()
                    body = {f: getattr(d, f) for f in d.__struct_fields__}
                    body["timestamp"] = now_iso()
                    await websocket.send(encode(body).decode())
                    # Next push: at the interval, or early (at most 10/s) when something changed.
                    with trio.move_on_after(q.interval):
                        await bus.wait_published()
                        await trio.sleep(min(0.1, q.interval))
                if bus.closed:
                    await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
                nursery.cancel_scope.cancel()
        return None


async def _drain_incoming(scope: trio.CancelScope) -> None:
    """Read (and ignore) client messages, so a client's close is noticed at once."""
    try:
        while True:
            await websocket.receive()
    finally:
        scope.cancel()
