"""/openapi.json describes the API the app actually serves, and is a valid OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import validate
from quart_trio import QuartTrio

from dtq import __version__
from dtq.net.routing import plain_rule

from .helpers import Client

_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def openapi_path(rule: str) -> str:
    return _PARAM.sub(r"{\1}", rule)


async def fetch(client: Client) -> dict[str, Any]:
    reply = await client.get("/openapi.json")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    doc: dict[str, Any] = reply.json
    return doc


def served(app: QuartTrio, prefix: str) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.websocket or not rule.rule.startswith(prefix):
            continue
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            out.add((method.lower(), openapi_path(plain_rule(rule.rule))))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    }


async def test_openapi_is_valid(client: Client) -> None:
    doc = await fetch(client)
    validate(doc)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "Distributed Task Queue System"
    assert doc["info"]["version"] == __version__


async def test_every_api_route_is_documented_and_nothing_else(
    client: Client, app: QuartTrio
) -> None:
    doc = await fetch(client)
    api = served(app, "/api/v1/")
    assert len(api) >= 20
    assert api - documented(doc) == set(), "routes the app serves but the document lacks"
    ghosts = {(m, p) for m, p in documented(doc) if p.startswith("/api/v1/")} - api
    assert ghosts == set(), "documented routes the app does not serve"


async def test_the_guides_endpoints_are_documented(client: Client) -> None:
    paths = (await fetch(client))["paths"]
    for path in (
        "/api/v1/tasks",
        "/api/v1/tasks/{task_id}",
        "/api/v1/workers",
        "/api/v1/workers/{worker_id}",
        "/api/v1/workers/heartbeat",
        "/api/v1/workers/status",
        "/api/v1/analytics/dashboard",
        "/api/v1/analytics/trends",
        "/api/v1/analytics/export",
        "/api/v1/auth/login",
    ):
        assert path in paths, path
    assert set(paths["/api/v1/tasks"]) >= {"get", "post"}
    assert set(paths["/api/v1/tasks/{task_id}"]) >= {"get", "put", "delete"}


async def test_documented_query_parameters_are_the_guides(client: Client) -> None:
    op = (await fetch(client))["paths"]["/api/v1/tasks"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    guide = {"skip", "limit", "status", "priority", "worker_id", "sort", "order"}
    ours = {"queue", "name", "tag", "created_after", "created_before"}
    assert set(params) == guide | ours  # the guide's, plus filters of ours
    assert params["limit"]["schema"]["maximum"] == 100
    assert params["limit"]["schema"]["default"] == 50
    trends = (await fetch(client))["paths"]["/api/v1/analytics/trends"]["get"]
    assert {p["name"] for p in trends["parameters"]} >= {"days", "metric"}


async def test_security_is_documented(client: Client) -> None:
    doc = await fetch(client)
    schemes = doc["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    assert login.get("security") in ([], None) or login["security"] == [{}]
    assert doc["paths"]["/api/v1/tasks"]["get"].get("security") or doc.get("security")


async def test_docs_pages(client: Client) -> None:
    for path in ("/docs", "/redoc"):
        reply = await client.get(path)
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/html")
        assert b"/openapi.json" in reply.body


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema and len(schema) == 1:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _body_schema(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    content = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
    return _resolve(doc, content["schema"])


async def test_the_document_says_what_the_server_refuses(client: Client) -> None:
    """Issue 8, finding 9: what schemathesis found undocumented."""
    doc = await fetch(client)
    paths = doc["paths"]
    # typed path ids, and the 400 a malformed one gets
    for path, name in [
        ("/api/v1/tasks/{task_id}", "task_id"),
        ("/api/v1/tasks/{task_id}/complete", "task_id"),
        ("/api/v1/webhooks/{webhook_id}", "webhook_id"),
    ]:
        for method, op in paths[path].items():
            param = next(p for p in op["parameters"] if p["name"] == name)
            assert param["schema"] == {"type": "string", "format": "uuid"}, (method, path)
            assert "400" in op["responses"], (method, path)
    worker = paths["/api/v1/workers/{worker_id}"]["get"]["parameters"][0]["schema"]
    assert "pattern" in _resolve(doc, worker)
    # every body route documents the 415 of a non-JSON body
    for path, ops in paths.items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert "415" in op["responses"], (method, path)
    # export's JSON has data, not `data: null`
    export = paths["/api/v1/analytics/export"]["get"]["responses"]["200"]["content"]
    data = _resolve(doc, export["application/json"]["schema"]["properties"]["data"])
    assert set(data["properties"]) == {"generated_at", "days", "dashboard", "daily"}
    # PUT status: only "cancelled"
    update = _body_schema(doc, "put", "/api/v1/tasks/{task_id}")
    status = next(s for s in update["properties"]["status"]["anyOf"] if s != {"type": "null"})
    assert status["enum"] == ["cancelled"]
    # payload an object, run_at rule and payload integer rules in words
    create = _body_schema(doc, "post", "/api/v1/tasks")
    assert create["properties"]["payload"]["type"] == "object"
    assert "64 bits" in create["properties"]["payload"]["description"]
    run_at = next(s for s in create["properties"]["run_at"]["anyOf"] if s != {"type": "null"})
    assert run_at["format"] == "date-time" and "10 years" in run_at["description"]
    assert "\\x00" in create["properties"]["name"]["pattern"]
    # password length, webhook URL shape
    user = _body_schema(doc, "post", "/api/v1/users")
    assert user["properties"]["password"]["minLength"] == 8
    hook = _body_schema(doc, "post", "/api/v1/webhooks")
    assert hook["properties"]["url"]["pattern"].startswith("^[Hh][Tt][Tt][Pp][Ss]?://")
    # bounded skip on every list
    for path in ("/api/v1/tasks", "/api/v1/workers", "/api/v1/webhooks/{webhook_id}/deliveries"):
        skip = next(p for p in paths[path]["get"]["parameters"] if p["name"] == "skip")
        assert skip["schema"]["maximum"] == 2**31 - 1, path


async def test_an_idempotent_replay_answers_a_documented_status(
    client: Client, admin: Client
) -> None:
    """Schemathesis's stateful phase found the replay's 200 undocumented (the first create is 201)."""
    body = {"name": "replayed", "idempotency_key": "openapi-replay"}
    first = await admin.post("/api/v1/tasks", json=body)
    again = await admin.post("/api/v1/tasks", json=body)
    assert (first.status, again.status) == (201, 200)
    assert again.json["data"]["id"] == first.json["data"]["id"]
    responses = (await fetch(client))["paths"]["/api/v1/tasks"]["post"]["responses"]
    assert {"200", "201"} <= set(responses)
    assert responses["200"]["content"] == responses["201"]["content"]
