"""The Postman collection generated from the OpenAPI document."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec
import pytest
from msgspec import Meta, Struct

from dtq.net.openapi import OpenApiRegistry
from dtq.net.postman import (
    POSTMAN_SCHEMA,
    Stage,
    Step,
    Walkthrough,
    build_postman_collection,
    example_from_schema,
)
from dtq.net.routing import RouteSpec


class Level(enum.StrEnum):
    LOW = "low"
    HIGH = "high"


class ItemIn(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    level: Level = Level.LOW
    retries: Annotated[int, Meta(ge=0, le=10)] = 0
    note: str | None = None


class ItemPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    level: Level | None = None
    note: str | None = None


class ItemOut(Struct):
    id: str
    name: str


class ItemQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=100, description="Page size")] = 50
    owner: str
    archived: bool = False


class Credentials(Struct):
    username: str
    password: str


def openapi_doc() -> dict[str, Any]:
    registry = OpenApiRegistry()
    for spec in (
        RouteSpec("GET", "/health", "Health", "health", "getHealth", auth=False),
        RouteSpec(
            "POST",
            "/api/v1/auth/login",
            "Log in",
            "auth",
            "login",
            body=Credentials,
            response=str,
            auth=False,
            extra_fields=(("token", str),),
        ),
        RouteSpec(
            "GET",
            "/api/v1/items",
            "List items",
            "items",
            "listItems",
            query=ItemQuery,
            response=list[ItemOut],
            paginated=True,
        ),
        RouteSpec(
            "POST", "/api/v1/items", "Create item", "items", "createItem", body=ItemIn, status=201
        ),
        RouteSpec(
            "PUT",
            "/api/v1/items/{item_id}",
            "Update item",
            "items",
            "updateItem",
            body=ItemPatch,
            response=ItemOut,
        ),
        RouteSpec(
            "GET",
            "/api/v1/items/export",
            "Export items",
            "export",
            "exportItems",
            response=list[ItemOut],
            content_types=("application/json", "text/csv"),
        ),
    ):
        registry.add(spec)
    return registry.build("Items API", "2.0.0", tag_descriptions={"items": "All about items"})


@pytest.fixture(scope="module")
def collection() -> dict[str, Any]:
    return build_postman_collection(openapi_doc())


def requests_by_name(collection: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for folder in collection["item"] for item in folder.get("item", [])}


def headers(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["key"]: h for h in item["request"]["header"]}


def test_info_and_variables(collection: dict[str, Any]) -> None:
    info = collection["info"]
    assert info["name"] == "Items API"
    assert info["version"] == "2.0.0"
    assert info["schema"] == POSTMAN_SCHEMA
    assert "base_url" in info["description"]
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables == {
        "base_url": "http://localhost:5000/api/v1",
        "server_url": "http://localhost:5000",
        "token": "",
        "api_key": "",
    }
    # Round-trips through JSON (Postman imports a file).
    assert msgspec.json.decode(msgspec.json.encode(collection)) == collection


def test_folders_per_tag_in_document_order(collection: dict[str, Any]) -> None:
    folders = collection["item"]
    assert [f["name"] for f in folders] == ["health", "auth", "items", "export"]
    items = folders[2]
    assert items["description"] == "All about items"
    assert [i["name"] for i in items["item"]] == ["List items", "Create item", "Update item"]


def test_urls_use_base_url_or_server_url(collection: dict[str, Any]) -> None:
    by_name = requests_by_name(collection)
    health = by_name["Health"]["request"]["url"]
    assert health == {
        "raw": "{{server_url}}/health",
        "host": ["{{server_url}}"],
        "path": ["health"],
    }
    login = by_name["Log in"]["request"]["url"]
    assert login["raw"] == "{{base_url}}/auth/login"
    assert login["path"] == ["auth", "login"]


def test_path_variables(collection: dict[str, Any]) -> None:
    url = requests_by_name(collection)["Update item"]["request"]["url"]
    assert url["raw"] == "{{base_url}}/items/:item_id"
    assert url["path"] == ["items", ":item_id"]
    assert url["variable"] == [{"key": "item_id", "value": ""}]


def test_query_parameters(collection: dict[str, Any]) -> None:
    url = requests_by_name(collection)["List items"]["request"]["url"]
    assert url["query"] == [
        {"key": "limit", "value": "50", "description": "Page size", "disabled": True},
        {"key": "owner", "value": "string"},
        {"key": "archived", "value": "false", "disabled": True},
    ]
    # Only enabled (required) parameters appear in the raw URL.
    assert url["raw"] == "{{base_url}}/items?owner=string"


def test_auth_headers_only_on_authenticated_operations(collection: dict[str, Any]) -> None:
    by_name = requests_by_name(collection)
    listed = headers(by_name["List items"])
    assert listed["Authorization"]["value"] == "Bearer {{token}}"
    assert "disabled" not in listed["Authorization"]
    assert listed["X-API-Key"] == {
        "key": "X-API-Key",
        "value": "{{api_key}}",
        "type": "text",
        "disabled": True,
    }
    assert "Authorization" not in headers(by_name["Health"])
    assert "Authorization" not in headers(by_name["Log in"])


def test_json_bodies_from_schemas(collection: dict[str, Any]) -> None:
    by_name = requests_by_name(collection)
    create = by_name["Create item"]["request"]
    assert headers(by_name["Create item"])["Content-Type"]["value"] == "application/json"
    assert create["body"]["mode"] == "raw"
    assert create["body"]["options"] == {"raw": {"language": "json"}}
    # Required fields and fields with a non-null default.
    assert msgspec.json.decode(create["body"]["raw"]) == {
        "name": "string",
        "level": "low",
        "retries": 0,
    }
    # All optional: one field, of its real type rather than null (msgspec sorts enum values).
    update = by_name["Update item"]["request"]
    assert msgspec.json.decode(update["body"]["raw"]) == {"level": "high"}
    assert "body" not in by_name["List items"]["request"]


def test_login_stores_the_token(collection: dict[str, Any]) -> None:
    by_name = requests_by_name(collection)
    (event,) = by_name["Log in"]["event"]
    assert event["listen"] == "test"
    assert any("pm.collectionVariables.set('token'" in line for line in event["script"]["exec"])
    (listed,) = by_name["List items"]["event"]
    assert not any("token" in line for line in listed["script"]["exec"])


def test_every_request_tests_its_success_status(collection: dict[str, Any]) -> None:
    by_name = requests_by_name(collection)
    for name, status in [("Create item", 201), ("List items", 200), ("Log in", 200)]:
        (event,) = by_name[name]["event"]
        assert f"pm.response.to.have.status({status});" in event["script"]["exec"][0], name


def test_one_request_per_media_type(collection: dict[str, Any]) -> None:
    export = next(f for f in collection["item"] if f["name"] == "export")["item"]
    assert [i["name"] for i in export] == [
        "Export items (application/json)",
        "Export items (text/csv)",
    ]
    assert [headers(i)["Accept"]["value"] for i in export] == ["application/json", "text/csv"]


def test_untagged_operations_at_top_level() -> None:
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/api/v1/ping": {"get": {"responses": {"200": {"description": "OK"}}}}},
    }
    collection = build_postman_collection(doc, server_url="https://api.example.com/")
    (item,) = collection["item"]
    assert item["name"] == "GET /api/v1/ping"
    assert item["request"]["url"]["raw"] == "{{base_url}}/ping"
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables["base_url"] == "https://api.example.com/api/v1"


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "string"),
        ({"type": "string", "format": "date-time"}, "2024-02-09T10:30:00Z"),
        ({"type": "string", "examples": ["x"]}, "x"),
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}, 0.5),
        ({"type": "boolean"}, False),
        ({"enum": ["b", "a"]}, "b"),
        ({"const": "success"}, "success"),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}], "default": None}, 0),
        ({"type": ["null", "string"]}, "string"),
        ({"type": "array", "items": {"type": "integer"}}, [0]),
        ({"$ref": "#/components/schemas/Level", "default": "high"}, "high"),
        ({"$ref": "#/components/schemas/Level"}, "low"),
        ({}, None),
    ],
)
def test_example_from_schema(schema: dict[str, Any], expected: Any) -> None:
    doc = {"components": {"schemas": {"Level": {"type": "string", "enum": ["low", "high"]}}}}
    assert example_from_schema(schema, doc) == expected


def test_example_from_recursive_schema_terminates() -> None:
    doc = {
        "components": {
            "schemas": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "child": {"$ref": "#/components/schemas/Node"},
                    },
                    "required": ["name", "child"],
                }
            }
        }
    }
    assert example_from_schema({"$ref": "#/components/schemas/Node"}, doc) == {
        "name": "string",
        "child": None,
    }


WALK = Walkthrough(
    description="Sign in, then create and update one item.",
    stages=(
        Stage(
            name="1. Sign in",
            description="",
            steps=(Step(operation="login", body={"username": "{{username}}", "password": "pw"}),),
        ),
        Stage(
            name="2. Items",
            description="",
            steps=(
                Step(
                    operation="createItem",
                    body={"name": "Widget"},
                    store={"item_id": "body.data.id"},
                ),
                Step(
                    operation="updateItem",
                    name="Make it high",
                    body={"level": "high"},
                    path={"item_id": "{{item_id}}"},
                    checks={"is high": "pm.expect(body.data.level).to.eql('high');"},
                ),
                Step(operation="listItems", query={"owner": "me", "limit": "5"}),
                Step(operation="exportItems", media_type="text/csv"),
            ),
        ),
    ),
    variables=(("username", "admin", "who signs in"), ("item_id", "", "the created item")),
)


@pytest.fixture(scope="module")
def walked() -> dict[str, Any]:
    return build_postman_collection(openapi_doc(), walkthrough=WALK)


def test_walkthrough_stages_come_first_then_the_rest_by_tag(walked: dict[str, Any]) -> None:
    assert [f["name"] for f in walked["item"]] == ["1. Sign in", "2. Items", "health"]
    assert [i["name"] for i in walked["item"][1]["item"]] == [
        "Create item",
        "Make it high",
        "List items",
        "Export items",
    ]
    variables = [v["key"] for v in walked["variable"]]
    assert variables == ["base_url", "server_url", "token", "api_key", "username", "item_id"]
    assert "Sign in, then create" in walked["info"]["description"]


def test_walkthrough_step_fills_body_path_and_query(walked: dict[str, Any]) -> None:
    by_name = requests_by_name(walked)
    assert msgspec.json.decode(by_name["Create item"]["request"]["body"]["raw"]) == {
        "name": "Widget"
    }
    update = by_name["Make it high"]["request"]
    assert update["url"]["variable"] == [{"key": "item_id", "value": "{{item_id}}"}]
    listed = by_name["List items"]["request"]["url"]
    assert listed["raw"] == "{{base_url}}/items?limit=5&owner=me"
    assert {q["key"]: q.get("disabled", False) for q in listed["query"]} == {
        "limit": False,
        "owner": False,
        "archived": True,
    }
    assert headers(by_name["Export items"])["Accept"]["value"] == "text/csv"


def test_walkthrough_store_and_checks_are_tests(walked: dict[str, Any]) -> None:
    by_name = requests_by_name(walked)
    (create,) = by_name["Create item"]["event"]
    script = "\n".join(create["script"]["exec"])
    assert "pm.response.to.have.status(201)" in script
    assert 'pm.collectionVariables.set("item_id", value);' in script
    assert "const value = body.data.id;" in script
    (update,) = by_name["Make it high"]["event"]
    assert "pm.expect(body.data.level).to.eql('high');" in "\n".join(update["script"]["exec"])


def test_walkthrough_with_an_unknown_operation_is_refused() -> None:
    stale = Walkthrough(
        description="",
        stages=(Stage(name="x", description="", steps=(Step(operation="gone"),)),),
    )
    with pytest.raises(ValueError, match="'gone'"):
        build_postman_collection(openapi_doc(), walkthrough=stale)
