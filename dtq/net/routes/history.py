"""A task's history (events) and redrive: retry one task, retry or purge many."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from msgspec import UNSET, Meta, Struct, UnsetType

from dtq.core import redrive
from dtq.core.auth import Permission, Role
from dtq.messages import ErrorOut
from dtq.models import BulkResult, EmptyBody, RetryFilter, Skip, TaskEvent, TaskFilter
from dtq.net.envelope import iso, pagination, success
from dtq.net.routing import Api, Call, RouteSpec, respond
from dtq.net.views import TaskOut, task_out

TAG = "Tasks"
P = "/api/v1/tasks"
TASK_ID = (("task_id", uuid.UUID),)
LEASE_ID_RULE = (
    " `lease_id` is shown to admins only: a lease id is a fencing token, the secret of the "
    "worker that holds it (an admin may act on any lease anyway)."
)


# A task's events come a page at a time; the default page holds the whole history of all but
# the most retried tasks, so a client that never pages sees what it saw before paging existed.
MAX_EVENTS_PAGE = 1000


class TaskEventsQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    skip: Skip = 0
    limit: Annotated[int, Meta(ge=1, le=MAX_EVENTS_PAGE)] = MAX_EVENTS_PAGE


class TaskEventOut(Struct, omit_defaults=True):
    at: str
    event: str
    attempt: int
    worker_id: str | None = None
    actor: str | None = None
    lease_id: str | UnsetType = UNSET
    error: ErrorOut | None = None
    details: dict[str, Any] | None = None


def event_out(e: TaskEvent, *, lease_id: bool) -> TaskEventOut:
    details = e.details
    if details:  # times inside details as the API shows every time
        details = {k: iso(v) if k in ("run_at", "expires_at") and isinstance(v, float) else v
                   for k, v in details.items()}  # fmt: skip
    return TaskEventOut(
        at=iso(e.at) or "",
        event=e.event.value,
        attempt=e.attempt,
        worker_id=e.worker_id,
        actor=e.actor,
        lease_id=e.lease_id if lease_id and e.lease_id is not None else UNSET,
        error=ErrorOut(e.error.message, e.error.type, e.error.traceback) if e.error else None,
        details=details,
    )


def register(api: Api) -> None:
    queue = api.services.queue

    @api.route(
        RouteSpec("GET", f"{P}/{{task_id}}/events", "A task's history", TAG, "task_events",
                  path_types=TASK_ID, query=TaskEventsQuery, response=list[TaskEventOut],
                  paginated=True, errors=(404,),
                  description="Every transition of the task, oldest first, a page at a time "
                  f"(`limit` up to {MAX_EVENTS_PAGE}, the default), each written in the "
                  "same transaction as the change: created, updated, leased, extended, "
                  "released, completed, failed, retry_scheduled, lease_expired, timed_out, "
                  "cancelled, retried. `actor` is who did it (`key:<id>`, `user:<name>` or "
                  "`system`)." + LEASE_ID_RULE),
        Permission.TASKS_READ,
    )  # fmt: skip
    async def task_events(call: Call) -> Any:
        task = await queue.get(call.params["task_id"])  # 404 for an unknown task
        q: TaskEventsQuery = call.query
        events = await queue.store.list_task_events(task.id, q.skip, q.limit)
        total = await queue.store.count_task_events(task.id)
        admin = call.principal.role == Role.ADMIN
        return respond(
            success(
                [event_out(e, lease_id=admin) for e in events],
                pagination=pagination(q.skip, q.limit, total),
            )
        )

    @api.route(
        RouteSpec("POST", f"{P}/{{task_id}}/retry", "Retry a failed or cancelled task", TAG,
                  "retry_task", path_types=TASK_ID, response=TaskOut, errors=(404, 409),
                  body=EmptyBody, body_required=False,
                  description="The task is pending again at once; `attempts` is kept and one "
                  "more attempt is allowed. A task in any other state is 409 `CONFLICT`."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def retry_task(call: Call) -> Any:
        task = await redrive.retry_task(queue, call.params["task_id"], call.principal.identity)
        return respond(success(task_out(task)))

    @api.route(
        RouteSpec("POST", f"{P}/retry", "Retry every failed or cancelled task that matches",
                  TAG, "retry_tasks", body=RetryFilter, response=BulkResult,
                  description="`status` is `failed` or `cancelled`; `finished_after` (inclusive) "
                  "and `finished_before` (exclusive) bound `completed_at`; `limit` caps how many. "
                  "Runs in batches that let other writes through."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def retry_tasks(call: Call) -> Any:
        result = await redrive.retry_matching(queue, call.body, call.principal.identity)
        return respond(success(result))

    @api.route(
        RouteSpec("POST", f"{P}/purge", "Delete every finished task that matches", TAG,
                  "purge_tasks", body=TaskFilter, response=BulkResult,
                  description="`status` is `completed`, `failed` or `cancelled`; the other "
                  "fields as for retry. Like DELETE, each deleted task is a `task.deleted` event."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def purge_tasks(call: Call) -> Any:
        return respond(success(await redrive.purge_matching(queue, call.body)))
