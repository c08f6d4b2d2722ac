"""Workers: heartbeat, list, get, health summary."""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from dtq.core.auth import Permission
from dtq.models import Heartbeat, ListWorkersQuery, WorkerId
from dtq.net.envelope import iso, pagination, success
from dtq.net.routing import Api, Call, RouteSpec, respond
from dtq.net.views import WorkerOut, worker_out

TAG = "Workers"
P = "/api/v1/workers"


class WorkerHealth(Struct):
    worker_id: str
    status: str
    healthy: bool
    last_heartbeat: str | None
    seconds_since_heartbeat: float
    current_load: int
    max_capacity: int


class WorkersStatus(Struct):
    workers_total: int
    workers_active: int
    workers_inactive: int
    total_capacity: int
    current_load: int
    utilization: float
    workers: list[WorkerHealth]


def register(api: Api) -> None:
    queue = api.services.queue

    @api.route(
        RouteSpec("GET", P, "List workers", TAG, "list_workers", query=ListWorkersQuery,
                  response=list[WorkerOut], paginated=True),
        Permission.WORKERS_READ,
    )  # fmt: skip
    async def list_workers(call: Call) -> Any:
        q: ListWorkersQuery = call.query
        workers, total = await queue.list_workers(q)
        return respond(
            success([worker_out(w) for w in workers], pagination=pagination(q.skip, q.limit, total))
        )

    @api.route(
        RouteSpec("GET", f"{P}/status", "Health of all workers", TAG, "workers_status",
                  response=WorkersStatus),
        Permission.WORKERS_READ,
        aliases=("/workers/status",),
    )  # fmt: skip
    async def workers_status(call: Call) -> Any:
        health = await queue.workers_health()
        rows = [
            WorkerHealth(h.worker.worker_id, h.worker.status.value, h.healthy,
                         iso(h.worker.last_heartbeat), round(h.seconds_since_heartbeat, 3),
                         h.worker.current_load, h.worker.max_capacity)
            for h in health.workers
        ]  # fmt: skip
        return respond(
            success(
                WorkersStatus(
                    workers_total=len(rows),
                    workers_active=health.active,
                    workers_inactive=len(rows) - health.active,
                    total_capacity=health.total_capacity,
                    current_load=health.current_load,
                    utilization=health.utilization,
                    workers=rows,
                )
            )
        )

    @api.route(
        RouteSpec("POST", f"{P}/heartbeat", "Worker heartbeat", TAG, "worker_heartbeat",
                  body=Heartbeat, response=WorkerOut),
        Permission.WORKERS_HEARTBEAT,
    )  # fmt: skip
    async def heartbeat(call: Call) -> Any:
        return respond(success(worker_out(await queue.heartbeat(call.body))))

    @api.route(
        RouteSpec("GET", f"{P}/{{worker_id}}", "Get a worker", TAG, "get_worker",
                  response=WorkerOut, errors=(404,), path_types=(("worker_id", WorkerId),)),
        Permission.WORKERS_READ,
    )  # fmt: skip
    async def get_worker(call: Call) -> Any:
        return respond(success(worker_out(await queue.get_worker(call.params["worker_id"]))))
