"""The worker protocol (DESIGN.md): lease, complete, fail/retry, extend, fencing, ack, heartbeat,
and the worker endpoints of the guide."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from dtq.net.routing import Services

from .helpers import (
    TIMESTAMP,
    Client,
    as_others_see,
    create_task,
    error_of,
    get_task,
    lease,
    lease_one,
    ok,
    success_body,
)


def parse_ts(value: str) -> datetime:
    assert TIMESTAMP.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def settle(services: Services) -> None:
    """Let the reaper and the writer finish what a clock jump started."""
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()
        await services.queue.store.write(lambda tx: None)
    await trio.testing.wait_all_tasks_blocked()


def action(task: dict[str, Any], name: str) -> str:
    return f"/api/v1/tasks/{task['id']}/{name}"


# -- lease ------------------------------------------------------------------------------------


async def test_lease_nothing_ready(admin: Client) -> None:
    reply = await admin.post("/api/v1/tasks/lease", {"worker_id": "w1", "wait": 0})
    assert ok(reply) == []


async def test_lease_grants_a_fenced_lease(
    admin: Client, mock_clock: trio.testing.MockClock
) -> None:
    task = await create_task(admin, payload={"x": 1})
    reply = await admin.post(
        "/api/v1/tasks/lease", {"worker_id": "worker-001", "wait": 0, "lease_seconds": 120}
    )
    [leased] = ok(reply)
    assert leased["id"] == task["id"]
    assert leased["status"] == "running"
    assert leased["worker_id"] == "worker-001"
    assert leased["attempts"] == 1
    assert leased["payload"] == {"x": 1}
    lease_info = leased["lease"]
    assert set(lease_info) == {"id", "worker_id", "expires_at"}  # the id: only here
    assert lease_info["worker_id"] == "worker-001"
    assert isinstance(lease_info["id"], str) and lease_info["id"]
    started = parse_ts(leased["started_at"])
    assert parse_ts(lease_info["expires_at"]) - started == timedelta(seconds=120)
    seen = await get_task(admin, task["id"])
    assert set(seen["lease"]) == {"worker_id", "expires_at"}
    assert seen == as_others_see(leased)
    assert await lease(admin) == []  # handed out once


async def test_lease_default_duration(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    await create_task(admin)
    leased = await lease_one(admin)
    expires = parse_ts(leased["lease"]["expires_at"])
    assert expires - parse_ts(leased["started_at"]) == timedelta(seconds=60)


async def test_lease_never_outlives_the_task_timeout(
    admin: Client, mock_clock: trio.testing.MockClock
) -> None:
    await create_task(admin, timeout=10)
    leased = await lease_one(admin, lease_seconds=600)
    expires = parse_ts(leased["lease"]["expires_at"])
    assert expires - parse_ts(leased["started_at"]) == timedelta(seconds=10)


async def test_lease_priority_order_then_fifo(admin: Client) -> None:
    low = await create_task(admin, "low", priority="low")
    med1 = await create_task(admin, "med1")
    high1 = await create_task(admin, "high1", priority="high")
    med2 = await create_task(admin, "med2", priority="medium")
    high2 = await create_task(admin, "high2", priority="high")
    got = await lease(admin, max_tasks=10)
    assert [t["id"] for t in got] == [high1["id"], high2["id"], med1["id"], med2["id"], low["id"]]
    assert {t["status"] for t in got} == {"running"}


async def test_lease_max_tasks(admin: Client) -> None:
    for i in range(5):
        await create_task(admin, f"t{i}")
    assert len(await lease(admin, max_tasks=2)) == 2
    assert len(await lease(admin, max_tasks=2)) == 2
    assert len(await lease(admin, max_tasks=2)) == 1
    assert await lease(admin, max_tasks=2) == []


async def test_lease_by_queue_and_name(admin: Client) -> None:
    email = await create_task(admin, "send", queue="emails")
    report = await create_task(admin, "report")
    assert await lease(admin, queues=["other"]) == []
    assert [t["id"] for t in await lease(admin, queues=["emails"])] == [email["id"]]
    assert [t["id"] for t in await lease(admin, names=["report"])] == [report["id"]]


async def test_long_poll_gets_a_task_created_while_waiting(admin: Client) -> None:
    result: list[Any] = []

    async def wait_for_work() -> None:
        result.append(await admin.post("/api/v1/tasks/lease", {"worker_id": "w", "wait": 30}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_work)
        await trio.testing.wait_all_tasks_blocked()
        assert result == []  # still waiting
        task = await create_task(admin)
    [leased] = ok(result[0])
    assert leased["id"] == task["id"]


async def test_long_poll_times_out_empty(admin: Client, autojump_clock: Any) -> None:
    assert ok(await admin.post("/api/v1/tasks/lease", {"worker_id": "w", "wait": 5})) == []


# -- complete / fail / extend -----------------------------------------------------------------


async def test_complete(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    mock_clock.jump(3)
    reply = await admin.post(
        action(task, "complete"), {"lease_id": leased["lease"]["id"], "result": {"rows": 42}}
    )
    done = ok(reply)
    assert done["status"] == "completed"
    assert done["result"] == {"rows": 42}
    assert done["lease"] is None
    assert done["error"] is None
    assert done["duration"] == 3
    assert parse_ts(done["completed_at"]) - parse_ts(done["started_at"]) == timedelta(seconds=3)
    assert await get_task(admin, task["id"]) == done


async def test_fail_with_retry_goes_back_to_pending(
    admin: Client, mock_clock: trio.testing.MockClock
) -> None:
    task = await create_task(admin, retry_count=2)
    leased = await lease_one(admin)
    reply = await admin.post(
        action(task, "fail"),
        {
            "lease_id": leased["lease"]["id"],
            "error": {"message": "boom", "type": "ValueError", "traceback": "Traceback..."},
        },
    )
    retried = ok(reply)
    assert retried["status"] == "pending"
    assert retried["attempts"] == 1
    assert retried["lease"] is None
    assert retried["error"] == {
        "message": "boom",
        "type": "ValueError",
        "traceback": "Traceback...",
    }
    # backoff: about 1 s for the first retry (DESIGN.md), with jitter
    delay = parse_ts(retried["run_at"]) - parse_ts(retried["updated_at"])
    assert timedelta(seconds=0.5) <= delay <= timedelta(seconds=1.5)
    assert await lease(admin) == []  # not before run_at
    mock_clock.jump(2)
    again = await lease_one(admin)
    assert again["id"] == task["id"]
    assert again["attempts"] == 2
    assert again["lease"]["id"] != leased["lease"]["id"]


async def test_fail_without_retries_left(admin: Client) -> None:
    task = await create_task(admin)  # retry_count 0
    leased = await lease_one(admin)
    failed = ok(
        await admin.post(
            action(task, "fail"), {"lease_id": leased["lease"]["id"], "error": "it broke"}
        )
    )
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == "it broke"
    assert failed["completed_at"] is not None
    assert failed["run_at"] is None
    assert await lease(admin) == []


async def test_fail_with_retry_false(admin: Client) -> None:
    task = await create_task(admin, retry_count=5)
    leased = await lease_one(admin)
    failed = ok(
        await admin.post(action(task, "fail"), {"lease_id": leased["lease"]["id"], "retry": False})
    )
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1
    assert failed["error"]["message"]


async def test_extend(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin, lease_seconds=30)
    mock_clock.jump(20)
    extended = ok(
        await admin.post(
            action(task, "extend"), {"lease_id": leased["lease"]["id"], "lease_seconds": 100}
        )
    )
    assert "id" not in extended["lease"]  # the holder has it; no response repeats it
    new_expiry = parse_ts(extended["lease"]["expires_at"])
    assert new_expiry - parse_ts(leased["started_at"]) == timedelta(seconds=120)
    assert extended["status"] == "running"


async def test_release(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    released = ok(await admin.post(action(task, "release"), {"lease_id": leased["lease"]["id"]}))
    assert released["status"] == "pending"
    assert released["attempts"] == 0
    assert (await lease_one(admin))["id"] == task["id"]


# -- fencing: a stale lease gets 409 and changes nothing --------------------------------------


async def test_stale_lease_is_409_and_changes_nothing(admin: Client) -> None:
    task = await create_task(admin, retry_count=3)
    await lease_one(admin)
    before = await get_task(admin, task["id"])
    for name, body in [("complete", {"result": 1}), ("fail", {"error": "x"}),
                       ("extend", {"lease_seconds": 10}), ("release", {})]:  # fmt: skip
        reply = await admin.post(action(task, name), {"lease_id": "not-the-lease", **body})
        assert reply.status == 409, (name, reply)
        error_of(reply, 409, "CONFLICT", field="lease_id")
    assert await get_task(admin, task["id"]) == before


async def test_completing_twice_is_409(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    lease_id = leased["lease"]["id"]
    done = ok(await admin.post(action(task, "complete"), {"lease_id": lease_id, "result": "a"}))
    error_of(
        await admin.post(action(task, "complete"), {"lease_id": lease_id, "result": "b"}),
        409,
        "CONFLICT",
    )
    error_of(await admin.post(action(task, "fail"), {"lease_id": lease_id}), 409, "CONFLICT")
    assert await get_task(admin, task["id"]) == done


async def test_pending_task_has_no_lease_to_act_on(admin: Client) -> None:
    task = await create_task(admin)
    error_of(await admin.post(action(task, "complete"), {"lease_id": "x"}), 409, "CONFLICT")
    assert (await get_task(admin, task["id"]))["status"] == "pending"


@pytest.mark.parametrize("settings_overrides", [{"max_deliveries": 3}])
async def test_lost_leases_use_no_retry_until_max_deliveries(
    admin: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    """retry_count 0 (the default): a worker that vanishes costs the task nothing but a
    delivery; only DTQ_MAX_DELIVERIES lost leases fail it, with `lease_expired`."""
    task = await create_task(admin)
    assert task["deliveries"] == 0
    for n in (1, 2, 3):
        leased = await lease_one(admin, f"w{n}", lease_seconds=10)
        assert leased["deliveries"] == n
        mock_clock.jump(11)
        await settle(services)
        after = await get_task(admin, task["id"])
        assert after["error"]["type"] == "lease_expired"
        assert after["status"] == ("pending" if n < 3 else "failed"), n
    assert after["deliveries"] == 3
    assert await lease(admin) == []


async def test_a_reported_failure_after_lost_leases_still_gets_its_retries(
    admin: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    task = await create_task(admin, retry_count=1)
    await lease_one(admin, "w1", lease_seconds=10)
    mock_clock.jump(11)
    await settle(services)
    leased = await lease_one(admin, "w2")
    failed = ok(await admin.post(action(task, "fail"), {"lease_id": leased["lease"]["id"]}))
    assert failed["status"] == "pending"  # the one retry was still there
    assert failed["attempts"] == 2 and failed["deliveries"] == 2


async def test_unknown_task_is_404(admin: Client) -> None:
    path = "/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000/complete"
    error_of(await admin.post(path, {"lease_id": "x"}), 404, "NOT_FOUND", field="task_id")


async def test_expired_lease_is_fenced_off(
    admin: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    task = await create_task(admin, retry_count=1)
    first = await lease_one(admin, "w1", lease_seconds=10)
    mock_clock.jump(11)
    await settle(services)
    expired = await get_task(admin, task["id"])
    assert expired["status"] == "pending"  # ready again at once
    assert expired["error"]["type"] == "lease_expired"
    second = await lease_one(admin, "w2")
    assert second["attempts"] == 2
    # the first worker comes back late: its lease is stale
    reply = await admin.post(
        action(task, "complete"), {"lease_id": first["lease"]["id"], "result": "late"}
    )
    error_of(reply, 409, "CONFLICT", field="lease_id")
    assert await get_task(admin, task["id"]) == as_others_see(second)
    done = ok(await admin.post(action(task, "complete"), {"lease_id": second["lease"]["id"]}))
    assert done["status"] == "completed"
    assert done["worker_id"] == "w2"


# -- ack ----------------------------------------------------------------------------------------


async def test_ack_batch_with_one_stale_item(admin: Client) -> None:
    a = await create_task(admin, "a")
    b = await create_task(admin, "b", retry_count=1)
    c = await create_task(admin, "c")
    leased = {t["name"]: t for t in await lease(admin, max_tasks=3)}
    c_before = await get_task(admin, c["id"])
    reply = await admin.post(
        "/api/v1/tasks/ack",
        {
            "acks": [
                {
                    "id": a["id"],
                    "lease_id": leased["a"]["lease"]["id"],
                    "status": "completed",
                    "result": {"ok": 1},
                },
                {
                    "id": b["id"],
                    "lease_id": leased["b"]["lease"]["id"],
                    "status": "failed",
                    "error": "nope",
                },
                {"id": c["id"], "lease_id": "stale", "status": "completed"},
            ]
        },
    )
    body = ok(reply)
    assert body["succeeded"] == 2
    assert body["failed"] == 1
    results = body["results"]
    assert [r["id"] for r in results] == [a["id"], b["id"], c["id"]]
    assert results[0]["ok"] is True and results[0]["status"] == "completed"
    assert results[1]["ok"] is True and results[1]["status"] == "pending"  # retried
    assert results[2]["ok"] is False
    assert results[2]["error"]["code"] == "CONFLICT"
    assert results[2]["error"]["details"]["field"] == "lease_id"
    assert (await get_task(admin, a["id"]))["result"] == {"ok": 1}
    assert (await get_task(admin, b["id"]))["error"]["message"] == "nope"
    assert await get_task(admin, c["id"]) == c_before


async def test_ack_items_with_bad_ids_fail_alone(admin: Client) -> None:
    a = await create_task(admin)
    leased = await lease_one(admin)
    body = ok(
        await admin.post(
            "/api/v1/tasks/ack",
            {
                "acks": [
                    {"id": "not-a-uuid", "lease_id": "x", "status": "completed"},
                    {
                        "id": "123e4567-e89b-12d3-a456-426614174000",
                        "lease_id": "x",
                        "status": "failed",
                    },
                    {"id": a["id"], "lease_id": leased["lease"]["id"], "status": "completed"},
                ]
            },
        )
    )
    codes = [r.get("error", {}).get("code") for r in body["results"]]
    assert codes == ["INVALID_REQUEST", "NOT_FOUND", None]
    assert (body["succeeded"], body["failed"]) == (1, 2)


async def test_ack_bad_body_is_400(admin: Client) -> None:
    for acks in [
        [],
        [{"id": "x", "lease_id": "y", "status": "cancelled"}],
        [{"id": "x", "status": "failed"}],
        [{"id": "x", "lease_id": "y", "status": "completed", "extra": 1}],
    ]:
        reply = await admin.post("/api/v1/tasks/ack", {"acks": acks})
        assert reply.status == 400, (acks, reply)
        error_of(reply, 400, "INVALID_REQUEST")


# -- heartbeat and workers ----------------------------------------------------------------------


HEARTBEAT = {"worker_id": "worker-001", "status": "active", "current_load": 5, "max_capacity": 10}


async def test_heartbeat_the_guides_example(admin: Client) -> None:
    worker = ok(await admin.post("/api/v1/workers/heartbeat", HEARTBEAT))
    assert worker["worker_id"] == "worker-001"
    assert worker["status"] == "active"
    assert worker["current_load"] == 5
    assert worker["max_capacity"] == 10
    assert TIMESTAMP.match(worker["last_heartbeat"])
    assert ok(await admin.get("/api/v1/workers/worker-001")) == worker


async def test_worker_id_status_is_refused_as_it_names_the_health_route(admin: Client) -> None:
    reply = await admin.post("/api/v1/workers/heartbeat", {**HEARTBEAT, "worker_id": "status"})
    error_of(reply, 400, "INVALID_REQUEST", field="worker_id")


async def test_workers_list_get_and_status(
    admin: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    ok(await admin.post("/api/v1/workers/heartbeat", HEARTBEAT))
    ok(
        await admin.post(
            "/api/v1/workers/heartbeat",
            {
                "worker_id": "worker-002",
                "current_load": 1,
                "max_capacity": 4,
                "hostname": "box-2",
                "queues": ["emails"],
            },
        )
    )

    body = success_body(await admin.get("/api/v1/workers"))
    assert sorted(w["worker_id"] for w in body["data"]) == ["worker-001", "worker-002"]
    assert body["pagination"] == {"skip": 0, "limit": 50, "total": 2, "pages": 1}
    body = success_body(await admin.get("/api/v1/workers?skip=1&limit=1"))
    assert len(body["data"]) == 1
    assert body["pagination"] == {"skip": 1, "limit": 1, "total": 2, "pages": 2}

    two = ok(await admin.get("/api/v1/workers/worker-002"))
    assert two["hostname"] == "box-2"
    assert two["queues"] == ["emails"]
    assert two["status"] == "active"

    status = ok(await admin.get("/api/v1/workers/status"))
    assert status["workers_total"] == 2
    assert status["workers_active"] == 2
    assert status["total_capacity"] == 14
    assert status["current_load"] == 6
    assert {w["worker_id"]: w["healthy"] for w in status["workers"]} == {
        "worker-001": True,
        "worker-002": True,
    }
    alias = ok(await admin.get("/workers/status"))  # the guide's curl uses this path
    assert alias["workers_total"] == 2
    assert {w["worker_id"] for w in alias["workers"]} == {"worker-001", "worker-002"}

    # worker-001 goes silent past worker_timeout (30 s); worker-002 keeps beating
    mock_clock.jump(20)
    ok(await admin.post("/api/v1/workers/heartbeat", {"worker_id": "worker-002"}))
    mock_clock.jump(15)
    await settle(services)
    assert ok(await admin.get("/api/v1/workers/worker-001"))["status"] == "inactive"
    assert ok(await admin.get("/api/v1/workers/worker-002"))["status"] == "active"
    inactive = ok(await admin.get("/api/v1/workers?status=inactive"))
    assert [w["worker_id"] for w in inactive] == ["worker-001"]
    active = ok(await admin.get("/api/v1/workers?status=active"))
    assert [w["worker_id"] for w in active] == ["worker-002"]
    status = ok(await admin.get("/workers/status"))
    assert (status["workers_total"], status["workers_active"]) == (2, 1)
    assert {w["worker_id"]: w["healthy"] for w in status["workers"]} == {
        "worker-001": False,
        "worker-002": True,
    }
    dashboard = ok(await admin.get("/api/v1/analytics/dashboard"))
    assert (dashboard["workers_total"], dashboard["workers_active"]) == (2, 1)


async def test_worker_counts_results(admin: Client) -> None:
    ok(await admin.post("/api/v1/workers/heartbeat", HEARTBEAT))
    a = await create_task(admin)
    b = await create_task(admin)
    la = await lease_one(admin, "worker-001")
    lb = await lease_one(admin, "worker-001")
    ok(await admin.post(action(a, "complete"), {"lease_id": la["lease"]["id"]}))
    ok(await admin.post(action(b, "fail"), {"lease_id": lb["lease"]["id"]}))
    worker = ok(await admin.get("/api/v1/workers/worker-001"))
    assert (worker["tasks_completed"], worker["tasks_failed"]) == (1, 1)


async def test_unknown_worker_is_404(admin: Client) -> None:
    error_of(await admin.get("/api/v1/workers/nobody"), 404, "NOT_FOUND", field="worker_id")


async def test_empty_workers_status(admin: Client) -> None:
    status = ok(await admin.get("/api/v1/workers/status"))
    assert status["workers_total"] == 0
    assert status["workers"] == []
    assert status["utilization"] == 0


async def test_bad_heartbeat_is_400(admin: Client) -> None:
    for body in [
        {},
        {"worker_id": ""},
        {"worker_id": "has space"},
        {"worker_id": "w", "status": "busy"},
        {"worker_id": "w", "current_load": -1},
        {"worker_id": "w", "max_capacity": "ten"},
        {"worker_id": "w", "color": "red"},
    ]:
        reply = await admin.post("/api/v1/workers/heartbeat", body)
        assert reply.status == 400, (body, reply)
        error_of(reply, 400, "INVALID_REQUEST")
    assert ok(await admin.get("/api/v1/workers")) == []
