"""Data models: what is stored, and what callers hand to the core.

Stored structs are compact MessagePack arrays (`array_like`); new fields go at the end with a
default so old records still decode. Times are wall-clock epoch seconds (floats); `dtq.net`
renders them as ISO 8601 UTC strings.
"""

from __future__ import annotations

import enum
import time
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta, Struct


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Priority(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """0 is dispatched first."""
        return _RANK[self]


_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}


class WorkerStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


# --- stored -------------------------------------------------------------------------------


class TaskError(Struct, array_like=True, omit_defaults=True):
    message: str
    type: str = "Error"
    traceback: str | None = None


class Lease(Struct, array_like=True):
    id: str  # the fencing token: shown only to the holder, in the lease response
    worker_id: str
    granted_at: float
    expires_at: float
    holder: str | None = None  # the principal that took it (`Principal.identity`)
    ttl_s: float | None = None  # its length as last asked for (grant or extend)
    grace: bool = False  # renewed at a server restart: it ends as a lost lease, never a timeout

    @property
    def length_s(self) -> float:
        return self.ttl_s if self.ttl_s is not None else self.expires_at - self.granted_at


class Task(Struct, array_like=True, kw_only=True):
    id: str
    name: str
    description: str | None
    priority: Priority
    status: TaskStatus
    queue: str
    payload: Any
    retry_count: int
    timeout: float
    created_at: float
    updated_at: float
    seq: int  # enqueue order, FIFO tie-break within a priority
    run_at: float | None = None
    idempotency_key: str | None = None
    attempts: int = 0
    result: Any = None
    error: TaskError | None = None
    worker_id: str | None = None
    lease: Lease | None = None
    started_at: float | None = None
    completed_at: float | None = None
    duration: float | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    retry_backoff_s: float | None = None
    retry_backoff_max_s: float | None = None
    ready_at: float | None = None  # when it last became ready to run: the FIFO order key
    deliveries: int = 0  # leases granted, whatever became of them
    lost_leases: int = 0  # leases that ran out without a result: no retry used (max_deliveries)
    concurrency_key: str | None = None  # e.g. a customer id: the queue's per-key limit applies

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name!r} {self.status} attempts={self.attempts}>"


class Worker(Struct, array_like=True, kw_only=True):
    worker_id: str
    status: WorkerStatus
    current_load: int
    max_capacity: int
    last_heartbeat: float
    registered_at: float
    hostname: str | None = None
    queues: list[str] = msgspec.field(default_factory=list)
    tasks_completed: int = 0
    tasks_failed: int = 0


class DayStats(Struct, array_like=True):
    """Per-day (UTC) counts for trends and export."""

    created: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    duration_sum: float = 0.0


# --- input (validated at the boundary; unknown fields are errors) -------------------------

# Text that names things is shown in logs, terminals and the dashboard: no NUL characters
# (payloads, results and tracebacks are the client's data and stay as sent).
_NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=_NO_NUL)]
Description = Annotated[str, Meta(max_length=2000, pattern=_NO_NUL)]
QueueName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]
WorkerId = Annotated[
    str,
    # "status" and "heartbeat" are taken: /api/v1/workers/status and /heartbeat are routes.
    Meta(pattern=r"^(?!(?:status|heartbeat)$)[A-Za-z0-9_.:@\-]{1,128}$"),
]
Tag = Annotated[str, Meta(min_length=1, max_length=64, pattern=_NO_NUL)]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=200, pattern=_NO_NUL)]
ConcurrencyKey = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=_NO_NUL,
        description="Tasks sharing a key (e.g. a customer id) count against the queue's "
        "concurrency_limit_per_key together.",
    ),
]

