"""OpenAPI 3.1 document built from declared routes and their msgspec types.

Route modules declare each operation once as a `RouteSpec` and add it to an `OpenApiRegistry`;
`OpenApiRegistry.build()` turns the specs into an OpenAPI 3.1 document. Schemas come from
`msgspec.json.schema_components`, so the document says exactly what the decoders accept and the
encoders emit. JSON bodies are described inside the API guide's envelopes:

- success: ``{"status": "success", "data": <response>, "timestamp": "..."}``, plus
  ``"pagination": {skip, limit, total, pages}`` for paginated lists;
- error: ``{"status": "error", "error": {"code", "message", "details": {"field", "reason"}},
  "timestamp": "..."}``.

Besides the errors a spec lists, some are documented for it automatically: 400 when it takes a
body or query parameters, 401 when it needs authentication, 403 when it names roles, and 429
(with `Retry-After`) for paths under the rate-limited prefix, whose responses also document the
`X-RateLimit-*` headers.

This module only describes; it does not route, validate or encode requests.
"""

from __future__ import annotations

import copy
import http
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from dtq.errors import DtqError
from dtq.net.routing import RouteSpec, RouteTable

__all__ = ["ERROR_CODES", "OpenApiRegistry"]

SCHEMA_REF = "#/components/schemas/{name}"
_SCHEMAS_PREFIX = "#/components/schemas/"

_SECURITY: list[dict[str, list[str]]] = [{"BearerAuth": []}, {"ApiKeyAuth": []}]

# The API guide's error codes, in the guide's order.
ERROR_CODES = (
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "RATE_LIMITED",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
)

# Names of the schemas this module adds next to msgspec's; a user type may not take them.
_ERROR_RESPONSE = "ErrorResponse"
_ERROR_INFO = "ErrorInfo"
_ERROR_DETAILS = "ErrorDetails"
_PAGINATION = "Pagination"

_TIMESTAMP: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "examples": ["2024-02-09T10:30:00Z"],
}

_BUILTIN_SCHEMAS: dict[str, dict[str, Any]] = {
    _ERROR_RESPONSE: {
        "title": _ERROR_RESPONSE,
        "description": "The error envelope every failed request gets.",
        "type": "object",
        "properties": {
            "status": {"type": "string", "const": "error"},
            "error": {"$ref": SCHEMA_REF.format(name=_ERROR_INFO)},
            "timestamp": _TIMESTAMP,
        },
        "required": ["status", "error", "timestamp"],
    },
    _ERROR_INFO: {
        "title": _ERROR_INFO,
        "type": "object",
        "properties": {
            "code": {"type": "string", "enum": list(ERROR_CODES)},
            "message": {"type": "string"},
            "details": {"$ref": SCHEMA_REF.format(name=_ERROR_DETAILS)},
        },
        "required": ["code", "message"],
    },
    _ERROR_DETAILS: {
        "title": _ERROR_DETAILS,
        "description": "What was wrong, when it is about one field; may carry more keys.",
        "type": "object",
        "properties": {
            "field": {"type": "string", "examples": ["task_id"]},
            "reason": {"type": "string", "examples": ["Not a valid UUID"]},
        },
    },
    _PAGINATION: {
        "title": _PAGINATION,
        "type": "object",
        "properties": {
            "skip": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 0},
            "total": {"type": "integer", "minimum": 0},
            "pages": {"type": "integer", "minimum": 0},
        },
        "required": ["skip", "limit", "total", "pages"],
    },
}

_HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the tighter rate-limit window.",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in that window.",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "Unix time (seconds) when that window resets.",
        "schema": {"type": "integer"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    },
}
_RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _header_refs(*names: str) -> dict[str, dict[str, str]]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


_SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "BearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT from `POST /api/v1/auth/login`. Send one credential: a request "
        "with both a bearer token and `X-API-Key` (or either twice) is refused with 401 "
        "(`details.reason: ambiguous_credentials`), even when both are valid. A token ends "
        "when its user is deleted or its password or role changes.",
    },
    "ApiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (created by an admin; shown once). Send one credential: "
        "with a bearer token as well, the request is refused with 401.",
    },
}


def _error_examples() -> dict[int, tuple[str, str]]:
    """HTTP status -> (code, default message), from `dtq.errors`, the first class per status."""
    out: dict[int, tuple[str, str]] = {}
    queue: list[type[DtqError]] = [DtqError]
    while queue:
        cls = queue.pop(0)
        out.setdefault(cls.status, (cls.code, (cls.__doc__ or cls.code).strip()))
        queue.extend(cls.__subclasses__())
    return out


