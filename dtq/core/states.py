"""The task state machine and leases, as pure functions of (task, inputs, now).

Nothing here does I/O or reads a clock; callers pass `now` (epoch seconds). Every function
returns a new Task (msgspec.structs.replace) and raises before anything could be written.
"""

from __future__ import annotations

import hashlib
from datetime import UTC
from typing import Any

import msgspec
from msgspec.structs import replace

from dtq.errors import InvalidRequest, InvalidTransition, LeaseLost
from dtq.ids import new_lease_id
from dtq.models import Lease, Task, TaskCreate, TaskError, TaskStatus, TaskUpdate
from dtq.retry import RetryPolicy

S = TaskStatus

# The one table of allowed transitions. RUNNING -> PENDING is a retry (after a failure or an
# expired lease); final states have no way out.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.PENDING, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

LEASE_EXPIRED = "lease_expired"
TIMED_OUT = "timeout"

_fingerprint_encoder = msgspec.msgpack.Encoder(order="deterministic")
_plain_encoder = msgspec.msgpack.Encoder()


def check_transition(task: Task, to: TaskStatus) -> None:
    if to not in TRANSITIONS[task.status]:
        raise InvalidTransition(
            f"task {task.id} is {task.status}; it cannot become {to}",
            field="status",
            reason=f"{task.status} -> {to} is not allowed",
        )


def new_task(body: TaskCreate, *, task_id: str, seq: int, now: float) -> Task:
    run_at = None
    if body.run_at is not None:
        # A time without an offset is UTC (never the server's local zone).
        given = body.run_at if body.run_at.tzinfo else body.run_at.replace(tzinfo=UTC)
        run_at = given.timestamp()
    if body.delay is not None:
        run_at = now + body.delay
    if run_at is not None and run_at <= now:
        run_at = None  # already due: plain FIFO order
    return Task(
        id=task_id,
        name=body.name,
        description=body.description,
        priority=body.priority,
        status=S.PENDING,
        queue=body.queue,
        payload=body.payload,
        retry_count=body.retry_count,
        timeout=body.timeout,
        created_at=now,
        updated_at=now,
        seq=seq,
        run_at=run_at,
        idempotency_key=body.idempotency_key,
        tags=list(body.tags),
        retry_backoff_s=body.retry_backoff_s,
        retry_backoff_max_s=body.retry_backoff_max_s,
        ready_at=run_at or now,
        concurrency_key=body.concurrency_key,
    )


def fingerprint(body: TaskCreate) -> bytes:
    """Identifies a create body, to tell a replay from a different task under the same key."""
    raw = _fingerprint_encoder.encode(body)
    if body.concurrency_key is None:
        # Fields added since keys were first stored are left out when unset, so a replay of a
        # body sent before the upgrade still matches its stored fingerprint.
        fields = msgspec.msgpack.decode(raw)
        del fields["concurrency_key"]
        raw = _plain_encoder.encode(fields)  # keeps the decoded (field, then sorted) order
    return hashlib.blake2b(raw, digest_size=16).digest()


def is_due(task: Task, now: float) -> bool:
    return task.status == S.PENDING and (task.run_at is None or task.run_at <= now)


def attempt_deadline(task: Task) -> float:
    """No lease may run past the attempt's start + timeout."""
    assert task.started_at is not None
    return task.started_at + task.timeout


def grant_lease(
    task: Task, *, worker_id: str, lease_s: float, now: float, holder: str | None = None
) -> Task:
    """`holder` is the principal taking the lease; only it (or an admin) may act on it."""
    check_transition(task, S.RUNNING)
    lease = Lease(
        id=new_lease_id(),
        worker_id=worker_id,
        granted_at=now,
        expires_at=min(now + lease_s, now + task.timeout),
        holder=holder,
        ttl_s=lease_s,
    )
    return replace(
        task,
        status=S.RUNNING,
        attempts=task.attempts + 1,
        deliveries=task.deliveries + 1,
        worker_id=worker_id,
        lease=lease,
        started_at=now,
        updated_at=now,
        run_at=None,
    )


