"""One fast-lane connection: messages in, the same core calls as the REST routes, replies out.

Transport-neutral: `run(receive, write)` gets the next message (bytes) from `receive` and hands
batches of encoded replies to `write`; `listener` (TCP/TLS) and `ws` (`/ws/session`) adapt it.

- The first message must be `hello`; anything else, or credentials that do not authenticate,
  gets an `error` frame (`closing: true`) and the connection ends.
- Each later message is one request, exactly as REST handles it: its credentials are checked
  again (a revoked key or a changed password ends the connection), it is counted against the
  caller's rate limits, its permission is required, and leases are fenced by the caller's
  identity. Requests run concurrently (at most `MAX_IN_FLIGHT`); replies go out as they finish.
- Output waits in a bounded queue (`Outbox`; a transport with a direct path sends a reply at
  once when nothing is queued); a peer that does not read within `WRITE_TIMEOUT_S`, or that
  lets a notice find the queue full, is disconnected. The core never waits for a socket.
- Push mode: `credit` lets a per-connection loop lease (the core's long poll) and `push` tasks.
  Pushed tasks the worker has not acknowledged with `started` (nor finished) are handed back
  (`release`) the moment the connection ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
import trio

from dtq import __version__
from dtq.core.auth import Permission, Principal, Role
from dtq.errors import DtqError, InvalidRequest, Unauthorized, Unavailable
from dtq.models import (
    AckOutcome,
    AckRequest,
    BatchCreate,
    CompleteRequest,
    ExtendRequest,
    FailRequest,
    LeaseRequest,
    ReleaseRequest,
    Task,
    TaskCreate,
    error_from_input,
)
from dtq.models import Heartbeat as HeartbeatBody
from dtq.net.envelope import error_info
from dtq.net.protocol.bodies import decode_body
from dtq.net.protocol.hub import Hub
from dtq.net.protocol.outbox import Outbox, SendNow
from dtq.net.routes.tasks import caller_of
from dtq.net.routing import Services
from dtq.net.views import task_out, worker_out
from dtq.wire import (
    PROTOCOL_VERSION,
    Ack,
    Cancel,
    Cancelled,
    Complete,
    Credit,
    Error,
    Extend,
    Fail,
    Get,
    Heartbeat,
    Hello,
    Lease,
    Pause,
    Ping,
    Push,
    Release,
    Reply,
    Started,
    Submit,
    SubmitMany,
    Welcome,
    any_id_decoder,
    encoder,
    request_decoder,
)

log = structlog.get_logger("dtq.protocol")

MAX_IN_FLIGHT = 1024  # requests of one connection running at once; then it is read no further
OUT_QUEUE_FRAMES = 4096  # encoded frames waiting for a slow peer; handlers wait when full
WRITE_TIMEOUT_S = 30.0  # a peer that takes longer to accept one batch is disconnected
WRITE_BATCH = 256  # frames per write: many small frames become one send under load
PUSH_WAIT_S = 60.0  # the push loop's long poll (LeaseRequest.wait's maximum)
MAX_PUSH_BATCH = 100  # LeaseRequest.max_tasks's maximum

Receive = Callable[[], Awaitable["bytes | str | None"]]
Write = Callable[[list[bytes]], Awaitable[None]]


class CloseConnection(Exception):
    """Ends the session after the frames already queued are written."""


def error_frame(request_id: int, exc: DtqError, *, closing: bool = False) -> Error:
    info = error_info(exc)
    retry_after = getattr(exc, "retry_after_s", None)
    return Error(id=request_id, status=exc.status, code=info["code"], message=info["message"],
                 details=info["details"], retry_after_s=retry_after if retry_after else None,
                 closing=closing)  # fmt: skip


def _request_id(payload: bytes) -> int:
    try:
        rid = any_id_decoder.decode(payload).id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return 0
    return rid if isinstance(rid, int) and rid > 0 else 0


def _malformed(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidRequest:
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):  # (a ValidationError is a DecodeError)
        return InvalidRequest("Malformed frame: not one MessagePack message", field="frame",
                              reason=text)  # fmt: skip
    field = "op" if "`$.op`" in text or "`op`" in text else "frame"
    return InvalidRequest(f"Invalid message: {text}", field=field, reason=text)


class Session:
    def __init__(self, svc: Services, hub: Hub, peer: str, max_frame_bytes: int) -> None:
        self.svc = svc
        self.hub = hub
        self.peer = peer
        self.max_frame_bytes = max_frame_bytes
        self._out = Outbox(OUT_QUEUE_FRAMES, WRITE_BATCH)
        self._slots = trio.Semaphore(MAX_IN_FLIGHT)
        self._credentials: tuple[str | None, str | None] | None = None
        self.principal: Principal | None = None
        self.held: set[str] = set()  # task ids the hub tracks for this connection
        self.pushed: dict[str, str] = {}  # pushed, not yet `started`: task id -> lease id
        self.credit = 0
        self._subscription: Credit | None = None
        self._credit_given = trio.Event()
        self._push_scope: trio.CancelScope | None = None
        self._push_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._closing = False

    # -- life cycle ----------------------------------------------------------------------
    async def run(self, receive: Receive, write: Write, send_now: SendNow | None = None) -> None:
        """Serve the connection; `send_now`: the transport's direct path (see `Outbox`)."""
        self._out.send_now = send_now
        self.hub.sessions.add(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    writer_done = trio.Event()
                    nursery.start_soon(self._write_loop, write, writer_done)
                    nursery.start_soon(self._push_loop)
                    with contextlib.suppress(CloseConnection):
                        await self._read_loop(receive, nursery)
                    # Flush what is queued (an error frame saying why we close), then stop.
                    self._out.close()
                    with trio.move_on_after(WRITE_TIMEOUT_S):
                        await writer_done.wait()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._hand_back_unstarted()
            self.hub.forget(self)

    async def _read_loop(self, receive: Receive, nursery: trio.Nursery) -> None:
        while True:
            payload = await receive()
            if payload is None:
                return
            if isinstance(payload, str):
                await self._refuse(0, InvalidRequest(
                    "Send binary messages: one MessagePack message each", field="frame",
                    reason="text message"))  # fmt: skip
                continue
            if len(payload) > self.max_frame_bytes:
                self.principal = None  # a peer that ignores the limit is not talked to further
                await self._refuse(0, InvalidRequest(
                    f"frame of {len(payload)} bytes is larger than the limit of "
                    f"{self.max_frame_bytes} bytes", field="frame", reason="frame too large",
                    max_frame_bytes=self.max_frame_bytes))  # fmt: skip
            try:
                msg = request_decoder.decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                await self._refuse(_request_id(payload), _malformed(exc))
                continue
            if self.principal is None:
                await self._hello(msg)
                continue
            if isinstance(msg, Hello):
                await self._refuse(msg.id, InvalidRequest(
                    "Already authenticated: hello comes once, first", field="op",
                    reason="duplicate hello"))  # fmt: skip
                continue
            outcome = None
            if type(msg) is Started:
                # Applied as read, before what follows it: an end of stream right behind it
                # (a worker killed as its handler begins) must not hand these tasks back,
                # and the request itself may still wait (a credential read) and be cut off.
                # The reply still passes every check a request does.
                outcome = self._mark_started(msg.task_ids)
            try:
                self._slots.acquire_nowait()  # a free slot: no scheduler round per message
            except trio.WouldBlock:
                await self._slots.acquire()
            nursery.start_soon(self._serve_one, msg, outcome)

    async def _refuse(self, request_id: int, exc: DtqError) -> None:
        """An error frame; before `hello` every refusal also ends the connection."""
        closing = self.principal is None
        await self._send(error_frame(request_id, exc, closing=closing))
        if closing:
            raise CloseConnection

    def shutdown(self) -> None:
        """Server shutdown: say so and close (in-flight requests are cancelled)."""
        if self._closing:
            return
        self._closing = True
        frame = error_frame(0, Unavailable("Server shutting down", reason="shutting down"),
                            closing=True)  # fmt: skip
        self._out.offer(encoder.encode(frame))  # (a full queue: the peer is not reading anyway)
        self._scope.deadline = trio.current_time() + 1.0  # time to write the notice

    def abort(self, why: str) -> None:
        log.info("protocol connection dropped", peer=self.peer, reason=why)
        self._scope.cancel()

    # -- output --------------------------------------------------------------------------
    async def _send(self, message: Any) -> None:
        # Room in the queue (the usual case): no trip through trio's scheduler for it.
        await self._out.put(encoder.encode(message))

    def _send_nowait(self, message: Any) -> None:
        if not self._out.offer(encoder.encode(message)):
            self.abort("peer too slow: output queue full")

    async def _write_loop(self, write: Write, done: trio.Event) -> None:
        try:
            if not await self._out.run(write, WRITE_TIMEOUT_S):
                self.abort("peer not reading")
        finally:
            done.set()
            self._scope.cancel()  # no more output: the connection is over

    def notice_cancelled(self, task_id: str, status: str) -> None:
        """Hub: a task this connection holds was cancelled or deleted."""
        self.pushed.pop(task_id, None)
        self._send_nowait(Cancelled(task_id=task_id, status=status))

    # -- authentication, rate limits -------------------------------------------------------
    async def _hello(self, msg: Any) -> None:
        if not isinstance(msg, Hello):
            await self._refuse(msg.id, Unauthorized(
                "Send hello (with an API key or a token) before anything else",
                reason="missing_credentials"))  # fmt: skip
            return
        try:
            if msg.api_key is None and msg.token is None:
                raise Unauthorized("Authentication required", reason="missing_credentials")
            try:
                principal = await self.svc.accounts.authenticate(msg.api_key, msg.token)
            except Unauthorized:
                self._charge(Principal.anonymous(self.peer))  # guessing is rate-limited too
                raise
            assert principal is not None
            self._charge(principal)
        except DtqError as exc:
            await self._refuse(msg.id, exc)
            return
        self._credentials = (msg.api_key, msg.token)
        self.principal = principal
        await self._send(Welcome(id=msg.id, protocol=PROTOCOL_VERSION, server=__version__,
                                 max_frame_bytes=self.max_frame_bytes,
                                 role=principal.role.value if principal.role else "",
                                 principal=principal.identity))  # fmt: skip

    async def _authenticate(self) -> Principal:
        """The caller, checked again as REST checks every request's credentials."""
        assert self._credentials is not None
        principal = await self.svc.accounts.authenticate(*self._credentials)
        if principal is None:  # pragma: no cover - hello required credentials
            raise Unauthorized("Authentication required", reason="missing_credentials")
        self.principal = principal
        return principal

    def _charge(self, principal: Principal) -> None:
        settings = self.svc.settings
        if principal.role is Role.WORKER:
            per_minute, per_hour = principal.rate_limits(
                settings.worker_rate_limit_per_minute, settings.worker_rate_limit_per_hour
            )
        else:
            per_minute, per_hour = principal.rate_limits(
                settings.rate_limit_per_minute, settings.rate_limit_per_hour
            )
        decision = self.svc.limiter.hit(principal.identity, time.time(), per_minute, per_hour)
        if not decision.allowed:
            raise decision.error()

    # -- requests --------------------------------------------------------------------------
    async def _serve_one(self, msg: Any, outcome: tuple[int, Any] | None = None) -> None:
        """`outcome`: the reply's status and data when the read loop did the work already."""
        try:
            try:
                principal = await self._authenticate()
            except Unauthorized as exc:
                await self._send(error_frame(msg.id, exc, closing=True))
                self._out.close()  # the writer flushes the notice, then the session ends
                return
            self._charge(principal)
            handler, permission = _HANDLERS[type(msg)]
            if permission is not None:
                principal.require(permission)
            status, data = outcome or await handler(self, msg, principal)
            await self._send(_reply(msg.id, status, data))
        except DtqError as exc:
            await self._send(error_frame(msg.id, exc))
        except Exception:  # the boundary: a bug answers this request, never the connection
            log.exception("protocol request failed", op=type(msg).__name__, peer=self.peer)
            await self._send(error_frame(msg.id, DtqError()))
        finally:
            self._slots.release()

    async def _ping(self, msg: Ping, p: Principal) -> tuple[int, Any]:
        return 200, None

    async def _submit(self, msg: Submit, p: Principal) -> tuple[int, Any]:
        task, created = await self.svc.queue.create(decode_body(msg.body, TaskCreate), p.identity)
        return (201 if created else 200), task_out(task)

    async def _submit_many(self, msg: SubmitMany, p: Principal) -> tuple[int, Any]:
        rows = await self.svc.queue.create_many(
            decode_body(msg.body, BatchCreate).tasks, p.identity
        )
        return 201, [task_out(t) for t, _ in rows]

    async def _get(self, msg: Get, p: Principal) -> tuple[int, Any]:
        return 200, task_out(await self.svc.queue.get(msg.task_id))

    async def _cancel(self, msg: Cancel, p: Principal) -> tuple[int, Any]:
        return 200, task_out(await self.svc.queue.cancel(msg.task_id, p.identity))

    async def _lease(self, msg: Lease, p: Principal) -> tuple[int, Any]:
        tasks = await self.svc.queue.lease(decode_body(msg.body, LeaseRequest), holder=p.identity)
        for task in tasks:
            self.hub.track(self, task)
        return 200, [task_out(t, lease_id=True) for t in tasks]

    async def _credit(self, msg: Credit, p: Principal) -> tuple[int, Any]:
        self._subscription = msg
        self.credit += msg.n
        if self.credit > 0:
            self._credit_given.set()
        return 200, {"credit": self.credit}

    async def _pause(self, msg: Pause, p: Principal) -> tuple[int, Any]:
        self.credit = 0
        if self._push_scope is not None:
            self._push_scope.cancel()
        async with self._push_lock:  # the push in progress, if any, is out before the reply
            pass
        return 200, {"credit": 0}

    async def _started(self, msg: Started, p: Principal) -> tuple[int, Any]:
        return self._mark_started(msg.task_ids)  # (the read loop does it first; see there)

    def _mark_started(self, task_ids: list[str]) -> tuple[int, Any]:
        started = sum(1 for tid in task_ids if self.pushed.pop(tid, None) is not None)
        return 200, {"started": started}

    async def _complete(self, msg: Complete, p: Principal) -> tuple[int, Any]:
        b = decode_body(msg.body, CompleteRequest)
        task = await self.svc.queue.complete(
            msg.task_id, b.lease_id, b.result, caller_of(p), p.identity
        )
        self.pushed.pop(task.id, None)
        return 200, task_out(task)

    async def _fail(self, msg: Fail, p: Principal) -> tuple[int, Any]:
        b = decode_body(msg.body, FailRequest)
        task = await self.svc.queue.fail(
            msg.task_id, b.lease_id, error_from_input(b.error), b.retry, caller_of(p), p.identity
        )
        self.pushed.pop(task.id, None)
        return 200, task_out(task)

    async def _extend(self, msg: Extend, p: Principal) -> tuple[int, Any]:
        b = decode_body(msg.body, ExtendRequest)
        task = await self.svc.queue.extend(
            msg.task_id, b.lease_id, b.lease_seconds, caller_of(p), p.identity
        )
        return 200, task_out(task)

    async def _release(self, msg: Release, p: Principal) -> tuple[int, Any]:
        b = decode_body(msg.body, ReleaseRequest)
        task = await self.svc.queue.release(msg.task_id, b.lease_id, caller_of(p), p.identity)
        self.pushed.pop(task.id, None)
        return 200, task_out(task)

    async def _ack(self, msg: Ack, p: Principal) -> tuple[int, Any]:
        acks = decode_body(msg.body, AckRequest).acks
        outcomes = [
            AckOutcome(id=a.id, ok=True, status=a.task.status)
            if a.task is not None
            else AckOutcome(id=a.id, ok=False, error=error_info(a.error) if a.error else None)
            for a in await self.svc.queue.ack(acks, caller_of(p), p.identity)
        ]
        for item in acks:
            self.pushed.pop(item.id, None)
        ok = sum(1 for o in outcomes if o.ok)
        return 200, {"results": outcomes, "succeeded": ok, "failed": len(outcomes) - ok}

    async def _heartbeat(self, msg: Heartbeat, p: Principal) -> tuple[int, Any]:
        return 200, worker_out(await self.svc.queue.heartbeat(decode_body(msg.body, HeartbeatBody)))

    # -- push mode -------------------------------------------------------------------------
    async def _push_loop(self) -> None:
        """While there is credit: the core's long poll for this connection, tasks pushed as
        they come. Not a second dispatcher: the same `lease` REST's long poll uses."""
        queue = self.svc.queue
        while True:
            if self.credit <= 0 or self._subscription is None:
                self._credit_given = trio.Event()
                await self._credit_given.wait()
                continue
            if queue.closing:
                await trio.sleep_forever()  # shutdown closes this connection
            async with self._push_lock:
                sub = self._subscription
                tasks: list[Task] = []
                with trio.CancelScope() as scope:
                    self._push_scope = scope
                    try:
                        principal = await self._authenticate()
                        principal.require(Permission.TASKS_WORK)
                    except DtqError as exc:
                        await self._send(error_frame(0, exc, closing=True))
                        self._out.close()
                        return
                    req = LeaseRequest(
                        worker_id=sub.worker_id, queues=sub.queues, names=sub.names,
                        max_tasks=min(self.credit, MAX_PUSH_BATCH), wait=PUSH_WAIT_S,
                        lease_seconds=sub.lease_seconds,
                    )  # fmt: skip
                    try:
                        tasks = await queue.lease(req, holder=principal.identity)
                    except Unavailable as exc:  # storage trouble: say so, try again shortly
                        self._send_nowait(error_frame(0, exc))
                        await trio.sleep(1.0)
                self._push_scope = None
                if tasks:
                    await self._push(tasks)

    async def _push(self, tasks: list[Task]) -> None:
        self.credit -= len(tasks)
        for task in tasks:
            assert task.lease is not None
            self.pushed[task.id] = task.lease.id
            self.hub.track(self, task)
        sent = False
        # Not interrupted by `pause`: leased tasks go out (or back) as one.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(WRITE_TIMEOUT_S):
                await self._out.put(
                    encoder.encode(Push(tasks=[task_out(t, lease_id=True) for t in tasks]))
                )
                sent = True
        if not sent:
            self.abort("peer not reading")

    async def _hand_back_unstarted(self) -> None:
        """Pushed tasks the worker never said it started are ready again at once."""
        pushed, self.pushed = self.pushed, {}
        for task_id, lease_id in pushed.items():
            # finished, cancelled or re-leased meanwhile: nothing to hand back
            with contextlib.suppress(DtqError):
                await self.svc.queue.release(task_id, lease_id, None)
        if pushed:
            log.info("handed back unstarted pushed tasks", peer=self.peer, tasks=len(pushed))


def _reply(request_id: int, status: int, data: Any) -> Reply:
    return Reply(id=request_id, status=status, data=data)


_Handler = Callable[[Session, Any, Principal], Awaitable[tuple[int, Any]]]
P = Permission
_HANDLERS: dict[type, tuple[_Handler, Permission | None]] = {
    Ping: (Session._ping, None),
    Submit: (Session._submit, P.TASKS_CREATE),
    SubmitMany: (Session._submit_many, P.TASKS_CREATE),
    Get: (Session._get, P.TASKS_READ),
    Cancel: (Session._cancel, P.TASKS_WRITE),
    Lease: (Session._lease, P.TASKS_WORK),
    Credit: (Session._credit, P.TASKS_WORK),
    Pause: (Session._pause, P.TASKS_WORK),
    Started: (Session._started, P.TASKS_WORK),
    Complete: (Session._complete, P.TASKS_WORK),
    Fail: (Session._fail, P.TASKS_WORK),
    Extend: (Session._extend, P.TASKS_WORK),
    Release: (Session._release, P.TASKS_WORK),
    Ack: (Session._ack, P.TASKS_WORK),
    Heartbeat: (Session._heartbeat, P.WORKERS_HEARTBEAT),
}
