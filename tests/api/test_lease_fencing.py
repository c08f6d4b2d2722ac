"""Leases are secrets of their holder (issue 8, finding 1).

The lease id comes only in the lease response, to the worker that took the lease. Every other
view (task reads, lists, events, webhook payloads) shows who holds it and until when. And only
the principal that took the lease may use it: anyone else gets the same 409 as for a wrong id
(an admin excepted).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from dtq.core.accounts import ApiKeyCreate
from dtq.core.auth import Role
from dtq.core.webhooks.outbox import Delivery
from dtq.net.app import build_openapi
from dtq.net.routes.webhooks import delivery_body
from dtq.net.routing import Services

from .helpers import Client, create_task, error_of, get_task, lease_one, ok


async def key_client(client: Client, services: Services, name: str, role: Role) -> Client:
    _, key = await services.accounts.create_api_key(ApiKeyCreate(name=name, role=role), "test")
    return client.api_key(key)


@pytest.fixture
async def worker_a(client: Client, services: Services) -> Client:
    return await key_client(client, services, "worker-a", Role.WORKER)


@pytest.fixture
async def worker_b(client: Client, services: Services) -> Client:
    return await key_client(client, services, "worker-b", Role.WORKER)


@pytest.fixture
async def viewer(client: Client, services: Services) -> Client:
    return await key_client(client, services, "viewer", Role.VIEWER)


def action(task_id: str, name: str) -> str:
    return f"/api/v1/tasks/{task_id}/{name}"


def assert_no_lease_id(task: dict[str, Any]) -> None:
    assert task["status"] == "running"
    assert set(task["lease"]) == {"worker_id", "expires_at"}, task["lease"]
    assert task["lease"]["expires_at"] and task["worker_id"] == task["lease"]["worker_id"]


async def test_only_the_lease_response_shows_the_lease_id(
    admin: Client, worker_a: Client, worker_b: Client, viewer: Client
) -> None:
    task = await create_task(admin, payload={"n": 1})
    leased = await lease_one(worker_a, "wa")
    assert isinstance(leased["lease"]["id"], str) and leased["lease"]["id"]
    for reader in (worker_b, viewer, worker_a, admin):
        assert_no_lease_id(await get_task(reader, task["id"]))
        for query in ("", "?status=running", "?worker_id=wa"):
            [listed] = ok(await reader.get(f"/api/v1/tasks{query}"))
            assert_no_lease_id(listed)
        assert leased["lease"]["id"] not in json.dumps(ok(await reader.get("/api/v1/tasks")))


async def test_another_worker_cannot_use_a_lease_it_did_not_take(
    admin: Client, worker_a: Client, worker_b: Client
) -> None:
    task = await create_task(admin, retry_count=3)
    leased = await lease_one(worker_a, "wa")
    lease_id = leased["lease"]["id"]
    before = await get_task(admin, task["id"])
    wrong = error_of(
        await worker_b.post(action(task["id"], "complete"), {"lease_id": "not-the-lease"}),
        409,
        "CONFLICT",
        field="lease_id",
    )
    for name, body in [("complete", {"result": "forged"}), ("fail", {"error": "x"}),
                       ("extend", {"lease_seconds": 10}), ("release", {})]:  # fmt: skip
        reply = await worker_b.post(action(task["id"], name), {"lease_id": lease_id, **body})
        error = error_of(reply, 409, "CONFLICT", field="lease_id")
        # the same answer as for a wrong id: B learns nothing about the id it holds
        assert error["details"] == wrong["details"], name
    acked = ok(
        await worker_b.post(
            "/api/v1/tasks/ack",
            {"acks": [{"id": task["id"], "lease_id": lease_id, "status": "completed",
                       "result": "forged"}]},
        )
    )  # fmt: skip
    assert acked["succeeded"] == 0 and acked["failed"] == 1
    assert acked["results"][0]["error"]["code"] == "CONFLICT"
    assert acked["results"][0]["error"]["details"] == wrong["details"]
    assert await get_task(admin, task["id"]) == before  # nothing changed

    done = ok(await worker_a.post(action(task["id"], "complete"), {"lease_id": lease_id,
                                                                  "result": "honest"}))  # fmt: skip
    assert done["status"] == "completed" and done["result"] == "honest"
    error_of(
        await worker_b.post(action(task["id"], "complete"), {"lease_id": lease_id, "result": "x"}),
        409,
        "CONFLICT",
    )
    assert (await get_task(admin, task["id"]))["result"] == "honest"  # A's result stands


async def test_the_same_key_on_another_connection_is_the_same_holder(
    client: Client, services: Services, admin: Client
) -> None:
    """The holder is the principal (API key or user), not the worker id or the connection."""
    _, key = await services.accounts.create_api_key(
        ApiKeyCreate(name="pool", role=Role.WORKER), "test"
    )
    task = await create_task(admin)
    leased = await lease_one(client.api_key(key), "w-1")
    other_process = client.api_key(key)
    done = ok(await other_process.post(action(task["id"], "complete"),
                                       {"lease_id": leased["lease"]["id"], "result": 1}))  # fmt: skip
    assert done["status"] == "completed"


async def test_an_operator_is_not_an_admin_here(
    admin: Client, worker_a: Client, client: Client, services: Services
) -> None:
    operator = await key_client(client, services, "ops", Role.OPERATOR)
    task = await create_task(admin)
    leased = await lease_one(worker_a, "wa")
    reply = await operator.post(action(task["id"], "complete"), {"lease_id": leased["lease"]["id"]})
    error_of(reply, 409, "CONFLICT", field="lease_id")


async def test_an_admin_may_act_on_any_lease_with_its_id(
    admin: Client, worker_a: Client, client: Client, services: Services
) -> None:
    admin_key = await key_client(client, services, "root", Role.ADMIN)
    first = await create_task(admin, "first")
    second = await create_task(admin, "second")
    leased = {t["id"]: t["lease"]["id"] for t in ok(await worker_a.post(
        "/api/v1/tasks/lease", {"worker_id": "wa", "wait": 0, "max_tasks": 2}))}  # fmt: skip
    done = ok(await admin.post(action(first["id"], "complete"),
                               {"lease_id": leased[first["id"]], "result": "by admin"}))  # fmt: skip
    assert done["status"] == "completed" and done["result"] == "by admin"
    released = ok(await admin_key.post(action(second["id"], "release"),
                                       {"lease_id": leased[second["id"]]}))  # fmt: skip
    assert released["status"] == "pending"
    # ... but still needs the id: the holder check is waived, the fencing is not
    again = await lease_one(worker_a, "wa")
    error_of(await admin.post(action(again["id"], "complete"), {"lease_id": "guess"}), 409,
             "CONFLICT")  # fmt: skip


async def test_events_carry_no_lease_id(
    admin: Client, worker_a: Client, services: Services
) -> None:
    """What /ws/tasks subscribers get (the bus's messages, as the socket sends them)."""
    with services.bus.subscribe() as sub:
        task = await create_task(admin)
        leased = await lease_one(worker_a, "wa")
        lease_id = leased["lease"]["id"]
        ok(await worker_a.post(action(task["id"], "extend"), {"lease_id": lease_id}))
        seen: list[dict[str, Any]] = []
        while not any(e["event"] == "task.leased" for e in seen):
            message = json.loads(await sub.next_message())
            seen.extend(message["events"] if message["event"] == "batch" else [message])
    [leased_event] = [e for e in seen if e["event"] == "task.leased"]
    assert_no_lease_id(leased_event["task"])
    assert all(lease_id not in json.dumps(e) for e in seen)


async def test_webhook_payloads_carry_no_lease_id(
    admin: Client, worker_a: Client, services: Services
) -> None:
    task = await create_task(admin)
    leased = await lease_one(worker_a, "wa")
    stored = await services.queue.get(task["id"])
    assert stored.lease is not None and stored.lease.id == leased["lease"]["id"]
    delivery = Delivery(id="d1", webhook_id="h1", event="task.leased", task=stored,
                        created_at=stored.updated_at)  # fmt: skip
    body = msgspec.json.decode(delivery_body(delivery))
    assert_no_lease_id(body["task"])
    assert leased["lease"]["id"].encode() not in delivery_body(delivery)


def test_the_openapi_document_says_so() -> None:
    spec = build_openapi()
    lease = spec["components"]["schemas"]["LeaseOut"]
    assert "id" not in lease["required"]
    assert "only in the lease response" in lease["properties"]["id"]["description"]
    ops = {op["operationId"]: op for path in spec["paths"].values() for op in path.values()
           if isinstance(op, dict) and "operationId" in op}  # fmt: skip
    for op_id in ("complete_task", "fail_task", "extend_lease", "release_task", "ack_tasks"):
        assert "admin" in ops[op_id]["description"], op_id


async def test_a_lease_granted_on_wake_up_is_the_long_pollers_alone(
    admin: Client, worker_a: Client, worker_b: Client, services: Services
) -> None:
    """The wake-up path: a create leases the task to the parked long poll in its own commit."""
    got: dict[str, Any] = {}

    async def long_poll() -> None:
        got["tasks"] = ok(await worker_a.post("/api/v1/tasks/lease", {"worker_id": "wa",
                                                                       "wait": 10}))  # fmt: skip

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_poll)
        with trio.fail_after(5):
            while services.queue.dispatcher.waiting_count() == 0:
                await trio.testing.wait_all_tasks_blocked()
        task = await create_task(admin)
    [leased] = got["tasks"]
    assert leased["id"] == task["id"] and leased["lease"]["id"]
    assert_no_lease_id(await get_task(worker_b, task["id"]))
    body = {"lease_id": leased["lease"]["id"], "result": "forged"}
    error_of(await worker_b.post(action(task["id"], "complete"), body), 409, "CONFLICT")
    done = ok(await worker_a.post(action(task["id"], "complete"), {**body, "result": "honest"}))
    assert done["result"] == "honest"
