"""Bad input gets the guide's error format with the field at fault, never a 500 and never a
half-written record (DESIGN.md "What done means")."""

from __future__ import annotations

from typing import Any

import pytest
from quart_trio import QuartTrio

from dtq.net.routing import plain_rule

from .helpers import (
    Client,
    as_others_see,
    create_task,
    error_of,
    get_task,
    lease_one,
    ok,
    success_body,
)

TASK_ID = "123e4567-e89b-12d3-a456-426614174000"


def fill(openapi_path: str) -> str:
    """An OpenAPI path as `body_routes` fills it in."""
    path = openapi_path.replace("{task_id}", TASK_ID).replace("{name}", "default")
    return path.replace("{", "<").replace("}", ">")


def body_routes(app: QuartTrio) -> list[tuple[str, str]]:
    """(method, path) of every POST/PUT route the app serves, with path parameters filled in."""
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) & {"POST", "PUT"}):
            path = plain_rule(rule.rule).replace("<task_id>", TASK_ID)
            path = path.replace("<worker_id>", "w1").replace("<username>", "bob")
            path = path.replace("<name>", "default")  # a queue
            out.append((method, path.replace("<key_id>", "0123456789abcdef")))
    return sorted(out)


# Bodies no route accepts: not JSON, not an object, or an object with an unknown field only.
BAD_BODIES = [
    b"{",
    b"{'name': 'x'}",
    b"not json",
    b"\xff\xfe\x00",
    b"[]",
    b"null",
    b"42",
    b'"a string"',
    b'{"no_such_field_anywhere": 1}',
    b'{"name": "x"} {"name": "y"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a": ' * 3000 + b"1" + b"}" * 3000,
]


async def test_every_body_route_rejects_bad_bodies(admin: Client, app: QuartTrio) -> None:
    routes = body_routes(app)
    assert ("POST", "/api/v1/tasks") in routes
    # operations whose body may be left out (documented as not required)
    optional = {(spec.method, fill(spec.path)) for spec in app.extensions["dtq_api"].registry
                if spec.body is not None and not spec.body_required}  # fmt: skip
    for method, path in routes:
        for raw in BAD_BODIES:
            reply = await admin.request(method, path, body=raw)
            assert reply.status == 400, (method, path, raw[:40], reply)
            error_of(reply, 400, "INVALID_REQUEST")
        if (method, path) in optional:
            continue  # e.g. a trigger or a queue pause: no body is its usual call (404 here: nothing to act on)
        reply = await admin.request(method, path, body=b"")
        error_of(reply, 400, "INVALID_REQUEST", field="body")
        reply = await admin.request(method, path)  # no body at all
        error_of(reply, 400, "INVALID_REQUEST", field="body")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_malformed_json(admin: Client) -> None:
    error_of(
        await admin.post("/api/v1/tasks", body=b'{"name": "x",}'),
        400,
        "INVALID_REQUEST",
        field="body",
    )


CREATE_REJECTS: list[tuple[dict[str, Any], str]] = [
    # wrong types
    ({"name": 5}, "name"),
    ({"name": None}, "name"),
    ({"name": "x", "priority": 1}, "priority"),
    ({"name": "x", "retry_count": "3"}, "retry_count"),
    ({"name": "x", "retry_count": 1.5}, "retry_count"),
    ({"name": "x", "timeout": True}, "timeout"),
    ({"name": "x", "tags": "a"}, "tags"),
    ({"name": "x", "tags": [1]}, "tags[0]"),
    ({"name": "x", "description": ["d"]}, "description"),
    ({"name": "x", "run_at": "tomorrow"}, "run_at"),
    # missing / unknown fields
    ({}, "name"),
    ({"description": "no name"}, "name"),
    ({"name": "x", "colour": "red"}, "colour"),
    ({"name": "x", "status": "running"}, "status"),
    ({"name": "x", "id": TASK_ID}, "id"),
    # unknown enum values
    ({"name": "x", "priority": "urgent"}, "priority"),
    ({"name": "x", "priority": "HIGH"}, "priority"),
    # out of range
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "x", "description": "d" * 2001}, "description"),
    ({"name": "x", "retry_count": -1}, "retry_count"),
    ({"name": "x", "retry_count": 101}, "retry_count"),
    ({"name": "x", "retry_count": 10**30}, "retry_count"),
    ({"name": "x", "timeout": 0}, "timeout"),
    ({"name": "x", "timeout": -5}, "timeout"),
    ({"name": "x", "timeout": 7 * 86400 + 1}, "timeout"),
    ({"name": "x", "queue": "has space"}, "queue"),
    ({"name": "x", "queue": ""}, "queue"),
    ({"name": "x", "tags": ["t"] * 21}, "tags"),
    ({"name": "x", "delay": -1}, "delay"),
    ({"name": "x", "idempotency_key": ""}, "idempotency_key"),
]


