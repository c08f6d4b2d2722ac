"""The guide's response format, the open endpoints (/health, /ready, /info), request ids, CORS."""

from __future__ import annotations

from typing import Any

import pytest

from dtq import __version__
from dtq.net.routing import Services

from .helpers import TIMESTAMP, Client, create_task, error_of, success_body


async def test_success_envelope(admin: Client) -> None:
    task = await create_task(admin, "Example Task")
    body = success_body(await admin.get(f"/api/v1/tasks/{task['id']}"), 200)
    assert set(body) == {"status", "data", "timestamp"}
    assert body["data"]["id"] == task["id"]
    assert body["timestamp"].endswith("Z")


async def test_error_envelope_is_the_guides_invalid_uuid_example(admin: Client) -> None:
    reply = await admin.get("/api/v1/tasks/not-a-uuid")
    error = error_of(reply, 400, "INVALID_REQUEST", field="task_id", reason="Not a valid UUID")
    assert error["message"] == "Invalid task ID"


async def test_invalid_uuid_everywhere(admin: Client) -> None:
    for method, suffix in [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/complete"),
                           ("POST", "/fail"), ("POST", "/extend"), ("POST", "/release")]:  # fmt: skip
        body = {"lease_id": "x"} if method == "POST" else {"status": "cancelled"}
        kw: dict[str, Any] = {"json": body} if method in ("POST", "PUT") else {}
        reply = await admin.request(method, f"/api/v1/tasks/123{suffix}", **kw)
        assert reply.status == 400, (method, suffix, reply)
        error_of(reply, 400, "INVALID_REQUEST", field="task_id", reason="Not a valid UUID")


async def test_unknown_task_is_404(admin: Client) -> None:
    reply = await admin.get("/api/v1/tasks/123e4567-e89b-12d3-a456-426614174000")
    error_of(reply, 404, "NOT_FOUND", field="task_id")


async def test_health(client: Client) -> None:
    reply = await client.get("/health")
    assert reply.status == 200
    body = reply.json
    assert set(body) == {"status", "version", "timestamp"}
    assert body["status"] == "healthy"
    assert body["version"] == __version__ == "1.0.0"
    assert TIMESTAMP.match(body["timestamp"])


async def test_ready(client: Client) -> None:
    reply = await client.get("/ready")
    assert reply.status == 200
    body = reply.json
    assert set(body) == {"status", "version", "timestamp"}
    assert body["status"] == "ready"
    assert body["version"] == __version__
    assert TIMESTAMP.match(body["timestamp"])


async def test_not_ready_while_shutting_down(client: Client, services: Services) -> None:
    services.queue.begin_shutdown()
    reply = await client.get("/ready")
    assert reply.status == 503
    body = reply.json
    assert body["status"] == "not_ready"
    assert body["reason"]
    assert (await client.get("/health")).status == 200  # alive, just not taking work


async def test_info(client: Client) -> None:
    reply = await client.get("/info")
    assert reply.status == 200
    assert reply.json == {
        "name": "Distributed Task Queue System",
        "version": __version__,
        "environment": "production",
        "debug": False,
    }


@pytest.mark.parametrize("settings_overrides", [{"env": "development", "debug": True}])
async def test_info_reflects_settings(client: Client) -> None:
    body = (await client.get("/info")).json
    assert body["environment"] == "development"
    assert body["debug"] is True


async def test_open_endpoints_have_no_rate_limit_headers(client: Client) -> None:
    for path in ("/health", "/ready", "/info"):
        reply = await client.get(path)
        assert reply.status == 200
        assert "X-RateLimit-Limit" not in reply.headers


# -- unknown routes and methods: the error format, never HTML ---------------------------------


async def test_unknown_route_is_404_in_error_format(client: Client) -> None:
    for path in ("/nope", "/api/v1/nope", "/api/v1/tasks/x/y/z", "/api/v2/tasks", "/api/v1/tasks/"):
        reply = await client.get(path)
        assert reply.status == 404, (path, reply)
        error_of(reply, 404, "NOT_FOUND")


async def test_unknown_route_with_credentials(admin: Client) -> None:
    error_of(await admin.post("/api/v1/widgets", {"a": 1}), 404, "NOT_FOUND")


async def test_wrong_method_is_405_in_error_format(admin: Client) -> None:
    for method, path in [
        ("PATCH", "/api/v1/tasks"),
        ("DELETE", "/api/v1/tasks"),
        ("POST", "/health"),
        ("PUT", "/api/v1/workers/heartbeat"),
        ("GET", "/api/v1/auth/login"),
        ("DELETE", "/api/v1/analytics/dashboard"),
        ("POST", "/api/v1/analytics/trends"),
    ]:
        reply = await admin.request(method, path)
        assert reply.status == 405, (method, path, reply)
        error = error_of(reply, 405, "INVALID_REQUEST", field="method")
        assert method in error["message"]
        assert reply.headers.get("Allow")


# -- X-Request-ID -------------------------------------------------------------------------------


async def test_request_id_is_echoed(admin: Client) -> None:
    for path in ("/health", "/api/v1/tasks", "/api/v1/tasks/not-a-uuid", "/nope"):
        reply = await admin.get(path, headers={"X-Request-ID": "req-abc-123"})
        assert reply.headers["X-Request-ID"] == "req-abc-123"


async def test_request_id_is_generated_when_missing(client: Client) -> None:
    first = (await client.get("/health")).headers["X-Request-ID"]
    second = (await client.get("/api/v1/tasks")).headers["X-Request-ID"]  # a 401
    assert first and second and first != second


# -- CORS -------------------------------------------------------------------------------------


async def test_no_cors_headers_by_default(admin: Client) -> None:
    reply = await admin.get("/api/v1/tasks", headers={"Origin": "http://x"})
    assert reply.status == 200
    assert "Access-Control-Allow-Origin" not in reply.headers


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": ("http://x",)}])
async def test_cors_for_configured_origins(admin: Client) -> None:
    reply = await admin.get("/api/v1/tasks", headers={"Origin": "http://x"})
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "http://x"
    assert "X-RateLimit-Remaining" in reply.headers["Access-Control-Expose-Headers"]
    other = await admin.get("/api/v1/tasks", headers={"Origin": "http://evil"})
    assert "Access-Control-Allow-Origin" not in other.headers
    plain = await admin.get("/api/v1/tasks")
    assert "Access-Control-Allow-Origin" not in plain.headers


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": ("http://x",)}])
async def test_cors_preflight(client: Client) -> None:
    reply = await client.request(
        "OPTIONS",
        "/api/v1/tasks",
        headers={
            "Origin": "http://x",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert 200 <= reply.status < 300
    assert reply.headers["Access-Control-Allow-Origin"] == "http://x"
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
    # an error response (no credentials) still carries CORS, so a browser can read it
    denied = await client.get("/api/v1/tasks", headers={"Origin": "http://x"})
    error_of(denied, 401, "UNAUTHORIZED")
    assert denied.headers["Access-Control-Allow-Origin"] == "http://x"
