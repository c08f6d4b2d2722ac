"""WebSockets: /ws/tasks (task and worker events) and /ws/metrics (the dashboard, live).

Messages are JSON: one event `{"event": "task.completed", "task": {...}, "timestamp": ...}`, or,
when several are waiting, `{"event": "batch", "count": n, "events": [<event>, ...]}`; a
`{"event": "lagged", "missed": n}` notice when a slow reader lost events; `{"event": "ping"}`
on idle connections.

Credentials: `Authorization: Bearer`, `X-API-Key`, or for browsers (which cannot set headers)
`?token=`, `?api_key=` or the subprotocols `["bearer", "<token>"]`; exactly one of them (more
is 401, as for HTTP). Refused before the upgrade with 401/403 in the guide's error format.
While open, the credentials are checked again every `DTQ_WS_RECHECK_S` (5 s): once they no
longer hold (key revoked, user deleted or disabled, token expired, role changed), the socket
is closed with 1008 and the error's code and message as the reason.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import trio
from quart import websocket

from dtq.core.auth import Permission, Principal, bearer_of, single_credential
from dtq.errors import DtqError, Forbidden, InvalidRequest, Unauthorized
from dtq.net.envelope import decode_query, encode, error_body, now_iso
from dtq.net.events import Event, EventBus
from dtq.net.routing import Services, respond

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008  # the credentials the socket opened with no longer hold
REASON_MAX_BYTES = 123  # a close frame's reason fits in 125 bytes with its code
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


class _Caller(msgspec.Struct, frozen=True):
    """A socket's credentials, kept so they can be checked again while it is open."""

    api_key: str | None
    bearer: str | None
    permission: Permission


async def _check(svc: Services, caller: _Caller) -> Principal:
    principal = await svc.accounts.authenticate(caller.api_key, caller.bearer)
    if principal is None:
        raise Unauthorized("Authentication required", reason="missing_credentials")
    principal.require(caller.permission)
    return principal


async def _authorize(svc: Services, permission: Permission) -> tuple[_Caller, str | None]:
    api_key, bearer, subprotocol = _credentials()
    caller = _Caller(api_key, bearer, permission)
    await _check(svc, caller)
    return caller, subprotocol


async def _recheck(svc: Services, caller: _Caller, revoked: list[DtqError],
                   scope: trio.CancelScope) -> None:  # fmt: skip
    """Check the credentials again every `ws_recheck_s`, as REST checks every request's: a
    revoked key, a deleted or disabled user, an expired token or a role that lost the
    permission ends the stream (`revoked` says why). The database being unreachable does not:
    that is not the caller's doing, and the next check tries again."""
    every = svc.settings.ws_recheck_s
    if every <= 0:
        return
    while True:
        await trio.sleep(every)
        try:
            await _check(svc, caller)
        except (Unauthorized, Forbidden) as exc:
            revoked.append(exc)
            scope.cancel()
            return
        except DtqError:
            continue


async def _close_revoked(revoked: list[DtqError]) -> None:
    """Close a socket whose credentials stopped holding: 1008 (policy violation), and why."""
    exc = revoked[0]
    reason = f"{exc.code}: {exc.message}".encode()[:REASON_MAX_BYTES].decode(errors="ignore")
    await websocket.close(CLOSE_POLICY_VIOLATION, reason)


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
            caller, subprotocol = await _authorize(svc, Permission.TASKS_READ)
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

        revoked: list[DtqError] = []
        with bus.subscribe(accept) as sub:
            await websocket.accept(subprotocol=subprotocol)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain_incoming, nursery.cancel_scope)
                nursery.start_soon(_recheck, svc, caller, revoked, nursery.cancel_scope)
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
        if revoked:
            await _close_revoked(revoked)
        return None

    @app.websocket("/ws/metrics")
    async def ws_metrics() -> Any:
        try:
            caller, subprotocol = await _authorize(svc, Permission.ANALYTICS_READ)
            q: MetricsQuery = _query(MetricsQuery)
            if not (0.1 <= q.interval <= 3600) or math.isnan(q.interval):
                raise InvalidRequest("interval must be between 0.1 and 3600 seconds",
                                     field="interval")  # fmt: skip
        except DtqError as exc:
            return respond(error_body(exc), exc.status)
        revoked: list[DtqError] = []
        with bus.subscribe():  # counted as a subscriber, so events are published
            await websocket.accept(subprotocol=subprotocol)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain_incoming, nursery.cancel_scope)
                nursery.start_soon(_recheck, svc, caller, revoked, nursery.cancel_scope)
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
        if revoked:
            await _close_revoked(revoked)
        return None


async def _drain_incoming(scope: trio.CancelScope) -> None:
    """Read (and ignore) client messages, so a client's close is noticed at once."""
    try:
        while True:
            await websocket.receive()
    finally:
        scope.cancel()
