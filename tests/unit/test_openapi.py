"""The OpenAPI builder: structure of the document and validity against the 3.1 spec."""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any, Literal

import msgspec
import pytest
from msgspec import Meta, Struct
from openapi_spec_validator import validate

from dtq.net.openapi import OpenApiRegistry
from dtq.net.routing import RouteSpec

SCHEMAS = "#/components/schemas/"


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class WidgetIn(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=50)]
    color: Color = Color.RED
    size: Annotated[int, Meta(ge=1, le=10)] = 3


class WidgetOut(Struct, kw_only=True):
    id: str
    name: str
    color: Color


class WidgetQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    skip: Annotated[int, Meta(ge=0, description="Records to skip")] = 0
    limit: Annotated[int, Meta(ge=1, le=100)] = 50
    color: Color | None = None
    sort: Literal["created_at", "name"] = "created_at"
    owner: str


def make_registry() -> OpenApiRegistry:
    registry = OpenApiRegistry()
    registry.add(
        RouteSpec(
            "GET",
            "/health",
            "Health check",
            "health",
            "getHealth",
            auth=False,
            raw_response_schema={"type": "object", "properties": {"status": {"type": "string"}}},
        )
    )
    registry.add(
        RouteSpec(
            "GET",
            "/api/v1/widgets",
            "List widgets",
            "widgets",
            "listWidgets",
            query=WidgetQuery,
            response=list[WidgetOut],
            paginated=True,
        )
    )
    registry.add(
        RouteSpec(
            "POST",
            "/api/v1/widgets",
            "Create a widget",
            "widgets",
            "createWidget",
            body=WidgetIn,
            response=WidgetOut,
            status=201,
            errors=(409,),
            roles=("admin",),
        )
    )
    registry.add(
        RouteSpec(
            "GET",
            "/api/v1/widgets/{widget_id}",
            "Get a widget",
            "widgets",
            "getWidget",
            response=WidgetOut,
            errors=(404,),
        )
    )
    registry.add(
        RouteSpec(
            "DELETE",
            "/api/v1/widgets/{widget_id}",
            "Delete a widget",
            "widgets",
            "deleteWidget",
            status=204,
            errors=(404,),
        )
    )
    registry.add(
        RouteSpec(
            "GET",
            "/api/v1/widgets/export",
            "Export widgets",
            "export",
            "exportWidgets",
            response=list[WidgetOut],
            content_types=("application/json", "text/csv"),
        )
    )
    registry.add(
        RouteSpec(
            "POST",
            "/api/v1/login",
            "Log in",
            "auth",
            "login",
            body=WidgetIn,
            response=str,
            auth=False,
            extra_fields=(("token", str),),
        )
    )
    return registry


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return make_registry().build(
        "Widgets", "1.2.3", description="test", tag_descriptions={"widgets": "Widget things"}
    )


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "Widgets", "version": "1.2.3", "description": "test"}
    validate(doc)


def test_document_is_json_serialisable_and_fresh_each_build() -> None:
    registry = make_registry()
    first = registry.build("t", "1")
    first["paths"].clear()
    assert registry.build("t", "1")["paths"]
    assert msgspec.json.decode(msgspec.json.encode(registry.build("t", "1")))


def test_tags_in_first_use_order_with_descriptions(doc: dict[str, Any]) -> None:
    assert doc["tags"] == [
        {"name": "health"},
        {"name": "widgets", "description": "Widget things"},
        {"name": "export"},
        {"name": "auth"},
    ]


def test_components_come_from_msgspec_and_unused_ones_are_pruned(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas) == {
        "Color",
        "WidgetIn",
        "WidgetOut",
        "ErrorResponse",
        "ErrorInfo",
        "ErrorDetails",
        "Pagination",
    }
    # The query struct is turned into parameters, not a schema.
    assert "WidgetQuery" not in schemas
    widget_in = schemas["WidgetIn"]
    assert widget_in["required"] == ["name"]
    assert widget_in["properties"]["size"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
        "default": 3,
    }
    assert widget_in["properties"]["color"]["$ref"] == SCHEMAS + "Color"
    # msgspec leaves enums untyped; the builder adds the type (Swagger UI shows "any" otherwise).
    assert schemas["Color"]["type"] == "string"
    assert sorted(schemas["Color"]["enum"]) == ["blue", "red"]


