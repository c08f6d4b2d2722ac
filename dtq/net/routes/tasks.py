"""Tasks: CRUD for producers and operators, and the worker protocol (lease, ack, extend)."""

from __future__ import annotations

import uuid
from typing import Any

from msgspec import Struct

from dtq.core.auth import Permission, Principal, Role
from dtq.models import (
    AckOutcome,
    AckRequest,
    BatchCreate,
    CompleteRequest,
    ExtendRequest,
    FailRequest,
    LeaseRequest,
    ListTasksQuery,
    ReleaseRequest,
    TaskCreate,
    TaskUpdate,
    error_from_input,
)
from dtq.net.envelope import error_info, pagination, success
from dtq.net.routing import Api, Call, RouteSpec, no_content, respond
from dtq.net.views import TaskOut, task_out

TAG = "Tasks"
WORK_TAG = "Worker protocol"
P = "/api/v1/tasks"
TASK_ID = (("task_id", uuid.UUID),)


FENCING = (
    " The lease id comes only in the lease response, to the worker that took the lease; only "
    "the principal (API key or user) that took it may use it. Any other caller gets the same "
    "409 `CONFLICT` as for a stale lease, except an admin, who may act on any lease with its id."
)


def caller_of(principal: Principal) -> str | None:
    """Whose lease the caller may act on: its own (by identity), or any one for an admin."""
    return None if principal.role == Role.ADMIN else principal.identity


class AckResult(Struct):
    results: list[AckOutcome]
    succeeded: int
    failed: int


