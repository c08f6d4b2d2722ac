"""`/api/v1/webhooks`: registration, validation in the guide's error format, roles."""

from __future__ import annotations

from typing import Any

import pytest

from dtq.core.auth import Role
from dtq.net.app import build_openapi

from .webhook_support import Server

P = "/api/v1/webhooks"
HOOK = {"url": "https://example.com/hook", "events": ["task.completed"]}


def _error(reply: Any) -> dict[str, Any]:
    assert reply["status"] == "error", reply
    error: dict[str, Any] = reply["error"]
    return error


async def test_register_list_get_delete(server: Server) -> None:
    admin = server.admin
    created = await admin.ok(
        "POST", P, {**HOOK, "secret": "0123456789abcdef", "description": "ci"}, status=201
    )
    assert created["secret"] == "0123456789abcdef"  # shown in the creating response only
    assert created["events"] == ["task.completed"] and created["description"] == "ci"
    assert created["created_by"] == "admin" and created["created_at"].endswith("Z")

    listed = await admin.ok("GET", P)
    assert [h["id"] for h in listed] == [created["id"]]
    assert "secret" not in listed[0]
    one = await admin.ok("GET", f"{P}/{created['id']}")
    assert one["url"] == HOOK["url"] and "secret" not in one
    assert await admin.ok("GET", f"{P}/{created['id']}/deliveries") == []

    await admin.ok("DELETE", f"{P}/{created['id']}", status=204)
    assert await admin.ok("GET", P) == []
    for path in (f"{P}/{created['id']}", f"{P}/{created['id']}/deliveries"):
        status, reply = await admin.call("GET", path)
        assert status == 404 and _error(reply)["code"] == "NOT_FOUND"
    status, reply = await admin.call("DELETE", f"{P}/{created['id']}")
    assert status == 404


async def test_secret_generated_when_absent_and_events_normalised(server: Server) -> None:
    created = await server.admin.ok(
        "POST",
        P,
        {"url": "http://127.0.0.1:9/h", "events": ["task.created", "task.created", "*"]},
        status=201,
    )
    assert len(created["secret"]) >= 32
    assert created["events"] == ["*"]
    other = await server.admin.ok("POST", P, HOOK, status=201)
    assert other["secret"] != created["secret"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["task.created"]}, "url"),
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "http://", "events": ["*"]}, "url"),
        ({"url": "https://example.com"}, "events"),
        ({"url": "https://example.com", "events": []}, "events"),
        ({"url": "https://example.com", "events": ["task.exploded"]}, "events[0]"),
        ({"url": "https://example.com", "events": "*"}, "events"),
        ({**HOOK, "secret": "short"}, "secret"),
        ({**HOOK, "description": "x" * 501}, "description"),
        ({**HOOK, "active": True}, "active"),
    ],
)
async def test_validation_errors_name_the_field(
    server: Server, body: dict[str, Any], field: str
) -> None:
    status, reply = await server.admin.call("POST", P, body)
    assert status == 400, reply
    error = _error(reply)
    assert error["code"] == "INVALID_REQUEST"
    assert error["details"]["field"] == field
    assert error["details"]["reason"]
    assert await server.admin.ok("GET", P) == []


async def test_bad_ids_and_queries(server: Server) -> None:
    status, reply = await server.admin.call("GET", f"{P}/not-a-uuid")
    assert status == 400 and _error(reply)["details"]["field"] == "webhook_id"
    hook = await server.admin.ok("POST", P, HOOK, status=201)
    for query, field in [("status=lost", "status"), ("limit=0", "limit"), ("skip=-1", "skip")]:
        status, reply = await server.admin.call("GET", f"{P}/{hook['id']}/deliveries?{query}")
        assert status == 400 and _error(reply)["details"]["field"] == field, reply


async def test_admin_and_operator_only(server: Server) -> None:
    operator = await server.as_role(Role.OPERATOR)
    hook = await operator.ok("POST", P, HOOK, status=201)
    assert [h["id"] for h in await operator.ok("GET", P)] == [hook["id"]]
    for role in (Role.WORKER, Role.VIEWER):
        caller = await server.as_role(role)
        for method, path, body in [("GET", P, None), ("POST", P, HOOK),
                                   ("GET", f"{P}/{hook['id']}/deliveries", None),
                                   ("DELETE", f"{P}/{hook['id']}", None)]:  # fmt: skip
            status, reply = await caller.call(method, path, body)
            assert status == 403 and _error(reply)["code"] == "FORBIDDEN", (role, method, path)
    status, reply = await server.anonymous.call("GET", P)
    assert status == 401 and _error(reply)["code"] == "UNAUTHORIZED"
    await operator.ok("DELETE", f"{P}/{hook['id']}", status=204)


def test_documented_in_openapi() -> None:
    paths = build_openapi()["paths"]
    assert set(paths[P]) == {"get", "post"}
    assert set(paths[f"{P}/{{webhook_id}}"]) == {"get", "delete"}
    deliveries = paths[f"{P}/{{webhook_id}}/deliveries"]["get"]
    assert {p["name"] for p in deliveries["parameters"]} >= {"webhook_id", "status", "limit"}
    post = paths[P]["post"]
    assert "X-DTQ-Signature" in post["description"]
    assert "DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true" in post["description"]
    assert "Redirects are not followed" in post["description"]
    assert {"201", "400", "401", "403"} <= set(post["responses"])
