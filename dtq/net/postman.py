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

Every request has a test script asserting the operation's documented success status.

With a `Walkthrough` (dtq's is `dtq.net.postman_walkthrough.WALKTHROUGH`), the collection runs top
to bottom as a user would: one folder per stage, each step one operation with a realistic body,
path variables filled from collection variables that earlier steps stored from their responses
(`store`), extra checks, and clean-up at the end. Operations no step covers follow in one folder
per tag, with bodies and query values made from the schemas: an explicit example, else the
default, const or first enum value, else a placeholder of the schema's type.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = [
    "POSTMAN_SCHEMA",
    "Stage",
    "Step",
    "Walkthrough",
    "build_postman_collection",
    "example_from_schema",
]

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


@dataclass(frozen=True, kw_only=True)
class Step:
    """One request of a walkthrough: the operation `operation` (its operationId) as it is called.

    `body` (JSON data; strings may hold ``{{variables}}``) replaces the schema's example; `path`
    and `query` give path and (enabled) query parameter values. `store` maps a collection variable
    to a JavaScript expression over the parsed response `body` whose value later steps use.
    `checks` maps a test title to JavaScript assertions over `body`. `media_type` picks one
    response type when the operation has several. `prerequest` runs before the request is sent.
    """

    operation: str
    name: str | None = None
    body: Any = None
    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None
    store: Mapping[str, str] = field(default_factory=dict)
    checks: Mapping[str, str] = field(default_factory=dict)
    prerequest: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A folder of steps, run in order."""

    name: str
    description: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class Walkthrough:
    """The collection's order: stages of steps, and the collection variables they use
    (key, default value, description) beyond ``base_url``, ``server_url``, ``token``, ``api_key``."""

    description: str
    stages: tuple[Stage, ...]
    variables: tuple[tuple[str, str, str], ...] = ()


class _Operation:
    """One operation of the OpenAPI document, located by its path and method."""

    def __init__(self, path: str, method: str, op: Mapping[str, Any], shared: list[Any]) -> None:
        self.path = path
        self.method = method
        self.op = op
        self.shared_params = shared

    @property
    def tag(self) -> str | None:
        tags = self.op.get("tags") or []
        return str(tags[0]) if tags else None


def _operations(openapi: Mapping[str, Any]) -> dict[str, _Operation]:
    """Every operation, keyed by operationId (or "METHOD path" when it has none), in order."""
    out: dict[str, _Operation] = {}
    for path, path_item in openapi.get("paths", {}).items():
        shared_params = path_item.get("parameters", [])
        for method in _METHODS:
            op = path_item.get(method)
            if op is not None:
                key = str(op.get("operationId") or f"{method.upper()} {path}")
                out[key] = _Operation(path, method, op, shared_params)
    return out


def build_postman_collection(
    openapi: Mapping[str, Any],
    *,
    walkthrough: Walkthrough | None = None,
    server_url: str = DEFAULT_SERVER_URL,
    api_prefix: str = DEFAULT_API_PREFIX,
) -> dict[str, Any]:
    """The Postman v2.1 collection for `openapi` (an OpenAPI 3.x document as plain data).

    With `walkthrough`, its stages come first; a step naming an operation the document does not
    have is an error (the walkthrough is stale).
    """
    server_url = server_url.rstrip("/")
    api_prefix = "/" + api_prefix.strip("/")
    info = openapi.get("info", {})
    title = str(info.get("title", "API"))
    operations = _operations(openapi)

    item: list[dict[str, Any]] = []
    covered: set[str] = set()
    for stage in walkthrough.stages if walkthrough else ():
        requests: list[dict[str, Any]] = []
        for step in stage.steps:
            if step.operation not in operations:
                raise ValueError(f"walkthrough step {step.operation!r}: no such operation")
            covered.add(step.operation)
            requests.extend(_items(openapi, operations[step.operation], api_prefix, step))
        item.append({"name": stage.name, "description": stage.description, "item": requests})

    folders: dict[str, list[dict[str, Any]]] = {}
    tag_descriptions: dict[str, str] = {}
    for tag in openapi.get("tags", ()):
        folders[tag["name"]] = []
        if tag.get("description"):
            tag_descriptions[tag["name"]] = tag["description"]
    loose: list[dict[str, Any]] = []
    for key, operation in operations.items():
        if key in covered:
            continue
        items = _items(openapi, operation, api_prefix, None)
        if operation.tag is not None:
            folders.setdefault(operation.tag, []).extend(items)
        else:
            loose.extend(items)
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
    variables = [
        {"key": "base_url", "value": f"{server_url}{api_prefix}", "type": "string"},
        {"key": "server_url", "value": server_url, "type": "string"},
        {"key": "token", "value": "", "type": "string"},
        {"key": "api_key", "value": "", "type": "string"},
    ]
    if walkthrough is not None:
        description = f"{description}\n\n{walkthrough.description.strip()}".strip()
        for key, value, about in walkthrough.variables:
            variables.append({"key": key, "value": value, "type": "string", "description": about})
    return {
        "info": {
            "_postman_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dtq:{title}")),
            "name": title,
            "description": f"{description}\n\n{variables_doc}".strip(),
            "version": str(info.get("version", "")),
            "schema": POSTMAN_SCHEMA,
        },
        "item": item,
        "variable": variables,
    }


def _items(
    doc: Mapping[str, Any], operation: _Operation, api_prefix: str, step: Step | None
) -> list[dict[str, Any]]:
    """The request item(s) for one operation: one per response media type when there are several."""
    op = operation.op
    params = [_resolve(doc, p) for p in [*operation.shared_params, *op.get("parameters", [])]]
    url = _url(doc, operation.path, params, api_prefix, step)
    headers: list[dict[str, Any]] = []
    if _needs_auth(doc, op):
        headers.append({"key": "Authorization", "value": "Bearer {{token}}", "type": "text"})
        headers.append(
            {"key": "X-API-Key", "value": "{{api_key}}", "type": "text", "disabled": True}
        )
    request: dict[str, Any] = {"method": operation.method.upper(), "header": headers, "url": url}

    body = _resolve(doc, op.get("requestBody", {})).get("content", {})
    json_type = next((ct for ct in body if _is_json(ct)), None)
    if json_type is not None:
        headers.append({"key": "Content-Type", "value": "application/json", "type": "text"})
        if step is not None and step.body is not None:
            example = step.body
        else:
            example = example_from_schema(body[json_type].get("schema", {}), doc)
        request["body"] = {
            "mode": "raw",
            "raw": msgspec.json.format(msgspec.json.encode(example), indent=2).decode(),
            "options": {"raw": {"language": "json"}},
        }

    summary = op.get("summary") or op.get("operationId")
    name = str((step and step.name) or summary or f"{operation.method.upper()} {operation.path}")
    description = str(op.get("description") or op.get("summary") or "")
    if description:
        request["description"] = description

    status, reason, success = _success(doc, op)
    tests = _status_test(status, reason) if status is not None else []
    tests += _token_script(doc, success)
    if step is not None:
        tests += _store_script(step.store) + _check_script(step.checks)
    events = []
    if step is not None and step.prerequest:
        events.append(_event("prerequest", list(step.prerequest)))
    if tests:
        events.append(_event("test", tests))

    media_types = list(success)
    if step is not None and step.media_type is not None:
        if step.media_type not in media_types:
            raise ValueError(f"walkthrough step {step.operation!r}: no {step.media_type} response")
        media_types = [step.media_type]
        if len(success) > 1:
            request = {**request, "header": [*headers, _accept(step.media_type)]}
    if len(media_types) < 2:
        return [_item(name, request, events)]
    out = []
    for media_type in media_types:
        variant = {**request, "header": [*headers, _accept(media_type)]}
        out.append(_item(f"{name} ({media_type})", variant, events))
    return out


def _event(listen: str, lines: list[str]) -> dict[str, Any]:
    return {"listen": listen, "script": {"type": "text/javascript", "exec": lines}}


def _js(value: str) -> str:
    """A JavaScript string literal (JSON's is one)."""
    return json.dumps(value)


def _status_test(status: int, reason: str) -> list[str]:
    title = f"status is {status} {reason}".strip()
    return [f"pm.test({_js(title)}, function () {{ pm.response.to.have.status({status}); }});"]


def _store_script(store: Mapping[str, str]) -> list[str]:
    """Keep values of the response in collection variables, failing a test when one is missing."""
    lines: list[str] = []
    for variable, expression in store.items():
        lines += [
            f"pm.test({_js(f'response gives {variable}')}, function () {{",
            "    const body = pm.response.json();",
            f"    const value = {expression};",
            f"    pm.expect(value, {_js(variable)}).to.be.a('string').and.not.empty;",
            f"    pm.collectionVariables.set({_js(variable)}, value);",
            "});",
        ]
    return lines


def _check_script(checks: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    for title, assertions in checks.items():
        lines += [
            f"pm.test({_js(title)}, function () {{",
            "    const body = pm.response.json();",
            *(f"    {line}" for line in assertions.splitlines() if line.strip()),
            "});",
        ]
    return lines


def _item(name: str, request: dict[str, Any], events: list[Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "request": request}
    if events:
        item["event"] = events
    return item


def _accept(media_type: str) -> dict[str, Any]:
    return {"key": "Accept", "value": media_type, "type": "text"}


def _url(
    doc: Mapping[str, Any],
    path: str,
    params: list[Mapping[str, Any]],
    api_prefix: str,
    step: Step | None,
) -> dict[str, Any]:
    path_values = step.path if step else {}
    query_values = step.query if step else {}
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
        name = param["name"]
        if where == "query":
            given = query_values.get(name)
            value = given if given is not None else _query_value(example_from_schema(schema, doc))
            entry: dict[str, Any] = {"key": name, "value": value}
            if param.get("description"):
                entry["description"] = param["description"]
            if given is None and not param.get("required", False):
                entry["disabled"] = True
            query.append(entry)
        elif where == "path":
            variable: dict[str, Any] = {"key": name, "value": path_values.get(name, "")}
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


def _success(
    doc: Mapping[str, Any], op: Mapping[str, Any]
) -> tuple[int | None, str, dict[str, Any]]:
    """The first documented 2xx: its status code, description and content by media type."""
    for status, response in op.get("responses", {}).items():
        if str(status).startswith("2") and str(status).isdigit():
            resolved = _resolve(doc, response)
            content: dict[str, Any] = resolved.get("content", {})
            return int(status), str(resolved.get("description", "")), content
    return None, "", {}


def _token_script(doc: Mapping[str, Any], content: Mapping[str, Any]) -> list[str]:
    """Lines storing `token` when the success body has a top-level `token` field."""
    for media_type, media in content.items():
        if _is_json(media_type):
            schema = _resolve(doc, media.get("schema", {}))
            if "token" in schema.get("properties", {}):
                return list(_TOKEN_SCRIPT)
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
