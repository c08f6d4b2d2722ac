"""The request pipeline every API route shares: authenticate, rate-limit, authorize, decode.

Routes are declared once as `RouteSpec` (which also documents them in OpenAPI) and a thin
handler `async (call) -> Response`. Errors are `DtqError`s; one handler in `app.py` turns
them into the guide's JSON error.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import current_app, g, request
from werkzeug.routing import BaseConverter

from dtq.core.accounts import Accounts
from dtq.core.auth import Permission, Principal, Role, bearer_of, single_credential
from dtq.core.ratelimit import RateLimiter
from dtq.core.service import TaskQueue
from dtq.errors import Unauthorized
from dtq.net.envelope import JSON, decode_body, decode_query, require_json_media_type
from dtq.net.events import EventBus
from dtq.net.openapi import OpenApiRegistry, RouteSpec
from dtq.settings import Settings

if TYPE_CHECKING:
    from dtq.core.webhooks.delivery import WebhookService
    from dtq.net.metrics import Metrics


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
        self.registry = OpenApiRegistry()
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
