"""The request pipeline every API route shares: authenticate, rate-limit, authorize, decode.

Routes are declared once as `RouteSpec` (what `dtq.net.openapi` documents) and a thin
handler `async (call) -> Response`; `path_types` give path ids their type (a value of another
shape is a 400 before the handler runs). Errors are `DtqError`s; one handler in `app.py` turns
them into the guide's JSON error.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from quart import current_app, g, request
from werkzeug.routing import BaseConverter

from dtq.core.accounts import Accounts
from dtq.core.auth import Permission, Principal, Role, bearer_of, single_credential
from dtq.core.ratelimit import RateLimiter
from dtq.core.service import TaskQueue
from dtq.errors import Unauthorized
from dtq.net.envelope import JSON, decode_body, decode_query, require_json_media_type
from dtq.net.events import EventBus
from dtq.net.metrics import Metrics
from dtq.settings import Settings

if TYPE_CHECKING:
    from dtq.core.webhooks.delivery import WebhookService

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_PATH_PARAM = re.compile(r"\{([^{}/]+)\}")


@dataclass(frozen=True)
class RouteSpec:
    """One documented operation.

    `path` is in OpenAPI style (``/api/v1/tasks/{task_id}``); every ``{name}`` becomes a string
    path parameter. `body` and `query` are msgspec Structs (the query struct's fields are the query
    parameters). `response` is the type of the envelope's `data` (any type msgspec can describe,
    e.g. ``list[TaskOut]``); ``None`` documents ``data: null``, or no body at all with status 204.
    With ``envelope=False`` the response type is the whole body; `raw_response_schema` (a JSON
    schema) overrides both, for bodies no msgspec type describes. `extra_fields` are more
    top-level envelope members, e.g. ``(("token", str),)``. `content_types` lists the media
    types the success response comes in; non-JSON ones are documented as strings.
    `path_types` gives path parameters a type (``(("task_id", uuid.UUID),)``): its schema is
    documented, and so is the 400 a value of another shape gets. `also` lists further success
    statuses with the same body (a create that can be a replay: 201, or 200). A body documents
    the 415 a body that is not JSON (by its Content-Type) gets.
    """

    method: str
    path: str
    summary: str
    tag: str
    operation_id: str
    body: type | None = None
    query: type | None = None
    response: Any = None
    status: int = 200
    also: tuple[int, ...] = ()
    errors: tuple[int, ...] = ()
    auth: bool = True
    roles: tuple[str, ...] = ()
    paginated: bool = False
    envelope: bool = True
    raw_response_schema: Mapping[str, Any] | None = None
    content_types: tuple[str, ...] = ("application/json",)
    extra_fields: tuple[tuple[str, Any], ...] = ()
    path_types: tuple[tuple[str, Any], ...] = ()
    body_required: bool = True
    description: str | None = None
    deprecated: bool = False

    def __post_init__(self) -> None:
        if self.method.upper() != self.method or self.method not in _METHODS:
            raise ValueError(f"method must be one of {sorted(_METHODS)}, got {self.method!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")
        if not 200 <= self.status < 400:
            raise ValueError(f"success status must be 2xx or 3xx, got {self.status}")
        if any(not 200 <= code < 400 or code == 204 for code in self.also):
            raise ValueError(f"`also` statuses must be 2xx/3xx with a body, got {self.also}")
        if any(not 400 <= code < 600 for code in self.errors):
            raise ValueError(f"error statuses must be 4xx or 5xx, got {self.errors}")
        if self.paginated and not self.envelope:
            raise ValueError("paginated responses are enveloped")
        if not self.content_types:
            raise ValueError("content_types must not be empty")
        unknown = {name for name, _ in self.path_types} - set(self.path_params)
        if unknown:
            raise ValueError(f"path_types names no path parameter: {sorted(unknown)}")
        if self.query is not None and not (
            isinstance(self.query, type) and issubclass(self.query, msgspec.Struct)
        ):
            raise TypeError(f"query must be a msgspec.Struct subclass, got {self.query!r}")

    @property
    def path_params(self) -> tuple[str, ...]:
        """Names of the ``{...}`` segments of `path`, in order."""
        return tuple(_PATH_PARAM.findall(self.path))

    @property
    def rule(self) -> str:
        """`path` as a Quart/werkzeug URL rule: ``/tasks/{task_id}`` -> ``/tasks/<task_id>``."""
        return _PATH_PARAM.sub(r"<\1>", self.path)


class RouteTable:
    """The declared operations, in order: each method + path and each operation id once."""

    def __init__(self) -> None:
        self._specs: list[RouteSpec] = []

    def add(self, spec: RouteSpec) -> RouteSpec:
        """Register `spec`; the same method + path or operation id twice is an error."""
        for seen in self._specs:
            if (seen.method, seen.path) == (spec.method, spec.path):
                raise ValueError(f"{spec.method} {spec.path} is already documented")
            if seen.operation_id == spec.operation_id:
                raise ValueError(f"operation id {spec.operation_id!r} is already used")
        self._specs.append(spec)
        return spec

    @property
    def specs(self) -> tuple[RouteSpec, ...]:
        return tuple(self._specs)

    def __iter__(self) -> Iterator[RouteSpec]:
        return iter(tuple(self._specs))

    def __len__(self) -> int:
        return len(self._specs)


@dataclass
class Services:
    queue: TaskQueue
    accounts: Accounts
    limiter: RateLimiter
    settings: Settings
    bus: EventBus = field(default_factory=EventBus)
    metrics: Metrics | None = None  # built by open_services; None: no /metrics
    webhooks: WebhookService | None = None  # built by open_services; None: documenting only


@dataclass
class Call:
    """What a handler gets: the caller, the decoded body and query, the path parameters."""

    principal: Principal
    body: Any
    query: Any
    params: dict[str, str]


Handler = Callable[[Call], Awaitable[Any]]


def respond(body: bytes, status: int = 200, content_type: str = JSON) -> Any:
    # stack-findings trap 2: the app's own response class, never quart.Response.
    return current_app.response_class(body, status=status, content_type=content_type)


def no_content() -> Any:
    return current_app.response_class(b"", status=204)


async def principal_of(accounts: Accounts) -> Principal:
    """Credentials from `X-API-Key` or `Authorization: Bearer`; anonymous when none.

    Exactly one credential, or 401: a second one (another header, or the same header twice)
    is never silently ignored (`dtq.core.auth.credentials`)."""
    headers = request.headers
    api_key, bearer = single_credential(
        headers.getlist("X-API-Key"), [bearer_of(a) for a in headers.getlist("Authorization")]
    )
    principal = await accounts.authenticate(api_key, bearer)
    return principal or Principal.anonymous(request.remote_addr or "unknown")


def charge(svc: Services, principal: Principal) -> None:
    """Count one request against the caller's rate limits (the after-request hook adds the
    X-RateLimit-* headers); RateLimited when over."""
    settings = svc.settings
    if principal.role is Role.WORKER:
        per_minute, per_hour = principal.rate_limits(
            settings.worker_rate_limit_per_minute, settings.worker_rate_limit_per_hour
        )
    else:
        per_minute, per_hour = principal.rate_limits(
            settings.rate_limit_per_minute, settings.rate_limit_per_hour
        )
    decision = svc.limiter.hit(principal.identity, time.time(), per_minute, per_hour)
    g.rate_decision = decision
    if not decision.allowed:
        raise decision.error()


async def identify_and_charge(svc: Services) -> Principal:
    """The caller, charged to its rate limits. Bad credentials count against the client
    address, as none would: guessing keys or tokens is rate-limited too, and the 401 carries
    the headers."""
    try:
        principal = await principal_of(svc.accounts)
    except Unauthorized:
        charge(svc, Principal.anonymous(request.remote_addr or "unknown"))
        raise
    charge(svc, principal)
    return principal


_SEGMENT_CONVERTER = "segment_except"


class SegmentExcept(BaseConverter):
    """One path segment other than the given words. `/api/v1/tasks/{task_id}` must not also
    claim `/api/v1/tasks/lease`: werkzeug would then list GET, PUT and DELETE in that path's
    `Allow` (OPTIONS, 405) and route `GET .../lease` to "get a task"."""

    def __init__(self, url_map: Any, *excluded: str) -> None:
        super().__init__(url_map)
        words = "|".join(re.escape(word) for word in sorted(excluded))
        self.regex = f"(?!(?:{words})(?:/|$))[^/]+"


_CONVERTER = re.compile(r"<[^<>:]+:([^<>]+)>")


@functools.lru_cache(maxsize=1024)
def plain_rule(rule: str) -> str:
    """A werkzeug rule without its converters, as metrics and logs name a route:
    ``/tasks/<segment_except('ack'):task_id>`` -> ``/tasks/<task_id>``."""
    return _CONVERTER.sub(r"<\1>", rule)


def _segments(path: str) -> tuple[str, ...]:
    """`/a/{x}/b` -> ("a", "*", "b"): parameters are wildcards."""
    return tuple("*" if part.startswith("{") else part for part in path.strip("/").split("/"))


def _literal_segments(groups: list[tuple[str, ...]]) -> dict[tuple[str, ...], set[str]]:
    """Prefix (as `_segments`) -> the fixed segments some declared path has right after it."""
    literal: dict[tuple[str, ...], set[str]] = {}
    for paths in groups:
        for path in paths:
            parts = _segments(path)
            for i, part in enumerate(parts):
                if part != "*":
                    literal.setdefault(parts[:i], set()).add(part)
    return literal


def _rule(path: str, literal: dict[tuple[str, ...], set[str]]) -> str:
    """The werkzeug rule for an OpenAPI path: `{name}` -> `<name>`, or a `segment_except`
    converter when a sibling route has a fixed segment in that place."""
    parts = _segments(path)
    out = []
    for i, part in enumerate(path.strip("/").split("/")):
        if not part.startswith("{"):
            out.append(part)
            continue
        name = part[1:-1]
        siblings = literal.get(parts[:i])
        if siblings:
            words = ", ".join(f"'{word}'" for word in sorted(siblings))
            out.append(f"<{_SEGMENT_CONVERTER}({words}):{name}>")
        else:
            out.append(f"<{name}>")
    return "/" + "/".join(out)


class Api:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.registry = RouteTable()
        self._routes: list[tuple[RouteSpec, Handler, Permission | None, tuple[str, ...]]] = []

    def route(
        self, spec: RouteSpec, permission: Permission | None, *, aliases: tuple[str, ...] = ()
    ) -> Callable[[Handler], Handler]:
        """Declare an operation. `permission=None` means open to everyone (e.g. login)."""

        def decorator(handler: Handler) -> Handler:
            self.registry.add(spec)
            for i, alias in enumerate(aliases, 1):  # documented too (paths without parameters)
                self.registry.add(
                    dataclasses.replace(
                        spec, path=alias, operation_id=f"{spec.operation_id}_alias{i}",
                        description=f"Same as `{spec.path}`.",
                    )
                )  # fmt: skip
            self._routes.append((spec, handler, permission, aliases))
            return handler

        return decorator

    def install(self, app: Any) -> None:
        app.url_map.converters[_SEGMENT_CONVERTER] = SegmentExcept
        literal = _literal_segments([(spec.path, *aliases) for spec, *_, aliases in self._routes])
        for spec, handler, permission, aliases in self._routes:
            view = self._view(spec, handler, permission)
            for i, path in enumerate((_rule(spec.path, literal), *aliases)):
                app.add_url_rule(
                    path,
                    endpoint=f"{spec.operation_id}_{i}",
                    view_func=view,
                    methods=[spec.method],
                )

    def _view(
        self, spec: RouteSpec, handler: Handler, permission: Permission | None
    ) -> Callable[..., Awaitable[Any]]:
        svc = self.services
        body_model = spec.body
        query_model = spec.query

        async def view(**params: str) -> Any:
            principal = await identify_and_charge(svc)
            if permission is not None:
                principal.require(permission)
            g.principal = principal
            query = decode_query(request.args, query_model) if query_model else None
            body: Any = None
            if body_model is not None:
                raw = await request.get_data(cache=False, as_text=False)
                if raw:  # an empty body is "no body", whatever its Content-Type says
                    require_json_media_type(request.headers.get("Content-Type"))
                if raw or spec.body_required:
                    body = decode_body(raw if isinstance(raw, bytes) else raw.encode(), body_model)
            return await handler(Call(principal, body, query, params))

        view.__name__ = spec.operation_id
        return view