PAYLOAD_RULES = (
    "A JSON object, stored and handed to the worker as sent. Integers in it must fit in 64 bits "
    "(-2^63 .. 2^64-1) and it may nest up to about 900 levels; anything else is a 400."
)
Payload = Annotated[dict[str, Any], Meta(description=PAYLOAD_RULES)]
Result = Annotated[
    Any,
    Meta(
        description="Any JSON value, stored as sent. Integers in it must fit in 64 bits "
        "(-2^63 .. 2^64-1) and it may nest up to about 900 levels; anything else is a 400."
    ),
]

RUN_AT_WINDOW_S = 10 * 365.25 * 86400
RunAt = Annotated[
    datetime,
    Meta(
        description="When to run it (RFC 3339; without an offset, UTC). A time in the past "
        "means now; more than 10 years from now, either way, is a 400.",
        # msgspec leaves `format` out for datetimes that may be naive; these are date-times
        extra_json_schema={"format": "date-time"},
    ),
]

# Large enough for any page a person or a script asks for, small enough that it stays an
# ordinary integer everywhere (2^31 - 1).
MAX_SKIP = 2**31 - 1
Skip = Annotated[int, Meta(ge=0, le=MAX_SKIP, description="Records to skip (at most 2^31 - 1).")]


def _check_run_at(run_at: datetime | None) -> None:
    if run_at is None:
        return
    given = run_at if run_at.tzinfo else run_at.replace(tzinfo=UTC)
    if abs(given.timestamp() - time.time()) > RUN_AT_WINDOW_S:
        # "field `x`" is how dtq.net.envelope finds the field a __post_init__ error is about
        raise ValueError("field `run_at` must be within 10 years of now")


class TaskCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    description: Description | None = None
    priority: Priority = Priority.MEDIUM
    retry_count: Annotated[int, Meta(ge=0, le=100)] = 0
    timeout: Annotated[float, Meta(gt=0, le=7 * 86400)] = 3600.0
    payload: Payload = msgspec.field(default_factory=dict)
    queue: QueueName = "default"
    run_at: RunAt | None = None
    delay: Annotated[float, Meta(ge=0, le=366 * 86400)] | None = None
    idempotency_key: IdempotencyKey | None = None
    tags: Annotated[list[Tag], Meta(max_length=20)] = msgspec.field(default_factory=list)
    retry_backoff_s: Annotated[float, Meta(gt=0, le=86400)] | None = None
    retry_backoff_max_s: Annotated[float, Meta(gt=0, le=7 * 86400)] | None = None
    concurrency_key: ConcurrencyKey | None = None

    def __post_init__(self) -> None:
        _check_run_at(self.run_at)


class TaskUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    """PUT /tasks/{id}: `status` may only be `cancelled`; the rest only while pending."""

    # Any status decodes (so the refusal can say why); the document lists the one accepted.
    status: Annotated[TaskStatus, Meta(extra_json_schema={"enum": ["cancelled"]})] | None = None
    description: Description | None = None
    priority: Priority | None = None
    retry_count: Annotated[int, Meta(ge=0, le=100)] | None = None
    timeout: Annotated[float, Meta(gt=0, le=7 * 86400)] | None = None
    payload: Payload | msgspec.UnsetType = msgspec.UNSET
    tags: Annotated[list[Tag], Meta(max_length=20)] | None = None


class Heartbeat(Struct, forbid_unknown_fields=True, kw_only=True):
    worker_id: WorkerId
    status: WorkerStatus = WorkerStatus.ACTIVE
    current_load: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    max_capacity: Annotated[int, Meta(ge=0, le=1_000_000)] = 1
    hostname: Annotated[str, Meta(max_length=255)] | None = None
    queues: Annotated[list[QueueName], Meta(max_length=100)] | None = None


class Dashboard(Struct):
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    pending_tasks: int
    running_tasks: int
    cancelled_tasks: int
    completion_rate: float
    average_duration: float
    workers_active: int
    workers_total: int


# --- worker protocol and listing (DESIGN.md "Leases and the worker protocol") --------------

LeaseSeconds = Annotated[float, Meta(gt=0, le=86400)]
# The lease length when none is asked for: the server's `lease_default_s` and the worker's
# `lease_seconds` both start from this one value.
DEFAULT_LEASE_S = 60.0