def check_lease(task: Task, lease_id: str, now: float, caller: str | None = None) -> Lease:
    """The fencing check: only the task's current, unexpired lease may act on it, and only
    its holder. `caller` is the acting principal's identity; None skips the holder check (an
    admin, or the server itself). A caller that is not the holder gets the very answer an
    unknown lease id gets: whether the id was right is not for it to learn."""
    lease = task.lease
    if (
        task.status != S.RUNNING
        or lease is None
        or lease.id != lease_id
        or (caller is not None and lease.holder is not None and lease.holder != caller)
    ):
        raise LeaseLost(
            f"lease {lease_id} is not the current lease of task {task.id} (status {task.status})",
            field="lease_id",
            reason="stale or unknown lease",
        )
    if lease.expires_at <= now:
        raise LeaseLost(
            f"lease {lease_id} of task {task.id} expired",
            field="lease_id",
            reason="lease expired",
        )
    return lease


def extend_lease(
    task: Task, *, lease_id: str, lease_s: float, now: float, caller: str | None = None
) -> Task:
    lease = check_lease(task, lease_id, now, caller)
    wanted = min(now + lease_s, attempt_deadline(task))
    if wanted <= lease.expires_at:  # e.g. a restart's grace reaching past the deadline
        return replace(task, lease=replace(lease, ttl_s=lease_s), updated_at=now)
    # Extended by the holder: from now on it ends like any lease (a timeout at the deadline).
    lease = replace(lease, expires_at=wanted, ttl_s=lease_s, grace=False)
    return replace(task, lease=lease, updated_at=now)


def restart_grace(task: Task, *, now: float) -> Task:
    """A lease live when the server went down gets its own length again from the restart, so
    a worker that kept running can still report. Past the attempt's deadline if need be: the
    downtime is not the handler's fault, so such a lease ends as a lost lease, never a timeout."""
    lease = task.lease
    if task.status != S.RUNNING or lease is None:
        raise InvalidTransition(f"task {task.id} holds no lease")
    expires_at = max(lease.expires_at, now + lease.length_s)
    return replace(task, lease=replace(lease, expires_at=expires_at, grace=True))


def complete(
    task: Task, *, lease_id: str, result: Any, now: float, caller: str | None = None
) -> Task:
    check_lease(task, lease_id, now, caller)
    check_transition(task, S.COMPLETED)
    return _finish(task, S.COMPLETED, now, result=result, error=None)


def fail(
    task: Task,
    *,
    lease_id: str,
    error: TaskError,
    retry: bool | None,
    now: float,
    policy: RetryPolicy,
    rand: float,
    caller: str | None = None,
) -> Task:
    """A reported failure: retry with backoff while retries are left (unless retry=False)."""
    check_lease(task, lease_id, now, caller)
    return _failed_attempt(task, error, retry is not False, now, policy, rand, delay=True)


def expire(
    task: Task, *, now: float, policy: RetryPolicy, rand: float, max_deliveries: int = 10
) -> Task:
    """The reaper's verdict on a running task whose lease ran out.

    At the attempt's deadline it is a timeout: a handler failure, retried while retries are
    left. Before it, the lease was lost (worker gone, server down): the task is ready again at
    once without using a retry, until `max_deliveries` leases were lost (a poison task that
    kills its workers), and then it fails with `lease_expired`."""
    lease = task.lease
    if task.status != S.RUNNING or lease is None or lease.expires_at > now:
        raise InvalidTransition(f"task {task.id} has no expired lease")
    timed_out = (
        not lease.grace
        and task.started_at is not None
        and lease.expires_at >= attempt_deadline(task)
    )
    if timed_out:
        error = TaskError(
            message=f"attempt {task.attempts} exceeded the task timeout of {task.timeout:g} s",
            type=TIMED_OUT,
        )
        return _failed_attempt(task, error, True, now, policy, rand, delay=False)
    lost = task.lost_leases + 1
    if lost >= max_deliveries:
        error = TaskError(
            message=f"{lost} leases ran out without a result (the last held by worker "
            f"{lease.worker_id}); max_deliveries is {max_deliveries}",
            type=LEASE_EXPIRED,
        )
        return _finish(replace(task, lost_leases=lost), S.FAILED, now, result=None, error=error)
    check_transition(task, S.PENDING)
    error = TaskError(
        message=f"lease of worker {lease.worker_id} expired without a result "
        f"({lost} of {max_deliveries} deliveries lost; no retry used)",
        type=LEASE_EXPIRED,
    )
    return replace(
        task,
        status=S.PENDING,
        lease=None,
        error=error,
        lost_leases=lost,
        run_at=None,
        ready_at=now,
        updated_at=now,
    )