async def test_create_task_rejects(admin: Client) -> None:
    for body, field in CREATE_REJECTS:
        reply = await admin.post("/api/v1/tasks", body)
        assert reply.status == 400, (body, reply)
        error = error_of(reply, 400, "INVALID_REQUEST", field=field)
        assert error["details"]["reason"]
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_unstorable_payload_is_400(admin: Client) -> None:
    # integers beyond 64 bits cannot be stored
    for payload in (
        {"n": 10**30},
        {"n": -(10**30)},
        {"amount": 2**64},
        {"l": [1, {"d": [-(2**63) - 1]}]},
    ):
        reply = await admin.post("/api/v1/tasks", {"name": "x", "payload": payload})
        assert reply.status == 400, (payload, reply)
        error_of(reply, 400, "INVALID_REQUEST", field="body")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_64_bit_integers_are_fine(admin: Client) -> None:
    payload = {"max": 2**64 - 1, "min": -(2**63)}
    task = await create_task(admin, payload=payload)
    assert (await get_task(admin, task["id"]))["payload"] == payload


async def test_deeply_nested_payload_never_500(admin: Client) -> None:
    created = 0
    for depth in (50, 200, 900, 990, 995, 1000, 1100, 100_000):
        raw = b'{"name": "deep", "payload": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
        reply = await admin.post("/api/v1/tasks", body=raw)
        if reply.status == 201:
            created += 1
            assert (await get_task(admin, reply.data["id"]))["name"] == "deep"
        else:
            assert reply.status == 400, (depth, reply)
            error_of(reply, 400, "INVALID_REQUEST", field="body")
        assert len(ok(await admin.get("/api/v1/tasks"))) == created  # and listing still works
    assert created >= 3  # sensible depths are fine