class TaskErrorIn(Struct, forbid_unknown_fields=True, kw_only=True):
    message: Annotated[str, Meta(max_length=10_000)]
    type: Annotated[str, Meta(max_length=200)] = "Error"
    traceback: Annotated[str, Meta(max_length=100_000)] | None = None


class LeaseRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    worker_id: WorkerId
    queues: Annotated[list[QueueName], Meta(min_length=1, max_length=100)] | None = None
    names: Annotated[list[Name], Meta(min_length=1, max_length=100)] | None = None
    max_tasks: Annotated[int, Meta(ge=1, le=100)] = 1
    wait: Annotated[float, Meta(ge=0, le=60)] = 30
    lease_seconds: LeaseSeconds | None = None


class CompleteRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    lease_id: Annotated[str, Meta(min_length=1, max_length=64)]
    result: Result = None


class FailRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    lease_id: Annotated[str, Meta(min_length=1, max_length=64)]
    error: TaskErrorIn | Annotated[str, Meta(max_length=10_000)] = "task failed"
    retry: bool | None = None


class ExtendRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    lease_id: Annotated[str, Meta(min_length=1, max_length=64)]
    lease_seconds: LeaseSeconds | None = None


class ReleaseRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    lease_id: Annotated[str, Meta(min_length=1, max_length=64)]


class AckItem(Struct, forbid_unknown_fields=True, kw_only=True):
    id: str
    lease_id: Annotated[str, Meta(min_length=1, max_length=64)]
    status: Annotated[str, Meta(pattern="^(completed|failed)$")]
    result: Result = None
    error: TaskErrorIn | Annotated[str, Meta(max_length=10_000)] | None = None
    retry: bool | None = None


class AckRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    acks: Annotated[list[AckItem], Meta(min_length=1, max_length=1000)]


class AckOutcome(Struct, omit_defaults=True):
    id: str
    ok: bool
    status: TaskStatus | None = None
    error: dict[str, Any] | None = None


class BatchCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    tasks: Annotated[list[TaskCreate], Meta(min_length=1, max_length=1000)]


class ListTasksQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    skip: Skip = 0
    limit: Annotated[int, Meta(ge=1, le=100)] = 50
    status: TaskStatus | None = None
    priority: Priority | None = None
    worker_id: WorkerId | None = None
    queue: Annotated[QueueName, Meta(description="Only tasks of this queue")] | None = None
    name: Annotated[Name, Meta(description="Only tasks of this name")] | None = None
    tag: Annotated[Tag, Meta(description="Only tasks carrying this tag")] | None = None
    created_after: (
        Annotated[
            datetime,
            Meta(
                description="Only tasks created at or after this time",
                extra_json_schema={"format": "date-time"},
            ),
        ]
        | None
    ) = None
    created_before: (
        Annotated[
            datetime,
            Meta(
                description="Only tasks created before this time",
                extra_json_schema={"format": "date-time"},
            ),
        ]
        | None
    ) = None
    sort: Annotated[str, Meta(pattern="^(created_at|updated_at|duration)$")] = "created_at"
    order: Annotated[str, Meta(pattern="^(asc|desc)$")] = "desc"


class ListWorkersQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    status: WorkerStatus | None = None
    skip: Skip = 0
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


def error_from_input(error: TaskErrorIn | str | None) -> TaskError:
    if error is None:
        return TaskError(message="task failed")
    if isinstance(error, str):
        return TaskError(message=error)
    return TaskError(message=error.message, type=error.type, traceback=error.traceback)


# -- accounts and webhooks: stored records (the storage port stores them typed) ---------------


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    WORKER = "worker"
    VIEWER = "viewer"


