"""Schedules: cron-driven task submission (create, list, get, update, delete, trigger)."""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from dtq.core.auth import Permission
from dtq.models import (
    EmptyBody,
    ListSchedulesQuery,
    Schedule,
    ScheduleCreate,
    ScheduleName,
    ScheduleUpdate,
)
from dtq.net.envelope import iso, pagination, success
from dtq.net.routing import Api, Call, RouteSpec, no_content, respond
from dtq.net.views import TaskOut, task_out

TAG = "Schedules"
P = "/api/v1/schedules"
NAME = (("name", ScheduleName),)


class ScheduleOut(Struct):
    name: str
    cron: str
    timezone: str
    task: dict[str, Any]
    paused: bool
    catch_up: str
    next_run_at: str | None
    last_run_at: str | None
    last_task_id: str | None
    created_at: str
    updated_at: str


class TriggerOut(Struct):
    schedule: ScheduleOut
    task: TaskOut | None


def schedule_out(s: Schedule) -> ScheduleOut:
    return ScheduleOut(
        name=s.name,
        cron=s.cron,
        timezone=s.timezone,
        task=s.task,
        paused=s.paused,
        catch_up=s.catch_up.value,
        next_run_at=iso(s.next_run_at),
        last_run_at=iso(s.last_run_at),
        last_task_id=s.last_task_id,
        created_at=iso(s.created_at) or "",
        updated_at=iso(s.updated_at) or "",
    )


def register(api: Api) -> None:
    services = api.services

    def book() -> Any:  # the queue exists once serving (not when only documenting)
        return services.queue.schedules

    @api.route(
        RouteSpec("POST", P, "Create a schedule", TAG, "create_schedule", body=ScheduleCreate,
                  response=ScheduleOut, status=201, errors=(409,),
                  description="`cron` has 5 fields (minute hour day-of-month month day-of-week) "
                  "read in `timezone` (IANA, default UTC). Each tick submits `task` (a create "
                  "body without `run_at` or `idempotency_key`) exactly once, with the "
                  "idempotency key `schedule:{name}:{tick}`. `catch_up`: `none` skips ticks "
                  "missed while the server was down (more than 60 s late), `one` fires the "
                  "latest missed tick once."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def create_schedule(call: Call) -> Any:
        schedule = await book().create(call.body, call.principal.identity)
        return respond(success(schedule_out(schedule)), 201)

    @api.route(
        RouteSpec("GET", P, "List schedules", TAG, "list_schedules", query=ListSchedulesQuery,
                  response=list[ScheduleOut], paginated=True),
        Permission.TASKS_READ,
    )  # fmt: skip
    async def list_schedules(call: Call) -> Any:
        q: ListSchedulesQuery = call.query
        rows, total = await book().list(q.skip, q.limit)
        return respond(success([schedule_out(s) for s in rows],
                               pagination=pagination(q.skip, q.limit, total)))  # fmt: skip

    @api.route(
        RouteSpec("GET", f"{P}/{{name}}", "Get a schedule", TAG, "get_schedule",
                  path_types=NAME, response=ScheduleOut, errors=(404,)),
        Permission.TASKS_READ,
    )  # fmt: skip
    async def get_schedule(call: Call) -> Any:
        return respond(success(schedule_out(await book().get(call.params["name"]))))

    @api.route(
        RouteSpec("PUT", f"{P}/{{name}}", "Change a schedule", TAG, "update_schedule",
                  path_types=NAME, body=ScheduleUpdate, response=ScheduleOut, errors=(404,),
                  description="The fields given replace the stored ones; `paused: true` stops "
                  "it, `paused: false` plans its next tick from now."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def update_schedule(call: Call) -> Any:
        schedule = await book().update(call.params["name"], call.body)
        return respond(success(schedule_out(schedule)))

    @api.route(
        RouteSpec("DELETE", f"{P}/{{name}}", "Delete a schedule", TAG, "delete_schedule",
                  path_types=NAME, status=204, errors=(404,)),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def delete_schedule(call: Call) -> Any:
        await book().delete(call.params["name"])
        return no_content()

    @api.route(
        RouteSpec("POST", f"{P}/{{name}}/trigger", "Run a schedule's task now", TAG,
                  "trigger_schedule", path_types=NAME, response=TriggerOut, errors=(404,),
                  body=EmptyBody, body_required=False,
                  description="Submits the task at once; the next planned tick is unchanged."),
        Permission.TASKS_WRITE,
    )  # fmt: skip
    async def trigger_schedule(call: Call) -> Any:
        schedule, task = await book().trigger(call.params["name"])
        out = TriggerOut(schedule_out(schedule), task_out(task) if task else None)
        return respond(success(out))