def _failed_attempt(
    task: Task,
    error: TaskError,
    retry_allowed: bool,
    now: float,
    policy: RetryPolicy,
    rand: float,
    *,
    delay: bool,
) -> Task:
    # Attempts whose lease was lost were not the handler's failures: they use no retry.
    retries_used = task.attempts - 1 - task.lost_leases
    if retry_allowed and retries_used < task.retry_count:
        check_transition(task, S.PENDING)
        run_at = None
        if delay:
            own = RetryPolicy(
                base_s=task.retry_backoff_s or policy.base_s,
                cap_s=task.retry_backoff_max_s or policy.cap_s,
                jitter=policy.jitter,
            )
            run_at = now + own.delay_s(retries_used + 1, rand)
        return replace(
            task,
            status=S.PENDING,
            lease=None,
            error=error,
            run_at=run_at,
            ready_at=run_at or now,
            updated_at=now,
        )
    check_transition(task, S.FAILED)
    return _finish(task, S.FAILED, now, result=None, error=error)


def _finish(
    task: Task, status: TaskStatus, now: float, *, result: Any, error: TaskError | None
) -> Task:
    started = task.started_at if task.started_at is not None else now
    return replace(
        task,
        status=status,
        lease=None,
        result=result,
        error=error,
        completed_at=now,
        duration=max(now - started, 0.0),
        updated_at=now,
    )


def release(task: Task, *, lease_id: str, now: float, caller: str | None = None) -> Task:
    """A worker hands a task back unstarted (e.g. shutting down): ready again at once, and the
    attempt it was granted is not counted against its retries."""
    check_lease(task, lease_id, now, caller)
    check_transition(task, S.PENDING)
    return replace(
        task,
        status=S.PENDING,
        lease=None,
        run_at=None,
        ready_at=now,
        attempts=max(task.attempts - 1, 0),
        updated_at=now,
    )


def cancel(task: Task, *, now: float) -> Task:
    check_transition(task, S.CANCELLED)
    return replace(task, status=S.CANCELLED, lease=None, completed_at=now, updated_at=now)


def apply_update(task: Task, update: TaskUpdate, *, now: float) -> Task:
    """PUT semantics: `status` may only become `cancelled`; other fields only while pending."""
    if update.status is not None:
        if update.status != S.CANCELLED:
            raise InvalidRequest(
                "status can only be set to 'cancelled'; workers report results through leases",
                field="status",
                reason=f"cannot set status to {update.status}",
            )
        if task.status == S.CANCELLED:
            return task  # cancelling twice is not an error
        task = cancel(task, now=now)
    changes: dict[str, Any] = {}
    for field in ("description", "priority", "retry_count", "timeout", "tags"):
        value = getattr(update, field)
        if value is not None:
            changes[field] = value
    if update.payload is not msgspec.UNSET:
        changes["payload"] = update.payload
    if not changes:
        return task
    if task.status != S.PENDING:
        raise InvalidTransition(
            f"task {task.id} is {task.status}; only pending tasks can be edited",
            field="status",
            reason="not pending",
        )
    return replace(task, updated_at=now, **changes)