class User(Struct, array_like=True, kw_only=True):
    """A stored user. Fields are only ever added at the end, with defaults, so records written
    by an older version still decode (`array_like`: a record is a list, not a map).

    `account_id` is random per record, so a user deleted and created again under the same name
    is a different account; `generation` goes up whenever the password or role changes. Tokens
    carry both, and only match while both are unchanged. Records from before the id existed
    have `account_id == ""`: they get one at start (`upgrade_records`), and a token never
    matches an empty id.
    """

    username: str
    role: Role
    password_hash: str
    created_at: float
    disabled: bool = False
    account_id: str = ""
    generation: int = 0


class ApiKey(Struct, array_like=True, kw_only=True):
    key_id: str
    name: str
    role: Role
    secret_hash: str
    created_at: float
    rate_limit_per_minute: int | None = None
    rate_limit_per_hour: int | None = None
    created_by: str | None = None


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # owed: in the due index until delivered or given up
    DELIVERED = "delivered"  # a 2xx came back
    FAILED = "failed"  # every allowed attempt failed


class Webhook(Struct, array_like=True, kw_only=True):
    id: str
    url: str
    events: list[str]
    secret: str  # kept in clear: it signs every delivery (never returned after creation)
    created_at: float
    description: str | None = None
    created_by: str | None = None


class Attempt(Struct, array_like=True, kw_only=True):
    started_at: float
    finished_at: float
    status_code: int | None = None  # None: no response (connection error, timeout)
    error: str | None = None  # None: delivered

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryRef(NamedTuple):
    """Names one stored delivery; a webhook's deliveries are in (created_us, id) order."""

    webhook_id: str
    created_us: int  # created_at in whole microseconds (rounded down)
    id: str


class Delivery(Struct, array_like=True, kw_only=True):
    id: str
    webhook_id: str
    event: str
    # What the event is about, as the change left it (every attempt sends the same body):
    # the task of a task.* event, or (None and) `queue` for a queue.* event.
    task: Task | None
    created_at: float
    status: DeliveryStatus = DeliveryStatus.PENDING
    next_attempt_at: float | None = None
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    completed_at: float | None = None
    # Added last, with a default: records stored before queue events decode unchanged.
    queue: QueueConfig | None = None

    @property
    def ref(self) -> DeliveryRef:
        return DeliveryRef(self.webhook_id, int(self.created_at * 1_000_000), self.id)


# -- queues (DESIGN.md "Operating") ----------------------------------------------------------


class QueueConfig(Struct, array_like=True, kw_only=True):
    """A queue's stored settings. A queue without a record has no limits and is not paused."""

    name: str
    paused: bool = False
    concurrency_limit: int | None = None  # running tasks of the queue, across all workers
    concurrency_limit_per_key: int | None = None  # running tasks per concurrency_key
    rate_limit_per_second: float | None = None  # leases started per second (token bucket)
    updated_at: float = 0.0

    @property
    def is_default(self) -> bool:
        """Nothing set: the queue behaves as if it had no record."""
        return (
            not self.paused
            and self.concurrency_limit is None
            and self.concurrency_limit_per_key is None
            and self.rate_limit_per_second is None
        )


PositiveLimit = Annotated[int, Meta(ge=1, le=1_000_000)]
PositiveRate = Annotated[float, Meta(gt=0, le=1_000_000)]


class QueueUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    """PUT /queues/{name}: fields left out stay as they are; `null` removes a limit."""

    paused: bool | msgspec.UnsetType = msgspec.UNSET
    concurrency_limit: PositiveLimit | msgspec.UnsetType | None = msgspec.UNSET
    concurrency_limit_per_key: PositiveLimit | msgspec.UnsetType | None = msgspec.UNSET
    rate_limit_per_second: PositiveRate | msgspec.UnsetType | None = msgspec.UNSET


class ListQueuesQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    skip: Skip = 0
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


# -- history, redrive, schedules (issue 12) ---------------------------------------------------


