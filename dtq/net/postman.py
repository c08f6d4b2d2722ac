"""A Postman (collection format v2.1) collection generated from the OpenAPI document.

One request per operation, in one folder per tag (in the document's tag order). Collection
variables, as the API guide's "Using Postman" section names them:

- ``base_url`` = ``http://localhost:5000/api/v1``: operations under the API prefix are
  ``{{base_url}}/tasks/...``;
- ``server_url`` = ``http://localhost:5000``: the rest (``/health``, ``/ready``, ``/info``,
  ``/openapi.json``) are ``{{server_url}}/health``;
- ``token``: a JWT; authenticated requests send ``Authorization: Bearer {{token}}``. The login
  request stores the token it gets back in this variable;
- ``api_key``: an alternative to the token; each authenticated request carries a disabled
  ``X-API-Key: {{api_key}}`` header to switch on instead.

Example bodies and query values are made from the schemas: an explicit example, else the default,
const or first enum value, else a placeholder of the schema's type.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["POSTMAN_SCHEMA", "build_postman_collection", "example_from_schema"]

POSTMAN_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
DEFAULT_SERVER_URL = "http://localhost:5000"
DEFAULT_API_PREFIX = "/api/v1"

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_STRING_FORMATS = {
    "date-time": "2024-02-09T10:30:00Z",
    "date": "2024-02-09",
    "time": "10:30:00Z",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "email": "user@example.com",
    "uri": "https://example.com/",
}
_MAX_DEPTH = 8

_TOKEN_SCRIPT = [
    "// Keep the token from a successful login for the requests that follow.",
    "if (pm.response.code === 200) {",
    "    pm.collectionVariables.set('token', pm.response.json().token);",
    "}",
]


def build_postman_collection(
    openapi: Mapping[str, Any],
    *,
    server_url: str = DEFAULT_SERVER_URL,
    api_prefix: str = DEFAULT_API_PREFIX,
) -> dict[str, Any]:
    """The Postman v2.1 collection for `openapi` (an OpenAPI 3.x document as plain data)."""
    server_url = server_url.rstrip("/")
    api_prefix = "/" + api_prefix.strip("/")
    info = openapi.get("info", {})
    title = str(info.get("title", "API"))

    folders: dict[str, list[dict[str, Any]]] = {}
    tag_descriptions: dict[str, str] = {}
    for tag in openapi.get("tags", ()):
        folders[tag["name"]] = []
        if tag.get("description"):
            tag_descriptions[tag["name"]] = tag["description"]
    loose: list[dict[str, Any]] = []

    for path, path_item in openapi.get("paths", {}).items():
        shared_params = path_item.get("parameters", [])
        for method in _METHODS:
            op = path_item.get(method)
            if op is None:
                continue
            items = _items(openapi, path, method, op, shared_params, api_prefix)
            tags = op.get("tags") or []
            if tags:
                folders.setdefault(tags[0], []).extend(items)
            else:
                loose.extend(items)

    item: list[dict[str, Any]] = []
    for name, requests in folders.items():
        if not requests:
            continue
        folder: dict[str, Any] = {"name": name}
        if name in tag_descriptions:
            folder["description"] = tag_descriptions[name]
        folder["item"] = requests
        item.append(folder)
    item.extend(loose)

    description = str(info.get("description", "")).strip()
    variables_doc = (
        "Variables: `base_url` (the API root, "
        f"{server_url}{api_prefix}), `server_url` (the server root, for /health and other "
        "paths outside the API prefix), `token` (a JWT, set by the login request), `api_key` "
        "(an API key, for the disabled X-API-Key headers)."
    )
    return {
        "info": {
            "_postman_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dtq:{title}")),
            "name": title,
            "description": f"{description}\n\n{variables_doc}".strip(),
            "version": str(info.get("version", "")),
            "schema": POSTMAN_SCHEMA,
        },
        "item": item,
        "variable": [
            {"key": "base_url", "value": f"{server_url}{api_prefix}", "type": "string"},
            {"key": "server_url", "value": server_url, "type": "string"},
            {"key": "token", "value": "", "type": "string"},
            {"key": "api_key", "value": "", "type": "string"},
        ],
    }


def _items(
    doc: Mapping[str, Any],
    path: str,
    method: str,
    op: Mapping[str, Any],
    shared_params: list[Any],
    api_prefix: str,
) -> list[dict[str, Any]]:
    """The request item(s) for one operation: one per response media type when there are several."""
    params = [_resolve(doc, p) for p in [*shared_params, *op.get("parameters", [])]]
    url = _url(doc, path, params, api_prefix)
    headers: list[dict[str, Any]] = []
    if _needs_auth(doc, op):
        headers.append({"key": "Authorization", "value": "Bearer {{token}}", "type": "text"})
        headers.append(
            {"key": "X-API-Key", "value": "{{api_key}}", "type": "text", "disabled": True}
        )
    request: dict[str, Any] = {"method": method.upper(), "header": headers, "url": url}

    body = _resolve(doc, op.get("requestBody", {})).get("content", {})
    json_type = next((ct for ct in body if _is_json(ct)), None)
    if json_type is not None:
        headers.append({"key": "Content-Type", "value": "application/json", "type": "text"})
        example = example_from_schema(body[json_type].get("schema", {}), doc)
        request["body"] = {
            "mode": "raw",
            "raw": msgspec.json.format(msgspec.json.encode(example), indent=2).decode(),
            "options": {"raw": {"language": "json"}},
        }

    name = str(op.get("summary") or op.get("operationId") or f"{method.upper()} {path}")
    description = str(op.get("description") or op.get("summary") or "")
    if description:
        request["description"] = description

    success = _success_content(doc, op)
    events = _token_events(doc, success)
    media_types = list(success)
    if len(media_types) < 2:
        return [_item(name, request, events)]
    out = []
    for media_type in media_types:
        variant = {**request, "header": [*headers, _accept(media_type)]}
        out.append(_item(f"{name} ({media_type})", variant, events))
    return out


def _item(name: str, request: dict[str, Any], events: list[Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "request": request}
    if events:
        item["event"] = events
    return item


def _accept(media_type: str) -> dict[str, Any]:
    return {"key": "Accept", "value": media_type, "type": "text"}


def _url(
    doc: Mapping[str, Any], path: str, params: list[Mapping[str, Any]], api_prefix: str
) -> dict[str, Any]:
    if path == api_prefix or path.startswith(api_prefix + "/"):
        host, rest = "{{base_url}}", path[len(api_prefix) :]
    else:
        host, rest = "{{server_url}}", path
    segments = [_segment(part) for part in rest.strip("/").split("/") if part]
    query = []
    variables = []
    for param in params:
        where = param.get("in")
        schema = param.get("schema", {})
        if where == "query":
            entry: dict[str, Any] = {
                "key": param["name"],
                "value": _query_value(example_from_schema(schema, doc)),
            }
            if param.get("description"):
                entry["description"] = param["description"]
            if not param.get("required", False):
                entry["disabled"] = True
            query.append(entry)
        elif where == "path":
            variable: dict[str, Any] = {"key": param["name"], "value": ""}
            if param.get("description"):
                variable["description"] = param["description"]
            variables.append(variable)
    raw = "/".join([host, *segments])
    enabled = [f"{q['key']}={q['value']}" for q in query if not q.get("disabled")]
    if enabled:
        raw += "?" + "&".join(enabled)
    url: dict[str, Any] = {"raw": raw, "host": [host], "path": segments}
    if query:
        url["query"] = query
    if variables:
        url["variable"] = variables
    return url


def _segment(part: str) -> str:
    """``{task_id}`` (OpenAPI) -> ``:task_id`` (Postman path variable)."""
    if part.startswith("{") and part.endswith("}"):
        return ":" + part[1:-1]
    return part


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_query_value(v) for v in value)
    if isinstance(value, str | int | float):
        return str(value)
    return msgspec.json.encode(value).decode()


def _needs_auth(doc: Mapping[str, Any], op: Mapping[str, Any]) -> bool:
    security = op.get("security", doc.get("security", []))
    # `[{}]` or an empty alternative means "authentication optional".
    return bool(security) and all(requirement for requirement in security)


def _success_content(doc: Mapping[str, Any], op: Mapping[str, Any]) -> dict[str, Any]:
    for status, response in op.get("responses", {}).items():
        if str(status).startswith("2"):
            content: dict[str, Any] = _resolve(doc, response).get("content", {})
            return content
    return {}


def _token_events(doc: Mapping[str, Any], content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A test script storing `token` when the success body has a top-level `token` field."""
    for media_type, media in content.items():
        if _is_json(media_type):
            schema = _resolve(doc, media.get("schema", {}))
            if "token" in schema.get("properties", {}):
                return [
                    {
                        "listen": "test",
                        "script": {"type": "text/javascript", "exec": list(_TOKEN_SCRIPT)},
                    }
                ]
    return []


