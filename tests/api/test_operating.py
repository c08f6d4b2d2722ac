"""Issue 12 over the API: a task's events, redrive, purge, schedules and the new list filters,
as a user of the API sees them (roles, errors in the guide's format, OpenAPI)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from dtq.core.auth import Role

from .helpers import TIMESTAMP, Client, create_task, error_of, lease_one, ok, success_body

T = "/api/v1/tasks"


async def fail_one(client: Client, **fields: Any) -> dict[str, Any]:
    task = await create_task(client, **fields)
    got = await lease_one(client, queues=[task["queue"]])
    done = ok(await client.post(f"{T}/{got['id']}/fail",
                                {"lease_id": got["lease"]["id"], "error": "boom", "retry": False}))  # fmt: skip
    assert done["status"] == "failed"
    return task


async def test_events_of_a_task(admin: Client, client: Client, keys: dict[Role, str]) -> None:
    worker = client.api_key(keys[Role.WORKER])
    task = await create_task(admin, queue="ev")
    got = await lease_one(worker, queues=["ev"])
    ok(await worker.post(f"{T}/{task['id']}/complete", {"lease_id": got["lease"]["id"]}))
    events = ok(await admin.get(f"{T}/{task['id']}/events"))
    assert [e["event"] for e in events] == ["created", "leased", "completed"]
    assert events[0]["actor"] == "user:admin"
    assert events[1]["actor"].startswith("key:") and events[1]["worker_id"] == "worker-1"
    assert all(TIMESTAMP.match(e["at"]) for e in events)
    assert [e["attempt"] for e in events] == [0, 1, 1]
    # the lease id is a secret of its holder: admins see it, nobody else does
    assert events[1]["lease_id"] == got["lease"]["id"]
    for role in (Role.OPERATOR, Role.VIEWER, Role.WORKER):
        seen = ok(await client.api_key(keys[role]).get(f"{T}/{task['id']}/events"))
        assert all("lease_id" not in e for e in seen), role
        assert [e["event"] for e in seen] == ["created", "leased", "completed"]
    missing = "00000000-0000-4000-8000-000000000000"
    error_of(await admin.get(f"{T}/{missing}/events"), 404, "NOT_FOUND")
    error_of(await admin.get(f"{T}/nope/events"), 400, "INVALID_REQUEST")


async def test_events_a_page_at_a_time(admin: Client) -> None:
    task = await fail_one(admin, queue="paged")
    ok(await admin.post(f"{T}/{task['id']}/retry"))
    every = ok(await admin.get(f"{T}/{task['id']}/events"))
    assert [e["event"] for e in every] == ["created", "leased", "failed", "retried"]
    first = success_body(await admin.get(f"{T}/{task['id']}/events?limit=3"), 200)
    assert first["data"] == every[:3]
    assert first["pagination"] == {"skip": 0, "limit": 3, "total": 4, "pages": 2}
    rest = success_body(await admin.get(f"{T}/{task['id']}/events?skip=3&limit=3"), 200)
    assert (rest["data"], rest["pagination"]["total"]) == (every[3:], 4)
    assert ok(await admin.get(f"{T}/{task['id']}/events?skip=9")) == []
    for bad in ("limit=0", "limit=1001", "skip=-1", "limit=x", "page=2"):
        error_of(await admin.get(f"{T}/{task['id']}/events?{bad}"), 400, "INVALID_REQUEST")


async def test_retry_one(admin: Client, client: Client, keys: dict[Role, str]) -> None:
    task = await fail_one(admin)
    for role in (Role.WORKER, Role.VIEWER):
        reply = await client.api_key(keys[role]).post(f"{T}/{task['id']}/retry")
        error_of(reply, 403, "FORBIDDEN")
    again = ok(await client.api_key(keys[Role.OPERATOR]).post(f"{T}/{task['id']}/retry"))
    assert again["status"] == "pending" and again["attempts"] == 1 and again["error"] is None
    error_of(await admin.post(f"{T}/{task['id']}/retry"), 409, "CONFLICT")
    events = ok(await admin.get(f"{T}/{task['id']}/events"))
    assert events[-1]["event"] == "retried" and events[-1]["actor"].startswith("key:")
    assert (await lease_one(admin))["id"] == task["id"]


async def test_bulk_retry_and_purge(admin: Client, client: Client, keys: dict[Role, str]) -> None:
    red = [await fail_one(admin, queue="bulk", tags=["red"]) for _ in range(3)]
    plain = await fail_one(admin, queue="bulk")
    body = {"status": "failed", "queue": "bulk", "tag": "red"}
    error_of(await client.api_key(keys[Role.WORKER]).post(f"{T}/retry", body), 403, "FORBIDDEN")
    assert ok(await admin.post(f"{T}/retry", {**body, "limit": 2})) == {
        "matched": 2,
        "affected": 2,
    }
    assert ok(await admin.post(f"{T}/purge", body)) == {"matched": 1, "affected": 1}
    statuses = [ok(await admin.get(f"{T}/{t['id']}")).get("status") for t in red[:2]]
    assert statuses == ["pending", "pending"]
    error_of(await admin.get(f"{T}/{red[2]['id']}"), 404, "NOT_FOUND")
    after = {"status": "failed", "finished_after": "2999-01-01T00:00:00Z"}
    assert ok(await admin.post(f"{T}/purge", after)) == {"matched": 0, "affected": 0}
    assert ok(await admin.get(f"{T}/{plain['id']}"))["status"] == "failed"
    reply = await admin.post(f"{T}/retry", {"status": "completed"})
    error_of(reply, 400, "INVALID_REQUEST", field="status")
    error_of(await admin.post(f"{T}/purge", {"status": "running"}), 400, "INVALID_REQUEST",
             field="status")  # fmt: skip
    error_of(await admin.post(f"{T}/purge", {}), 400, "INVALID_REQUEST", field="status")
    error_of(await admin.post(f"{T}/retry", {"status": "failed", "limit": 0}), 400,
             "INVALID_REQUEST", field="limit")  # fmt: skip


async def test_list_filters(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    a = await create_task(admin, queue="f1", tags=["x"])
    mock_clock.jump(0.01)  # in another millisecond: the API shows times to the millisecond
    b = await create_task(admin, queue="f1", name="other", tags=["x", "y"])

    async def ids(query: str) -> list[str]:
        return [t["id"] for t in ok(await admin.get(f"{T}?{query}"))]

    assert await ids("tag=x") == [b["id"], a["id"]]
    assert await ids("tag=y") == [b["id"]]
    assert await ids("tag=x&name=other") == [b["id"]]
    assert await ids("queue=f1&tag=x&order=asc") == [a["id"], b["id"]]
    assert await ids(f"created_after={b['created_at']}&tag=x") == [b["id"]]
    assert await ids(f"created_before={b['created_at']}&queue=f1") == [a["id"]]
    assert await ids("created_before=2000-01-01T00:00:00Z") == []
    reply = await admin.get(f"{T}?created_after=yesterday")
    error_of(reply, 400, "INVALID_REQUEST", field="created_after")
    page = (await admin.get(f"{T}?tag=x&limit=1")).json
    assert page["pagination"]["total"] == 2


# -- schedules -------------------------------------------------------------------------------

S = "/api/v1/schedules"
NIGHTLY = {
    "name": "nightly",
    "cron": "30 2 * * *",
    "timezone": "Europe/Berlin",
    "task": {"name": "Send Report", "queue": "reports", "payload": {"k": 1}},
}


async def test_schedule_crud_and_trigger(admin: Client, client: Client,
                                         keys: dict[Role, str]) -> None:  # fmt: skip
    made = ok(await admin.post(S, NIGHTLY), 201)
    assert made["name"] == "nightly" and made["catch_up"] == "none" and not made["paused"]
    assert TIMESTAMP.match(made["next_run_at"]) and made["last_run_at"] is None
    assert made["task"]["payload"] == {"k": 1}
    error_of(await admin.post(S, NIGHTLY), 409, "CONFLICT", field="name")
    error_of(await client.api_key(keys[Role.WORKER]).post(S, {**NIGHTLY, "name": "w"}), 403,
             "FORBIDDEN")  # fmt: skip
    viewer = client.api_key(keys[Role.VIEWER])
    assert ok(await viewer.get(f"{S}/nightly"))["cron"] == "30 2 * * *"
    ok(await admin.post(S, {**NIGHTLY, "name": "a-first", "paused": True}), 201)
    listed = (await viewer.get(f"{S}?limit=1")).json
    assert [s["name"] for s in listed["data"]] == ["a-first"]
    assert listed["pagination"]["total"] == 2
    paused = ok(await admin.put(f"{S}/nightly", {"paused": True}))
    assert paused["paused"] and paused["next_run_at"] is None
    fired = ok(await admin.post(f"{S}/nightly/trigger"))
    assert fired["task"]["name"] == "Send Report" and fired["task"]["queue"] == "reports"
    assert fired["schedule"]["last_task_id"] == fired["task"]["id"]
    assert fired["task"]["idempotency_key"].startswith("schedule:nightly:")
    resumed = ok(await admin.put(f"{S}/nightly", {"paused": False, "cron": "*/15 * * * *"}))
    assert resumed["next_run_at"] is not None and resumed["cron"] == "*/15 * * * *"
    assert (await admin.delete(f"{S}/nightly")).status == 204
    error_of(await admin.get(f"{S}/nightly"), 404, "NOT_FOUND")
    error_of(await admin.delete(f"{S}/nightly"), 404, "NOT_FOUND")
    error_of(await admin.post(f"{S}/nightly/trigger"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "* * *"}, "cron"),
        ({"cron": "99 * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"catch_up": "all"}, "catch_up"),
        ({"name": "bad name!"}, "name"),
        ({"task": {"name": "x", "run_at": "2030-01-01T00:00:00Z"}}, "task.run_at"),
        ({"task": {"name": "x", "idempotency_key": "k"}}, "task.idempotency_key"),
        ({"task": {"payload": {}}}, "task.name"),
    ],
)
async def test_schedule_validation(admin: Client, change: dict[str, Any], field: str) -> None:
    reply = await admin.post(S, {**NIGHTLY, **change})
    error_of(reply, 400, "INVALID_REQUEST", field=field)
    if field in ("cron", "timezone"):
        ok(await admin.post(S, NIGHTLY), 201)
        error_of(await admin.put(f"{S}/nightly", change), 400, "INVALID_REQUEST", field=field)


async def test_openapi_documents_the_new_routes(admin: Client) -> None:
    paths = (await admin.get("/openapi.json")).json["paths"]
    for path in (f"{T}/{{task_id}}/events", f"{T}/{{task_id}}/retry", f"{T}/retry",
                 f"{T}/purge", S, f"{S}/{{name}}", f"{S}/{{name}}/trigger"):  # fmt: skip
        assert path in paths, path


async def test_filter_times_far_from_now(admin: Client) -> None:
    for when in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        for what in ("retry", "purge"):
            for bound in ("finished_after", "finished_before"):
                reply = await admin.post(f"{T}/{what}", {"status": "failed", bound: when})
                assert ok(reply) == {"matched": 0, "affected": 0}
        for bound in ("created_after", "created_before"):
            ok(await admin.get(f"{T}?{bound}={when}"))