class TaskEventKind(enum.StrEnum):
    """What happened to a task: one stored `TaskEvent` per transition."""

    CREATED = "created"
    UPDATED = "updated"
    LEASED = "leased"
    EXTENDED = "extended"
    RELEASED = "released"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY_SCHEDULED = "retry_scheduled"
    LEASE_EXPIRED = "lease_expired"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    RETRIED = "retried"  # redrive: a failed or cancelled task sent back to pending


SYSTEM_ACTOR = "system"


class TaskEvent(Struct, array_like=True, kw_only=True, omit_defaults=True):
    """One transition of a task, written in the transaction that made it."""

    at: float
    event: TaskEventKind
    attempt: int
    worker_id: str | None = None
    actor: str | None = None  # `Principal.identity` (key:<id>, user:<name>) or "system"
    lease_id: str | None = None  # a holder's secret: the API shows it to admins only
    error: TaskError | None = None
    details: dict[str, Any] | None = None


class CatchUp(enum.StrEnum):
    NONE = "none"  # ticks missed while the server was down are skipped
    ONE = "one"  # after downtime, the latest missed tick fires once


class Schedule(Struct, array_like=True, kw_only=True):
    """A cron schedule. `task` is the create body (as JSON-able builtins) each tick submits."""

    name: str
    cron: str
    timezone: str
    task: dict[str, Any]
    created_at: float
    updated_at: float
    paused: bool = False
    catch_up: CatchUp = CatchUp.NONE
    next_run_at: float | None = None  # None while paused
    last_run_at: float | None = None
    last_task_id: str | None = None
    created_by: str | None = None


ScheduleName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")]
CronExpr = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="5 fields: minute hour day-of-month month day-of-week (e.g. `*/5 * * * *`)",
    ),
]
TimeZone = Annotated[
    str, Meta(min_length=1, max_length=64, description="IANA time zone, e.g. `Europe/Berlin`")
]


class ScheduleCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    name: ScheduleName
    cron: CronExpr
    timezone: TimeZone = "UTC"
    task: TaskCreate
    paused: bool = False
    catch_up: CatchUp = CatchUp.NONE


class ScheduleUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    """PUT /schedules/{name}: the fields given replace the stored ones."""

    cron: CronExpr | None = None
    timezone: TimeZone | None = None
    task: TaskCreate | None = None
    paused: bool | None = None
    catch_up: CatchUp | None = None


class ListSchedulesQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    skip: Skip = 0
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


class QueueInfo(Struct, kw_only=True):
    """A queue as GET /api/v1/queues/{name} shows it."""

    name: str
    paused: bool
    pending: int  # ready to run now
    scheduled: int  # pending with run_at or a retry backoff in the future
    running: int
    failed: int
    concurrency_limit: int | None
    concurrency_limit_per_key: int | None
    rate_limit_per_second: float | None
    oldest_pending_age_s: float | None
    workers_polling: int


FilterTime = Annotated[datetime, Meta(extra_json_schema={"format": "date-time"})]


class TaskFilter(Struct, forbid_unknown_fields=True, kw_only=True):
    """Bulk purge (and, as `RetryFilter`, redrive): finished tasks of one status, narrowed."""

    # Any status decodes (so the refusal can say why); the document lists the ones accepted.
    status: Annotated[
        TaskStatus, Meta(extra_json_schema={"enum": ["completed", "failed", "cancelled"]})
    ]
    queue: QueueName | None = None
    name: Name | None = None
    tag: Tag | None = None
    finished_after: FilterTime | None = None  # completed_at >= this
    finished_before: FilterTime | None = None  # completed_at < this
    limit: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None


class RetryFilter(TaskFilter, forbid_unknown_fields=True, kw_only=True):
    status: Annotated[TaskStatus, Meta(extra_json_schema={"enum": ["failed", "cancelled"]})]


class BulkResult(Struct):
    matched: int
    affected: int


def epoch(value: datetime | None) -> float | None:
    """A timestamp from the API (naive means UTC) as epoch seconds."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class EmptyBody(Struct, forbid_unknown_fields=True):
    """A POST that takes no fields: no body, or `{}` (anything else is a 400)."""
