"""Task management as the guide documents it: create, get, list, update/cancel, delete, batch,
idempotency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio.testing

from .helpers import (
    TIMESTAMP,
    UUID,
    Client,
    create_task,
    error_of,
    get_task,
    lease,
    lease_one,
    ok,
    success_body,
)

# The guide's fields and the ones DESIGN.md adds ("Fields beyond the guide that users expect").
TASK_FIELDS = {
    "id",
    "name",
    "description",
    "priority",
    "retry_count",
    "timeout",
    "payload",
    "status",
    "queue",
    "run_at",
    "idempotency_key",
    "attempts",
    "result",
    "error",
    "worker_id",
    "lease",
    "started_at",
    "completed_at",
    "duration",
    "tags",
    "created_at",
    "updated_at",
}


def parse_ts(value: str) -> datetime:
    assert TIMESTAMP.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- create -----------------------------------------------------------------------------------


async def test_create_the_guides_example(admin: Client) -> None:
    body = {
        "name": "Process Data",
        "description": "Process CSV file",
        "priority": "high",
        "payload": {"file_path": "/data/input.csv"},
    }
    reply = await admin.post("/api/v1/tasks", body)
    task = ok(reply, 201)
    assert set(task) >= TASK_FIELDS
    assert UUID.match(task["id"])
    assert task["name"] == "Process Data"
    assert task["description"] == "Process CSV file"
    assert task["priority"] == "high"
    assert task["payload"] == {"file_path": "/data/input.csv"}
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    for unset in (
        "result",
        "error",
        "worker_id",
        "lease",
        "run_at",
        "started_at",
        "completed_at",
        "duration",
        "idempotency_key",
    ):
        assert task[unset] is None, unset
    created = parse_ts(task["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    assert task["updated_at"] == task["created_at"]
    assert await get_task(admin, task["id"]) == task


async def test_create_defaults(admin: Client) -> None:
    task = ok(await admin.post("/api/v1/tasks", {"name": "Data Processing"}), 201)
    assert task["priority"] == "medium"
    assert task["retry_count"] == 0
    assert task["timeout"] == 3600
    assert task["queue"] == "default"
    assert task["payload"] == {}
    assert task["description"] is None
    assert task["tags"] == []


async def test_create_all_fields(admin: Client) -> None:
    body = {
        "name": "n",
        "description": "d",
        "priority": "low",
        "retry_count": 3,
        "timeout": 90,
        "payload": {"one": [1, "two", {"three": None}]},
        "queue": "emails",
        "tags": ["a", "b"],
        "idempotency_key": "k-1",
        "delay": 3600,
    }
    task = ok(await admin.post("/api/v1/tasks", body), 201)
    for key in (
        "name",
        "description",
        "priority",
        "retry_count",
        "timeout",
        "payload",
        "queue",
        "tags",
        "idempotency_key",
    ):
        assert task[key] == body[key], key
    run_at = parse_ts(task["run_at"])
    assert run_at - parse_ts(task["created_at"]) == timedelta(hours=1)
    # not due yet: nothing to lease
    assert await lease(admin) == []


NEXT_YEAR = datetime.now(UTC).year + 1  # run_at must be within 10 years of now


async def test_naive_run_at_is_utc(admin: Client) -> None:
    task = await create_task(admin, run_at=f"{NEXT_YEAR}-01-02T03:04:05")
    assert task["run_at"] == f"{NEXT_YEAR}-01-02T03:04:05.000Z"


async def test_create_with_run_at(admin: Client) -> None:
    when = f"{NEXT_YEAR}-01-02T03:04:05Z"
    task = await create_task(admin, run_at=when)
    assert parse_ts(task["run_at"]) == datetime(NEXT_YEAR, 1, 2, 3, 4, 5, tzinfo=UTC)
    past = await create_task(admin, "past", run_at=f"{NEXT_YEAR - 3}-01-01T00:00:00Z")
    assert past["run_at"] is None  # already due
    assert [t["id"] for t in await lease(admin)] == [past["id"]]


# -- get / list -------------------------------------------------------------------------------


async def test_list_empty(admin: Client) -> None:
    body = success_body(await admin.get("/api/v1/tasks"), 200)
    assert body["data"] == []
    assert body["pagination"] == {"skip": 0, "limit": 50, "total": 0, "pages": 0}


async def test_list_default_limit_is_50(admin: Client) -> None:
    ok(
        await admin.post("/api/v1/tasks/batch", {"tasks": [{"name": f"t{i}"} for i in range(60)]}),
        201,
    )
    body = success_body(await admin.get("/api/v1/tasks"))
    assert len(body["data"]) == 50
    assert body["pagination"] == {"skip": 0, "limit": 50, "total": 60, "pages": 2}
    body = success_body(await admin.get("/api/v1/tasks?limit=100"))
    assert len(body["data"]) == 60
    assert body["pagination"] == {"skip": 0, "limit": 100, "total": 60, "pages": 1}


async def test_list_pagination(admin: Client) -> None:
    created = ok(
        await admin.post("/api/v1/tasks/batch", {"tasks": [{"name": f"t{i}"} for i in range(15)]}),
        201,
    )
    everything = [t["id"] for t in ok(await admin.get("/api/v1/tasks?limit=100&order=asc"))]
    assert everything == [t["id"] for t in created]  # one created_at: ties keep creation order
    body = success_body(await admin.get("/api/v1/tasks?skip=0&limit=10&order=asc"))
    assert body["pagination"] == {"skip": 0, "limit": 10, "total": 15, "pages": 2}
    assert [t["id"] for t in body["data"]] == everything[:10]
    body = success_body(await admin.get("/api/v1/tasks?skip=10&limit=10&order=asc"))
    assert body["pagination"] == {"skip": 10, "limit": 10, "total": 15, "pages": 2}
    assert [t["id"] for t in body["data"]] == everything[10:]
    body = success_body(await admin.get("/api/v1/tasks?skip=20&limit=10"))
    assert body["data"] == []
    assert body["pagination"] == {"skip": 20, "limit": 10, "total": 15, "pages": 2}
    body = success_body(await admin.get("/api/v1/tasks?skip=3&limit=4&order=desc"))
    assert [t["id"] for t in body["data"]] == everything[::-1][3:7]
    assert body["pagination"] == {"skip": 3, "limit": 4, "total": 15, "pages": 4}


BAD_LIST_QUERIES = [
    ("limit=101", "limit"),
    ("limit=0", "limit"),
    ("limit=-1", "limit"),
    ("skip=-1", "skip"),
    ("skip=abc", "skip"),
    ("limit=1.5", "limit"),
    ("limit=", "limit"),
    ("status=done", "status"),
    ("priority=urgent", "priority"),
    ("sort=name", "sort"),
    ("order=up", "order"),
    ("worker_id=" + "w" * 200, "worker_id"),
    ("bogus=1", "bogus"),
]


async def test_list_bad_query(admin: Client) -> None:
    for query, field in BAD_LIST_QUERIES:
        reply = await admin.get(f"/api/v1/tasks?{query}")
        assert reply.status == 400, (query, reply)
        error_of(reply, 400, "INVALID_REQUEST", field=field)


async def test_list_filters(admin: Client) -> None:
    high = await create_task(admin, "h", priority="high")
    low = await create_task(admin, "l", priority="low")
    medium = await create_task(admin, "m")
    running = await lease_one(admin, "worker-7")  # the high one
    assert running["id"] == high["id"]
    done = await lease_one(admin, "worker-8")  # the medium one
    ok(await admin.post(f"/api/v1/tasks/{done['id']}/complete", {"lease_id": done["lease"]["id"]}))

    async def ids(query: str) -> set[str]:
        body = success_body(await admin.get(f"/api/v1/tasks?{query}"))
        assert body["pagination"]["total"] == len(body["data"])
        return {t["id"] for t in body["data"]}

    assert await ids("status=pending") == {low["id"]}
    assert await ids("status=running") == {high["id"]}
    assert await ids("status=completed") == {medium["id"]}
    assert await ids("status=failed") == set()
    assert await ids("priority=high") == {high["id"]}
    assert await ids("priority=medium") == {medium["id"]}
    assert await ids("priority=low") == {low["id"]}
    assert await ids("worker_id=worker-7") == {high["id"]}
    assert await ids("worker_id=worker-8") == {medium["id"]}
    assert await ids("worker_id=nobody") == set()
    assert await ids("status=running&worker_id=worker-7") == {high["id"]}
    assert await ids("status=pending&priority=high") == set()
    assert await ids("status=completed&priority=medium&worker_id=worker-8") == {medium["id"]}


async def test_list_sort_and_order(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    # mock_clock: time moves only when the test says so, so every duration is exact.
    a = await create_task(admin, "a")
    mock_clock.jump(1)
    b = await create_task(admin, "b")
    mock_clock.jump(1)
    c = await create_task(admin, "c")
    mock_clock.jump(1)
    d = await create_task(admin, "d")

    async def names(query: str) -> list[str]:
        return [t["name"] for t in ok(await admin.get(f"/api/v1/tasks?{query}"))]

    assert await names("") == ["d", "c", "b", "a"]  # default: created_at, desc
    assert await names("sort=created_at&order=desc") == ["d", "c", "b", "a"]
    assert await names("sort=created_at&order=asc") == ["a", "b", "c", "d"]

    # a: 5 s, b: 2 s, c: running, d: pending
    leased = {t["name"]: t for t in await lease(admin, max_tasks=3)}
    assert set(leased) == {"a", "b", "c"}
    mock_clock.jump(2)
    ok(
        await admin.post(
            f"/api/v1/tasks/{b['id']}/complete", {"lease_id": leased["b"]["lease"]["id"]}
        )
    )
    mock_clock.jump(3)
    ok(
        await admin.post(
            f"/api/v1/tasks/{a['id']}/complete", {"lease_id": leased["a"]["lease"]["id"]}
        )
    )
    assert ok(await admin.get(f"/api/v1/tasks/{a['id']}"))["duration"] == 5
    assert ok(await admin.get(f"/api/v1/tasks/{b['id']}"))["duration"] == 2
    mock_clock.jump(1)
    ok(await admin.put(f"/api/v1/tasks/{d['id']}", {"description": "touched"}))

    # updated_at: d (edited), a (completed), b (completed), c (leased)
    assert await names("sort=updated_at&order=desc") == ["d", "a", "b", "c"]
    assert await names("sort=updated_at&order=asc") == ["c", "b", "a", "d"]
    by_duration = await names("sort=duration&order=desc")
    assert by_duration[:2] == ["a", "b"]  # longest first; unfinished tasks have no duration
    assert sorted(by_duration[2:]) == ["c", "d"]
    asc = await names("sort=duration&order=asc")
    assert [n for n in asc if n in ("a", "b")] == ["b", "a"]
    assert len(asc) == 4
    body = success_body(await admin.get("/api/v1/tasks?sort=duration&order=desc&skip=1&limit=1"))
    assert [t["name"] for t in body["data"]] == ["b"]
    assert body["pagination"] == {"skip": 1, "limit": 1, "total": 4, "pages": 4}
    assert c["status"] == "pending"


# -- update / cancel --------------------------------------------------------------------------


async def test_cancel_pending(admin: Client) -> None:
    task = await create_task(admin)
    cancelled = ok(await admin.put(f"/api/v1/tasks/{task['id']}", {"status": "cancelled"}))
    assert cancelled["status"] == "cancelled"
    assert cancelled["completed_at"] is not None
    assert await get_task(admin, task["id"]) == cancelled
    assert await lease(admin) == []  # never handed out
    again = ok(await admin.put(f"/api/v1/tasks/{task['id']}", {"status": "cancelled"}))
    assert again["status"] == "cancelled"  # cancelling twice is not an error


async def test_cancel_running_fences_the_worker(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    cancelled = ok(await admin.put(f"/api/v1/tasks/{task['id']}", {"status": "cancelled"}))
    assert cancelled["status"] == "cancelled"
    assert cancelled["lease"] is None
    # the worker's lease is no longer good for anything
    reply = await admin.post(
        f"/api/v1/tasks/{task['id']}/complete", {"lease_id": leased["lease"]["id"], "result": 1}
    )
    error_of(reply, 409, "CONFLICT", field="lease_id")
    assert (await get_task(admin, task["id"]))["status"] == "cancelled"


async def test_cancel_finished_is_409(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    ok(
        await admin.post(
            f"/api/v1/tasks/{task['id']}/complete", {"lease_id": leased["lease"]["id"]}
        )
    )
    reply = await admin.put(f"/api/v1/tasks/{task['id']}", {"status": "cancelled"})
    error_of(reply, 409, "CONFLICT", field="status")
    assert (await get_task(admin, task["id"]))["status"] == "completed"


async def test_put_other_status_is_400(admin: Client) -> None:
    task = await create_task(admin)
    for status in ("completed", "failed", "running", "pending", "exploded", None, 1):
        reply = await admin.put(f"/api/v1/tasks/{task['id']}", {"status": status})
        if status is None:  # "no change"
            assert ok(reply) == task
            continue
        assert reply.status == 400, (status, reply)
        error_of(reply, 400, "INVALID_REQUEST", field="status")
    assert await get_task(admin, task["id"]) == task


async def test_edit_pending(admin: Client) -> None:
    task = await create_task(admin, payload={"a": 1})
    change = {
        "description": "new",
        "priority": "high",
        "retry_count": 5,
        "timeout": 60,
        "payload": {"b": 2},
        "tags": ["x"],
    }
    edited = ok(await admin.put(f"/api/v1/tasks/{task['id']}", change))
    for key, value in change.items():
        assert edited[key] == value, key
    assert edited["status"] == "pending"
    assert edited["name"] == task["name"]
    assert parse_ts(edited["updated_at"]) >= parse_ts(task["updated_at"])
    assert await get_task(admin, task["id"]) == edited


async def test_edit_priority_changes_dispatch_order(admin: Client) -> None:
    first = await create_task(admin, "first", priority="low")
    second = await create_task(admin, "second", priority="low")
    ok(await admin.put(f"/api/v1/tasks/{second['id']}", {"priority": "high"}))
    assert (await lease_one(admin))["id"] == second["id"]
    assert (await lease_one(admin))["id"] == first["id"]


async def test_payload_is_replaced_by_an_object_only(admin: Client) -> None:
    task = await create_task(admin, payload={"a": 1})
    edited = ok(await admin.put(f"/api/v1/tasks/{task['id']}", {"payload": {}}))
    assert edited["payload"] == {}
    for payload in (None, "x", [1, 2], 3):  # the guide's body shows `"payload": {}`
        reply = await admin.put(f"/api/v1/tasks/{task['id']}", {"payload": payload})
        error_of(reply, 400, "INVALID_REQUEST", field="payload")
    assert (await get_task(admin, task["id"]))["payload"] == {}


async def test_edit_running_is_409(admin: Client) -> None:
    task = await create_task(admin)
    await lease_one(admin)
    before = await get_task(admin, task["id"])
    reply = await admin.put(f"/api/v1/tasks/{task['id']}", {"description": "late"})
    error_of(reply, 409, "CONFLICT")
    assert await get_task(admin, task["id"]) == before


async def test_put_unknown_task_is_404(admin: Client) -> None:
    reply = await admin.put(
        "/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000", {"status": "cancelled"}
    )
    error_of(reply, 404, "NOT_FOUND", field="task_id")


# -- delete -----------------------------------------------------------------------------------


async def test_delete(admin: Client) -> None:
    task = await create_task(admin)
    reply = await admin.delete(f"/api/v1/tasks/{task['id']}")
    assert reply.status == 204
    assert reply.body == b""
    error_of(await admin.get(f"/api/v1/tasks/{task['id']}"), 404, "NOT_FOUND")
    error_of(await admin.delete(f"/api/v1/tasks/{task['id']}"), 404, "NOT_FOUND")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0
    assert await lease(admin) == []  # a deleted task is never handed out


async def test_delete_running_fences_the_worker(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    assert (await admin.delete(f"/api/v1/tasks/{task['id']}")).status == 204
    reply = await admin.post(
        f"/api/v1/tasks/{task['id']}/complete", {"lease_id": leased["lease"]["id"]}
    )
    error_of(reply, 404, "NOT_FOUND")


# -- batch ------------------------------------------------------------------------------------


async def test_batch_create(admin: Client) -> None:
    bodies = [{"name": "a", "priority": "low"}, {"name": "b", "payload": {"n": 2}}, {"name": "c"}]
    created = ok(await admin.post("/api/v1/tasks/batch", {"tasks": bodies}), 201)
    assert [t["name"] for t in created] == ["a", "b", "c"]
    assert created[0]["priority"] == "low"
    assert created[1]["payload"] == {"n": 2}
    assert len({t["id"] for t in created}) == 3
    for task in created:
        assert await get_task(admin, task["id"]) == task


async def test_batch_bad_shape(admin: Client) -> None:
    too_many = {"tasks": [{"name": f"t{i}"} for i in range(1001)]}
    for body in ({"tasks": []}, too_many, {"tasks": {"name": "x"}}, {}, []):
        reply = await admin.post("/api/v1/tasks/batch", body)
        assert reply.status == 400, (str(body)[:50], reply)
        error_of(reply, 400, "INVALID_REQUEST")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_batch_with_one_invalid_task_creates_nothing(admin: Client) -> None:
    bodies = [{"name": "ok"}, {"name": "bad", "priority": "urgent"}, {"name": "ok too"}]
    reply = await admin.post("/api/v1/tasks/batch", {"tasks": bodies})
    error_of(reply, 400, "INVALID_REQUEST", field="tasks[1].priority")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0
    assert await lease(admin) == []


async def test_batch_with_an_idempotency_conflict_creates_nothing(admin: Client) -> None:
    await create_task(admin, "first", idempotency_key="k")
    bodies = [{"name": "new"}, {"name": "other", "idempotency_key": "k"}]
    error_of(await admin.post("/api/v1/tasks/batch", {"tasks": bodies}), 409, "CONFLICT")
    listed = ok(await admin.get("/api/v1/tasks"))
    assert [t["name"] for t in listed] == ["first"]
    dashboard = ok(await admin.get("/api/v1/analytics/dashboard"))
    assert dashboard["total_tasks"] == dashboard["pending_tasks"] == 1


# -- idempotency ------------------------------------------------------------------------------


async def test_idempotent_replay(admin: Client) -> None:
    body = {"name": "charge", "payload": {"amount": 5}, "idempotency_key": "order-42"}
    first = ok(await admin.post("/api/v1/tasks", body), 201)
    replay = ok(await admin.post("/api/v1/tasks", body), 200)
    assert replay["id"] == first["id"]
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 1


async def test_idempotency_key_with_a_different_body_is_409(admin: Client) -> None:
    first = await create_task(admin, "charge", payload={"amount": 5}, idempotency_key="order-42")
    reply = await admin.post(
        "/api/v1/tasks", {"name": "charge", "payload": {"amount": 6}, "idempotency_key": "order-42"}
    )
    error = error_of(reply, 409, "CONFLICT", field="idempotency_key")
    assert error["details"].get("task_id") == first["id"]
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 1


async def test_idempotent_replay_in_a_batch(admin: Client) -> None:
    first = await create_task(admin, "a", idempotency_key="k1")
    bodies = [{"name": "a", "idempotency_key": "k1"}, {"name": "b", "idempotency_key": "k2"}]
    created = ok(await admin.post("/api/v1/tasks/batch", {"tasks": bodies}), 201)
    assert created[0]["id"] == first["id"]
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 2