def _is_json(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def _resolve(doc: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/components/...``), however many times it chains."""
    seen: set[str] = set()
    while isinstance(ref := node.get("$ref"), str) and ref.startswith("#/") and ref not in seen:
        seen.add(ref)
        target: Any = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                return {}
            target = target[part]
        if not isinstance(target, Mapping):
            return {}
        # Sibling keywords next to the $ref (3.1 allows them, e.g. a default) win.
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings}
    return node


def example_from_schema(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Any:
    """A plausible value for a JSON schema, resolving ``$ref`` against `doc`."""
    return _example(schema, doc, frozenset(), 0)


def _example(
    schema: Mapping[str, Any], doc: Mapping[str, Any], refs: frozenset[str], depth: int
) -> Any:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in refs or depth > _MAX_DEPTH:
            return None
        refs = refs | {ref}
    schema = _resolve(doc, schema)
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        return examples[0]
    for key in ("example", "default", "const"):
        # A null default only says "optional"; an example of the real type says more.
        if key in schema and not (key == "default" and schema[key] is None):
            return schema[key]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            not_null = [o for o in options if o.get("type") != "null"]
            return _example(not_null[0], doc, refs, depth + 1) if not_null else None
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = _example(part, doc, refs, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged

    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        return _object_example(schema, doc, refs, depth)
    if kind == "array":
        items = schema.get("items")
        if not isinstance(items, Mapping) or schema.get("maxItems") == 0 or depth > _MAX_DEPTH:
            return []
        return [_example(items, doc, refs, depth + 1)]
    if kind == "string":
        return _STRING_FORMATS.get(str(schema.get("format")), "string")
    if kind in ("integer", "number"):
        return _number_example(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _object_example(
    schema: Mapping[str, Any], doc: Mapping[str, Any], refs: frozenset[str], depth: int
) -> dict[str, Any]:
    """Required properties and those with a non-null default; else just the first property.

    (An update body where every field is optional, e.g. ``PUT /tasks/{id}``, then shows one
    change, ``{"status": "cancelled"}``, rather than every field at once.)
    """
    properties: Mapping[str, Any] = schema.get("properties", {})
    if depth > _MAX_DEPTH:
        return {}
    required = set(schema.get("required", ()))
    chosen = [
        name
        for name, prop in properties.items()
        if name in required or _resolve(doc, prop).get("default") is not None
    ]
    if not chosen and properties:
        chosen = [next(iter(properties))]
    return {name: _example(properties[name], doc, refs, depth + 1) for name in chosen}


def _number_example(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    value: float = 0
    if "minimum" in schema:
        value = schema["minimum"]
    elif "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"] + 1
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    return int(value) if integer else value
