"""Queues: their figures and config (pause, limits), purge, and a task's explanation."""

from __future__ import annotations

import re
import uuid
from typing import Any

from msgspec import Struct

from dtq.core.auth import Permission
from dtq.core.explain import Explanation
from dtq.errors import InvalidRequest
from dtq.models import EmptyBody, ListQueuesQuery, QueueInfo, QueueName, QueueUpdate
from dtq.net.envelope import pagination, success
from dtq.net.routing import Api, Call, RouteSpec, respond

TAG = "Queues"
P = "/api/v1/queues"
NAME = (("name", QueueName),)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
WRITE_ROLES = ("admin", "operator")


class PurgeResult(Struct):
    queue: str
    purged: int


def _name(call: Call) -> str:
    name = call.params["name"]
    if not _NAME_RE.match(name):
        raise InvalidRequest(
            "Invalid queue name", field="name", reason="1-64 of A-Z a-z 0-9 _ . : -"
        )
    return name


def register(api: Api) -> None:
    tq = api.services.queue  # None while only documenting

    @api.route(
        RouteSpec("GET", P, "List queues", TAG, "list_queues", query=ListQueuesQuery,
                  response=list[QueueInfo], paginated=True,
                  description="Every queue a task named or that was configured, by name."),
        Permission.QUEUES_READ,
    )  # fmt: skip
    async def list_queues(call: Call) -> Any:
        q: ListQueuesQuery = call.query
        rows, total = await tq.queues.list(q.skip, q.limit)
        return respond(success(rows, pagination=pagination(q.skip, q.limit, total)))

    @api.route(
        RouteSpec("GET", f"{P}/{{name}}", "Get a queue", TAG, "get_queue", path_types=NAME,
                  response=QueueInfo, errors=(404,)),
        Permission.QUEUES_READ,
    )  # fmt: skip
    async def get_queue(call: Call) -> Any:
        return respond(success(await tq.queues.get(_name(call))))

    @api.route(
        RouteSpec("PUT", f"{P}/{{name}}", "Configure a queue", TAG, "update_queue",
                  path_types=NAME, body=QueueUpdate, response=QueueInfo, roles=WRITE_ROLES,
                  description="Fields left out stay as they are; `null` removes a limit. "
                  "Limits hold across all workers: `concurrency_limit` running tasks of the "
                  "queue, `concurrency_limit_per_key` running tasks per `concurrency_key`, "
                  "`rate_limit_per_second` leases started per second (burst: one second's "
                  "worth). Configuring a queue creates it."),
        Permission.QUEUES_WRITE,
    )  # fmt: skip
    async def update_queue(call: Call) -> Any:
        return respond(success(await tq.queues.update(_name(call), call.body)))

    @api.route(
        RouteSpec("POST", f"{P}/{{name}}/pause", "Pause a queue", TAG, "pause_queue",
                  path_types=NAME, response=QueueInfo, errors=(404,), roles=WRITE_ROLES,
                  body=EmptyBody, body_required=False,
                  description="No task of the queue is leased until it is resumed; running "
                  "tasks finish."),
        Permission.QUEUES_WRITE,
    )  # fmt: skip
    async def pause_queue(call: Call) -> Any:
        return respond(success(await tq.queues.pause(_name(call))))

    @api.route(
        RouteSpec("POST", f"{P}/{{name}}/resume", "Resume a queue", TAG, "resume_queue",
                  path_types=NAME, response=QueueInfo, errors=(404,), roles=WRITE_ROLES,
                  body=EmptyBody, body_required=False),
        Permission.QUEUES_WRITE,
    )  # fmt: skip
    async def resume_queue(call: Call) -> Any:
        return respond(success(await tq.queues.resume(_name(call))))

    @api.route(
        RouteSpec("POST", f"{P}/{{name}}/purge", "Delete a queue's pending tasks", TAG,
                  "purge_queue", path_types=NAME, response=PurgeResult, errors=(404,),
                  roles=WRITE_ROLES, body=EmptyBody, body_required=False,
                  description="Deletes every pending (ready or scheduled) task of the queue, "
                  "in batches; running tasks are left alone. Returns how many were deleted."),
        Permission.QUEUES_WRITE,
    )  # fmt: skip
    async def purge_queue(call: Call) -> Any:
        name = _name(call)
        purged = await tq.queues.purge(name)
        return respond(success(PurgeResult(queue=name, purged=purged)))

    @api.route(
        RouteSpec("GET", "/api/v1/tasks/{task_id}/explain", "Why a task is (not) running",
                  "Tasks", "explain_task", path_types=(("task_id", uuid.UUID),),
                  response=Explanation, errors=(404,),
                  description="`reasons` from the live state, each `{code, message, ...}`: "
                  "scheduled, retry_backoff, queue_paused, queue_concurrency_limit, "
                  "key_concurrency_limit, queue_rate_limit, no_worker_polling, position, "
                  "running, finished."),
        Permission.TASKS_READ,
    )  # fmt: skip
    async def explain_task(call: Call) -> Any:
        return respond(success(await tq.queues.explain(call.params["task_id"])))
