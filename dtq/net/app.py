"""The Quart (quart-trio) application: routes, error format, request logging, CORS."""

from __future__ import annotations

import time
from typing import Any

import structlog
from msgspec import Struct
from quart import g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dtq import __version__
from dtq.errors import (
    DtqError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
)
from dtq.ids import new_request_id
from dtq.net.docs import make_docs_blueprint
from dtq.net.envelope import encode, error_body, now_iso
from dtq.net.openapi import OpenApiRegistry
from dtq.net.routes import admin, analytics, history, queues, schedules, tasks, webhooks, workers
from dtq.net.routes.metrics import metrics_route_spec, register_metrics_route
from dtq.net.routing import Api, RouteSpec, Services, identify_and_charge, plain_rule, respond
from dtq.net.ui import make_ui_blueprint
from dtq.net.ws import register_websockets
from dtq.settings import Settings

log = structlog.get_logger("dtq.http")
API_PREFIX = "/api/v1"
APP_NAME = "Distributed Task Queue System"


class Health(Struct, omit_defaults=True):
    status: str
    version: str
    timestamp: str
    # The fast lane's TCP port (docs/protocol.md), for clients that find it by themselves;
    # left out when it is off (and by /ready).
    protocol_port: int | None = None


class Info(Struct):
    name: str
    version: str
    environment: str
    debug: bool


def _system_specs() -> list[RouteSpec]:
    """The open endpoints served by `create_app` itself (documented, not routed, here)."""
    return [
        RouteSpec("GET", "/health", "Liveness", "System", "health", response=Health,
                  auth=False, envelope=False),
        RouteSpec("GET", "/ready", "Readiness (503 while storage or services are not ready)",
                  "System", "ready", response=Health, auth=False, envelope=False,
                  errors=(503,)),
        RouteSpec("GET", "/info", "Application information", "System", "info", response=Info,
                  auth=False, envelope=False),
    ]  # fmt: skip


def build_api(services: Services) -> Api:
    api = Api(services)
    for group in (tasks, history, schedules, workers, analytics, admin, webhooks, queues):
        group.register(api)
    api.registry.add(metrics_route_spec(services.settings))  # served by register_metrics_route
    for spec in _system_specs():
        api.registry.add(spec)
    return api


def openapi_document(api: Api) -> dict[str, Any]:
    return OpenApiRegistry(specs=api.registry).build(APP_NAME, __version__)


def build_openapi() -> dict[str, Any]:
    """The document without a running server (routes are declared without touching services)."""
    nothing: Any = None  # handlers are declared, never called, so no services are needed
    return openapi_document(build_api(Services(nothing, nothing, nothing, Settings())))


def create_app(services: Services) -> QuartTrio:
    settings = services.settings
    app = QuartTrio("dtq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    api = build_api(services)
    api.install(app)
    app.register_blueprint(make_docs_blueprint(lambda: openapi_document(api), title=APP_NAME))
    app.extensions["dtq_api"] = api
    app.register_blueprint(make_ui_blueprint())
    register_websockets(app, services, services.bus)
    register_metrics_route(app, services)
    metrics = services.metrics
    queue = services.queue

    @app.get("/")
    async def home() -> Any:
        response = respond(b"", 302)  # the dashboard is the front page
        response.headers["Location"] = request.script_root + "/ui/"
        return response

    @app.get("/health")
    async def health() -> Any:
        body = {"status": "healthy", "version": __version__, "timestamp": now_iso()}
        if (protocol_port := app.config.get("DTQ_PROTOCOL_PORT")) is not None:
            body["protocol_port"] = protocol_port
        return respond(encode(body))

    @app.get("/ready")
    async def ready() -> Any:
        problem = await queue.ready_problem()
        if problem:
            body = {"status": "not_ready", "version": __version__, "reason": problem,
                    "timestamp": now_iso()}  # fmt: skip
            return respond(encode(body), 503)
        return respond(encode({"status": "ready", "version": __version__, "timestamp": now_iso()}))

    @app.get("/info")
    async def info() -> Any:
        return respond(
            encode({"name": APP_NAME, "version": __version__, "environment": settings.env,
                    "debug": settings.debug})
        )  # fmt: skip

    cors_origins = frozenset(settings.cors_origins)

    @app.before_request
    async def start_request() -> Any:
        g.started = time.perf_counter()
        req = _current_request()  # one proxy lookup, not one per attribute
        g.request_id = req.headers.get("X-Request-ID") or new_request_id()
        if cors_origins and req.method == "OPTIONS" and "Origin" in req.headers:
            return respond(b"", 204)
        return None

    @app.after_request
    async def finish_request(response: Any) -> Any:
        decision = g.get("rate_decision")
        if decision is not None:
            response.headers.update(decision.headers())
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        req = _current_request()
        origin = req.headers.get("Origin") if cors_origins else None
        if origin and ("*" in cors_origins or origin in cors_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, X-API-Key, X-Request-ID"
            )
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            response.headers["Access-Control-Expose-Headers"] = (
                "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-Request-ID, "
                "Retry-After"
            )
        started = g.get("started")
        if metrics is not None and started is not None:
            rule = req.url_rule
            metrics.observe_request(
                plain_rule(rule.rule) if rule is not None else None,
                req.method,
                response.status_code,
                time.perf_counter() - started,
            )
        log.info(
            "request",
            method=req.method,
            path=req.path,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 3) if started else None,
            request_id=request_id,
        )
        return response

    @app.errorhandler(DtqError)
    async def dtq_error(exc: DtqError) -> Any:
        response = respond(error_body(exc), exc.status)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if request.path.startswith(API_PREFIX + "/") and g.get("rate_decision") is None:
            # No route ran, so nothing charged the caller: every /api/v1 answer is counted
            # and carries the X-RateLimit-* headers (DESIGN.md).
            try:
                await identify_and_charge(services)
            except DtqError as charged:
                if isinstance(charged, RateLimited):
                    return await dtq_error(charged)
        mapped: DtqError
        if code == 404:
            mapped = NotFound(f"No route for {request.method} {request.path}", field="path",
                              reason="unknown route")  # fmt: skip
        elif code == 405:
            mapped = MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}", field="method",
                reason="method not allowed",
            )  # fmt: skip
        elif code == 413:
            mapped = PayloadTooLarge(
                f"Request body is larger than {settings.max_body_bytes} bytes",
                field="body", reason="too large",
            )  # fmt: skip
        elif 400 <= code < 500:
            mapped = InvalidRequest(exc.description or "Bad request", reason=exc.name)
        else:
            mapped = DtqError()
        response = respond(error_body(mapped), code if code >= 400 else 500)
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", path=request.path, request_id=g.get("request_id"))
        return respond(error_body(DtqError()), 500)

    return app


def _current_request() -> Any:
    """The request behind Quart's proxy: each attribute read through the proxy costs ~2 us."""
    proxy: Any = request
    return proxy._get_current_object()
