"""Write operations: plain functions of a `StoreTxn`, run by the group-commit writer.

They run in the writer's thread, so they touch nothing but the transaction and their
arguments. Each validates before it writes (the store also isolates each op in a nested
transaction, so a failing op never leaves half its writes behind).
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from dtq.core import history
from dtq.core import states as lifecycle
from dtq.core.history import E
from dtq.core.shared_limits import OVERFETCH, LimitsOf, QueueLimits, admit
from dtq.errors import Conflict, DtqError, InvalidRequest, NotFound
from dtq.ids import new_task_id
from dtq.models import (
    SYSTEM_ACTOR,
    AckItem,
    Heartbeat,
    Task,
    TaskCreate,
    TaskError,
    TaskStatus,
    TaskUpdate,
    Worker,
    WorkerStatus,
    error_from_input,
)
from dtq.retry import RetryPolicy
from dtq.storage.base import SharedTxn, StoreTxn

S = TaskStatus


# The canonical form (what dtq hands out): most ids arrive so and need no uuid.UUID round trip.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_task_id(task_id: str, field: str = "task_id") -> str:
    """Canonical form of a task id, or the guide's INVALID_REQUEST for anything else."""
    if type(task_id) is str and _CANONICAL_ID.fullmatch(task_id):
        return task_id
    try:
        return str(uuid.UUID(task_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequest("Invalid task ID", field=field, reason="Not a valid UUID") from None


def _require(tx: StoreTxn, task_id: str) -> Task:
    task = tx.get_task(task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found", field="task_id", reason="no such task")
    return task


# -- producers ---------------------------------------------------------------------------


def create(tx: StoreTxn, body: TaskCreate, actor: str = SYSTEM_ACTOR) -> tuple[Task, bool]:
    """(task, created). A replay under the same idempotency key returns the first task."""
    fp = b""
    if body.idempotency_key is not None:
        fp = lifecycle.fingerprint(body)
        seen = tx.get_idempotent(body.idempotency_key)
        if seen is not None:
            existing = tx.get_task(seen[0])
            if existing is not None:
                if seen[1] != fp:
                    raise Conflict(
                        "a different task was already created with this idempotency key",
                        field="idempotency_key",
                        reason="key reused with a different body",
                        task_id=existing.id,
                    )
                return existing, False
    task = lifecycle.new_task(body, task_id=new_task_id(), seq=tx.next_seq(), now=tx.now)
    tx.insert_task(task)
    history.record(tx, E.CREATED, task, actor)
    if body.idempotency_key is not None:
        tx.put_idempotent(body.idempotency_key, task.id, fp)
    return task, True


def create_leased(
    tx: StoreTxn,
    body: TaskCreate,
    worker_id: str,
    lease_s: float,
    holder: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> tuple[Task, Task | None, bool]:
    """Create and, when it is due at once, lease it to a worker that is already waiting for
    it: one commit instead of two on the wake-up path. Returns (as created, leased, created)."""
    task, created = create(tx, body, actor)
    if not created or not lifecycle.is_due(task, tx.now):
        return task, None, created
    leased = lifecycle.grant_lease(
        task, worker_id=worker_id, lease_s=lease_s, now=tx.now, holder=holder
    )
    tx.replace_task(task, leased)
    _record_leased(tx, leased, holder)
    return task, leased, True


def _record_leased(tx: StoreTxn, task: Task, holder: str | None) -> None:
    lease = task.lease
    assert lease is not None
    history.record(tx, E.LEASED, task, holder, worker_id=lease.worker_id, lease_id=lease.id,
                   details={"expires_at": lease.expires_at})  # fmt: skip


def create_many(
    tx: StoreTxn, bodies: Sequence[TaskCreate], actor: str = SYSTEM_ACTOR
) -> list[tuple[Task, bool]]:
    return [create(tx, body, actor) for body in bodies]


def update(
    tx: StoreTxn, task_id: str, change: TaskUpdate, actor: str = SYSTEM_ACTOR
) -> tuple[Task, Task]:
    old = _require(tx, task_id)
    new = lifecycle.apply_update(old, change, now=tx.now)
    if new is not old:
        tx.replace_task(old, new)
        if new.status == S.CANCELLED and old.status != S.CANCELLED:
            tx.count_day(tx.now, "cancelled")
            history.record(tx, E.CANCELLED, old, actor, worker_id=old.worker_id,
                           details={"from": old.status.value})  # fmt: skip
        else:
            fields = [f for f in change.__struct_fields__
                      if f != "status" and getattr(old, f) != getattr(new, f)]  # fmt: skip
            history.record(tx, E.UPDATED, new, actor, details={"fields": fields})
    return old, new


def delete(tx: StoreTxn, task_id: str) -> Task:
    task = _require(tx, task_id)
    tx.delete_task(task)
    return task


# -- workers -----------------------------------------------------------------------------


def lease(
    tx: StoreTxn,
    task_ids: Sequence[str],
    worker_id: str,
    lease_s: float,
    holder: str | None = None,
) -> tuple[list[Task], list[Task]]:
    """Grant leases on the claimed tasks that are still due. Returns (granted, pending but
    not yet due); tasks that are gone or no longer pending are skipped."""
    granted: list[Task] = []
    not_due: list[Task] = []
    for task_id in task_ids:
        task = tx.get_task(task_id)
        if task is None or task.status != S.PENDING:
            continue
        if not lifecycle.is_due(task, tx.now):
            not_due.append(task)
            continue
        new = lifecycle.grant_lease(
            task, worker_id=worker_id, lease_s=lease_s, now=tx.now, holder=holder
        )
        tx.replace_task(task, new)
        _record_leased(tx, new, holder)
        granted.append(new)
    return granted, not_due


def claim(
    tx: SharedTxn,
    queues: frozenset[str] | None,
    names: frozenset[str] | None,
    max_tasks: int,
    worker_id: str,
    lease_s: float,
    holder: str | None = None,
    limits_of: LimitsOf | None = None,
) -> list[Task]:
    """A shared store's lease: claim ready rows in the database (locked, others' locks skipped)
    and grant them in the same transaction, so two servers never lease one task. With
    `limits_of`, queue limits are decided in the same transaction (`shared_limits`)."""
    candidates = tx.claim_ready(queues, names, max_tasks)
    if limits_of is not None and candidates:
        # Rows are claimed (and locked) only as many as asked, unless a queue among them has
        # limits: then more, so those the limits hold back leave room for others.
        known = {q: limits_of(tx, q) for q in sorted({t.queue for t in candidates})}
        if any(lim is not None and not lim.unlimited for lim in known.values()):
            if len(candidates) == max_tasks:
                candidates = tx.claim_ready(queues, names, max_tasks * OVERFETCH)
            candidates = admit(tx, candidates, _remembered(known, limits_of), max_tasks)
    granted: list[Task] = []
    for task in candidates:
        new = lifecycle.grant_lease(
            task, worker_id=worker_id, lease_s=lease_s, now=tx.now, holder=holder
        )
        tx.replace_task(task, new)
        _record_leased(tx, new, holder)
        granted.append(new)
    return granted


def _remembered(known: dict[str, QueueLimits | None], limits_of: LimitsOf) -> LimitsOf:
    """`limits_of`, answering from `known` for the queues already read."""
    return lambda tx, queue: known[queue] if queue in known else limits_of(tx, queue)


def expire_claimed(
    tx: SharedTxn, policy: RetryPolicy, max_deliveries: int = 10, limit: int = 500
) -> list[Task]:
    """A shared store's reaper pass: the leases that ran out by the database's clock, each
    handled by whichever server claims it first."""
    changed = []
    for task in tx.claim_expired(limit):
        new = lifecycle.expire(
            task, now=tx.now, policy=policy, rand=random.random(), max_deliveries=max_deliveries
        )
        tx.replace_task(task, new)
        _record_finish(tx, task, new)
        _record_expired(tx, task, new)
        changed.append(new)
    return changed


def _record_finish(tx: StoreTxn, old: Task, new: Task) -> None:
    """Counters and per-day stats for an attempt that ended (old was running)."""
    if new.status == S.COMPLETED:
        tx.count("duration_sum", new.duration or 0.0)
        tx.count("duration_n")
        tx.count_day(tx.now, "completed")
        tx.count_day(tx.now, "duration_sum", new.duration or 0.0)
    elif new.status == S.FAILED:
        tx.count_day(tx.now, "failed")
    elif new.status == S.PENDING:
        tx.count_day(tx.now, "retried")
    worker_id = old.worker_id
    if worker_id and new.status in (S.COMPLETED, S.FAILED):
        worker = tx.get_worker(worker_id)
        if worker is not None:
            if new.status == S.COMPLETED:
                updated = _replace_worker(worker, tasks_completed=worker.tasks_completed + 1)
            else:
                updated = _replace_worker(worker, tasks_failed=worker.tasks_failed + 1)
            tx.put_worker(worker, updated)


def _replace_worker(worker: Worker, **changes: Any) -> Worker:
    return replace(worker, **changes)


def complete(
    tx: StoreTxn,
    task_id: str,
    lease_id: str,
    result: Any,
    caller: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> Task:
    old = _require(tx, task_id)
    new = lifecycle.complete(old, lease_id=lease_id, result=result, now=tx.now, caller=caller)
    tx.replace_task(old, new)
    _record_finish(tx, old, new)
    history.record_lease_end(tx, E.COMPLETED, old, new, actor)
    return new


def fail(
    tx: StoreTxn,
    task_id: str,
    lease_id: str,
    error: TaskError,
    retry: bool | None,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
    caller: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> Task:
    old = _require(tx, task_id)
    new = lifecycle.fail(
        old, lease_id=lease_id, error=error, retry=retry, now=tx.now, policy=policy,
        rand=rand(), caller=caller,
    )  # fmt: skip
    tx.replace_task(old, new)
    _record_finish(tx, old, new)
    kind = E.RETRY_SCHEDULED if new.status == S.PENDING else E.FAILED
    history.record_lease_end(tx, kind, old, new, actor)
    return new


def release(
    tx: StoreTxn,
    task_id: str,
    lease_id: str,
    caller: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> Task:
    old = _require(tx, task_id)
    new = lifecycle.release(old, lease_id=lease_id, now=tx.now, caller=caller)
    tx.replace_task(old, new)
    history.record_lease_end(tx, E.RELEASED, old, new, actor)
    return new


def release_orphans(tx: StoreTxn, leases: Sequence[tuple[str, str]]) -> list[Task]:
    """Hand back tasks leased to long polls that were gone before the grant landed."""
    released = []
    for task_id, lease_id in leases:
        task = tx.get_task(task_id)
        if task is None or task.lease is None or task.lease.id != lease_id:
            continue
        new = lifecycle.release(task, lease_id=lease_id, now=tx.now)
        tx.replace_task(task, new)
        history.record_lease_end(tx, E.RELEASED, task, new, SYSTEM_ACTOR)
        released.append(new)
    return released


def extend(
    tx: StoreTxn,
    task_id: str,
    lease_id: str,
    lease_s: float,
    caller: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> Task:
    old = _require(tx, task_id)
    new = lifecycle.extend_lease(old, lease_id=lease_id, lease_s=lease_s, now=tx.now, caller=caller)
    tx.replace_task(old, new)
    _record_extended(tx, new, actor)
    return new


def _record_extended(tx: StoreTxn, task: Task, actor: str, **details: Any) -> None:
    lease = task.lease
    assert lease is not None
    history.record(tx, E.EXTENDED, task, actor, worker_id=lease.worker_id, lease_id=lease.id,
                   details={"expires_at": lease.expires_at, **details})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Acked:
    """The outcome of one ack item: the task after it, or the error that refused it."""

    id: str
    task: Task | None = None
    error: DtqError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _valid_id(text: str) -> str | None:
    try:
        return parse_task_id(text, field="id")
    except DtqError:
        return None


def ack(
    tx: StoreTxn,
    items: Sequence[AckItem],
    policy: RetryPolicy,
    caller: str | None = None,
    actor: str = SYSTEM_ACTOR,
) -> tuple[list[Acked], list[Task]]:
    """Many completions/failures at once; a stale lease fails only its own item."""
    outcomes: list[Acked] = []
    changed: list[Task] = []
    tx.prefetch_tasks([i for i in (_valid_id(item.id) for item in items) if i is not None])
    for item in items:
        try:
            task_id = parse_task_id(item.id, field="id")
            if item.status == "completed":
                task = complete(tx, task_id, item.lease_id, item.result, caller, actor)
            else:
                error = error_from_input(item.error)
                task = fail(tx, task_id, item.lease_id, error, item.retry, policy,
                            caller=caller, actor=actor)  # fmt: skip
        except DtqError as exc:
            outcomes.append(Acked(item.id, error=exc))
            continue
        outcomes.append(Acked(task.id, task))
        changed.append(task)
    return outcomes, changed


def expire(
    tx: StoreTxn, due: Sequence[tuple[str, str]], policy: RetryPolicy, max_deliveries: int = 10
) -> list[Task]:
    """The reaper's pass: leases (task id, lease id) that ran out without a result."""
    changed = []
    for task_id, lease_id in due:
        task = tx.get_task(task_id)
        if (
            task is None
            or task.status != S.RUNNING
            or task.lease is None
            or task.lease.id != lease_id
            or task.lease.expires_at > tx.now
        ):
            continue  # completed, extended or re-leased meanwhile
        new = lifecycle.expire(
            task, now=tx.now, policy=policy, rand=random.random(), max_deliveries=max_deliveries
        )
        tx.replace_task(task, new)
        _record_finish(tx, task, new)
        _record_expired(tx, task, new)
        changed.append(new)
    return changed


def _record_expired(tx: StoreTxn, old: Task, new: Task) -> None:
    timed_out = new.error is not None and new.error.type == lifecycle.TIMED_OUT
    kind = E.TIMED_OUT if timed_out else E.LEASE_EXPIRED
    history.record_lease_end(tx, kind, old, new, SYSTEM_ACTOR)


def restart_grace(tx: StoreTxn, task_ids: Sequence[str]) -> list[Task]:
    """Start-up: every lease still held gets its own length again from now (see lifecycle)."""
    changed = []
    for task_id in task_ids:
        task = tx.get_task(task_id)
        if task is None or task.status != S.RUNNING or task.lease is None:
            continue
        new = lifecycle.restart_grace(task, now=tx.now)
        tx.replace_task(task, new)
        _record_extended(tx, new, SYSTEM_ACTOR, restart=True)
        changed.append(new)
    return changed


def heartbeat(tx: StoreTxn, hb: Heartbeat) -> Worker:
    old = tx.get_worker(hb.worker_id)
    new = Worker(
        worker_id=hb.worker_id,
        status=hb.status,
        current_load=hb.current_load,
        max_capacity=hb.max_capacity,
        last_heartbeat=tx.now,
        registered_at=old.registered_at if old else tx.now,
        hostname=hb.hostname if hb.hostname is not None else (old.hostname if old else None),
        queues=hb.queues if hb.queues is not None else (old.queues if old else []),
        tasks_completed=old.tasks_completed if old else 0,
        tasks_failed=old.tasks_failed if old else 0,
    )
    tx.put_worker(old, new)
    return new


def mark_inactive(tx: StoreTxn, worker_ids: Sequence[str], timeout_s: float) -> list[Worker]:
    changed = []
    for worker_id in worker_ids:
        worker = tx.get_worker(worker_id)
        if (
            worker is None
            or worker.status != WorkerStatus.ACTIVE
            or worker.last_heartbeat + timeout_s > tx.now
        ):
            continue
        new = _replace_worker(worker, status=WorkerStatus.INACTIVE, current_load=0)
        tx.put_worker(worker, new)
        changed.append(new)
    return changed