def register(api: Api) -> None:
    queue = api.services.queue

    @api.route(
        RouteSpec("GET", P, "List tasks", TAG, "list_tasks", query=ListTasksQuery,
                  response=list[TaskOut], paginated=True),
        Permission.TASKS_READ,
    )  # fmt: skip
    async def list_tasks(call: Call) -> Any:
        q: ListTasksQuery = call.query
        tasks, total = await queue.list_tasks(q)
        return respond(
            success([task_out(t) for t in tasks], pagination=pagination(q.skip, q.limit, total))
        )

    @api.route(
        RouteSpec("POST", P, "Create a task", TAG, "create_task", body=TaskCreate,
                  response=TaskOut, status=201, also=(200,), errors=(409,),
                  description="With `idempotency_key`, a replay of the same body returns the "
                  "first task with status 200; a different body under the same key is 409."),
        Permission.TASKS_CREATE,
    )  # fmt: skip
    async def create_task(call: Call) -> Any:
        task, created = await queue.create(call.body, call.principal.identity)
        return respond(success(task_out(task)), 201 if created else 200)

    @api.route(
        RouteSpec("POST", f"{P}/batch", "Create many tasks in one request", TAG, "create_tasks",
                  body=BatchCreate, response=list[TaskOut], status=201, errors=(409,)),
        Permission.TASKS_CREATE,
    )  # fmt: skip
    async def create_tasks(call: Call) -> Any:
        rows = await queue.create_many(call.body.tasks, call.principal.identity)
        return respond(success([task_out(t) for t, _ in rows]), 201)

    @api.route(
        RouteSpec("GET", f"{P}/{{task_id}}", "Get a task", TAG, "get_task", path_types=TASK_ID,
                  response=TaskOut, errors=(404,)),
        Permission.TASKS_READ,
    )  # fmt: skip
    async def get_task(call: Call) -> Any:
        return respond(success(task_out(await queue.get(call.params["task_id"]))))

    @api.route(
        RouteSpec("PUT", f"{P}/{{task_id}}", "Update or cancel a task", TAG, "update_task",
                  path_types=TASK_ID, body=TaskUpdate, response=TaskOut, errors=(404, 409),
                  description='`{"status": "cancelled"}` cancels a pending or running task; '
                  "other fields can be changed while the task is pending."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def update_task(call: Call) -> Any:
        return respond(
            success(
                task_out(
                    await queue.update(call.params["task_id"], call.body, call.principal.identity)
                )
            )
        )

    @api.route(
        RouteSpec("DELETE", f"{P}/{{task_id}}", "Delete a task", TAG, "delete_task",
                  path_types=TASK_ID, status=204, errors=(404,)),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def delete_task(call: Call) -> Any:
        await queue.delete(call.params["task_id"])
        return no_content()

    # -- worker protocol ----------------------------------------------------------------

    @api.route(
        RouteSpec("POST", f"{P}/lease", "Lease ready tasks (long poll)", WORK_TAG, "lease_tasks",
                  body=LeaseRequest, response=list[TaskOut],
                  description="Returns ready tasks at once, else waits up to `wait` seconds "
                  "for one; an empty list when none came. Each task carries its `lease`, and "
                  "this is the only response that shows the lease's `id`." + FENCING),
        Permission.TASKS_WORK,
    )  # fmt: skip
    async def lease_tasks(call: Call) -> Any:
        tasks = await queue.lease(call.body, holder=call.principal.identity)
        return respond(success([task_out(t, lease_id=True) for t in tasks]))

    @api.route(
        RouteSpec("POST", f"{P}/ack", "Complete or fail many leased tasks", WORK_TAG, "ack_tasks",
                  body=AckRequest, response=AckResult,
                  description="One outcome per item; a stale lease fails only its own item."
                  + FENCING),
        Permission.TASKS_WORK,
    )  # fmt: skip
    async def ack_tasks(call: Call) -> Any:
        outcomes = [
            AckOutcome(id=a.id, ok=True, status=a.task.status)
            if a.task is not None
            else AckOutcome(id=a.id, ok=False, error=error_info(a.error) if a.error else None)
            for a in await queue.ack(
                call.body.acks, caller_of(call.principal), call.principal.identity
            )
        ]
        ok = sum(1 for o in outcomes if o.ok)
        return respond(success(AckResult(outcomes, ok, len(outcomes) - ok)))

    @api.route(
        RouteSpec("POST", f"{P}/{{task_id}}/complete", "Report a result", WORK_TAG,
                  "complete_task", path_types=TASK_ID, body=CompleteRequest, response=TaskOut,
                  errors=(404, 409),
                  description="A result is recorded at most once." + FENCING),
        Permission.TASKS_WORK,
    )  # fmt: skip
    async def complete_task(call: Call) -> Any:
        b: CompleteRequest = call.body
        task = await queue.complete(
            call.params["task_id"], b.lease_id, b.result, caller_of(call.principal),
            call.principal.identity,
        )  # fmt: skip
        return respond(success(task_out(task)))

    @api.route(
        RouteSpec("POST", f"{P}/{{task_id}}/fail", "Report a failed attempt", WORK_TAG,
                  "fail_task", path_types=TASK_ID, body=FailRequest, response=TaskOut,
                  errors=(404, 409),
                  description="Uses a retry while `retry_count` allows (unless `retry` is "
                  "false)." + FENCING),
        Permission.TASKS_WORK,
    )  # fmt: skip
    async def fail_task(call: Call) -> Any:
        b: FailRequest = call.body
        task = await queue.fail(
            call.params["task_id"], b.lease_id, error_from_input(b.error), b.retry,
            caller_of(call.principal), call.principal.identity,
        )  # fmt: skip
        return respond(success(task_out(task)))

    @api.route(
        RouteSpec("POST", f"{P}/{{task_id}}/extend", "Extend a lease", WORK_TAG, "extend_lease",
                  path_types=TASK_ID, body=ExtendRequest, response=TaskOut, errors=(404, 409),
                  description="Never past the attempt's start + `timeout`." + FENCING),
        Permission.TASKS_WORK,
    )  # fmt: skip
    async def extend_lease(call: Call) -> Any:
        b: ExtendRequest = call.body
        task = await queue.extend(
            call.params["task_id"], b.lease_id, b.lease_seconds, caller_of(call.principal),
            call.principal.identity,
        )  # fmt: skip
        return respond(success(task_out(task)))

    @api.route(
        RouteSpec("POST", f"{P}/{{task_id}}/release", "Hand a leased task back", WORK_TAG,
                  "release_task", path_types=TASK_ID, body=ReleaseRequest, response=TaskOut,
                  errors=(404, 409),
                  description="The task is ready again at once and the attempt is not counted "
                  "(a worker shutting down hands back what it has not started)." + FENCING),
        Permission.TASKS_WORK,
    )  # fmt: skip
    async def release_task(call: Call) -> Any:
        task = await queue.release(
            call.params["task_id"], call.body.lease_id, caller_of(call.principal),
            call.principal.identity,
        )  # fmt: skip
        return respond(success(task_out(task)))
