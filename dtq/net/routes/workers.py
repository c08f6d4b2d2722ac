"""Workers: heartbeat, list, get, health summary."""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from dtq.core.auth import Permission
from dtq.models import Heartbeat, ListWorkersQuery, WorkerId, WorkerStatus
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
        workers, total = queue.list_workers(q)
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
        workers, _ = queue.store.list_workers(None, 0, 1_000_000)
        now = queue.clock.now()
        timeout = queue.settings.worker_timeout_s
        rows = []
        for w in workers:
            age = max(now - w.last_heartbeat, 0.0)
            healthy = w.status == WorkerStatus.ACTIVE and age < timeout
            rows.append(
                WorkerHealth(w.worker_id, w.status.value, healthy, iso(w.last_heartbeat),
                             round(age, 3), w.current_load, w.max_capacity)
            )  # fmt: skip
        active = [w for w in workers if w.status == WorkerStatus.ACTIVE]
        capacity = sum(w.max_capacity for w in active)
        load = sum(w.current_load for w in active)
        return respond(
            success(
                WorkersStatus(
                    workers_total=len(workers),
                    workers_active=len(active),
                    workers_inactive=len(workers) - len(active),
                    total_capacity=capacity,
                    current_load=load,
                    utilization=round(load / capacity, 4) if capacity else 0.0,
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
        return respond(success(worker_out(queue.get_worker(call.params["worker_id"]))))