async def test_unstorable_result_is_400_and_changes_nothing(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    before = await get_task(admin, task["id"])
    reply = await admin.post(
        f"/api/v1/tasks/{task['id']}/complete",
        {"lease_id": leased["lease"]["id"], "result": 10**40},
    )
    error_of(reply, 400, "INVALID_REQUEST")
    assert await get_task(admin, task["id"]) == before
    ack = {
        "acks": [
            {
                "id": task["id"],
                "lease_id": leased["lease"]["id"],
                "status": "completed",
                "result": [10**40],
            }
        ]
    }
    error_of(await admin.post("/api/v1/tasks/ack", ack), 400, "INVALID_REQUEST")
    assert await get_task(admin, task["id"]) == before


BAD_UPDATES: list[tuple[dict[str, Any], str]] = [
    ({"status": "completed"}, "status"),
    ({"priority": "urgent"}, "priority"),
    ({"name": "renamed"}, "name"),
    ({"retry_count": -1}, "retry_count"),
    ({"timeout": 0}, "timeout"),
    ({"description": "ok", "tags": "not-a-list"}, "tags"),
]


async def test_bad_update_changes_nothing(admin: Client) -> None:
    task = await create_task(admin)
    for body, field in BAD_UPDATES:
        reply = await admin.put(f"/api/v1/tasks/{task['id']}", body)
        assert reply.status == 400, (body, reply)
        error_of(reply, 400, "INVALID_REQUEST", field=field)
    assert await get_task(admin, task["id"]) == task


BAD_LEASES: list[tuple[dict[str, Any], str]] = [
    ({"wait": 0}, "worker_id"),
    ({"worker_id": "w", "wait": -1}, "wait"),
    ({"worker_id": "w", "wait": 61}, "wait"),
    ({"worker_id": "w", "max_tasks": 0}, "max_tasks"),
    ({"worker_id": "w", "max_tasks": 101}, "max_tasks"),
    ({"worker_id": "w", "lease_seconds": 0}, "lease_seconds"),
    ({"worker_id": "w", "queues": []}, "queues"),
    ({"worker_id": "w", "queues": ["a b"]}, "queues[0]"),
    ({"worker_id": "w", "wait": "soon"}, "wait"),
]


async def test_bad_lease_request(admin: Client) -> None:
    await create_task(admin)
    for body, field in BAD_LEASES:
        reply = await admin.post("/api/v1/tasks/lease", body)
        assert reply.status == 400, (body, reply)
        error_of(reply, 400, "INVALID_REQUEST", field=field)
    assert ok(await admin.get("/api/v1/tasks?status=pending"))  # still pending


async def test_bad_fail_and_extend_bodies(admin: Client) -> None:
    task = await create_task(admin)
    leased = await lease_one(admin)
    lease_id = leased["lease"]["id"]
    path = f"/api/v1/tasks/{task['id']}"
    for name, body, field in [
        ("fail", {"lease_id": lease_id, "error": 5}, "error"),
        ("fail", {"lease_id": lease_id, "retry": "yes"}, "retry"),
        ("fail", {"lease_id": lease_id, "error": {"msg": "x"}}, "error"),
        ("extend", {"lease_id": lease_id, "lease_seconds": -1}, "lease_seconds"),
        ("complete", {"result": 1}, "lease_id"),
        ("complete", {"lease_id": ""}, "lease_id"),
    ]:
        reply = await admin.post(f"{path}/{name}", body)
        assert reply.status == 400, (name, body, reply)
        error = error_of(reply, 400, "INVALID_REQUEST")
        assert error["details"]["field"].startswith(field), (name, error)
    assert await get_task(admin, task["id"]) == as_others_see(leased)


# -- query strings ------------------------------------------------------------------------------


BAD_QUERIES = [
    ("/api/v1/tasks?skip=1&skip=2", "skip"),
    ("/api/v1/tasks?status=pending&status=failed", "status"),
    ("/api/v1/tasks?skip=one", "skip"),
    ("/api/v1/tasks?skip=2.5", "skip"),
    ("/api/v1/tasks?limit=10abc", "limit"),
    ("/api/v1/workers?status=busy", "status"),
    ("/api/v1/workers?limit=101", "limit"),
    ("/api/v1/workers?skip=x", "skip"),
    ("/api/v1/analytics/trends?days=7&days=8", "days"),
]


async def test_bad_query(admin: Client) -> None:
    for path, field in BAD_QUERIES:
        reply = await admin.get(path)
        assert reply.status == 400, (path, reply)
        error_of(reply, 400, "INVALID_REQUEST", field=field)


async def test_skip_is_bounded_and_a_far_page_is_empty(admin: Client) -> None:
    await create_task(admin)
    body = success_body(await admin.get(f"/api/v1/tasks?skip={2**31 - 1}"))
    assert body["data"] == []
    assert body["pagination"]["total"] == 1
    deliveries = f"/api/v1/webhooks/{TASK_ID}/deliveries"  # the query is checked before the id
    for path in ("/api/v1/tasks", "/api/v1/workers", deliveries):
        for skip in (2**31, 2**63, 2**70):
            error_of(await admin.get(f"{path}?skip={skip}"), 400, "INVALID_REQUEST", field="skip")


# -- body size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 1024}])
@pytest.mark.parametrize("content_length", [True, False])
async def test_body_over_max_body_bytes_is_413(admin: Client, content_length: bool) -> None:
    small = {"name": "fits", "payload": {"x": "x" * 900}}
    ok(await admin.post("/api/v1/tasks", small, content_length=content_length), 201)
    big = {"name": "too big", "payload": {"x": "x" * 2000}}
    reply = await admin.post("/api/v1/tasks", big, content_length=content_length)
    error_of(reply, 413, "INVALID_REQUEST", field="body")
    batch = {"tasks": [{"name": f"t{i}"} for i in range(100)]}
    reply = await admin.post("/api/v1/tasks/batch", batch, content_length=content_length)
    error_of(reply, 413, "INVALID_REQUEST", field="body")
    listed = ok(await admin.get("/api/v1/tasks"))
    assert [t["name"] for t in listed] == ["fits"]


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 1024}])
async def test_big_login_body_is_413(client: Client) -> None:
    body = {"username": "admin", "password": "p" * 2000}
    error_of(await client.post("/api/v1/auth/login", body), 413, "INVALID_REQUEST")