class OpenApiRegistry(RouteTable):
    """A `RouteTable` that builds the OpenAPI document from its specs.

    >>> registry = OpenApiRegistry()
    >>> _ = registry.add(RouteSpec("GET", "/health", "Health", "health", "health", auth=False))
    >>> registry.build("dtq", "1.0.0")["paths"]["/health"]["get"]["operationId"]
    'health'
    """

    def __init__(
        self,
        *,
        rate_limited_prefix: str | None = "/api/v1",
        schema_hook: Callable[[type], dict[str, Any]] | None = None,
        specs: Iterable[RouteSpec] = (),
    ) -> None:
        super().__init__()
        for spec in specs:
            self.add(spec)
        self._rate_limited_prefix = rate_limited_prefix
        self._schema_hook = schema_hook

    def build(
        self,
        title: str,
        version: str,
        *,
        description: str | None = None,
        servers: Sequence[Mapping[str, str]] = (),
        tag_descriptions: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The OpenAPI 3.1 document, as plain JSON-ready data (a new object on every call)."""
        types: list[Any] = []
        for spec in self._specs:
            wanted = [
                spec.body,
                spec.query,
                spec.response,
                *(tp for _, tp in spec.extra_fields),
                *(tp for _, tp in spec.path_types),
            ]
            for tp in wanted:
                if tp is not None and tp not in types:
                    types.append(tp)
        roots, components = msgspec.json.schema_components(
            types, schema_hook=self._schema_hook, ref_template=SCHEMA_REF
        )
        for schema in (*roots, *components.values()):
            _type_enums(schema)
        clash = sorted(set(components) & set(_BUILTIN_SCHEMAS))
        if clash:
            raise ValueError(f"type names {clash} are reserved for the envelope schemas")
        builder = _Builder(
            roots=roots,
            types=types,
            components=components,
            rate_limited_prefix=self._rate_limited_prefix,
        )

        paths: dict[str, dict[str, Any]] = {}
        tag_names: list[str] = []
        for spec in self._specs:
            paths.setdefault(spec.path, {})[spec.method.lower()] = builder.operation(spec)
            if spec.tag not in tag_names:
                tag_names.append(spec.tag)

        all_schemas = {**components, **copy.deepcopy(_BUILTIN_SCHEMAS)}
        used = _reachable(paths, all_schemas)
        descriptions = tag_descriptions or {}
        tags: list[dict[str, str]] = []
        for name in tag_names:
            tag = {"name": name}
            if name in descriptions:
                tag["description"] = descriptions[name]
            tags.append(tag)

        info: dict[str, Any] = {"title": title, "version": version}
        if description:
            info["description"] = description
        doc: dict[str, Any] = {"openapi": "3.1.0", "info": info}
        if servers:
            doc["servers"] = [dict(server) for server in servers]
        doc["tags"] = tags
        doc["paths"] = paths
        components_out: dict[str, Any] = {
            "schemas": {name: all_schemas[name] for name in sorted(used)},
        }
        refs = set(_refs(paths))
        headers = {
            name: copy.deepcopy(header)
            for name, header in _HEADERS.items()
            if f"#/components/headers/{name}" in refs
        }
        if headers:
            components_out["headers"] = headers
        components_out["securitySchemes"] = copy.deepcopy(_SECURITY_SCHEMES)
        doc["components"] = components_out
        return doc


class _Builder:
    """Turns one `RouteSpec` into an operation object, given the msgspec schemas."""

    def __init__(
        self,
        *,
        roots: Sequence[dict[str, Any]],
        types: list[Any],
        components: dict[str, Any],
        rate_limited_prefix: str | None,
    ) -> None:
        self._roots = roots
        self._types = types
        self._components = components
        self._prefix = rate_limited_prefix
        self._error_examples = _error_examples()

    def _schema(self, tp: Any) -> dict[str, Any]:
        return copy.deepcopy(self._roots[self._types.index(tp)])

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMAS_PREFIX):
            resolved: Mapping[str, Any] = self._components[ref.rsplit("/", 1)[1]]
            return resolved
        return schema

    def operation(self, spec: RouteSpec) -> dict[str, Any]:
        op: dict[str, Any] = {
            "tags": [spec.tag],
            "summary": spec.summary,
            "operationId": spec.operation_id,
        }
        description = spec.description or ""
        if spec.roles:
            roles = ", ".join(f"`{role}`" for role in spec.roles)
            description = f"{description}\n\nRoles: {roles}.".strip()
        if description:
            op["description"] = description
        if spec.deprecated:
            op["deprecated"] = True
        typed = dict(spec.path_types)
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": self._schema(typed[name]) if name in typed else {"type": "string"},
            }
            for name in spec.path_params
        ]
        if spec.query is not None:
            params.extend(self._query_params(spec.query))
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": spec.body_required,
                "content": {"application/json": {"schema": self._schema(spec.body)}},
            }
        op["responses"] = self._responses(spec)
        if spec.auth:
            op["security"] = copy.deepcopy(_SECURITY)
        return op

    def _query_params(self, query: type) -> list[dict[str, Any]]:
        struct = self._resolve(self._schema(query))
        required = set(struct.get("required", ()))
        out: list[dict[str, Any]] = []
        for name, prop in struct.get("properties", {}).items():
            schema = _without_null(copy.deepcopy(prop))
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            param_description = schema.pop("description", None)
            if param_description:
                param["description"] = param_description
            param["schema"] = schema
            out.append(param)
        return out

    def _rate_limited(self, spec: RouteSpec) -> bool:
        prefix = self._prefix
        return prefix is not None and (
            spec.path == prefix or spec.path.startswith(prefix.rstrip("/") + "/")
        )

    def _responses(self, spec: RouteSpec) -> dict[str, Any]:
        limited = self._rate_limited(spec)
        ok: dict[str, Any] = {"description": _phrase(spec.status)}
        if limited:
            ok["headers"] = _header_refs(*_RATE_LIMIT_HEADERS)
        if spec.status != 204:
            body = self._success_schema(spec)
            ok["content"] = {
                ct: {"schema": copy.deepcopy(body) if _is_json(ct) else {"type": "string"}}
                for ct in spec.content_types
            }
        responses: dict[str, Any] = {str(spec.status): ok}
        for status in spec.also:
            responses[str(status)] = {**copy.deepcopy(ok), "description": _phrase(status)}
        for status in sorted(self._error_statuses(spec)):
            responses[str(status)] = self._error_response(status, rate_limited=limited)
        return responses

    def _error_statuses(self, spec: RouteSpec) -> set[int]:
        statuses = set(spec.errors)
        if spec.body is not None or spec.query is not None or spec.path_types:
            statuses.add(400)
        if spec.body is not None:
            statuses.add(415)
        if spec.auth:
            statuses.add(401)
        if spec.roles:
            statuses.add(403)
        if self._rate_limited(spec):
            statuses.add(429)
        return statuses

    def _success_schema(self, spec: RouteSpec) -> dict[str, Any]:
        if spec.raw_response_schema is not None:
            return copy.deepcopy(dict(spec.raw_response_schema))
        data: dict[str, Any] = (
            {"type": "null"} if spec.response is None else self._schema(spec.response)
        )
        if not spec.envelope:
            return data
        properties: dict[str, Any] = {
            "status": {"type": "string", "const": "success"},
            "data": data,
            "timestamp": dict(_TIMESTAMP),
        }
        required = ["status", "data", "timestamp"]
        if spec.paginated:
            properties["pagination"] = {"$ref": SCHEMA_REF.format(name=_PAGINATION)}
            required.append("pagination")
        for name, tp in spec.extra_fields:
            properties[name] = self._schema(tp)
            required.append(name)
        return {"type": "object", "properties": properties, "required": required}

    def _error_response(self, status: int, *, rate_limited: bool) -> dict[str, Any]:
        code, message = self._error_examples.get(status, ("INTERNAL_ERROR", "Error"))
        example = {
            "status": "error",
            "error": {"code": code, "message": message},
            "timestamp": "2024-02-09T10:30:00Z",
        }
        out: dict[str, Any] = {
            "description": _phrase(status),
            "content": {
                "application/json": {
                    "schema": {"$ref": SCHEMA_REF.format(name=_ERROR_RESPONSE)},
                    "example": example,
                }
            },
        }
        headers = _header_refs(*_RATE_LIMIT_HEADERS) if rate_limited else {}
        if status == 429:
            headers.update(_header_refs("Retry-After"))
        if headers:
            out["headers"] = headers
        return out


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop `null` from a union and its default."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [option for option in options if option != {"type": "null"}]
        if len(kept) != len(options):
            del schema["anyOf"]
            if len(kept) == 1:
                schema = {**kept[0], **schema}
            else:
                schema["anyOf"] = kept
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    return schema


def _type_enums(node: Any) -> None:
    """Give msgspec's untyped enums (``{"enum": [...]}``) their JSON type, in place.

    Swagger UI shows an enum without a type as "any"; every value having one type says which.
    """
    if isinstance(node, dict):
        values = node.get("enum")
        if isinstance(values, list) and values and "type" not in node:
            kinds = {_JSON_TYPES.get(type(value)) for value in values}
            if len(kinds) == 1 and None not in kinds:
                node["type"] = kinds.pop()
        for value in node.values():
            _type_enums(value)
    elif isinstance(node, list):
        for value in node:
            _type_enums(value)


_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _refs(node: Any) -> Iterator[str]:
    """Every `$ref` string in a JSON-like tree."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _schema_refs(node: Any) -> Iterator[str]:
    for ref in _refs(node):
        if ref.startswith(_SCHEMAS_PREFIX):
            yield ref.removeprefix(_SCHEMAS_PREFIX)


def _reachable(root: Any, schemas: Mapping[str, Any]) -> set[str]:
    """Names of the component schemas `root` refers to, directly or through other schemas."""
    seen: set[str] = set()
    stack = list(_schema_refs(root))
    while stack:
        name = stack.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        stack.extend(_schema_refs(schemas[name]))
    return seen