def test_path_parameters_from_braces(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/api/v1/widgets/{widget_id}"]["get"]
    assert op["parameters"] == [
        {"name": "widget_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]


def test_typed_path_parameters_document_their_schema_and_400() -> None:
    registry = OpenApiRegistry()
    registry.add(
        RouteSpec("GET", "/api/v1/things/{thing_id}", "Get", "things", "getThing",
                  path_types=(("thing_id", uuid.UUID),), errors=(404,))
    )  # fmt: skip
    op = registry.build("t", "1")["paths"]["/api/v1/things/{thing_id}"]["get"]
    assert op["parameters"][0]["schema"] == {"type": "string", "format": "uuid"}
    assert list(op["responses"]) == ["200", "400", "401", "404", "429"]
    with pytest.raises(ValueError, match="no path parameter"):
        RouteSpec("GET", "/x/{a}", "x", "x", "x", path_types=(("b", str),))


def test_query_parameters_from_struct_fields(doc: dict[str, Any]) -> None:
    params = {p["name"]: p for p in doc["paths"]["/api/v1/widgets"]["get"]["parameters"]}
    assert list(params) == ["skip", "limit", "color", "sort", "owner"]
    assert all(p["in"] == "query" for p in params.values())
    assert params["skip"] == {
        "name": "skip",
        "in": "query",
        "required": False,
        "description": "Records to skip",
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    }
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 50,
    }
    # Optional (`| None`) fields become plain optional parameters, no null, no null default.
    assert params["color"]["schema"] == {"$ref": SCHEMAS + "Color"}
    assert params["sort"]["schema"] == {
        "type": "string",
        "enum": ["created_at", "name"],
        "default": "created_at",
    }
    assert params["owner"]["required"] is True


def test_paginated_list_in_success_envelope(doc: dict[str, Any]) -> None:
    response = doc["paths"]["/api/v1/widgets"]["get"]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    assert schema["required"] == ["status", "data", "timestamp", "pagination"]
    assert schema["properties"]["status"] == {"type": "string", "const": "success"}
    assert schema["properties"]["data"] == {
        "type": "array",
        "items": {"$ref": SCHEMAS + "WidgetOut"},
    }
    assert schema["properties"]["timestamp"]["format"] == "date-time"
    assert schema["properties"]["pagination"] == {"$ref": SCHEMAS + "Pagination"}
    pagination = doc["components"]["schemas"]["Pagination"]
    assert set(pagination["properties"]) == {"skip", "limit", "total", "pages"}


def test_request_body_and_created_status(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/api/v1/widgets"]["post"]
    assert op["requestBody"] == {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": SCHEMAS + "WidgetIn"}}},
    }
    created = op["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["properties"]["data"] == {"$ref": SCHEMAS + "WidgetOut"}
    assert "pagination" not in created["properties"]
    assert "Roles: `admin`." in op["description"]


def test_error_responses_listed_and_implied(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/api/v1/widgets"]["post"]
    # 409 listed; 400 and 415 (has a body), 401 (auth), 403 (roles), 429 (under /api/v1) implied.
    assert list(op["responses"]) == ["201", "400", "401", "403", "409", "415", "429"]
    assert "415" not in doc["paths"]["/api/v1/widgets"]["get"]["responses"]  # no body
    conflict = op["responses"]["409"]
    assert conflict["description"] == "Conflict"
    content = conflict["content"]["application/json"]
    assert content["schema"] == {"$ref": SCHEMAS + "ErrorResponse"}
    assert content["example"]["error"]["code"] == "CONFLICT"
    assert op["responses"]["429"]["headers"]["Retry-After"] == {
        "$ref": "#/components/headers/Retry-After"
    }
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["status"] == {"type": "string", "const": "error"}
    info = doc["components"]["schemas"]["ErrorInfo"]
    assert "RATE_LIMITED" in info["properties"]["code"]["enum"]
    details = doc["components"]["schemas"]["ErrorDetails"]
    assert set(details["properties"]) == {"field", "reason"}


def test_rate_limit_headers_only_under_api_prefix(doc: dict[str, Any]) -> None:
    ok = doc["paths"]["/api/v1/widgets/{widget_id}"]["get"]["responses"]["200"]
    assert set(ok["headers"]) == {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert set(doc["components"]["headers"]) == {*ok["headers"], "Retry-After"}
    health = doc["paths"]["/health"]["get"]["responses"]
    assert list(health) == ["200"]
    assert "headers" not in health["200"]


def test_security_alternatives(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["BearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["BearerAuth"]["description"],
    }
    assert schemes["ApiKeyAuth"]["type"] == "apiKey"
    assert schemes["ApiKeyAuth"]["in"] == "header"
    assert schemes["ApiKeyAuth"]["name"] == "X-API-Key"
    op = doc["paths"]["/api/v1/widgets/{widget_id}"]["get"]
    assert op["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_raw_no_content_csv_and_extra_fields(doc: dict[str, Any]) -> None:
    health = doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]
    assert health["schema"] == {"type": "object", "properties": {"status": {"type": "string"}}}

    deleted = doc["paths"]["/api/v1/widgets/{widget_id}"]["delete"]["responses"]["204"]
    assert "content" not in deleted

    export = doc["paths"]["/api/v1/widgets/export"]["get"]["responses"]["200"]["content"]
    assert list(export) == ["application/json", "text/csv"]
    assert export["text/csv"]["schema"] == {"type": "string"}
    assert export["application/json"]["schema"]["properties"]["data"]["type"] == "array"

    login = doc["paths"]["/api/v1/login"]["post"]["responses"]["200"]["content"]
    schema = login["application/json"]["schema"]
    assert schema["properties"]["token"] == {"type": "string"}
    assert "token" in schema["required"]


def test_duplicates_and_bad_specs_are_rejected() -> None:
    registry = make_registry()
    with pytest.raises(ValueError, match="already documented"):
        registry.add(RouteSpec("GET", "/health", "again", "health", "other"))
    with pytest.raises(ValueError, match="already used"):
        registry.add(RouteSpec("GET", "/other", "again", "health", "getHealth"))
    with pytest.raises(ValueError, match="method"):
        RouteSpec("get", "/x", "s", "t", "o")
    with pytest.raises(ValueError, match="path"):
        RouteSpec("GET", "x", "s", "t", "o")
    with pytest.raises(ValueError, match="4xx or 5xx"):
        RouteSpec("GET", "/x", "s", "t", "o", errors=(200,))
    with pytest.raises(TypeError, match="query"):
        RouteSpec("GET", "/x", "s", "t", "o", query=dict)


def test_reserved_schema_names_are_refused() -> None:
    class Pagination(Struct):
        page: int

    registry = OpenApiRegistry()
    registry.add(RouteSpec("GET", "/x", "s", "t", "o", response=Pagination))
    with pytest.raises(ValueError, match="reserved"):
        registry.build("t", "1")


def test_rule_for_quart() -> None:
    spec = RouteSpec("GET", "/api/v1/tasks/{task_id}/runs/{run}", "s", "t", "o")
    assert spec.path_params == ("task_id", "run")
    assert spec.rule == "/api/v1/tasks/<task_id>/runs/<run>"
